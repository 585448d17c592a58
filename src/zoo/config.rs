//! `config.json` of BERT-family encoders, as written by transformers 4.x and 5.x.
//!
//! 5.x writes `dtype` instead of `torch_dtype` and may omit fields that equal their
//! defaults, so every field has a serde default matching transformers' own.

use serde::Deserialize;
use std::path::Path;

use super::ZooError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderArch {
    Bert,
    DistilBert,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HiddenAct {
    /// Exact (erf) GELU, what transformers calls `gelu`.
    GeluErf,
    /// Tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    Relu,
}

impl HiddenAct {
    fn parse(name: &str) -> Result<Self, ZooError> {
        match name {
            "gelu" => Ok(Self::GeluErf),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            other => Err(ZooError::Unsupported(format!("activation `{other}`"))),
        }
    }
}

/// The architecture-neutral view of an encoder config that the model code uses.
#[derive(Debug, Clone)]
pub struct EncoderConfig {
    pub arch: EncoderArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub intermediate_size: usize,
    pub max_position_embeddings: usize,
    /// 0 for DistilBERT (no token-type embeddings).
    pub type_vocab_size: usize,
    pub layer_norm_eps: f64,
    pub hidden_act: HiddenAct,
    pub hidden_dropout: f64,
    pub attention_dropout: f64,
    pub initializer_range: f64,
    /// Dropout before the classifier when the spec does not override it.
    pub classifier_dropout: f64,
}

fn d_vocab() -> usize {
    30522
}
fn d_max_pos() -> usize {
    512
}
fn d_eps() -> f64 {
    1e-12
}
fn d_init() -> f64 {
    0.02
}
fn d_dropout() -> f64 {
    0.1
}
fn d_gelu() -> String {
    "gelu".into()
}
fn d_type_vocab() -> usize {
    2
}

#[derive(Debug, Deserialize)]
struct RawBert {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_layers")]
    num_attention_heads: usize,
    #[serde(default = "d_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "d_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_gelu")]
    hidden_act: String,
    #[serde(default = "d_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "d_init")]
    initializer_range: f64,
    #[serde(default)]
    classifier_dropout: Option<f64>,
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_intermediate() -> usize {
    3072
}

#[derive(Debug, Deserialize)]
struct RawDistilBert {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    dim: usize,
    #[serde(default = "d_distil_layers")]
    n_layers: usize,
    #[serde(default = "d_layers")]
    n_heads: usize,
    #[serde(default = "d_intermediate")]
    hidden_dim: usize,
    #[serde(default = "d_max_pos")]
    max_position_embeddings: usize,
    #[serde(default = "d_gelu")]
    activation: String,
    #[serde(default = "d_dropout")]
    dropout: f64,
    #[serde(default = "d_dropout")]
    attention_dropout: f64,
    #[serde(default = "d_init")]
    initializer_range: f64,
    #[serde(default = "d_seq_classif_dropout")]
    seq_classif_dropout: f64,
    #[serde(default)]
    sinusoidal_pos_embds: bool,
}
fn d_distil_layers() -> usize {
    6
}
fn d_seq_classif_dropout() -> f64 {
    0.2
}

impl EncoderConfig {
    /// Parses `config.json` text; also returns the raw JSON object, which exports extend.
    pub fn from_json(text: &str) -> Result<(Self, serde_json::Value), ZooError> {
        let raw: serde_json::Value = serde_json::from_str(text)?;
        let model_type = raw
            .get("model_type")
            .and_then(|v| v.as_str())
            .unwrap_or("bert");
        let cfg = match model_type {
            "bert" => {
                let c: RawBert = serde_json::from_value(raw.clone())?;
                Self {
                    arch: EncoderArch::Bert,
                    vocab_size: c.vocab_size,
                    hidden_size: c.hidden_size,
                    num_layers: c.num_hidden_layers,
                    num_heads: c.num_attention_heads,
                    intermediate_size: c.intermediate_size,
                    max_position_embeddings: c.max_position_embeddings,
                    type_vocab_size: c.type_vocab_size,
                    layer_norm_eps: c.layer_norm_eps,
                    hidden_act: HiddenAct::parse(&c.hidden_act)?,
                    hidden_dropout: c.hidden_dropout_prob,
                    attention_dropout: c.attention_probs_dropout_prob,
                    initializer_range: c.initializer_range,
                    classifier_dropout: c.classifier_dropout.unwrap_or(c.hidden_dropout_prob),
                }
            }
            "distilbert" => {
                let c: RawDistilBert = serde_json::from_value(raw.clone())?;
                if c.sinusoidal_pos_embds {
                    return Err(ZooError::Unsupported(
                        "DistilBERT with sinusoidal position embeddings".into(),
                    ));
                }
                Self {
                    arch: EncoderArch::DistilBert,
                    vocab_size: c.vocab_size,
                    hidden_size: c.dim,
                    num_layers: c.n_layers,
                    num_heads: c.n_heads,
                    intermediate_size: c.hidden_dim,
                    max_position_embeddings: c.max_position_embeddings,
                    type_vocab_size: 0,
                    layer_norm_eps: 1e-12,
                    hidden_act: HiddenAct::parse(&c.activation)?,
                    hidden_dropout: c.dropout,
                    attention_dropout: c.attention_dropout,
                    initializer_range: c.initializer_range,
                    classifier_dropout: c.seq_classif_dropout,
                }
            }
            other => return Err(ZooError::Unsupported(format!("model_type `{other}`"))),
        };
        if cfg.num_heads == 0 || cfg.hidden_size % cfg.num_heads != 0 {
            return Err(ZooError::Config(format!(
                "hidden size {} is not divisible by {} heads",
                cfg.hidden_size, cfg.num_heads
            )));
        }
        Ok((cfg, raw))
    }

    pub fn from_dir(dir: &Path) -> Result<(Self, serde_json::Value), ZooError> {
        let text = std::fs::read_to_string(dir.join("config.json"))?;
        Self::from_json(&text)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}
