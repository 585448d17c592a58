//! A PEFT sequence-classification adapter made elsewhere (peft's `SEQ_CLS` LoRA with its
//! head in `modules_to_save`, or temper's own `format=adapter` download) read as a
//! [`ClassifierAdapter`]'s parts: the LoRA settings come from the factors themselves (their
//! modules and rank) and `lora_alpha`, the label count from the classifier's rows, the label
//! names from `labels.json` beside the files when the registration gave them (else
//! transformers' `LABEL_<i>`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::artifacts::checkpoint;
use crate::artifacts::peft::{LABELS_FILE, PEFT_WEIGHTS_FILE};
use crate::domain::hyperparams::LoraSettings;
use crate::tasks::peft_config::PeftConfig;
use crate::train::TrainError;
use crate::zoo::ClassifierSpec;

/// What a PEFT directory holds of a classifier: its spec, labels and tensors.
pub(crate) struct PeftClassifier {
    pub(crate) spec: ClassifierSpec,
    pub(crate) labels: Vec<String>,
    pub(crate) tensors: HashMap<String, Tensor>,
}

/// The classifier of PEFT directory `dir`, its tensors on `device`.
pub(crate) fn read_peft_classifier(
    dir: &Path,
    device: &Device,
) -> Result<PeftClassifier, TrainError> {
    let invalid = |message: String| TrainError::InvalidData(message);
    let peft = PeftConfig::read(dir, "SEQ_CLS")?;
    if peft.use_rslora || peft.rank_pattern.as_ref().is_some_and(|p| !p.is_empty()) {
        return Err(invalid(
            "rsLoRA and per-module `rank_pattern` are not served for encoders".into(),
        ));
    }
    let tensors = checkpoint::read_safetensors(&dir.join(PEFT_WEIGHTS_FILE), device)
        .map_err(|e| invalid(format!("reading {PEFT_WEIGHTS_FILE}: {e}")))?;
    let mut rank = None;
    let mut targets = Vec::new();
    for (name, tensor) in &tensors {
        let Some(module) = name
            .strip_prefix("base_model.model.")
            .and_then(|n| n.strip_suffix(".lora_A.weight"))
        else {
            continue;
        };
        let r = tensor
            .dim(0)
            .map_err(|e| invalid(format!("`{name}`: {e}")))?;
        if rank.is_some_and(|rank| rank != r) {
            return Err(invalid(format!(
                "`{name}` has rank {r}, another factor {rank:?}: one rank per adapter is served"
            )));
        }
        rank = Some(r);
        targets.push(module.to_string());
    }
    let Some(rank) = rank.filter(|r| *r > 0) else {
        return Err(invalid(format!(
            "{PEFT_WEIGHTS_FILE} holds no LoRA factors"
        )));
    };
    targets.sort();
    let classifier = "base_model.model.classifier.weight";
    let num_labels = tensors
        .get(classifier)
        .ok_or_else(|| {
            invalid(format!(
                "{PEFT_WEIGHTS_FILE} has no `{classifier}`: a sequence-classification adapter saves its head (`modules_to_save`)"
            ))
        })?
        .dim(0)
        .map_err(|e| invalid(format!("`{classifier}`: {e}")))?;
    let labels = read_labels(dir, num_labels)?;
    let spec = ClassifierSpec {
        num_labels,
        lora: Some(LoraSettings {
            rank,
            alpha: peft.lora_alpha,
            dropout: 0.0,
            target_modules: targets,
        }),
        classifier_dropout: Some(0.0),
    };
    Ok(PeftClassifier {
        spec,
        labels,
        tensors,
    })
}

/// The names in `labels.json` (a list of `num_labels` strings), or `LABEL_<i>`.
fn read_labels(dir: &Path, num_labels: usize) -> Result<Vec<String>, TrainError> {
    let path = dir.join(LABELS_FILE);
    if !path.exists() {
        return Ok((0..num_labels).map(|i| format!("LABEL_{i}")).collect());
    }
    let labels: Vec<String> = serde_json::from_slice(&std::fs::read(&path)?)
        .map_err(|e| TrainError::InvalidData(format!("{LABELS_FILE}: {e}")))?;
    if labels.len() != num_labels {
        return Err(TrainError::InvalidData(format!(
            "{} labels for a classifier of {num_labels}",
            labels.len()
        )));
    }
    Ok(labels)
}
