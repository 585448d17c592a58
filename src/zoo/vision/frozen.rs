//! The frozen leading units of a backbone, run image by image with every BatchNorm folded
//! into its convolution.
//!
//! A frozen unit runs in evaluation mode, where BatchNorm is one affine map per channel, so
//! `act(bn(conv(x, W)))` is `act(conv(x, W·scale) + shift)`: one product (or depthwise pass),
//! then the shift, the activation and the block's shortcut in one pass over the output.
//! Run layer by layer over the whole batch, each layer wrote a fresh `[N, H, W,
//! C]` buffer for the convolution, one for BatchNorm and one for a shortcut: at 224 px and
//! 32 images the widest is 154 MB, fresh pages from the kernel every time (glibc maps
//! anything over 32 MB on its own). Here each pool thread takes whole images through the
//! prefix: its buffers are a few MB, reused by the allocator, and the threads never wait
//! for each other between layers. Measured on EfficientNet-Lite0 / Fashion-MNIST at 224 px
//! (`bench/image.py --limit 640 --epochs 2`, alternated): 34.9 and 39.7 training images/s
//! layer by layer, 72.0 and 82.3 folded; peak RSS 565–797 MB against 278–306 MB.

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::conv::{ConvSpec, Geometry};
use super::layers::ConvBn;
use super::norm::Activation;
use crate::zoo::cpu::gemm::{matmul, Threads, View, ViewMut};
use crate::zoo::fused::contiguous_f32;
use crate::zoo::ZooError;

/// One convolution + BatchNorm (evaluation mode) + activation of a frozen unit, folded.
pub(super) struct FoldedConvBn {
    /// Dense: `[C_out, k·k·C_in]` in im2col's patch order `(ky, kx, c)`; depthwise:
    /// `[k·k, C]`. Each output channel already multiplied by its BatchNorm scale.
    weight: Vec<f32>,
    shift: Vec<f32>,
    spec: ConvSpec,
    c_out: usize,
    act: Activation,
}

/// The layers of one block, and whether the block's input is added to its output (after
/// the last layer's activation, as in an inverted-residual block).
pub(super) struct FoldedBlock {
    pub layers: Vec<FoldedConvBn>,
    pub residual: bool,
}

/// `(height, width, channels)` of one image's activations.
type ImageDims = (usize, usize, usize);

impl FoldedConvBn {
    /// Folds the current weights and running statistics of `conv_bn`; `act` follows it.
    pub(super) fn fold(conv_bn: &ConvBn, act: Activation) -> Result<Self, ZooError> {
        let (scale, shift) = conv_bn.bn.eval_scale_shift()?;
        let (scale, shift) = (scale.to_vec1::<f32>()?, shift.to_vec1::<f32>()?);
        let spec = conv_bn.conv.spec;
        let w = conv_bn.conv.weight.tensor().detach();
        let (c_out, per_group, k, _) = w.dims4()?;
        if scale.len() != c_out {
            return Err(ZooError::Config(format!(
                "`{}` has {} BatchNorm channels for {c_out} convolution outputs",
                conv_bn.bn.name,
                scale.len()
            )));
        }
        let weight = if spec.groups == 1 {
            // [C_out, C_in, k, k] → [C_out, k, k, C_in]: a row per output channel.
            let rows = w.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?;
            let patch = per_group * k * k;
            rows.chunks_exact(patch)
                .zip(&scale)
                .flat_map(|(row, &s)| row.iter().map(move |&v| v * s))
                .collect()
        } else {
            // [C, 1, k, k] → [k·k, C]: a row per kernel tap.
            let taps = w
                .reshape((c_out, k * k))?
                .t()?
                .flatten_all()?
                .to_vec1::<f32>()?;
            taps.chunks_exact(c_out)
                .flat_map(|tap| tap.iter().zip(&scale).map(|(&v, &s)| v * s))
                .collect()
        };
        Ok(Self {
            weight,
            shift,
            spec,
            c_out,
            act,
        })
    }

    /// One image `[h, w, C_in]` → its output `[ho, wo, C_out]` (in a buffer from
    /// `scratch`) and `(ho, wo, C_out)`; `residual`, in the output's shape, is added last.
    fn run(
        &self,
        x: &[f32],
        (h, w, c): ImageDims,
        residual: Option<&[f32]>,
        threads: Threads,
        scratch: &mut Scratch,
    ) -> candle_core::Result<(Buffer, ImageDims)> {
        let geo = Geometry::of(&[1, h, w, c], self.spec).map_err(candle_core::Error::wrap)?;
        if x.len() != h * w * c {
            candle_core::bail!("frozen layer: {} values for a {h}x{w}x{c} image", x.len());
        }
        let rows = geo.ho * geo.wo;
        // Every element is written below before it is read: reused buffers need no zeroing.
        let mut y = scratch.take(rows * self.c_out);
        if self.spec.groups == 1 {
            let patch = geo.patch();
            if self.weight.len() != self.c_out * patch {
                candle_core::bail!(
                    "frozen layer: a weight for {patch}-wide patches, input {c} wide"
                );
            }
            let patches = (!geo.pointwise()).then(|| {
                let mut patches = scratch.take(rows * patch);
                for (row, out) in patches.chunks_exact_mut(geo.wo * patch).enumerate() {
                    out.fill(0.0); // the padding positions im2col skips
                    geo.im2col_row(x, row, out);
                }
                patches
            });
            matmul(
                ViewMut::rows(&mut y, rows, self.c_out),
                View::rows(patches.as_deref().unwrap_or(x), rows, patch),
                View::rows(&self.weight, self.c_out, patch).t(),
                1.0,
                false,
                threads,
            )?;
            if let Some(patches) = patches {
                scratch.give(patches);
            }
        } else {
            if c != self.c_out {
                candle_core::bail!(
                    "frozen depthwise layer of {} channels, input {c}",
                    self.c_out
                );
            }
            for (row, out) in y.chunks_exact_mut(geo.wo * c).enumerate() {
                out.fill(0.0);
                geo.depthwise_row(x, &self.weight, row, out);
            }
        }
        if residual.is_some_and(|r| r.len() != y.len()) {
            candle_core::bail!("frozen block: a shortcut of another shape than its output");
        }
        finish(&mut y, &self.shift, self.act, residual);
        Ok((y, (geo.ho, geo.wo, self.c_out)))
    }
}

