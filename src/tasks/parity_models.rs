//! The tiny exported models behind the transformers parity fixtures
//! (`tests/fixtures/{token,qa}_tiny.json`): a tiny BERT and a tiny DistilBERT, each with a
//! token-classification head and a QA head, exported as merged Hugging Face directories,
//! plus LoRA runs on the BERT exported as PEFT adapters over its base. Deterministic (seed
//! [`PARITY_SEED`]): `cargo run --release --example write_parity_models -- DIR` writes them
//! for `scripts/make_{token,qa}_fixture.py`, and the fixture tests write the same bytes again
//! to compare temper with what transformers computed on them.
//!
//! The heads are seeded, not trained; their weights are scaled up (and their biases and the
//! LoRA `B` matrices, zero when new, made random) so that every arg-max wins by a margin far
//! above the float noise between two implementations, and so that an adapter that did not
//! load would change every logit.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::question_answering::{QaModelSpec, QuestionAnsweringModel};
use super::token_classification::{TokenClassifier, TokenClassifierSpec};
use crate::domain::hyperparams::LoraSettings;
use crate::zoo::testing::{write_tiny_bert, write_tiny_distilbert};
use crate::zoo::{NamedVar, TextTokenizer, ZooError};

pub const PARITY_SEED: u64 = 7;

/// BIO tags over two entity types, `O` first as temper orders a label set.
pub const PARITY_LABELS: [&str; 5] = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"];

/// The heads' N(0, 0.02) weights times this: logits with a standard deviation near 3.
const HEAD_SCALE: f64 = 25.0;
/// Half-width of the uniform head biases.
const HEAD_BIAS: f32 = 1.0;
/// Half-width of the uniform LoRA `B` entries.
const LORA_B: f32 = 0.5;

