//! Exports: a merged Hugging Face directory that transformers (and `from_pretrained`)
//! loads, and a PEFT adapter directory.

use candle_core::Tensor;
use std::collections::HashMap;
use std::path::Path;

use super::config::DecoderConfig;
use super::lm::CausalLm;
use crate::zoo::loader::Tuning;
use crate::zoo::ZooError;

/// Tokenizer, chat-template and generation files a merged directory carries over.
const COPIED_FILES: [&str; 9] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
];

/// Writes safetensors with `{"format": "pt"}` metadata, which transformers expects.
fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<(), ZooError> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<_, ZooError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(contiguous, Some(metadata), path)
        .map_err(|e| ZooError::Io(std::io::Error::other(e.to_string())))
}

impl CausalLm {
    /// Merged HF dir: config.json (the base's, dtype float32), model.safetensors (HF names,
    /// adapters folded in, `lm_head` omitted when tied) and the base's tokenizer /
    /// chat-template / generation files.
    pub fn export_merged(&self, base_dir: &Path, out_dir: &Path) -> Result<(), ZooError> {
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = DecoderConfig::from_dir(base_dir)?;
        let serde_json::Value::Object(mut config) = raw else {
            return Err(ZooError::Config("config.json is not an object".into()));
        };
        let (tensors, tied) = self.decoder.merged_tensors()?;
        // transformers 5.x reads `dtype`, 4.x `torch_dtype`: keep whichever the base has.
        if config.contains_key("dtype") {
            config.insert("dtype".into(), "float32".into());
        }
        if config.contains_key("torch_dtype") || !config.contains_key("dtype") {
            config.insert("torch_dtype".into(), "float32".into());
        }
        let tie = serde_json::Value::Bool(tied);
        match config.get_mut("text_config") {
            Some(serde_json::Value::Object(text)) => {
                text.insert("tie_word_embeddings".into(), tie.clone());
            }
            _ => {
                config.insert("tie_word_embeddings".into(), tie);
            }
        }
        std::fs::write(
            out_dir.join("config.json"),
            serde_json::to_string_pretty(&serde_json::Value::Object(config))?,
        )?;
        save_safetensors(&tensors, &out_dir.join("model.safetensors"))?;
        for name in COPIED_FILES {
            let src = base_dir.join(name);
            if src.exists() {
                std::fs::copy(&src, out_dir.join(name))?;
            }
        }
        Ok(())
    }

    /// PEFT dir: adapter_config.json + adapter_model.safetensors (LoRA models only).
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let Tuning::Lora {
            rank,
            alpha,
            dropout,
            targets,
        } = &self.tuning
        else {
            return Err(ZooError::Unsupported(
                "adapter export needs a LoRA model (this one is fully fine-tuned)".into(),
            ));
        };
        if !self.vars.iter().any(|nv| nv.name.contains(".lora_A.")) {
            return Err(ZooError::Unsupported(
                "the adapters were merged into the base".into(),
            ));
        }
        std::fs::create_dir_all(out_dir)?;
        let config = serde_json::json!({
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "r": rank,
            "lora_alpha": alpha,
            "lora_dropout": dropout,
            "target_modules": targets,
            "base_model_name_or_path": base_model_id,
            "bias": "none",
            "fan_in_fan_out": false,
            "inference_mode": true,
            "modules_to_save": null,
            "use_rslora": false,
            "use_dora": false,
        });
        std::fs::write(
            out_dir.join("adapter_config.json"),
            serde_json::to_string_pretty(&config)?,
        )?;
        save_safetensors(
            &self.trainable_tensors()?,
            &out_dir.join("adapter_model.safetensors"),
        )
    }
}
