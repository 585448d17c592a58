//! Typed access to GGUF metadata and the `config.json` / `generation_config.json` it
//! implies for a Hugging Face Llama or Qwen2 checkpoint.

use candle_core::quantized::gguf_file::{Content, Value};
use serde_json::{json, Map, Value as Json};

use crate::zoo::ZooError;

/// The decoder families a GGUF can be turned into (`general.architecture`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufArch {
    Llama,
    Qwen2,
}

impl GgufArch {
    /// The metadata key prefix (`llama.block_count`, `qwen2.block_count`).
    pub fn key(self) -> &'static str {
        match self {
            GgufArch::Llama => "llama",
            GgufArch::Qwen2 => "qwen2",
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            GgufArch::Llama => "LlamaForCausalLM",
            GgufArch::Qwen2 => "Qwen2ForCausalLM",
        }
    }
}

/// The metadata of one GGUF file, with errors that name the missing key.
pub struct Metadata<'a> {
    content: &'a Content,
    pub arch: GgufArch,
}

impl<'a> Metadata<'a> {
    pub fn new(content: &'a Content) -> Result<Self, ZooError> {
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(s)) if s == "llama" => GgufArch::Llama,
            Some(Value::String(s)) if s == "qwen2" => GgufArch::Qwen2,
            Some(Value::String(s)) => {
                return Err(ZooError::Unsupported(format!("GGUF architecture `{s}`")))
            }
            _ => return Err(missing("general.architecture")),
        };
        Ok(Self { content, arch })
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.content.metadata.get(key)
    }

    /// `<arch>.<suffix>`, e.g. `arch_key("block_count")` = `llama.block_count`.
    fn arch_key(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.arch.key())
    }

    pub fn usize(&self, key: &str) -> Result<Option<usize>, ZooError> {
        self.get(key)
            .map(|v| as_u64(key, v).map(|n| n as usize))
            .transpose()
    }

    pub fn require_usize(&self, key: &str) -> Result<usize, ZooError> {
        self.usize(key)?.ok_or_else(|| missing(key))
    }

    pub fn f64(&self, key: &str) -> Result<Option<f64>, ZooError> {
        self.get(key)
            .map(|v| match v {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                other => as_u64(key, other).map(|n| n as f64),
            })
            .transpose()
    }

    pub fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key) {
            Some(Value::Bool(b)) => Some(*b),
            _ => None,
        }
    }

    pub fn string(&self, key: &str) -> Option<&'a str> {
        match self.get(key) {
            Some(Value::String(s)) => Some(s.as_str()),
            _ => None,
        }
    }

    /// A string array (`tokenizer.ggml.tokens`, `tokenizer.ggml.merges`).
    pub fn strings(&self, key: &str) -> Result<Vec<&'a str>, ZooError> {
        let Some(Value::Array(items)) = self.get(key) else {
            return Err(missing(key));
        };
        items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(ZooError::Config(format!("GGUF `{key}` holds a non-string"))),
            })
            .collect()
    }

    /// An integer array (`tokenizer.ggml.token_type`); None when absent.
    pub fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, ZooError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let Value::Array(items) = value else {
            return Err(ZooError::Config(format!("GGUF `{key}` is not an array")));
        };
        let ints = items
            .iter()
            .map(|v| match v {
                Value::I32(x) => Ok(i64::from(*x)),
                Value::I64(x) => Ok(*x),
                other => as_u64(key, other).map(|n| n as i64),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(ints))
    }

    pub fn token_id(&self, which: &str) -> Result<Option<u32>, ZooError> {
        Ok(self
            .usize(&format!("tokenizer.ggml.{which}_token_id"))?
            .map(|n| n as u32))
    }

    pub fn head_counts(&self) -> Result<(usize, usize), ZooError> {
        let heads = self.require_usize(&self.arch_key("attention.head_count"))?;
        let kv = self
            .usize(&self.arch_key("attention.head_count_kv"))?
            .unwrap_or(heads);
        if heads == 0 || kv == 0 {
            return Err(ZooError::Config("GGUF declares 0 attention heads".into()));
        }
        Ok((heads, kv))
    }

    pub fn block_count(&self) -> Result<usize, ZooError> {
        self.require_usize(&self.arch_key("block_count"))
    }

    /// transformers' `config.json` for this model; `vocab_size` comes from the token list
    /// when the architecture key is absent (older converters omit it).
    pub fn config_json(&self, vocab_size: usize, tied: bool) -> Result<Json, ZooError> {
        let hidden = self.require_usize(&self.arch_key("embedding_length"))?;
        let (heads, kv_heads) = self.head_counts()?;
        let head_dim = self
            .usize(&self.arch_key("attention.key_length"))?
            .unwrap_or(hidden / heads);
        let mut c = Map::new();
        c.insert("architectures".into(), json!([self.arch.architecture()]));
        c.insert("model_type".into(), json!(self.arch.key()));
        c.insert("hidden_size".into(), json!(hidden));
        c.insert(
            "intermediate_size".into(),
            json!(self.require_usize(&self.arch_key("feed_forward_length"))?),
        );
        c.insert("num_hidden_layers".into(), json!(self.block_count()?));
        c.insert("num_attention_heads".into(), json!(heads));
        c.insert("num_key_value_heads".into(), json!(kv_heads));
        c.insert("head_dim".into(), json!(head_dim));
        c.insert("hidden_act".into(), json!("silu"));
        let eps = self.f64(&self.arch_key("attention.layer_norm_rms_epsilon"))?;
        c.insert("rms_norm_eps".into(), json!(eps.unwrap_or(1e-6)));
        let theta = self.f64(&self.arch_key("rope.freq_base"))?;
        c.insert("rope_theta".into(), json!(theta.unwrap_or(10000.0)));
        let context = self.usize(&self.arch_key("context_length"))?;
        c.insert(
            "max_position_embeddings".into(),
            json!(context.unwrap_or(2048)),
        );
        let vocab = self.usize(&self.arch_key("vocab_size"))?;
        c.insert("vocab_size".into(), json!(vocab.unwrap_or(vocab_size)));
        c.insert("tie_word_embeddings".into(), json!(tied));
        if self.arch == GgufArch::Llama {
            c.insert("attention_bias".into(), json!(false));
            c.insert("mlp_bias".into(), json!(false));
        }
        c.insert("torch_dtype".into(), json!("float32"));
        self.insert_token_ids(&mut c)?;
        Ok(Json::Object(c))
    }

    pub fn generation_config_json(&self) -> Result<Json, ZooError> {
        let mut c = Map::new();
        self.insert_token_ids(&mut c)?;
        Ok(Json::Object(c))
    }

    fn insert_token_ids(&self, c: &mut Map<String, Json>) -> Result<(), ZooError> {
        for (which, key) in [
            ("bos", "bos_token_id"),
            ("eos", "eos_token_id"),
            ("padding", "pad_token_id"),
        ] {
            if let Some(id) = self.token_id(which)? {
                c.insert(key.into(), json!(id));
            }
        }
        Ok(())
    }
}

fn missing(key: &str) -> ZooError {
    ZooError::Config(format!("GGUF metadata has no `{key}`"))
}

fn as_u64(key: &str, v: &Value) -> Result<u64, ZooError> {
    let n = match v {
        Value::U8(x) => Some(u64::from(*x)),
        Value::U16(x) => Some(u64::from(*x)),
        Value::U32(x) => Some(u64::from(*x)),
        Value::U64(x) => Some(*x),
        Value::I8(x) => u64::try_from(*x).ok(),
        Value::I16(x) => u64::try_from(*x).ok(),
        Value::I32(x) => u64::try_from(*x).ok(),
        Value::I64(x) => u64::try_from(*x).ok(),
        _ => None,
    };
    n.ok_or_else(|| ZooError::Config(format!("GGUF `{key}` is not a non-negative integer")))
}
