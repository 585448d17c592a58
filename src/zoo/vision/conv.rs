//! 2-D convolution on channels-last (`[N, H, W, C]`) activations, the layout every vision
//! op here uses: a 1×1 convolution is then one matmul over `[N·H·W, C]`, and the per-channel
//! loops of the depthwise convolution and BatchNorm run over contiguous memory.
//!
//! Weights stay in timm's layout `[C_out, C_in / groups, kh, kw]`, so checkpoints and
//! exports carry timm's tensors unchanged.
//!
//! Both convolutions compute only the gradients that something needs: the input gradient
//! when the input tracks a trainable tensor (none below the lowest trainable layer), the
//! weight gradient when the weight is trainable. candle's own matmul backward computes both
//! whatever its arguments are, which for a frozen backbone is all wasted work.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::zoo::cpu::reduce::ordered_sum;
use crate::zoo::fused::contiguous_f32;
use crate::zoo::precomputed::PrecomputedOutput;
use crate::zoo::ZooError;

/// Kernel size, stride, symmetric zero padding and groups of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub kernel: usize,
    pub stride: usize,
    pub padding: usize,
    /// 1 (dense) or the channel count (depthwise); nothing else occurs in these models.
    pub groups: usize,
}

impl ConvSpec {
    pub fn output_size(&self, size: usize) -> usize {
        (size + 2 * self.padding).saturating_sub(self.kernel) / self.stride + 1
    }
}

/// Input geometry `[n, h, w, c]` with the spec: what the kernels index by.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    n: usize,
    h: usize,
    w: usize,
    c: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    spec: ConvSpec,
}

impl Geometry {
    pub(super) fn of(x_dims: &[usize], spec: ConvSpec) -> Result<Self, ZooError> {
        let &[n, h, w, c] = x_dims else {
            return Err(ZooError::Unsupported(format!(
                "a convolution takes [N, H, W, C] activations, got {x_dims:?}"
            )));
        };
        if h + 2 * spec.padding < spec.kernel || w + 2 * spec.padding < spec.kernel {
            return Err(ZooError::Unsupported(format!(
                "a {h}x{w} input is smaller than the {}x{} kernel",
                spec.kernel, spec.kernel
            )));
        }
        Ok(Self {
            n,
            h,
            w,
            c,
            ho: spec.output_size(h),
            wo: spec.output_size(w),
            spec,
        })
    }

    pub(super) fn patch(&self) -> usize {
        self.spec.kernel * self.spec.kernel * self.c
    }

    /// The input coordinate that kernel offset `k` reads for output coordinate `o`.
    fn source(&self, o: usize, k: usize, size: usize) -> Option<usize> {
        (o * self.spec.stride + k)
            .checked_sub(self.spec.padding)
            .filter(|&i| i < size)
    }

    pub(super) fn pointwise(&self) -> bool {
        self.spec.kernel == 1 && self.spec.stride == 1 && self.spec.padding == 0
    }

    /// The patches of output row `row` (`n·Ho + oy`) into `out`, `[Wo, k·k·C]`, in the
    /// order of a patch's `(ky, kx, c)`; padding positions are left as they are (zero).
    pub(super) fn im2col_row(&self, x: &[f32], row: usize, out: &mut [f32]) {
        let (c, patch) = (self.c, self.patch());
        let (n, oy) = (row / self.ho, row % self.ho);
        let image = n * self.h * self.w;
        for ox in 0..self.wo {
            self.for_each_tap(oy, ox, |tap, pixel| {
                let src = (image + pixel) * c;
                let dst = ox * patch + tap * c;
                out[dst..dst + c].copy_from_slice(&x[src..src + c]);
            });
        }
    }

    /// The depthwise convolution of output row `row` (`n·Ho + oy`) with the kernel
    /// `w_kkc` (`[k·k, C]`), added into `out` (`[Wo, C]`). (Tried and slower on this
    /// machine: channel blocks summed in registers over all taps; and AVX2 through `pulp`.)
    pub(super) fn depthwise_row(&self, x: &[f32], w_kkc: &[f32], row: usize, out: &mut [f32]) {
        let c = self.c;
        let (n, oy) = (row / self.ho, row % self.ho);
        let image = n * self.h * self.w;
        for ox in 0..self.wo {
            let acc = &mut out[ox * c..(ox + 1) * c];
            self.for_each_tap(oy, ox, |tap, pixel| {
                let src = &x[(image + pixel) * c..][..c];
                let wk = &w_kkc[tap * c..][..c];
                for ((a, &v), &wv) in acc.iter_mut().zip(src).zip(wk) {
                    *a += v * wv;
                }
            });
        }
    }

    /// `visit(tap, pixel)` for each kernel tap (`ky·k + kx`) of output `(oy, ox)` that
    /// falls inside the image, `pixel` being the tap's input position `iy·W + ix` within
    /// its image: the one place that maps outputs to the inputs they read.
    #[inline(always)]
    fn for_each_tap(&self, oy: usize, ox: usize, mut visit: impl FnMut(usize, usize)) {
        let k = self.spec.kernel;
        for ky in 0..k {
            let Some(iy) = self.source(oy, ky, self.h) else {
                continue;
            };
            for kx in 0..k {
                if let Some(ix) = self.source(ox, kx, self.w) {
                    visit(ky * k + kx, iy * self.w + ix);
                }
            }
        }
    }
}