/// `y = act(y + shift) (+ residual)`, per channel (the last dimension). One loop per
/// activation, so each is branch-free and vectorises.
fn finish(y: &mut [f32], shift: &[f32], act: Activation, residual: Option<&[f32]>) {
    match act {
        Activation::Identity => shift_and(y, shift, |v| v),
        Activation::Relu => shift_and(y, shift, |v| v.max(0.0)),
        Activation::Relu6 => shift_and(y, shift, |v| v.clamp(0.0, 6.0)),
    }
    if let Some(residual) = residual {
        y.iter_mut().zip(residual).for_each(|(v, &r)| *v += r);
    }
}

#[inline(always)]
fn shift_and(y: &mut [f32], shift: &[f32], act: impl Fn(f32) -> f32) {
    for row in y.chunks_exact_mut(shift.len().max(1)) {
        row.iter_mut()
            .zip(shift)
            .for_each(|(v, &b)| *v = act(*v + b));
    }
}

/// Buffers one pool task reuses from image to image: after the first image no layer
/// allocates, and none pays for zeroing memory it overwrites anyway.
#[derive(Default)]
struct Scratch(Vec<Vec<f32>>);

/// A scratch buffer's first `len` values: buffers only ever grow, so handing a large one
/// out for a small layer and back for a large one fills nothing.
struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl Scratch {
    fn take(&mut self, len: usize) -> Buffer {
        let mut data = self.0.pop().unwrap_or_default();
        if data.len() < len {
            data.resize(len, 0.0);
        }
        Buffer { data, len }
    }

    fn give(&mut self, buffer: Buffer) {
        self.0.push(buffer.data);
    }
}

impl std::ops::Deref for Buffer {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// The frozen prefix of a backbone: `[N, H, W, C]` → its last block's output, no graph.
pub(super) struct FrozenPrefix {
    pub blocks: Vec<FoldedBlock>,
}

impl FrozenPrefix {
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        Ok(x.contiguous()?.apply_op1_no_bwd(self)?)
    }

    fn run_image(
        &self,
        image: &[f32],
        dims: ImageDims,
        threads: Threads,
        scratch: &mut Scratch,
    ) -> candle_core::Result<(Vec<f32>, ImageDims)> {
        let (mut current, mut dims) = (None::<Buffer>, dims);
        for block in &self.blocks {
            let input = current.as_deref().unwrap_or(image);
            let (mut output, mut output_dims) = (None::<Buffer>, dims);
            let last = block.layers.len().saturating_sub(1);
            for (i, layer) in block.layers.iter().enumerate() {
                let x = output.as_deref().unwrap_or(input);
                let residual = (block.residual && i == last).then_some(input);
                let (y, y_dims) = layer.run(x, output_dims, residual, threads, scratch)?;
                if let Some(spent) = output.replace(y) {
                    scratch.give(spent);
                }
                output_dims = y_dims;
            }
            if let Some(y) = output {
                if let Some(spent) = current.replace(y) {
                    scratch.give(spent);
                }
                dims = output_dims;
            }
        }
        let out = current.as_deref().unwrap_or(image).to_vec();
        if let Some(spent) = current {
            scratch.give(spent);
        }
        Ok((out, dims))
    }
}

impl CustomOp1 for FrozenPrefix {
    fn name(&self) -> &'static str {
        "frozen-backbone-prefix"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (n, h, w, c) = l.shape().dims4()?;
        let per_image = h * w * c;
        if n == 0 || per_image == 0 {
            candle_core::bail!("frozen prefix: an empty batch {:?}", l.shape().dims());
        }
        // An image per thread when there are enough of them; otherwise each image's
        // products split over the pool.
        let threads = if n >= rayon::current_num_threads() {
            Threads::Single
        } else {
            Threads::Pool
        };
        let Some(batch) = x.get(..n * per_image) else {
            candle_core::bail!(
                "frozen prefix: {} values for {:?}",
                x.len(),
                l.shape().dims()
            );
        };
        let images = batch
            .par_chunks(per_image)
            .map_init(Scratch::default, |scratch, image| {
                self.run_image(image, (h, w, c), threads, scratch)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let (ho, wo, c_out) = images.first().map_or((h, w, c), |(_, d)| *d);
        let mut out = Vec::with_capacity(n * ho * wo * c_out);
        for (y, _) in images {
            out.extend_from_slice(&y);
        }
        Ok((CpuStorage::F32(out), Shape::from((n, ho, wo, c_out))))
    }
}

#[cfg(test)]
#[path = "frozen_tests.rs"]
mod tests;
