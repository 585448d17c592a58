//! The vision ops composed from candle ops that have a backward on every device: the path
//! a GPU takes where the CPU runs the kernels of `conv.rs`, `pool.rs` and `norm_train.rs`
//! (CI proves each equal to its kernel on the CPU with `zoo::fused::with_generic_ops`).
//!
//! Convolutions and the max pool read the input through `k × k` shifted, strided views of
//! the padded activations (channels-last `[N, H, W, C]`): a dense convolution concatenates
//! them into patches and multiplies once, a depthwise one sums them weighted per channel,
//! the max pool takes their element-wise maximum.

use candle_core::{DType, Tensor};

use super::conv::ConvSpec;
use super::norm::Activation;
use crate::zoo::ZooError;

/// `x` padded by `padding` on both sides of H and W with `value`.
fn pad_hw(x: &Tensor, padding: usize, value: f32) -> Result<Tensor, ZooError> {
    if padding == 0 {
        return Ok(x.clone());
    }
    let (n, h, w, c) = x.dims4()?;
    let rows = Tensor::full(value, (n, padding, w, c), x.device())?.to_dtype(x.dtype())?;
    let x = Tensor::cat(&[&rows, x, &rows], 1)?;
    let cols =
        Tensor::full(value, (n, h + 2 * padding, padding, c), x.device())?.to_dtype(x.dtype())?;
    Ok(Tensor::cat(&[&cols, &x, &cols], 2)?)
}

/// Positions `start, start + stride, …` (`count` of them) along `dim` of `x`.
fn strided(
    x: &Tensor,
    dim: usize,
    start: usize,
    stride: usize,
    count: usize,
) -> Result<Tensor, ZooError> {
    if stride == 1 {
        return Ok(x.narrow(dim, start, count)?);
    }
    let index: Vec<u32> = (0..count).map(|i| (start + i * stride) as u32).collect();
    let index = Tensor::from_vec(index, count, x.device())?;
    Ok(x.index_select(&index, dim)?)
}

/// The `k × k` views of the padded input, in `(ky, kx)` order: view `(ky, kx)` holds, at
/// output position `(i, j)`, the input at `(i·s + ky, j·s + kx)`.
fn windows(
    padded: &Tensor,
    kernel: usize,
    stride: usize,
    (ho, wo): (usize, usize),
) -> Result<Vec<Tensor>, ZooError> {
    let mut views = Vec::with_capacity(kernel * kernel);
    for ky in 0..kernel {
        let rows = strided(padded, 1, ky, stride, ho)?;
        for kx in 0..kernel {
            views.push(strided(&rows, 2, kx, stride, wo)?);
        }
    }
    Ok(views)
}

/// `conv2d` (dense or depthwise) from candle ops; `weight` in timm's `[C_out, C_in/groups,
/// k, k]`.
pub(super) fn conv2d(x: &Tensor, weight: &Tensor, spec: ConvSpec) -> Result<Tensor, ZooError> {
    let (n, h, w, c) = x.dims4()?;
    let (ho, wo) = (spec.output_size(h), spec.output_size(w));
    let c_out = weight.dim(0)?;
    let k = spec.kernel;
    let padded = pad_hw(x, spec.padding, 0.0)?;
    let views = windows(&padded, k, spec.stride, (ho, wo))?;
    if spec.groups == 1 {
        // Patches [N·Ho·Wo, k·k·C] in (ky, kx, c) order against the weight in the same order.
        let patches = Tensor::cat(&views, 3)?.reshape((n * ho * wo, k * k * c))?;
        let w_mat = weight.permute((0, 2, 3, 1))?.reshape((c_out, k * k * c))?;
        let out = patches.matmul(&w_mat.t()?)?;
        return Ok(out.reshape((n, ho, wo, c_out))?);
    }
    if spec.groups != c || c_out != c || weight.dim(1)? != 1 {
        return Err(ZooError::Unsupported(format!(
            "grouped convolution with {} groups over {c} channels (only depthwise is supported)",
            spec.groups
        )));
    }
    // Depthwise: Σ over the window of view · that tap's per-channel weight.
    let taps = weight.reshape((c, k * k))?.t()?.contiguous()?;
    let mut sum: Option<Tensor> = None;
    for (tap, view) in views.iter().enumerate() {
        let term = view.broadcast_mul(&taps.get(tap)?)?;
        sum = Some(match sum {
            Some(s) => (s + term)?,
            None => term,
        });
    }
    sum.ok_or_else(|| ZooError::Unsupported("a convolution needs a kernel of size > 0".into()))
}

/// Max pool (PyTorch's: padding is −∞ and never wins) from candle ops.
pub(super) fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor, ZooError> {
    let (_, h, w, _) = x.dims4()?;
    let out = |size: usize| (size + 2 * padding - kernel) / stride + 1;
    let padded = pad_hw(x, padding, f32::NEG_INFINITY)?;
    let views = windows(&padded, kernel, stride, (out(h), out(w)))?;
    let mut max: Option<Tensor> = None;
    for view in views {
        max = Some(match max {
            Some(m) => m.maximum(&view)?,
            None => view,
        });
    }
    max.ok_or_else(|| ZooError::Unsupported("a max pool needs a window of size > 0".into()))
}

/// Training-mode BatchNorm of `x2` `[rows, C]` then `act`, differentiable through the
/// batch statistics as PyTorch's is; returns the output and the batch's mean and biased
/// variance (detached, for the running statistics). Computed in f64, as the CPU kernel sums
/// its statistics: in f32, channels of almost no batch variance (late, small feature maps
/// behind ReLU6) made EfficientNet-Lite's gradients differ by up to 31 % from the kernel's,
/// in f64 by 1e-4.
pub(super) fn batch_norm_train(
    x2: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    eps: f64,
    act: Activation,
) -> Result<(Tensor, Tensor, Tensor), ZooError> {
    let x2 = x2.to_dtype(DType::F64)?;
    let (weight, bias) = (&weight.to_dtype(DType::F64)?, &bias.to_dtype(DType::F64)?);
    let mean = x2.mean_keepdim(0)?;
    let centered = x2.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(0)?;
    let normed = centered.broadcast_div(&(var.clone() + eps)?.sqrt()?)?;
    let y = normed.broadcast_mul(weight)?.broadcast_add(bias)?;
    let mean = mean.squeeze(0)?.detach();
    let var = var.squeeze(0)?.detach();
    let (mean, var) = (mean.to_dtype(DType::F32)?, var.to_dtype(DType::F32)?);
    Ok((act.forward(&y.to_dtype(DType::F32)?)?, mean, var))
}

#[cfg(test)]
#[path = "generic_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "generic_model_tests.rs"]
mod model_tests;
