//! `ImageClassifier`: a pretrained CNN backbone with a new classification head, built for
//! transfer learning: only the units that may ever train hold `Var`s, the head is made
//! from scratch, and each forward says how many of the last units train this time
//! (gradual unfreezing).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::config::{Family, VisionConfig};
use super::efficientnet::{count_stages, efficientnet_units, EfficientNetLite};
use super::layers::{ConvBn, Weights};
use super::memory::{FootprintWalk, UnitFootprint};
use super::pool::global_avg_pool;
use super::resnet::{resnet_units, ResNet};
use super::Role;
use crate::zoo::cpu::dropout::dropout_with_seed;
use crate::zoo::linear::{Param, Pass, TrainLinear};
use crate::zoo::params::NamedVar;
use crate::zoo::ZooError;

/// The new head and how much of the backbone may train: what a checkpoint records to
/// rebuild the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageClassifierSpec {
    pub num_classes: usize,
    /// 0: one linear layer; otherwise `Linear(features, hidden) → ReLU → Dropout → Linear`.
    pub head_hidden: usize,
    pub head_dropout: f64,
    /// How many of the backbone's last units ever train in this run (0: a frozen backbone).
    pub trainable_units: usize,
}

#[derive(Debug, Clone)]
enum Backbone {
    ResNet(ResNet),
    EfficientNetLite(EfficientNetLite),
}

#[derive(Debug, Clone)]
pub struct ImageClassifier {
    pub config: VisionConfig,
    pub family: Family,
    backbone: Backbone,
    n_units: usize,
    /// `(name, layer)`: `fc` / `classifier`, or `.0` and `.3` of the two-layer head.
    head: Vec<(String, TrainLinear)>,
    head_dropout: f64,
}

impl ImageClassifier {
    /// The model in `dir` (timm layout) with a new head for `spec`, initialised from `seed`
    /// like PyTorch's `nn.Linear`.
    pub fn from_pretrained(
        dir: &Path,
        spec: &ImageClassifierSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let (config, _) = VisionConfig::read(dir)?;
        let family = config.family()?;
        let tensors = candle_core::safetensors::load(dir.join("model.safetensors"), device)?;
        let units = unit_prefixes(family, &tensors);
        let n_units = units.len();
        if spec.trainable_units > n_units {
            return Err(ZooError::Config(format!(
                "{} trainable backbone units asked, `{}` has {n_units}",
                spec.trainable_units, config.architecture
            )));
        }
        let trainable_prefixes = units[n_units - spec.trainable_units..].concat();
        let weights = Weights {
            tensors,
            trainable_prefixes,
        };
        let backbone = match family {
            Family::ResNet => Backbone::ResNet(ResNet::load(&weights)?),
            Family::EfficientNetLite => {
                Backbone::EfficientNetLite(EfficientNetLite::load(&weights)?)
            }
        };
        let features = match &backbone {
            Backbone::ResNet(net) => net.num_features()?,
            Backbone::EfficientNetLite(net) => net.num_features()?,
        };
        let head = new_head(family.classifier_name(), features, spec, device, seed)?;
        Ok(Self {
            config,
            family,
            backbone,
            n_units,
            head,
            head_dropout: spec.head_dropout,
        })
    }

    /// How many unfreezing units the backbone in `dir` has, from its tensor names alone.
    pub fn count_units(dir: &Path) -> Result<usize, ZooError> {
        let (config, _) = VisionConfig::read(dir)?;
        // SAFETY: the file is only read, while no one writes it (a base model directory).
        let file = unsafe {
            candle_core::safetensors::MmapedSafetensors::new(dir.join("model.safetensors"))?
        };
        let names: std::collections::HashSet<String> =
            file.tensors().into_iter().map(|(name, _)| name).collect();
        Ok(match config.family()? {
            Family::ResNet => resnet_units().len(),
            Family::EfficientNetLite => {
                efficientnet_units(count_stages(|name| names.contains(name))).len()
            }
        })
    }

