//! How much memory one image takes in a training step, read off the backbone's layers at
//! the job's image size: what `train::memory::check_image_job` multiplies by the batch.
//!
//! Counted in f32 values per image and unit of the backbone ([`UnitFootprint`]):
//! - `saved`, what a trained unit keeps for backward. Per convolution + BatchNorm on the
//!   fused CPU kernels: the convolution's output and BatchNorm's (the activation is fused
//!   into it). On the composed ops a GPU runs (`generic.rs`): the convolution's output, a
//!   dense convolution's patches or a depthwise one's k² weighted views and their running
//!   sums, BatchNorm's statistics pass in f64 (its input, centred, squared, normalised,
//!   scaled and shifted copies, each two f32s wide, and the cast back: 13 outputs' worth),
//!   the activation's outputs (ReLU6 is a clamp, two ops: two), the zero-padded input and,
//!   for a strided convolution, the gathered copies its views are read from.
//! - `working`, the most one layer of the unit holds at once beyond that, trained or not:
//!   its input and output and, for a dense convolution, its patches twice (backward
//!   recomputes them and makes their gradient); on the composed ops a depthwise
//!   convolution's backward also holds one gradient per weighted view.

use super::conv::ConvSpec;
use super::layers::ConvBn;
use super::norm::Activation;
use crate::zoo::ZooError;

/// f32 values one image needs in one unit of the backbone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UnitFootprint {
    /// Kept for backward while the unit trains.
    pub saved: u64,
    /// Live at once in the unit's largest layer, trained or frozen.
    pub working: u64,
}

/// BatchNorm's f64 statistics pass on the composed ops, in outputs' worth of f32 values.
const GENERIC_BATCH_NORM_OUTPUTS: u64 = 13;

/// A walk through the backbone's layers in forward order, following the feature map's
/// shape `(height, width, channels)` and adding up each unit's footprint.
pub(super) struct FootprintWalk {
    generic: bool,
    shape: (usize, usize, usize),
    units: Vec<UnitFootprint>,
}

impl FootprintWalk {
    /// From a square RGB image of `image_size`; `generic`: the composed ops (GPUs).
    pub(super) fn new(image_size: usize, generic: bool) -> Self {
        Self {
            generic,
            shape: (image_size, image_size, 3),
            units: Vec::new(),
        }
    }

    /// What follows belongs to the next unit.
    pub(super) fn begin_unit(&mut self) {
        self.units.push(UnitFootprint::default());
    }

    pub(super) fn shape(&self) -> (usize, usize, usize) {
        self.shape
    }

    /// Continues from `shape` (a shortcut branch reads the block's input).
    pub(super) fn set_shape(&mut self, shape: (usize, usize, usize)) {
        self.shape = shape;
    }

    fn add(&mut self, saved: u64, working: u64) -> Result<(), ZooError> {
        let unit = self
            .units
            .last_mut()
            .ok_or_else(|| ZooError::Config("a layer before the backbone's first unit".into()))?;
        unit.saved += saved;
        unit.working = unit.working.max(working);
        Ok(())
    }

    /// A convolution, its BatchNorm and `act`.
    pub(super) fn conv_bn(&mut self, layer: &ConvBn, act: Activation) -> Result<(), ZooError> {
        let (h, w, c_in) = self.shape;
        let spec: ConvSpec = layer.conv.spec;
        let c_out = layer.conv.out_channels()?;
        let (ho, wo) = (spec.output_size(h), spec.output_size(w));
        let input = (h * w * c_in) as u64;
        let out = (ho * wo * c_out) as u64;
        let taps = (spec.kernel * spec.kernel) as u64;
        let dense = spec.groups == 1;
        let pointwise = dense && spec.kernel == 1 && spec.stride == 1;
        let patches = if dense && !pointwise {
            taps * (ho * wo * c_in) as u64
        } else {
            0
        };
        let activation = match act {
            Activation::Identity => 0,
            Activation::Relu => 1,
            Activation::Relu6 => 2,
        };
        let (saved, working) = if self.generic {
            let depthwise_views = if dense { 0 } else { 2 * taps * out };
            // The zero-padded copy of the input, and for a strided convolution the copies
            // its views are gathered into (k row blocks, then k² windows).
            let (hp, wp) = (h + 2 * spec.padding, w + 2 * spec.padding);
            let padded = if spec.padding > 0 {
                (hp * wp * c_in) as u64
            } else {
                0
            };
            let gathered = if spec.stride > 1 {
                spec.kernel as u64 * (ho * wp * c_in) as u64 + taps * (ho * wo * c_in) as u64
            } else {
                0
            };
            let saved = (1 + GENERIC_BATCH_NORM_OUTPUTS + activation) * out
                + patches
                + depthwise_views
                + padded
                + gathered;
            // Backward holds a gradient per weighted view of a depthwise convolution.
            (saved, input + out + 2 * patches + depthwise_views / 2)
        } else {
            (2 * out, input + out + 2 * patches)
        };
        self.shape = (ho, wo, c_out);
        self.add(saved, working)
    }

    /// The residual sum (and the ReLU after it, in a ResNet).
    pub(super) fn residual(&mut self, relu: bool) -> Result<(), ZooError> {
        let (h, w, c) = self.shape;
        let out = (h * w * c) as u64;
        self.add(out * (1 + u64::from(relu)), 2 * out)
    }

    /// ResNet's max pool after the stem: its output, and on the composed ops the running
    /// maximum of each of the k² views.
    pub(super) fn max_pool(
        &mut self,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<(), ZooError> {
        let (h, w, c) = self.shape;
        let size = |s: usize| (s + 2 * padding).saturating_sub(kernel) / stride + 1;
        let (ho, wo) = (size(h), size(w));
        let out = (ho * wo * c) as u64;
        let views = if self.generic {
            (kernel * kernel) as u64
        } else {
            1
        };
        self.shape = (ho, wo, c);
        self.add(views * out, (h * w * c) as u64 + out)
    }

    pub(super) fn finish(self) -> Vec<UnitFootprint> {
        self.units
    }
}

#[cfg(test)]
#[path = "memory_tests.rs"]
mod tests;
