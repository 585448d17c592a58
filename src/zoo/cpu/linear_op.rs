//! `x·Wᵀ + b` with a trainable weight as one op, forward and backward on the `gemm` kernels.
//!
//! Composed from candle ops a trainable linear layer is a transpose, a matmul into a
//! zero-filled buffer and a broadcast add; its backward computes the weight gradient as
//! `[in, out]`, transposes it, copies it to make it contiguous, and sums the bias gradient
//! with candle's strided reduction on one thread. Profiled on MiniLM-L6 full fine-tuning
//! those passes, not the matmuls, were a fifth of the main thread's time. Here the bias
//! seeds the output rows and the product accumulates into them; the backward writes `dW`
//! in `W`'s own `[out, in]` layout, gets `db` as one more product (`1ᵀ·g`), and skips the
//! gradients of inputs that do not track one.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Tensor};

use super::gemm::{matmul, Threads, View, ViewMut};
use crate::zoo::fused::contiguous_f32;

/// `x [rows, in] · weightᵀ [in, out] (+ bias [out])` → `[rows, out]`; CPU f32 only (the
/// caller checks [`crate::zoo::fused::uses_fused_kernels`]).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(bias) => x.apply_op3(&weight, &bias.contiguous()?, Linear),
        None => x.apply_op2(&weight, Linear),
    }
}

/// `residual [rows, out] + x [rows, in] · weightᵀ` → `[rows, out]`: a LoRA update added to
/// the base layer's output in the same pass as its product, and the residual's gradient
/// passed through as is.
pub fn linear_add(residual: &Tensor, x: &Tensor, weight: &Tensor) -> candle_core::Result<Tensor> {
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &residual.contiguous()?, LinearAdd)
}

struct Linear;

/// What the product is added to: a bias row for every output row, or a whole matrix.
enum Seed<'a> {
    None,
    Bias(&'a [f32]),
    Matrix(&'a [f32]),
}

fn dims(x: &Layout, w: &Layout) -> candle_core::Result<(usize, usize, usize)> {
    let (out, in_dim) = w.shape().dims2()?;
    let (rows, x_in) = x.shape().dims2()?;
    if x_in != in_dim {
        candle_core::bail!("linear: input width {x_in}, weight [{out}, {in_dim}]");
    }
    Ok((rows, in_dim, out))
}

fn forward(
    x: &[f32],
    w: &[f32],
    seed: Seed,
    (rows, in_dim, out): (usize, usize, usize),
) -> candle_core::Result<Vec<f32>> {
    // What the product is added to, checked once for both ways of computing it.
    let seeded = match seed {
        Seed::None => None,
        Seed::Bias(bias) => {
            if bias.len() != out {
                candle_core::bail!("linear: bias of {} for {out} outputs", bias.len());
            }
            Some(bias.repeat(rows))
        }
        Seed::Matrix(matrix) => {
            if matrix.len() != rows * out {
                candle_core::bail!("linear: {} values to add to [{rows}, {out}]", matrix.len());
            }
            Some(matrix.to_vec())
        }
    };
    // Decoding a few streams: a read of the weight, which the few-rows kernel streams.
    if let Some(product) = super::few_rows::few_rows_product(x, w, (rows, in_dim, out)) {
        return Ok(match seeded {
            None => product,
            Some(mut y) => {
                y.iter_mut().zip(&product).for_each(|(y, p)| *y += p);
                y
            }
        });
    }
    let accumulate = seeded.is_some();
    let mut y = seeded.unwrap_or_else(|| vec![0f32; rows * out]);
    matmul(
        ViewMut::rows(&mut y, rows, out),
        View::rows(x, rows, in_dim),
        View::rows(w, out, in_dim).t(),
        1.0,
        accumulate,
        Threads::Pool,
    )?;
    Ok(y)
}

/// The forward of every variant: `x · Wᵀ` added to `seed`, as candle storage.
fn product(
    (xs, xl): (&CpuStorage, &Layout),
    (ws, wl): (&CpuStorage, &Layout),
    seed: Seed,
) -> candle_core::Result<(CpuStorage, Shape)> {
    let dims = dims(xl, wl)?;
    let y = forward(contiguous_f32(xs, xl)?, contiguous_f32(ws, wl)?, seed, dims)?;
    Ok((CpuStorage::F32(y), Shape::from((dims.0, dims.2))))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        product((xs, xl), (ws, wl), Seed::None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        Ok((input_grad(x, w, &grad)?, weight_grad(x, w, &grad)?))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "fused-linear-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        product((xs, xl), (ws, wl), Seed::Bias(contiguous_f32(bs, bl)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let db = if b.track_op() {
            Some(grad.apply_op1_no_bwd(&ColumnSums)?)
        } else {
            None
        };
        Ok((input_grad(x, w, &grad)?, weight_grad(x, w, &grad)?, db))
    }
}

