//! EfficientNet-Lite in timm's layout (`efficientnet_lite0`): `conv_stem`/`bn1` (3×3/2,
//! ReLU6), seven stages `blocks.S.I` of MBConv blocks without squeeze-excite (the first a
//! depthwise-separable block, the rest inverted residuals with expansion), `conv_head`/
//! `bn2` (1×1, ReLU6), `classifier`.
//!
//! Kernel sizes, widths, expansion and the number of blocks per stage are read off the
//! weights; the stage strides are the architecture's ([`STAGE_STRIDES`]), and padding is
//! symmetric `k / 2` as in timm's `efficientnet_lite*` (not the `tf_` variants' "same").

use candle_core::Tensor;

use super::frozen::{FoldedBlock, FoldedConvBn, FrozenPrefix};
use super::layers::{ConvBn, Weights};
use super::memory::FootprintWalk;
use super::norm::Activation;
use super::Role;
use crate::zoo::fused::uses_fused_kernels;
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
    /// [`efficientnet_units`]. The leading frozen units of an untracked CPU f32 input run
    /// folded, image by image ([`FrozenPrefix`]); the rest layer by layer.
    pub fn features(&self, x: &Tensor, roles: &[Role]) -> Result<Tensor, ZooError> {
        self.check_roles(roles)?;
        let frozen = if x.track_op() || !uses_fused_kernels(x) {
            0
        } else {
            roles.iter().take_while(|&&r| r == Role::Frozen).count()
        };
        let n_units = roles.len();
        if frozen == 0 {
            return self.run_units(x, roles, 0..n_units);
        }
        let prefix = self.frozen_prefix(frozen)?.forward(x)?;
        self.run_units(&prefix, roles, frozen..n_units)
    }

    /// `units` layer by layer, `x` being the first one's input.
    pub(super) fn run_units(
        &self,
        x: &Tensor,
        roles: &[Role],
        units: std::ops::Range<usize>,
    ) -> Result<Tensor, ZooError> {
        self.check_roles(roles)?;
        let mut x = x.clone();
        for (unit, &role) in roles.iter().enumerate().take(units.end).skip(units.start) {
            x = if unit == 0 {
                self.stem.forward(&x, role, Activation::Relu6)?
            } else if let Some(blocks) = self.stages.get(unit - 1) {
                blocks
                    .iter()
                    .try_fold(x, |x, block| block.forward(&x, role))?
            } else {
                self.head.forward(&x, role, Activation::Relu6)?
            };
        }
        Ok(x)
    }

    fn check_roles(&self, roles: &[Role]) -> Result<(), ZooError> {
        let n_units = self.stages.len() + 2;
        if roles.len() != n_units {
            return Err(ZooError::Config(format!(
                "{} unit roles for the {n_units} units of this EfficientNet-Lite",
                roles.len()
            )));
        }
        Ok(())
    }

    /// The first `units` units folded for evaluation mode.
    pub(super) fn frozen_prefix(&self, units: usize) -> Result<FrozenPrefix, ZooError> {
        let mut blocks = vec![FoldedBlock {
            layers: vec![FoldedConvBn::fold(&self.stem, Activation::Relu6)?],
            residual: false,
        }];
        for block in self.stages.iter().take(units - 1).flatten() {
            blocks.push(block.folded()?);
        }
        if units == self.stages.len() + 2 {
            blocks.push(FoldedBlock {
                layers: vec![FoldedConvBn::fold(&self.head, Activation::Relu6)?],
                residual: false,
            });
        }
        Ok(FrozenPrefix { blocks })
    }

    /// Each unit's footprint, as [`EfficientNetLite::run_units`] runs it.
    pub(super) fn footprint(&self, walk: &mut FootprintWalk) -> Result<(), ZooError> {
        walk.begin_unit();
        walk.conv_bn(&self.stem, Activation::Relu6)?;
        for blocks in &self.stages {
            walk.begin_unit();
            for block in blocks {
                for (i, conv) in block.convs.iter().enumerate() {
                    walk.conv_bn(conv, block.activation(i))?;
                }
                if block.residual {
                    walk.residual(false)?;
                }
            }
        }
        walk.begin_unit();
        walk.conv_bn(&self.head, Activation::Relu6)
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

    /// ReLU6 after every convolution but the last (the linear projection).
    fn activation(&self, i: usize) -> Activation {
        if i + 1 < self.convs.len() {
            Activation::Relu6
        } else {
            Activation::Identity
        }
    }

    fn forward(&self, x: &Tensor, role: Role) -> Result<Tensor, ZooError> {
        let mut h = x.clone();
        for (i, conv) in self.convs.iter().enumerate() {
            h = conv.forward(&h, role, self.activation(i))?;
        }
        Ok(if self.residual { (h + x)? } else { h })
    }

    fn folded(&self) -> Result<FoldedBlock, ZooError> {
        let layers = self
            .convs
            .iter()
            .enumerate()
            .map(|(i, conv)| FoldedConvBn::fold(conv, self.activation(i)))
            .collect::<Result<_, _>>()?;
        Ok(FoldedBlock {
            layers,
            residual: self.residual,
        })
    }
}
