//! timm's Hugging Face `config.json`: the architecture, the classes, and the
//! `pretrained_cfg` that says how images are prepared for it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::zoo::ZooError;

/// The families this build implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    ResNet,
    EfficientNetLite,
}

impl Family {
    /// timm's architecture names this build loads.
    pub fn of(architecture: &str) -> Result<Self, ZooError> {
        match architecture {
            "resnet18" | "resnet26" | "resnet34" | "resnet50" | "resnet101" | "resnet152" => {
                Ok(Family::ResNet)
            }
            "efficientnet_lite0" | "efficientnet_lite1" | "efficientnet_lite2"
            | "efficientnet_lite3" | "efficientnet_lite4" => Ok(Family::EfficientNetLite),
            other => Err(ZooError::Unsupported(format!(
                "image architecture `{other}` (supported: resnet18/26/34/50/101/152, efficientnet_lite0-4)"
            ))),
        }
    }

    /// The name of the final linear layer in timm's layout.
    pub fn classifier_name(self) -> &'static str {
        match self {
            Family::ResNet => "fc",
            Family::EfficientNetLite => "classifier",
        }
    }
}

/// How images are resized, cropped and normalised for the model (timm's data config).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PretrainedCfg {
    /// `[channels, height, width]`.
    #[serde(default = "default_input_size")]
    pub input_size: [usize; 3],
    #[serde(default = "default_mean")]
    pub mean: [f32; 3],
    #[serde(default = "default_std")]
    pub std: [f32; 3],
    #[serde(default = "default_crop_pct")]
    pub crop_pct: f32,
    #[serde(default = "default_interpolation")]
    pub interpolation: String,
}

fn default_input_size() -> [usize; 3] {
    [3, 224, 224]
}
fn default_mean() -> [f32; 3] {
    [0.485, 0.456, 0.406]
}
fn default_std() -> [f32; 3] {
    [0.229, 0.224, 0.225]
}
fn default_crop_pct() -> f32 {
    0.875
}
fn default_interpolation() -> String {
    "bicubic".into()
}

impl Default for PretrainedCfg {
    fn default() -> Self {
        Self {
            input_size: default_input_size(),
            mean: default_mean(),
            std: default_std(),
            crop_pct: default_crop_pct(),
            interpolation: default_interpolation(),
        }
    }
}

/// The fields of timm's `config.json` temper reads; the rest of the file is kept as it is
/// when a fine-tuned model is exported.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct VisionConfig {
    pub architecture: String,
    #[serde(default)]
    pub num_classes: usize,
    #[serde(default)]
    pub label_names: Option<Vec<String>>,
    #[serde(default)]
    pub pretrained_cfg: PretrainedCfg,
}

impl VisionConfig {
    pub fn read(dir: &Path) -> Result<(Self, serde_json::Value), ZooError> {
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)?;
        let config: VisionConfig = serde_json::from_value(raw.clone())?;
        if config.pretrained_cfg.input_size[0] != 3 {
            return Err(ZooError::Config(format!(
                "pretrained_cfg.input_size {:?}: only 3-channel models are supported",
                config.pretrained_cfg.input_size
            )));
        }
        Family::of(&config.architecture)?;
        Ok((config, raw))
    }

    pub fn family(&self) -> Result<Family, ZooError> {
        Family::of(&self.architecture)
    }

    /// Whether `dir` holds a timm image model (`config.json` with an `architecture` key):
    /// how the loader tells it from a transformers directory.
    pub fn is_timm_dir(dir: &Path) -> bool {
        std::fs::read(dir.join("config.json"))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|v| v.get("architecture").is_some_and(|a| a.is_string()))
    }
}
