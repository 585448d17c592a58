//! `config.json` of Llama-family and Qwen2 decoders, as transformers 4.x and 5.x write it.
//!
//! 5.x writes `dtype` instead of `torch_dtype`, moves `rope_theta` (and any scaling) into
//! `rope_parameters`, may nest the language model under `text_config`, and omits fields
//! equal to their defaults; every field therefore falls back to transformers' default.

use serde_json::Value;
use std::path::Path;

use crate::domain::hyperparams::LoraSettings;
use crate::zoo::ZooError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderArch {
    /// Llama, SmolLM/SmolLM2, TinyLlama, Llama 3.x (`model_type` "llama").
    Llama,
    /// Qwen2 / Qwen2.5: q/k/v projections carry biases.
    Qwen2,
}

impl DecoderArch {
    pub fn model_type(self) -> &'static str {
        match self {
            DecoderArch::Llama => "llama",
            DecoderArch::Qwen2 => "qwen2",
        }
    }

    pub fn architecture(self) -> &'static str {
        match self {
            DecoderArch::Llama => "LlamaForCausalLM",
            DecoderArch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// Frequency scaling of rotary embeddings (`rope_scaling` / `rope_parameters`).
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type` "linear": every inverse frequency divided by `factor`.
    Linear { factor: f64 },
    /// `rope_type` "llama3" (Llama 3.1+): low frequencies scaled, high kept, smooth between.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: f64,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub arch: DecoderArch,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    /// Biases on the attention projections: q/k/v for Qwen2 (always), q/k/v/o for Llama
    /// when `attention_bias` is set.
    pub attention_bias: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// None for plain rotary embeddings.
    pub rope_scaling: Option<RopeScaling>,
}

/// Which quantized format a frozen QLoRA base uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum QuantKind {
    Q4_0,
    /// Served only (`--serve-dtype q4_1`), not a `quantize` hyperparameter.
    Q4_1,
    Q8_0,
}

impl QuantKind {
    /// `"q4_0"` / `"q8_0"` (case-insensitive), as the `quantize` hyperparameter spells it.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "q4_0" => Some(Self::Q4_0),
            "q8_0" => Some(Self::Q8_0),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Q4_0 => "q4_0",
            Self::Q4_1 => "q4_1",
            Self::Q8_0 => "q8_0",
        }
    }
}

/// How a decoder trains.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// `Some` with rank > 0: LoRA; `None` (or rank 0): full fine-tuning.
    pub lora: Option<LoraSettings>,
    /// QLoRA: the frozen base is quantized (needs `lora`).
    pub quantize: Option<QuantKind>,
}

/// PEFT's default LoRA targets for causal LMs here: every attention and MLP projection.
pub const DEFAULT_LORA_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The projections a LoRA run adapts: the ones named, or [`DEFAULT_LORA_TARGETS`].
pub fn lora_targets(lora: &LoraSettings) -> Vec<String> {
    if lora.target_modules.is_empty() {
        DEFAULT_LORA_TARGETS.iter().map(|s| s.to_string()).collect()
    } else {
        lora.target_modules.clone()
    }
}

fn get_usize(obj: &Value, key: &str) -> Result<Option<usize>, ZooError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|n| Some(n as usize))
            .ok_or_else(|| ZooError::Config(format!("`{key}` must be a non-negative integer"))),
    }
}

fn get_f64(obj: &Value, key: &str) -> Result<Option<f64>, ZooError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| ZooError::Config(format!("`{key}` must be a number"))),
    }
}

fn require_usize(obj: &Value, key: &str) -> Result<usize, ZooError> {
    get_usize(obj, key)?.ok_or_else(|| ZooError::Config(format!("config.json has no `{key}`")))
}

/// `eos_token_id`: an integer, a list of integers, or absent.
fn token_ids(v: Option<&Value>) -> Vec<u32> {
    match v {
        Some(Value::Number(n)) => n.as_u64().map(|n| vec![n as u32]).unwrap_or_default(),
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|x| x.as_u64().map(|n| n as u32))
            .collect(),
        _ => Vec::new(),
    }
}

fn parse_rope_scaling(params: Option<&Value>) -> Result<Option<RopeScaling>, ZooError> {
    let Some(p) = params.filter(|p| p.is_object()) else {
        return Ok(None);
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = || {
        get_f64(p, "factor")?
            .ok_or_else(|| ZooError::Config("rope scaling without `factor`".into()))
    };
    match kind {
        "default" => Ok(None),
        "linear" => Ok(Some(RopeScaling::Linear { factor: factor()? })),
        "llama3" => Ok(Some(RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: get_f64(p, "low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: get_f64(p, "high_freq_factor")?.unwrap_or(4.0),
            original_max_position_embeddings: get_f64(p, "original_max_position_embeddings")?
                .unwrap_or(8192.0),
        })),
        other => Err(ZooError::Unsupported(format!("rope scaling `{other}`"))),
    }
}

impl DecoderConfig {
    /// Parses `config.json` text; also returns the raw JSON (the top-level object), which
    /// exports copy.
    pub fn from_json(text: &str) -> Result<(Self, Value), ZooError> {
        let raw: Value = serde_json::from_str(text)?;
        if !raw.is_object() {
            return Err(ZooError::Config("config.json is not an object".into()));
        }
        // Multimodal 5.x configs nest the language model under `text_config`.
        let c = match raw.get("text_config") {
            Some(inner) if inner.is_object() => inner,
            _ => &raw,
        };
        let model_type = c
            .get("model_type")
            .or_else(|| raw.get("model_type"))
            .and_then(Value::as_str)
            .unwrap_or("llama");
        let arch = match model_type {
            "llama" => DecoderArch::Llama,
            "qwen2" => DecoderArch::Qwen2,
            other => return Err(ZooError::Unsupported(format!("model_type `{other}`"))),
        };
        if c.get("mlp_bias").and_then(Value::as_bool) == Some(true) {
            return Err(ZooError::Unsupported("`mlp_bias: true`".into()));
        }
        let hidden_size = require_usize(c, "hidden_size")?;
        let num_attention_heads = require_usize(c, "num_attention_heads")?;
        if num_attention_heads == 0 {
            return Err(ZooError::Config("`num_attention_heads` is 0".into()));
        }
        let num_key_value_heads =
            get_usize(c, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        if num_key_value_heads == 0 || num_attention_heads % num_key_value_heads != 0 {
            return Err(ZooError::Config(format!(
                "{num_attention_heads} attention heads are not a multiple of {num_key_value_heads} key/value heads"
            )));
        }
        let head_dim = match get_usize(c, "head_dim")? {
            Some(d) => d,
            None if hidden_size % num_attention_heads == 0 => hidden_size / num_attention_heads,
            None => {
                return Err(ZooError::Config(format!(
                    "hidden size {hidden_size} is not divisible by {num_attention_heads} heads"
                )))
            }
        };
        // 5.x: `rope_parameters: {rope_type, rope_theta, …}`; 4.x: `rope_theta` + `rope_scaling`.
        let rope_params = c.get("rope_parameters").filter(|p| p.is_object());
        let rope_theta = match rope_params {
            Some(p) => get_f64(p, "rope_theta")?,
            None => None,
        }
        .or(get_f64(c, "rope_theta")?)
        .unwrap_or(10000.0);
        let rope_scaling = parse_rope_scaling(rope_params.or(c.get("rope_scaling")))?;
        let tie_word_embeddings = c
            .get("tie_word_embeddings")
            .or_else(|| raw.get("tie_word_embeddings"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let attention_bias = match arch {
            DecoderArch::Qwen2 => true,
            DecoderArch::Llama => c
                .get("attention_bias")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        };
        let cfg = Self {
            arch,
            vocab_size: get_usize(c, "vocab_size")?.unwrap_or(32000),
            hidden_size,
            intermediate_size: require_usize(c, "intermediate_size")?,
            num_hidden_layers: require_usize(c, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: get_f64(c, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta,
            max_position_embeddings: get_usize(c, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings,
            attention_bias,
            bos_token_id: get_usize(c, "bos_token_id")?.map(|n| n as u32),
            eos_token_ids: token_ids(c.get("eos_token_id")),
            rope_scaling,
        };
        if let Some(act) = c.get("hidden_act").and_then(Value::as_str) {
            if act != "silu" {
                return Err(ZooError::Unsupported(format!("activation `{act}`")));
            }
        }
        Ok((cfg, raw))
    }

    pub fn from_dir(dir: &Path) -> Result<(Self, Value), ZooError> {
        let text = std::fs::read_to_string(dir.join("config.json"))?;
        Self::from_json(&text)
    }

    /// Inverse rotary frequencies `θ^(−2i/d)`, with the configured scaling.
    pub fn inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = 1.0 / self.rope_theta.powf(2.0 * i as f64 / d as f64);
                scale_frequency(f, self.rope_scaling.as_ref()) as f32
            })
            .collect()
    }
}

fn scale_frequency(f: f64, scaling: Option<&RopeScaling>) -> f64 {
    match scaling {
        None => f,
        Some(RopeScaling::Linear { factor }) => f / factor,
        Some(RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: old,
        }) => {
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let (low_wavelen, high_wavelen) = (old / low_freq_factor, old / high_freq_factor);
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / factor
            } else {
                let smooth =
                    (old / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                (1.0 - smooth) * f / factor + smooth * f
            }
        }
    }
}