/// The fixtures' LoRA runs: rank 4 on PEFT's default targets (`query`, `value`).
pub fn parity_lora() -> LoraSettings {
    LoraSettings {
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParityEncoder {
    Bert,
    DistilBert,
}

impl ParityEncoder {
    pub const ALL: [Self; 2] = [Self::Bert, Self::DistilBert];

    fn name(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::DistilBert => "distilbert",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParityTask {
    TokenClassification,
    QuestionAnswering,
}

/// One exported model, as `manifest.json` lists it for the fixture scripts; paths are
/// relative to the directory the models were written into.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParityModel {
    /// The fixture's key, e.g. `bert-token` or `bert-qa-lora`.
    pub name: String,
    pub task: ParityTask,
    pub encoder: ParityEncoder,
    /// The merged directory, or the base model an adapter applies to.
    pub model_dir: PathBuf,
    /// A PEFT adapter over `model_dir`.
    pub adapter_dir: Option<PathBuf>,
    /// Token classification's labels, id = index (empty for QA).
    pub labels: Vec<String>,
}

/// Every model of the fixtures: merged token and QA models of both encoders, and LoRA
/// adapters of both tasks over the BERT.
pub fn parity_models() -> Vec<ParityModel> {
    let mut out = Vec::new();
    let labels: Vec<String> = PARITY_LABELS.iter().map(|s| s.to_string()).collect();
    for encoder in ParityEncoder::ALL {
        let base = PathBuf::from(format!("{}-base", encoder.name()));
        for (task, suffix, task_labels) in [
            (ParityTask::TokenClassification, "token", labels.clone()),
            (ParityTask::QuestionAnswering, "qa", Vec::new()),
        ] {
            let name = format!("{}-{suffix}", encoder.name());
            out.push(ParityModel {
                model_dir: PathBuf::from(&name),
                name: name.clone(),
                task,
                encoder,
                adapter_dir: None,
                labels: task_labels.clone(),
            });
            if encoder == ParityEncoder::Bert {
                let name = format!("{name}-lora");
                out.push(ParityModel {
                    model_dir: base.clone(),
                    adapter_dir: Some(PathBuf::from(&name)),
                    name,
                    task,
                    encoder,
                    labels: task_labels,
                });
            }
        }
    }
    out
}

/// The base encoder: the tiny random BERT or DistilBERT of `zoo::testing`, its tokenizer
/// given BERT's WordPiece decoder (as real BERT checkpoints have; the pipeline decodes an
/// entity's sub-words with it).
pub fn write_parity_base(dir: &Path, encoder: ParityEncoder) -> Result<(), ZooError> {
    let written = match encoder {
        ParityEncoder::Bert => write_tiny_bert(dir, PARITY_SEED),
        ParityEncoder::DistilBert => write_tiny_distilbert(dir, PARITY_SEED),
    };
    written.map_err(|e| ZooError::Unsupported(format!("tiny {}: {e}", encoder.name())))?;
    let path = dir.join("tokenizer.json");
    let mut tokenizer = TextTokenizer::from_file(&path)?.inner().clone();
    tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    tokenizer
        .save(&path, false)
        .map_err(|e| ZooError::Tokenizer(format!("{}: {e}", path.display())))
}

fn lora_of(lora: bool) -> Option<LoraSettings> {
    lora.then(parity_lora)
}

/// The token classifier of the fixtures on `base_dir`, LoRA or full, heads sharpened.
pub fn parity_token_classifier(base_dir: &Path, lora: bool) -> Result<TokenClassifier, ZooError> {
    let spec = TokenClassifierSpec {
        num_labels: PARITY_LABELS.len(),
        lora: lora_of(lora),
        classifier_dropout: None,
    };
    let model = TokenClassifier::from_pretrained(base_dir, &spec, &Device::Cpu, PARITY_SEED)?;
    sharpen(&model.trainable_vars(), "classifier")?;
    Ok(model)
}

/// The QA model of the fixtures on `base_dir`, LoRA or full, heads sharpened.
pub fn parity_qa_model(base_dir: &Path, lora: bool) -> Result<QuestionAnsweringModel, ZooError> {
    let spec = QaModelSpec {
        lora: lora_of(lora),
    };
    let model =
        QuestionAnsweringModel::from_pretrained(base_dir, &spec, &Device::Cpu, PARITY_SEED)?;
    sharpen(&model.trainable_vars(), "qa_outputs")?;
    Ok(model)
}

/// Scales the head's weight, randomizes its bias and every LoRA `B` (seeded, in var order).
fn sharpen(vars: &[NamedVar], head: &str) -> Result<(), ZooError> {
    let mut rng = StdRng::seed_from_u64(PARITY_SEED);
    let head_weight = format!("{head}.weight");
    let head_bias = format!("{head}.bias");
    for nv in vars {
        let current = nv.var.as_tensor();
        let replacement = if nv.name.ends_with(&head_weight) {
            (current * HEAD_SCALE)?
        } else if nv.name.ends_with(&head_bias) || nv.name.contains(".lora_B.") {
            let half_width = if nv.name.contains(".lora_B.") {
                LORA_B
            } else {
                HEAD_BIAS
            };
            let values: Vec<f32> = (0..current.elem_count())
                .map(|_| rng.random_range(-half_width..half_width))
                .collect();
            Tensor::from_vec(values, current.dims(), current.device())?
        } else {
            continue;
        };
        nv.var.set(&replacement)?;
    }
    Ok(())
}

/// Writes every model of [`parity_models`] under `root`, the bases and `manifest.json`.
pub fn write_parity_models(root: &Path) -> Result<Vec<ParityModel>, ZooError> {
    let models = parity_models();
    let labels: Vec<String> = PARITY_LABELS.iter().map(|s| s.to_string()).collect();
    for encoder in ParityEncoder::ALL {
        write_parity_base(&root.join(format!("{}-base", encoder.name())), encoder)?;
    }
    for model in &models {
        let base = root.join(format!("{}-base", model.encoder.name()));
        let adapter = model.adapter_dir.as_ref().map(|dir| root.join(dir));
        // What an adapter's config names as its base: the directory next to it.
        let base_id = format!("{}-base", model.encoder.name());
        match model.task {
            ParityTask::TokenClassification => {
                let classifier = parity_token_classifier(&base, adapter.is_some())?;
                match &adapter {
                    Some(dir) => classifier.export_adapter(&base_id, dir)?,
                    None => {
                        classifier.export_merged(&base, &labels, &root.join(&model.model_dir))?
                    }
                }
            }
            ParityTask::QuestionAnswering => {
                let qa = parity_qa_model(&base, adapter.is_some())?;
                match &adapter {
                    Some(dir) => qa.export_adapter(&base_id, dir)?,
                    None => qa.export_merged(&base, &root.join(&model.model_dir))?,
                }
            }
        }
    }
    std::fs::write(
        root.join("manifest.json"),
        serde_json::to_string_pretty(&models)?,
    )?;
    Ok(models)
}

/// What loading `model` back needs: the LoRA settings of its adapter (`None` for a merged
/// directory) and the safetensors file holding its trained weights.
pub fn exported_weights(
    root: &Path,
    model: &ParityModel,
) -> Result<(Option<LoraSettings>, PathBuf), ZooError> {
    Ok(match &model.adapter_dir {
        Some(adapter) => {
            let adapter = root.join(adapter);
            let lora = adapter_lora(&adapter)?;
            (Some(lora), adapter.join("adapter_model.safetensors"))
        }
        None => (None, root.join(&model.model_dir).join("model.safetensors")),
    })
}

/// The LoRA settings an exported `adapter_config.json` records, to load the adapter back.
fn adapter_lora(adapter_dir: &Path) -> Result<LoraSettings, ZooError> {
    #[derive(Deserialize)]
    struct AdapterConfig {
        r: usize,
        lora_alpha: f64,
        lora_dropout: f64,
        target_modules: Vec<String>,
    }
    let text = std::fs::read_to_string(adapter_dir.join("adapter_config.json"))?;
    let config: AdapterConfig = serde_json::from_str(&text)?;
    Ok(LoraSettings {
        rank: config.r,
        alpha: config.lora_alpha,
        dropout: config.lora_dropout,
        target_modules: config.target_modules,
    })
}
