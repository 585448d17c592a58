//! Pooling over channels-last activations: ResNet's 3×3 stride-2 max pool after the stem,
//! and the global average pool before every classifier.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::zoo::fused::contiguous_f32;
use crate::zoo::ZooError;

/// `[N, H, W, C]` → `[N, C]`, the mean over all positions.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor, ZooError> {
    let (n, h, w, c) = x.dims4()?;
    Ok(x.contiguous()?.reshape((n, h * w, c))?.mean(1)?)
}

/// Max pool with a square window, stride and padding (padding never wins: PyTorch pads
/// with −∞).
pub fn max_pool2d(
    x: &Tensor,
    kernel: usize,
    stride: usize,
    padding: usize,
) -> Result<Tensor, ZooError> {
    let (n, h, w, c) = x.dims4()?;
    if h + 2 * padding < kernel || w + 2 * padding < kernel || padding * 2 > kernel {
        return Err(ZooError::Unsupported(format!(
            "max pool {kernel}x{kernel} (padding {padding}) does not fit a {h}x{w} input"
        )));
    }
    if !crate::zoo::fused::uses_fused_kernels(x) {
        return super::generic::max_pool2d(x, kernel, stride, padding);
    }
    let pool = MaxPool {
        dims: [n, h, w, c],
        kernel,
        stride,
        padding,
    };
    Ok(x.contiguous()?.apply_op1(pool)?)
}

#[derive(Clone, Copy)]
struct MaxPool {
    dims: [usize; 4],
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl MaxPool {
    fn out_size(&self, size: usize) -> usize {
        (size + 2 * self.padding - self.kernel) / self.stride + 1
    }

    /// The window's input rows (or columns) for output coordinate `o`.
    fn window(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let start = (o * self.stride).saturating_sub(self.padding);
        let end = (o * self.stride + self.kernel - self.padding).min(size);
        start..end
    }

    /// For each output value, the flat input index of its maximum (the first one on ties,
    /// as PyTorch picks).
    fn argmax(&self, x: &[f32]) -> Vec<usize> {
        let [n, h, w, c] = self.dims;
        let (ho, wo) = (self.out_size(h), self.out_size(w));
        let mut idx = vec![0usize; n * ho * wo * c];
        idx.par_chunks_mut(wo * c)
            .enumerate()
            .for_each(|(row, out)| {
                let (img, oy) = (row / ho, row % ho);
                for ox in 0..wo {
                    for ch in 0..c {
                        let mut best = (f32::NEG_INFINITY, usize::MAX);
                        for iy in self.window(oy, h) {
                            for ix in self.window(ox, w) {
                                let at = ((img * h + iy) * w + ix) * c + ch;
                                if x[at] > best.0 || best.1 == usize::MAX {
                                    best = (x[at], at);
                                }
                            }
                        }
                        out[ox * c + ch] = best.1;
                    }
                }
            });
        idx
    }
}

impl CustomOp1 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d-nhwc"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let [n, h, w, c] = self.dims;
        let out = self.argmax(x).into_iter().map(|i| x[i]).collect();
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.out_size(h), self.out_size(w), c)),
        ))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(&grad.contiguous()?, self)?))
    }
}

/// The max pool's backward: each output gradient goes to its window's maximum (recomputed
/// from the input instead of keeping the indices).
impl CustomOp2 for MaxPool {
    fn name(&self) -> &'static str {
        "max-pool2d-nhwc-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, grad) = (contiguous_f32(s1, l1)?, contiguous_f32(s2, l2)?);
        let mut dx = vec![0f32; x.len()];
        for (at, g) in self.argmax(x).into_iter().zip(grad) {
            dx[at] += g;
        }
        Ok((CpuStorage::F32(dx), l1.shape().clone()))
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
