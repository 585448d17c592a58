//! The ResNet family in timm's (and torchvision's) layout: `conv1`/`bn1` stem, 3×3 stride-2
//! max pool, four stages `layer1..layer4` of BasicBlocks (resnet18/34) or Bottlenecks
//! (resnet50/101, stride on the 3×3 conv as in torchvision's v1.5), `fc`.
//!
//! The depth, widths and block type are read off the weights, so any member of the family
//! (and the narrow random ones the parity fixtures use) loads from its tensors alone.

use candle_core::Tensor;

use super::layers::{ConvBn, Weights};
use super::memory::FootprintWalk;
use super::norm::Activation;
use super::pool::max_pool2d;
use super::Role;
use crate::zoo::params::NamedVar;
use crate::zoo::ZooError;

#[derive(Debug, Clone)]
pub struct ResNet {
    stem: ConvBn,
    /// `layer1..layer4`, each a list of residual blocks.
    stages: Vec<Vec<ResidualBlock>>,
}

#[derive(Debug, Clone)]
struct ResidualBlock {
    /// conv1/bn1, conv2/bn2 (and conv3/bn3 for a Bottleneck), ReLU between them.
    convs: Vec<ConvBn>,
    /// `downsample.0` / `downsample.1` when the shape changes.
    downsample: Option<ConvBn>,
}

/// The stages, in order.
const STAGES: [&str; 4] = ["layer1", "layer2", "layer3", "layer4"];

/// The unfreezing units' tensor-name prefixes, first to last: the stem, then each stage.
pub fn resnet_units() -> Vec<Vec<String>> {
    let mut units = vec![vec!["conv1.".to_string(), "bn1.".to_string()]];
    units.extend(STAGES.iter().map(|s| vec![format!("{s}.")]));
    units
}

impl ResNet {
    pub fn load(weights: &Weights) -> Result<Self, ZooError> {
        let mut stem = weights.conv_bn("conv1", "bn1", 2, false)?;
        // timm's stem is 7×7/2 with padding 3: kernel / 2 already says so.
        stem.conv.spec.stride = 2;
        let mut stages = Vec::new();
        for (index, unit) in STAGES.iter().enumerate() {
            let stride = if index == 0 { 1 } else { 2 };
            let mut blocks = Vec::new();
            while weights.has(&format!("{unit}.{}.conv1.weight", blocks.len())) {
                let prefix = format!("{unit}.{}", blocks.len());
                let first_stride = if blocks.is_empty() { stride } else { 1 };
                blocks.push(ResidualBlock::load(weights, &prefix, first_stride)?);
            }
            if blocks.is_empty() {
                return Err(ZooError::MissingTensor(format!("{unit}.0.conv1.weight")));
            }
            stages.push(blocks);
        }
        Ok(Self { stem, stages })
    }

    /// `[N, H, W, 3]` → pooled-ready features `[N, H/32, W/32, C]`; `roles` has one entry
    /// per unit of [`resnet_units`].
    pub fn features(&self, x: &Tensor, roles: &[Role]) -> Result<Tensor, ZooError> {
        let x = self.stem.forward(x, roles[0], Activation::Relu)?;
        let mut x = max_pool2d(&x, 3, 2, 1)?;
        for (blocks, &role) in self.stages.iter().zip(&roles[1..]) {
            for block in blocks {
                x = block.forward(&x, role)?;
            }
        }
        Ok(x)
    }

    /// Each unit's footprint, as [`ResNet::features`] runs it.
    pub(super) fn footprint(&self, walk: &mut FootprintWalk) -> Result<(), ZooError> {
        walk.begin_unit();
        walk.conv_bn(&self.stem, Activation::Relu)?;
        walk.max_pool(3, 2, 1)?;
        for blocks in &self.stages {
            walk.begin_unit();
            for block in blocks {
                block.footprint(walk)?;
            }
        }
        Ok(())
    }

    pub fn num_features(&self) -> Result<usize, ZooError> {
        let last = self
            .stages
            .last()
            .and_then(|blocks| blocks.last())
            .and_then(|block| block.convs.last())
            .ok_or_else(|| ZooError::Config("a ResNet without blocks".into()))?;
        last.conv.out_channels()
    }

    /// Every conv + BatchNorm pair, stem first.
    pub fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut out = vec![&mut self.stem];
        for block in self.stages.iter_mut().flatten() {
            out.extend(block.convs.iter_mut());
            out.extend(block.downsample.iter_mut());
        }
        out
    }

    pub fn layers(&self) -> Vec<&ConvBn> {
        let mut out = vec![&self.stem];
        for block in self.stages.iter().flatten() {
            out.extend(block.convs.iter());
            out.extend(block.downsample.iter());
        }
        out
    }

    pub fn push_vars(&self, out: &mut Vec<NamedVar>) {
        self.layers().into_iter().for_each(|l| l.push_vars(out));
    }
}

impl ResidualBlock {
    fn load(weights: &Weights, prefix: &str, stride: usize) -> Result<Self, ZooError> {
        let bottleneck = weights.has(&format!("{prefix}.conv3.weight"));
        let n_convs = if bottleneck { 3 } else { 2 };
        let convs = (1..=n_convs)
            .map(|i| {
                // BasicBlock strides its first 3×3 conv; a Bottleneck its middle 3×3 one.
                let strided = if bottleneck { i == 2 } else { i == 1 };
                let conv_stride = if strided { stride } else { 1 };
                weights.conv_bn(
                    &format!("{prefix}.conv{i}"),
                    &format!("{prefix}.bn{i}"),
                    conv_stride,
                    false,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let downsample = if weights.has(&format!("{prefix}.downsample.0.weight")) {
            Some(weights.conv_bn(
                &format!("{prefix}.downsample.0"),
                &format!("{prefix}.downsample.1"),
                stride,
                false,
            )?)
        } else {
            None
        };
        Ok(Self { convs, downsample })
    }

    /// ReLU after every convolution but the last (the sum's ReLU comes after the shortcut).
    fn activation(&self, i: usize) -> Activation {
        if i + 1 < self.convs.len() {
            Activation::Relu
        } else {
            Activation::Identity
        }
    }

    fn footprint(&self, walk: &mut FootprintWalk) -> Result<(), ZooError> {
        let input = walk.shape();
        for (i, conv) in self.convs.iter().enumerate() {
            walk.conv_bn(conv, self.activation(i))?;
        }
        if let Some(down) = &self.downsample {
            let out = walk.shape();
            walk.set_shape(input);
            walk.conv_bn(down, Activation::Identity)?;
            walk.set_shape(out);
        }
        walk.residual(true)
    }

    fn forward(&self, x: &Tensor, role: Role) -> Result<Tensor, ZooError> {
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h, role, self.activation(i))?;
        }
        let shortcut = match &self.downsample {
            Some(down) => down.forward(x, role, Activation::Identity)?,
            None => x.clone(),
        };
        Ok((h + shortcut)?.relu()?)
    }
}