/// `conv2d(x, weight)` with `x` `[N, H, W, C_in]` and `weight` `[C_out, C_in/groups, k, k]`
/// → `[N, Ho, Wo, C_out]`.
pub fn conv2d(x: &Tensor, weight: &Tensor, spec: ConvSpec) -> Result<Tensor, ZooError> {
    let geo = Geometry::of(x.dims(), spec)?;
    if !crate::zoo::fused::uses_fused_kernels(x) {
        return super::generic::conv2d(x, weight, spec);
    }
    let x = x.contiguous()?;
    if spec.groups == 1 {
        return dense_conv(&x, weight, geo);
    }
    let (c_out, per_group) = (weight.dim(0)?, weight.dim(1)?);
    if spec.groups != geo.c || c_out != geo.c || per_group != 1 {
        return Err(ZooError::Unsupported(format!(
            "grouped convolution with {} groups over {} channels (only depthwise is supported)",
            spec.groups, geo.c
        )));
    }
    // The kernel as [k, k, C]: the inner loops run over contiguous channels.
    let w_kkc = weight
        .reshape((geo.c, spec.kernel * spec.kernel))?
        .t()?
        .contiguous()?;
    let out = x.apply_op2(&w_kkc, DepthwiseConv { geo })?;
    Ok(out)
}

/// Dense convolution as im2col + one matmul on detached tensors, with the gradients
/// attached by [`DenseConvGrad`].
fn dense_conv(x: &Tensor, weight: &Tensor, geo: Geometry) -> Result<Tensor, ZooError> {
    let c_out = weight.dim(0)?;
    if weight.dim(1)? != geo.c {
        return Err(ZooError::Config(format!(
            "a convolution weight {:?} does not take {} input channels",
            weight.dims(),
            geo.c
        )));
    }
    let cols = columns(&x.detach(), geo)?;
    let w_mat = weight_matrix(&weight.detach(), geo)?;
    let out = cols
        .matmul(&w_mat.t()?)?
        .reshape((geo.n, geo.ho, geo.wo, c_out))?;
    if !x.track_op() && !weight.track_op() {
        return Ok(out);
    }
    let op = DenseConvGrad {
        output: PrecomputedOutput::new(out, "conv2d-nhwc"),
        geo,
    };
    Ok(x.apply_op2(weight, op)?)
}

/// The patches `[N·Ho·Wo, k·k·C]`; a 1×1 stride-1 convolution's are the input itself.
fn columns(x: &Tensor, geo: Geometry) -> candle_core::Result<Tensor> {
    if geo.pointwise() {
        return x.reshape((geo.n * geo.h * geo.w, geo.c));
    }
    x.apply_op1_no_bwd(&Im2Col { geo })
}

/// `[C_out, C_in, k, k]` → `[C_out, k·k·C_in]`, the order of a patch's `(ky, kx, c)`.
fn weight_matrix(weight: &Tensor, geo: Geometry) -> candle_core::Result<Tensor> {
    weight
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .reshape((weight.dim(0)?, geo.patch()))
}

struct Im2Col {
    geo: Geometry,
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let g = self.geo;
        let patch = g.patch();
        let mut cols = vec![0f32; g.n * g.ho * g.wo * patch];
        // One output row (n, oy) per task: Wo patches, each k·k runs of C channels.
        cols.par_chunks_mut(g.wo * patch)
            .enumerate()
            .for_each(|(row, out)| g.im2col_row(x, row, out));
        Ok((
            CpuStorage::F32(cols),
            Shape::from((g.n * g.ho * g.wo, patch)),
        ))
    }
}

/// The adjoint of [`Im2Col`]: patch gradients summed back into `[N, H, W, C]`.
struct Col2Im {
    geo: Geometry,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(s, l)?;
        let g = self.geo;
        let patch = g.patch();
        let mut dx = vec![0f32; g.n * g.h * g.w * g.c];
        // Images are independent: one task each, so the sums never race.
        dx.par_chunks_mut(g.h * g.w * g.c)
            .enumerate()
            .for_each(|(n, image)| {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let base = ((n * g.ho + oy) * g.wo + ox) * patch;
                        g.for_each_tap(oy, ox, |tap, pixel| {
                            let src = base + tap * g.c;
                            let dst = pixel * g.c;
                            for (d, &v) in
                                image[dst..dst + g.c].iter_mut().zip(&cols[src..src + g.c])
                            {
                                *d += v;
                            }
                        });
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.h, g.w, g.c))))
    }
}

/// "Output computed elsewhere" (`zoo::precomputed`): forward copies the precomputed
/// convolution, backward computes the weight gradient (patches recomputed from the input
/// rather than kept: 9× the activation for a 3×3 kernel) and the input gradient, each only
/// when needed.
struct DenseConvGrad {
    output: PrecomputedOutput,
    geo: Geometry,
}

