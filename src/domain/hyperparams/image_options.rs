//! The transfer-learning recipe's knobs for image classification: a frozen backbone with a
//! new head, gradual unfreezing, the optimizer, the image size and augmentation.
//!
//! Like the other task options, a key is `None` when not given; resolved for an image job,
//! every key is set (`image_size` stays `None` when not given: the model's
//! `pretrained_cfg` decides it).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::parse::float_in;
use super::{bad, int_in, HyperparamError};

/// The recipe's head dropout when the head has a hidden layer.
pub const DEFAULT_HEAD_DROPOUT: f64 = 0.5;
/// Unfrozen backbone units learn at this fraction of the head's rate by default.
pub const DEFAULT_BACKBONE_LR_MULTIPLIER: f64 = 0.1;
/// The largest side an image may be trained at.
const MAX_IMAGE_SIZE: u64 = 1024;

/// At the start of `epoch` (1-based), the backbone's last `blocks` units train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfreezeStep {
    pub epoch: usize,
    pub blocks: usize,
}

/// `adamw` (decoupled weight decay, the default) or `adam` (weight decay added to the
/// gradient, as `torch.optim.Adam` does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Adamw,
    Adam,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ImageOptions {
    /// Only the new head trains (until `unfreeze_schedule` says otherwise); `false` trains
    /// the whole backbone from the first step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freeze_backbone: Option<bool>,
    /// 0: the head is one linear layer; N: `Linear(features, N) → ReLU → Dropout → Linear`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hidden: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_dropout: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unfreeze_schedule: Option<Vec<UnfreezeStep>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backbone_lr_multiplier: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerKind>,
    /// Square side the images are trained and served at; `None`: the model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_size: Option<usize>,
    /// RandomResizedCrop + horizontal flip while training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub augment: Option<bool>,
}

/// The request keys, all owned by image classification.
pub(super) const IMAGE_KEYS: [&str; 8] = [
    "freeze_backbone",
    "head_hidden",
    "head_dropout",
    "unfreeze_schedule",
    "backbone_lr_multiplier",
    "optimizer",
    "image_size",
    "augment",
];

fn flag(key: &str, value: &Value) -> Result<bool, HyperparamError> {
    value
        .as_bool()
        .ok_or_else(|| bad(key, format!("`{key}` must be true or false")))
}

impl ImageOptions {
    pub(super) fn parse_key(&mut self, key: &str, value: &Value) -> Result<(), HyperparamError> {
        match key {
            "freeze_backbone" => self.freeze_backbone = Some(flag(key, value)?),
            "augment" => self.augment = Some(flag(key, value)?),
            "head_hidden" => self.head_hidden = Some(int_in(key, value, 0, 65536)?),
            "head_dropout" => self.head_dropout = Some(float_in(key, value, 0.0, 0.95, false)?),
            "backbone_lr_multiplier" => {
                self.backbone_lr_multiplier = Some(float_in(key, value, 0.0, 100.0, true)?)
            }
            "image_size" => self.image_size = Some(int_in(key, value, 32, MAX_IMAGE_SIZE)?),
            "optimizer" => {
                self.optimizer = Some(
                    serde_json::from_value(value.clone())
                        .map_err(|_| bad(key, "`optimizer` must be \"adamw\" or \"adam\""))?,
                )
            }
            "unfreeze_schedule" => self.unfreeze_schedule = Some(parse_schedule(key, value)?),
            _ => return Err(bad(key, format!("Unknown hyperparameter `{key}`"))),
        }
        Ok(())
    }

    pub(super) fn given(&self, key: &str) -> bool {
        match key {
            "freeze_backbone" => self.freeze_backbone.is_some(),
            "head_hidden" => self.head_hidden.is_some(),
            "head_dropout" => self.head_dropout.is_some(),
            "unfreeze_schedule" => self.unfreeze_schedule.is_some(),
            "backbone_lr_multiplier" => self.backbone_lr_multiplier.is_some(),
            "optimizer" => self.optimizer.is_some(),
            "image_size" => self.image_size.is_some(),
            "augment" => self.augment.is_some(),
            _ => false,
        }
    }

    /// The recipe's defaults for every key not given (`image_size` excepted).
    pub fn resolve(&self) -> ImageOptions {
        ImageOptions {
            freeze_backbone: Some(self.freeze_backbone.unwrap_or(true)),
            head_hidden: Some(self.head_hidden.unwrap_or(0)),
            head_dropout: Some(self.head_dropout.unwrap_or(DEFAULT_HEAD_DROPOUT)),
            unfreeze_schedule: Some(self.unfreeze_schedule.clone().unwrap_or_default()),
            backbone_lr_multiplier: Some(
                self.backbone_lr_multiplier
                    .unwrap_or(DEFAULT_BACKBONE_LR_MULTIPLIER),
            ),
            optimizer: Some(self.optimizer.unwrap_or(OptimizerKind::Adamw)),
            image_size: self.image_size,
            augment: Some(self.augment.unwrap_or(true)),
        }
    }

    /// How many of the backbone's last units train during `epoch` (0-based): all of them
    /// (`all_units`) without `freeze_backbone`, else the schedule's latest step so far.
    pub fn trainable_units(&self, epoch: usize, all_units: usize) -> usize {
        if !self.freeze_backbone.unwrap_or(true) {
            return all_units;
        }
        self.unfreeze_schedule
            .iter()
            .flatten()
            .filter(|step| step.epoch <= epoch + 1)
            .map(|step| step.blocks.min(all_units))
            .max()
            .unwrap_or(0)
    }

    /// The most units that ever train in this run.
    pub fn max_trainable_units(&self, n_epochs: usize, all_units: usize) -> usize {
        (0..n_epochs.max(1))
            .map(|epoch| self.trainable_units(epoch, all_units))
            .max()
            .unwrap_or(0)
    }
}

/// `[{"epoch": 2, "blocks": 1}, …]`: epochs from 1, strictly increasing; blocks from 1,
/// never fewer than the step before (unfreezing never freezes again).
fn parse_schedule(key: &str, value: &Value) -> Result<Vec<UnfreezeStep>, HyperparamError> {
    let shape = || {
        bad(
            key,
            "`unfreeze_schedule` must be a list of {\"epoch\": E, \"blocks\": N} objects, e.g. [{\"epoch\": 2, \"blocks\": 1}]",
        )
    };
    let items = value.as_array().ok_or_else(shape)?;
    if items.len() > 64 {
        return Err(bad(key, "`unfreeze_schedule` may have at most 64 steps"));
    }
    let mut steps: Vec<UnfreezeStep> = Vec::new();
    for item in items {
        let object = item.as_object().ok_or_else(shape)?;
        if object.keys().any(|k| k != "epoch" && k != "blocks") {
            return Err(shape());
        }
        let epoch = int_in(
            "unfreeze_schedule.epoch",
            object.get("epoch").ok_or_else(shape)?,
            1,
            10_000,
        )?;
        let blocks = int_in(
            "unfreeze_schedule.blocks",
            object.get("blocks").ok_or_else(shape)?,
            1,
            1000,
        )?;
        if let Some(last) = steps.last() {
            if epoch <= last.epoch || blocks < last.blocks {
                return Err(bad(
                    key,
                    "`unfreeze_schedule` steps must have increasing epochs and never fewer blocks than the step before",
                ));
            }
        }
        steps.push(UnfreezeStep { epoch, blocks });
    }
    Ok(steps)
}

#[cfg(test)]
#[path = "image_options_tests.rs"]
mod tests;