struct LinearAdd;

impl CustomOp3 for LinearAdd {
    fn name(&self) -> &'static str {
        "fused-linear-add"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        rs: &CpuStorage,
        rl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        product((xs, xl), (ws, wl), Seed::Matrix(contiguous_f32(rs, rl)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        residual: &Tensor,
        _: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_residual = residual.track_op().then(|| grad.clone());
        Ok((
            input_grad(x, w, &grad)?,
            weight_grad(x, w, &grad)?,
            d_residual,
        ))
    }
}

/// `g · W`, when the input needs a gradient.
fn input_grad(x: &Tensor, w: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !x.track_op() {
        return Ok(None);
    }
    grad.apply_op2_no_bwd(&w.detach(), &GradTimesWeight)
        .map(Some)
}

/// `gᵀ · x` in the weight's `[out, in]` layout, when the weight trains.
fn weight_grad(x: &Tensor, w: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
    if !w.track_op() {
        return Ok(None);
    }
    grad.apply_op2_no_bwd(&x.detach().contiguous()?, &GradTransposedTimesInput)
        .map(Some)
}

/// `g [rows, out] · W [out, in]` → `[rows, in]`.
struct GradTimesWeight;

impl CustomOp2 for GradTimesWeight {
    fn name(&self) -> &'static str {
        "fused-linear-input-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, in_dim) = wl.shape().dims2()?;
        let (rows, _) = gl.shape().dims2()?;
        let mut dx = vec![0f32; rows * in_dim];
        matmul(
            ViewMut::rows(&mut dx, rows, in_dim),
            View::rows(contiguous_f32(gs, gl)?, rows, out),
            View::rows(contiguous_f32(ws, wl)?, out, in_dim),
            1.0,
            false,
            Threads::Pool,
        )?;
        Ok((CpuStorage::F32(dx), Shape::from((rows, in_dim))))
    }
}

/// `gᵀ [out, rows] · x [rows, in]` → `[out, in]`.
struct GradTransposedTimesInput;

impl CustomOp2 for GradTransposedTimesInput {
    fn name(&self) -> &'static str {
        "fused-linear-weight-grad"
    }

    fn cpu_fwd(
        &self,
        gs: &CpuStorage,
        gl: &Layout,
        xs: &CpuStorage,
        xl: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, out) = gl.shape().dims2()?;
        let (_, in_dim) = xl.shape().dims2()?;
        let mut dw = vec![0f32; out * in_dim];
        matmul(
            ViewMut::rows(&mut dw, out, in_dim),
            View::rows(contiguous_f32(gs, gl)?, rows, out).t(),
            View::rows(contiguous_f32(xs, xl)?, rows, in_dim),
            1.0,
            false,
            Threads::Pool,
        )?;
        Ok((CpuStorage::F32(dw), Shape::from((out, in_dim))))
    }
}

/// `[rows, cols]` → `[cols]`, the sum of each column, as the product `1ᵀ · g`.
struct ColumnSums;

