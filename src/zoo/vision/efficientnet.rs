//! EfficientNet-Lite in timm's layout (`efficientnet_lite0`): `conv_stem`/`bn1` (3×3/2,
//! ReLU6), seven stages `blocks.S.I` of MBConv blocks without squeeze-excite (the first a
//! depthwise-separable block, the rest inverted residuals with expansion), `conv_head`/
//! `bn2` (1×1, ReLU6), `classifier`.
//!
//! Kernel sizes, widths, expansion and the number of blocks per stage are read off the
//! weights; the stage strides are the architecture's ([`STAGE_STRIDES`]), and padding is
//! symmetric `k / 2` as in timm's `efficientnet_lite*` (not the `tf_` variants' "same").

use candle_core::Tensor;

use super::layers::{ConvBn, Weights};
use super::norm::Activation;
use super::Role;
use crate::zoo::params::NamedVar;
use crate::zoo::ZooError;

/// The stride of each stage's first block (timm `_gen_efficientnet_lite` arch_def).
pub const STAGE_STRIDES: [usize; 7] = [1, 2, 2, 2, 1, 2, 1];

#[derive(Debug, Clone)]
pub struct EfficientNetLite {
    stem: ConvBn,
    stages: Vec<Vec<MbBlock>>,
    head: ConvBn,
}

/// One MBConv block: `convs` in order with ReLU6 after all but the last (the projection),
/// plus the identity shortcut when stride is 1 and the width does not change.
#[derive(Debug, Clone)]
struct MbBlock {
    convs: Vec<ConvBn>,
    residual: bool,
}

/// The unfreezing units' tensor-name prefixes, first to last: the stem, each of the
/// `n_stages` stages, the head convolution.
pub fn efficientnet_units(n_stages: usize) -> Vec<Vec<String>> {
    let mut units = vec![vec!["conv_stem.".to_string(), "bn1.".to_string()]];
    units.extend((0..n_stages).map(|s| vec![format!("blocks.{s}.")]));
    units.push(vec!["conv_head.".to_string(), "bn2.".to_string()]);
    units
}

/// How many stages the weights have (`blocks.S.0.conv_dw` present for S = 0, 1, …).
pub fn count_stages(has: impl Fn(&str) -> bool) -> usize {
    (0..)
        .take_while(|s| has(&format!("blocks.{s}.0.conv_dw.weight")))
        .count()
}

impl EfficientNetLite {
    pub fn load(weights: &Weights) -> Result<Self, ZooError> {
        let stem = weights.conv_bn("conv_stem", "bn1", 2, false)?;
        let mut stages = Vec::new();
        while weights.has(&format!("blocks.{}.0.conv_dw.weight", stages.len())) {
            let s = stages.len();
            let stride = *STAGE_STRIDES.get(s).ok_or_else(|| {
                ZooError::Unsupported(format!(
                    "EfficientNet-Lite has {} stages, the weights have more",
                    STAGE_STRIDES.len()
                ))
            })?;
            let mut blocks = Vec::new();
            while weights.has(&format!("blocks.{s}.{}.conv_dw.weight", blocks.len())) {
                let prefix = format!("blocks.{s}.{}", blocks.len());
                let block_stride = if blocks.is_empty() { stride } else { 1 };
                blocks.push(MbBlock::load(weights, &prefix, block_stride)?);
            }
            stages.push(blocks);
        }
        if stages.is_empty() {
            return Err(ZooError::MissingTensor("blocks.0.0.conv_dw.weight".into()));
        }
        let head = weights.conv_bn("conv_head", "bn2", 1, false)?;
        Ok(Self { stem, stages, head })
    }

    pub fn n_stages(&self) -> usize {
        self.stages.len()
    }

    /// `[N, H, W, 3]` → `[N, H/32, W/32, 1280]`; `roles` has one entry per unit of
    /// [`efficientnet_units`].
    pub fn features(&self, x: &Tensor, roles: &[Role]) -> Result<Tensor, ZooError> {
        let mut x = self.stem.forward(x, roles[0], Activation::Relu6)?;
        for (blocks, &role) in self.stages.iter().zip(&roles[1..]) {
            for block in blocks {
                x = block.forward(&x, role)?;
            }
        }
        let head_role = roles[self.stages.len() + 1];
        self.head.forward(&x, head_role, Activation::Relu6)
    }

    pub fn num_features(&self) -> Result<usize, ZooError> {
        self.head.conv.out_channels()
    }

    pub fn layers(&self) -> Vec<&ConvBn> {
        let mut out = vec![&self.stem];
        out.extend(self.stages.iter().flatten().flat_map(|b| b.convs.iter()));
        out.push(&self.head);
        out
    }

    pub fn layers_mut(&mut self) -> Vec<&mut ConvBn> {
        let mut out = vec![&mut self.stem];
        out.extend(
            self.stages
                .iter_mut()
                .flatten()
                .flat_map(|b| b.convs.iter_mut()),
        );
        out.push(&mut self.head);
        out
    }

    pub fn push_vars(&self, out: &mut Vec<NamedVar>) {
        self.layers().into_iter().for_each(|l| l.push_vars(out));
    }
}

impl MbBlock {
    fn load(weights: &Weights, prefix: &str, stride: usize) -> Result<Self, ZooError> {
        let inverted = weights.has(&format!("{prefix}.conv_pwl.weight"));
        let convs = if inverted {
            vec![
                weights.conv_bn(
                    &format!("{prefix}.conv_pw"),
                    &format!("{prefix}.bn1"),
                    1,
                    false,
                )?,
                weights.conv_bn(
                    &format!("{prefix}.conv_dw"),
                    &format!("{prefix}.bn2"),
                    stride,
                    true,
                )?,
                weights.conv_bn(
                    &format!("{prefix}.conv_pwl"),
                    &format!("{prefix}.bn3"),
                    1,
                    false,
                )?,
            ]
        } else {
            vec![
                weights.conv_bn(
                    &format!("{prefix}.conv_dw"),
                    &format!("{prefix}.bn1"),
                    stride,
                    true,
                )?,
                weights.conv_bn(
                    &format!("{prefix}.conv_pw"),
                    &format!("{prefix}.bn2"),
                    1,
                    false,
                )?,
            ]
        };
        let in_channels = if inverted {
            weights.get(&format!("{prefix}.conv_pw.weight"))?.dim(1)?
        } else {
            weights.get(&format!("{prefix}.conv_dw.weight"))?.dim(0)?
        };
        let out_channels = convs
            .last()
            .map(|c| c.conv.out_channels())
            .transpose()?
            .unwrap_or(0);
        Ok(Self {
            convs,
            residual: stride == 1 && in_channels == out_channels,
        })
    }

    fn forward(&self, x: &Tensor, role: Role) -> Result<Tensor, ZooError> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        for (i, conv) in self.convs.iter().enumerate() {
            let act = if i < last {
                Activation::Relu6
            } else {
                Activation::Identity
            };
            h = conv.forward(&h, role, act)?;
        }
        Ok(if self.residual { (h + x)? } else { h })
    }
}
