//! `SequenceClassifier`: encoder + Hugging Face style sequence-classification head.

use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::path::Path;

use super::{EncodedBatch, ZooError};
use crate::domain::hyperparams::LoraSettings;

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassifierSpec {
    pub num_labels: usize,
    /// `Some` with rank > 0: LoRA; `None`: full fine-tuning.
    pub lora: Option<LoraSettings>,
    /// Overrides the config's classifier dropout.
    pub classifier_dropout: Option<f64>,
}

/// A trainable tensor with its checkpoint name.
#[derive(Debug, Clone)]
pub struct NamedVar {
    pub name: String,
    pub var: Var,
    /// False for biases and LayerNorm weights.
    pub weight_decay: bool,
}

pub struct SequenceClassifier {
    vars: Vec<NamedVar>,
}

impl SequenceClassifier {
    pub fn from_pretrained(
        _base_dir: &Path,
        _spec: &ClassifierSpec,
        _device: &Device,
        _seed: u64,
    ) -> Result<Self, ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn forward(&self, _batch: &EncodedBatch, _train: bool) -> Result<Tensor, ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        self.vars.clone()
    }

    pub fn trainable_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn load_trainable(&self, _tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn merge_lora(&mut self) -> Result<(), ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn export_merged(
        &self,
        _base_dir: &Path,
        _labels: &[String],
        _out_dir: &Path,
    ) -> Result<(), ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn export_adapter(&self, _base_model_id: &str, _out_dir: &Path) -> Result<(), ZooError> {
        Err(ZooError::Unsupported("not implemented yet".into()))
    }

    pub fn parameter_bytes(&self) -> usize {
        0
    }
}