    /// Each backbone unit's memory per image at `image_size`, first to last; `generic`: on
    /// the composed ops a GPU runs (see `vision::memory`).
    pub fn footprint(
        &self,
        image_size: usize,
        generic: bool,
    ) -> Result<Vec<UnitFootprint>, ZooError> {
        let mut walk = FootprintWalk::new(image_size, generic);
        match &self.backbone {
            Backbone::ResNet(net) => net.footprint(&mut walk)?,
            Backbone::EfficientNetLite(net) => net.footprint(&mut walk)?,
        }
        Ok(walk.finish())
    }

    /// Whether the leading frozen units run one image at a time (EfficientNet-Lite's folded
    /// prefix, on the CPU kernels only), for the memory estimate.
    pub fn runs_frozen_prefix_per_image(&self, generic: bool) -> bool {
        !generic && matches!(self.backbone, Backbone::EfficientNetLite(_))
    }

    /// The backbone's unfreezing units (stem, stages, …), first to last.
    pub fn n_units(&self) -> usize {
        self.n_units
    }

    /// Logits `[N, classes]` for normalised images `[N, H, W, 3]`. With `train`, the last
    /// `train_units` backbone units and the head train (BatchNorm on batch statistics,
    /// head dropout from `dropout_seed`); everything else runs frozen, in eval mode.
    pub fn forward(
        &self,
        images: &Tensor,
        train_units: usize,
        train: bool,
        dropout_seed: u64,
    ) -> Result<Tensor, ZooError> {
        let mut x = self.features(images, train_units, train)?;
        let last = self.head.len() - 1;
        for (i, (_, layer)) in self.head.iter().enumerate() {
            // Evaluation detaches the head too: no request or validation records a graph.
            let pass = if train { Pass::Train } else { Pass::BaseOnly };
            x = layer.forward_pass(&x, pass)?;
            if i < last {
                x = x.relu()?;
                if train && self.head_dropout > 0.0 {
                    // The mask is a function of the seed: a resumed run draws the
                    // masks the interrupted one would have.
                    x = dropout_with_seed(&x, self.head_dropout as f32, dropout_seed)?;
                }
            }
        }
        Ok(x)
    }

    /// The pooled backbone features `[N, F]` the head reads, units trained as in
    /// [`ImageClassifier::forward`].
    pub fn features(
        &self,
        images: &Tensor,
        train_units: usize,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let first_trainable = self
            .n_units
            .saturating_sub(if train { train_units } else { 0 });
        let roles: Vec<Role> = (0..self.n_units)
            .map(|u| {
                if train && u >= first_trainable {
                    Role::Train
                } else {
                    Role::Frozen
                }
            })
            .collect();
        let features = match &self.backbone {
            Backbone::ResNet(net) => net.features(images, &roles)?,
            Backbone::EfficientNetLite(net) => net.features(images, &roles)?,
        };
        global_avg_pool(&features)
    }

    fn layers(&self) -> Vec<&ConvBn> {
        match &self.backbone {
            Backbone::ResNet(net) => net.layers(),
            Backbone::EfficientNetLite(net) => net.layers(),
        }
    }

