//! vision: CNN backbones in timm's layout, built for transfer learning.
//!
//! Activations are channels-last (`[N, H, W, C]`) throughout: a 1×1 convolution is one
//! matmul and the per-channel loops run over contiguous memory. Weights keep timm's
//! layout and names, so checkpoints and exports are timm's tensors.
//!
//! - [`conv`]: dense and depthwise convolution with gradients only where needed.
//! - [`norm`]: BatchNorm with running statistics, training and evaluation modes.
//! - `generic`: the same ops from candle ops, for GPUs (and the CPU's generic path).
//! - `frozen`: the leading frozen units, BatchNorm folded, run image by image.
//! - [`pool`]: max pool and global average pool.
//! - [`layers`]: conv + BatchNorm, the pretrained tensor map, ReLU6.
//! - [`memory`]: a training step's memory per image, from the layers' shapes.
//! - [`resnet`], [`efficientnet`]: the two families.
//! - [`config`]: timm's `config.json` and `pretrained_cfg`.
//! - [`prep`]: `ImagePrep`, resize / crop / normalise (and training augmentation).
//! - [`model`]: `ImageClassifier`, a backbone with a new head and gradual unfreezing.

pub mod config;
pub mod conv;
pub mod efficientnet;
mod frozen;
mod generic;
pub mod layers;
pub mod memory;
pub mod model;
pub mod norm;
mod norm_train;
pub mod pool;
pub mod prep;
pub mod resnet;

pub use config::{Family, PretrainedCfg, VisionConfig};
pub use model::{ImageClassifier, ImageClassifierSpec};
pub use prep::ImagePrep;

/// What one unit of the backbone does in a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Detached weights, BatchNorm on running statistics: no graph, no gradient.
    Frozen,
    /// Tracked weights, BatchNorm on batch statistics (running ones updated).
    Train,
}

#[cfg(test)]
mod real_weights_tests;