impl CustomOp2 for DenseConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.take_cpu()
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = self.geo;
        let c_out = weight.dim(0)?;
        let grad = grad.contiguous()?.reshape((g.n * g.ho * g.wo, c_out))?;
        let dw = if weight.track_op() {
            let cols = columns(&x.detach(), g)?;
            let dw = grad.t()?.matmul(&cols)?;
            let (k, c) = (g.spec.kernel, g.c);
            Some(
                dw.reshape((c_out, k, k, c))?
                    .permute((0, 3, 1, 2))?
                    .contiguous()?,
            )
        } else {
            None
        };
        let dx = if x.track_op() {
            let d_cols = grad.matmul(&weight_matrix(&weight.detach(), g)?)?;
            Some(if g.pointwise() {
                d_cols.reshape(x.shape())?
            } else {
                d_cols.apply_op1_no_bwd(&Col2Im { geo: g })?
            })
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// Depthwise convolution (one k×k filter per channel), computed directly: as a matmul
/// each patch would meet only one weight column.
struct DepthwiseConv {
    geo: Geometry,
}

impl CustomOp2 for DepthwiseConv {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-nhwc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let g = self.geo;
        let c = g.c;
        let mut out = vec![0f32; g.n * g.ho * g.wo * c];
        out.par_chunks_mut(g.wo * c)
            .enumerate()
            .for_each(|(row, out)| g.depthwise_row(x, w, row, out));
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.ho, g.wo, c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w_kkc: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(grad.apply_op2_no_bwd(w_kkc, &DepthwiseInputGrad { geo: self.geo })?)
        } else {
            None
        };
        let dw = if w_kkc.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &DepthwiseWeightGrad { geo: self.geo })?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `dx[n, iy, ix, c] = Σ grad[n, oy, ox, c] · w[ky, kx, c]` over the outputs that read
/// `(iy, ix)`: gathered per input row, so rows never write to each other.
struct DepthwiseInputGrad {
    geo: Geometry,
}

impl CustomOp2 for DepthwiseInputGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (grad, w) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let g = self.geo;
        let (k, c, s, p) = (g.spec.kernel, g.c, g.spec.stride, g.spec.padding);
        // The output coordinate that reads input coordinate `i` through kernel offset `kk`.
        let target = |i: usize, kk: usize, out: usize| -> Option<usize> {
            let t = (i + p).checked_sub(kk)?;
            (t % s == 0 && t / s < out).then_some(t / s)
        };
        let mut dx = vec![0f32; g.n * g.h * g.w * c];
        dx.par_chunks_mut(g.w * c)
            .enumerate()
            .for_each(|(row, dx_row)| {
                let (n, iy) = (row / g.h, row % g.h);
                for ix in 0..g.w {
                    let acc = &mut dx_row[ix * c..(ix + 1) * c];
                    for ky in 0..k {
                        let Some(oy) = target(iy, ky, g.ho) else {
                            continue;
                        };
                        for kx in 0..k {
                            let Some(ox) = target(ix, kx, g.wo) else {
                                continue;
                            };
                            let src = &grad[((n * g.ho + oy) * g.wo + ox) * c..][..c];
                            let wk = &w[(ky * k + kx) * c..][..c];
                            for ((a, &v), &wv) in acc.iter_mut().zip(src).zip(wk) {
                                *a += v * wv;
                            }
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((g.n, g.h, g.w, c))))
    }
}

/// `dw[ky, kx, c] = Σ grad[n, oy, ox, c] · x[n, iy, ix, c]`: one partial sum per part of
/// the output rows, added in order.
struct DepthwiseWeightGrad {
    geo: Geometry,
}

impl CustomOp2 for DepthwiseWeightGrad {
    fn name(&self) -> &'static str {
        "depthwise-conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, grad) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let g = self.geo;
        let (k, c) = (g.spec.kernel, g.c);
        // At most 64 parts of whole output rows, however many threads run them.
        let rows = g.n * g.ho;
        let per_part = rows.div_ceil(64).max(1);
        let dw = ordered_sum(rows.div_ceil(per_part), k * k * c, |part| {
            let mut acc = vec![0f32; k * k * c];
            for row in part * per_part..((part + 1) * per_part).min(rows) {
                let (n, oy) = (row / g.ho, row % g.ho);
                let image = n * g.h * g.w;
                for ox in 0..g.wo {
                    let go = &grad[((n * g.ho + oy) * g.wo + ox) * c..][..c];
                    g.for_each_tap(oy, ox, |tap, pixel| {
                        let src = &x[(image + pixel) * c..][..c];
                        let a = &mut acc[tap * c..][..c];
                        for ((a, &v), &gv) in a.iter_mut().zip(src).zip(go) {
                            *a += v * gv;
                        }
                    });
                }
            }
            acc
        });
        Ok((CpuStorage::F32(dw), Shape::from((k * k, c))))
    }
}

#[cfg(test)]
#[path = "conv_tests.rs"]
mod tests;