    /// The optimizer's tensors: the units that may train, then the head.
    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        let mut out = Vec::new();
        for layer in self.layers() {
            layer.push_vars(&mut out);
        }
        for (name, layer) in &self.head {
            for (suffix, param, decay) in [
                ("weight", layer.weight().ok(), true),
                ("bias", layer.bias(), false),
            ] {
                if let Some(Param::Trainable(var)) = param {
                    out.push(NamedVar {
                        name: format!("{name}.{suffix}"),
                        var: var.clone(),
                        weight_decay: decay,
                        row_grads: None,
                    });
                }
            }
        }
        out
    }

    /// Every BatchNorm's running statistics: checkpointed with the trainable tensors.
    pub fn buffers(&self) -> Vec<NamedVar> {
        let mut out = Vec::new();
        for layer in self.layers() {
            layer.push_buffers(&mut out);
        }
        out
    }

    /// Sets the trainable tensors and the buffers from a checkpoint's tensors.
    pub fn load_state(&self, tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
        let mut all = self.trainable_vars();
        all.extend(self.buffers());
        crate::zoo::params::load_into(&all, tensors)
    }

    /// Serving: every tensor plain, so no request records a graph.
    pub fn freeze_for_inference(&mut self) -> Result<(), ZooError> {
        let layers: Vec<&mut ConvBn> = match &mut self.backbone {
            Backbone::ResNet(net) => net.layers_mut(),
            Backbone::EfficientNetLite(net) => net.layers_mut(),
        };
        layers.into_iter().for_each(ConvBn::freeze);
        for (_, layer) in &mut self.head {
            layer.freeze()?;
        }
        Ok(())
    }

    /// Every tensor under its timm name (the head under its new names), for exports.
    pub fn named_tensors(&self) -> Result<Vec<(String, Tensor)>, ZooError> {
        let mut out = Vec::new();
        for layer in self.layers() {
            out.push((
                format!("{}.weight", layer.conv.name),
                layer.conv.weight.tensor().detach(),
            ));
            let bn = &layer.bn;
            out.push((format!("{}.weight", bn.name), bn.weight.tensor().detach()));
            out.push((format!("{}.bias", bn.name), bn.bias.tensor().detach()));
            out.push((
                format!("{}.running_mean", bn.name),
                bn.running_mean.as_tensor().detach(),
            ));
            out.push((
                format!("{}.running_var", bn.name),
                bn.running_var.as_tensor().detach(),
            ));
        }
        for (name, layer) in &self.head {
            out.push((format!("{name}.weight"), layer.base_weight()?.detach()));
            if let Some(bias) = layer.bias() {
                out.push((format!("{name}.bias"), bias.tensor().detach()));
            }
        }
        Ok(out)
    }
}

/// Each unit's tensor-name prefixes for this family and these weights.
fn unit_prefixes(family: Family, tensors: &HashMap<String, Tensor>) -> Vec<Vec<String>> {
    match family {
        Family::ResNet => resnet_units(),
        Family::EfficientNetLite => {
            efficientnet_units(count_stages(|name| tensors.contains_key(name)))
        }
    }
}

/// The new head: one linear layer named `classifier`, or the recipe's two-layer head
/// named as the `nn.Sequential` indices `classifier.0` / `classifier.3`.
fn new_head(
    classifier: &str,
    features: usize,
    spec: &ImageClassifierSpec,
    device: &Device,
    seed: u64,
) -> Result<Vec<(String, TrainLinear)>, ZooError> {
    if spec.num_classes < 2 {
        return Err(ZooError::Config(format!(
            "an image classifier needs at least 2 classes, got {}",
            spec.num_classes
        )));
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x1a6e_c1a5);
    let mut layers = Vec::new();
    if spec.head_hidden == 0 {
        layers.push((
            classifier.to_string(),
            torch_linear(features, spec.num_classes, &mut rng, device)?,
        ));
    } else {
        layers.push((
            format!("{classifier}.0"),
            torch_linear(features, spec.head_hidden, &mut rng, device)?,
        ));
        layers.push((
            format!("{classifier}.3"),
            torch_linear(spec.head_hidden, spec.num_classes, &mut rng, device)?,
        ));
    }
    Ok(layers)
}

/// A trainable linear layer initialised as `torch.nn.Linear`: weight and bias uniform in
/// ±1/√in.
fn torch_linear(
    input: usize,
    output: usize,
    rng: &mut StdRng,
    device: &Device,
) -> Result<TrainLinear, ZooError> {
    let bound = 1.0 / (input as f32).sqrt();
    let mut uniform =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-bound..bound)).collect() };
    let weight = Tensor::from_vec(uniform(input * output), (output, input), device)?;
    let bias = Tensor::from_vec(uniform(output), output, device)?;
    Ok(TrainLinear::new(
        Param::Trainable(Var::from_tensor(&weight)?),
        Some(Param::Trainable(Var::from_tensor(&bias)?)),
    ))
}

#[cfg(test)]
#[path = "fixture_tests.rs"]
mod fixture_tests;