impl CustomOp1 for ColumnSums {
    fn name(&self) -> &'static str {
        "column-sums"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (rows, cols) = l.shape().dims2()?;
        let ones = vec![1f32; rows];
        let mut sums = vec![0f32; cols];
        matmul(
            ViewMut::rows(&mut sums, 1, cols),
            View::rows(&ones, 1, rows),
            View::rows(contiguous_f32(s, l)?, rows, cols),
            1.0,
            false,
            Threads::Pool,
        )?;
        Ok((CpuStorage::F32(sums), Shape::from(cols)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::zoo::test_tensors::{max_abs_diff, wave};
    use candle_core::Var;

    #[test]
    fn fused_linear_matches_the_composed_layer_and_every_gradient() {
        // Nine rows: the matrix product; three: `few_rows` where the CPU has AVX-512.
        for rows in [9, 3] {
            fused_linear_matches_at(rows);
        }
    }

    fn fused_linear_matches_at(rows: usize) {
        let x = Var::from_tensor(&wave(&[rows, 12], 1.5, 0.3)).unwrap();
        let w = Var::from_tensor(&wave(&[7, 12], 0.4, 1.1)).unwrap();
        let b = Var::from_tensor(&wave(&[7], 0.2, 0.7)).unwrap();
        let weights = wave(&[rows, 7], 1.0, 2.3);
        let fused = linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())).unwrap();
        let composed = x
            .as_tensor()
            .matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let grads = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gc) = (grads(&fused), grads(&composed));
        for (name, var) in [("x", &x), ("weight", &w), ("bias", &b)] {
            let d = max_abs_diff(
                gf.get(var.as_tensor()).unwrap(),
                gc.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{rows} rows: {name} gradient differs by {d}");
        }
    }

    #[test]
    fn linear_add_matches_the_sum_and_passes_the_residual_gradient_through() {
        let residual = Var::from_tensor(&wave(&[6, 5], 1.0, 0.8)).unwrap();
        let x = Var::from_tensor(&wave(&[6, 3], 1.3, 0.1)).unwrap();
        let w = Var::from_tensor(&wave(&[5, 3], 0.6, 1.9)).unwrap();
        let weights = wave(&[6, 5], 1.0, 1.2);
        let fused = linear_add(residual.as_tensor(), x.as_tensor(), w.as_tensor()).unwrap();
        let composed = (residual.as_tensor()
            + x.as_tensor().matmul(&w.as_tensor().t().unwrap()).unwrap())
        .unwrap();
        assert!(max_abs_diff(&fused, &composed) < 1e-5);
        let grads = |y: &Tensor| {
            (y * &weights)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap()
        };
        let (gf, gc) = (grads(&fused), grads(&composed));
        for (name, var) in [("residual", &residual), ("x", &x), ("weight", &w)] {
            let d = max_abs_diff(
                gf.get(var.as_tensor()).unwrap(),
                gc.get(var.as_tensor()).unwrap(),
            );
            assert!(d < 1e-4, "{name} gradient differs by {d}");
        }
    }

    #[test]
    fn without_bias_and_with_a_constant_input_only_the_weight_gets_a_gradient() {
        let x = wave(&[5, 4], 1.0, 0.9);
        let w = Var::from_tensor(&wave(&[3, 4], 0.5, 0.2)).unwrap();
        let y = linear(&x, w.as_tensor(), None).unwrap();
        let composed = x.matmul(&w.as_tensor().t().unwrap()).unwrap();
        assert!(max_abs_diff(&y, &composed) < 1e-5);
        let grads = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert!(grads.get(&x).is_none());
        let reference = composed
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let d = max_abs_diff(
            grads.get(w.as_tensor()).unwrap(),
            reference.get(w.as_tensor()).unwrap(),
        );
        assert!(d < 1e-4, "weight gradient differs by {d}");
    }
}
