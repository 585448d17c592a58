//! Exports: a merged Hugging Face directory that transformers (and `from_pretrained`)
//! loads, and a PEFT adapter directory.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};

use super::config::DecoderConfig;
use super::lm::CausalLm;
use crate::zoo::export::{
    copy_present, save_safetensors, write_json, write_peft_adapter, PeftAdapter,
};
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

impl CausalLm {
    /// Merged HF dir: config.json (the base's, dtype float32), model.safetensors (HF names,
    /// adapters folded in, `lm_head` omitted when tied) and the base's tokenizer /
    /// chat-template / generation files.
    pub fn export_merged(&self, base_dir: &Path, out_dir: &Path) -> Result<(), ZooError> {
        self.export_merged_as(base_dir, out_dir, DType::F32)
    }

    /// [`Self::export_merged`] with every tensor in `dtype` (f32 or bf16: the job's
    /// `export_dtype`), which config.json names.
    pub fn export_merged_as(
        &self,
        base_dir: &Path,
        out_dir: &Path,
        dtype: DType,
    ) -> Result<(), ZooError> {
        let dtype_name = match dtype {
            DType::F32 => "float32",
            DType::BF16 => "bfloat16",
            other => {
                return Err(ZooError::Unsupported(format!(
                    "exporting weights as {other:?}"
                )))
            }
        };
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = DecoderConfig::from_dir(base_dir)?;
        let serde_json::Value::Object(mut config) = raw else {
            return Err(ZooError::Config("config.json is not an object".into()));
        };
        let (tensors, tied) = self.decoder.merged_tensors()?;
        let tensors = tensors
            .into_iter()
            .map(|(name, t)| Ok((name, t.to_dtype(dtype)?)))
            .collect::<Result<HashMap<String, Tensor>, ZooError>>()?;
        // transformers 5.x reads `dtype`, 4.x `torch_dtype`: keep whichever the base has.
        if config.contains_key("dtype") {
            config.insert("dtype".into(), dtype_name.into());
        }
        if config.contains_key("torch_dtype") || !config.contains_key("dtype") {
            config.insert("torch_dtype".into(), dtype_name.into());
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
        write_json(
            &out_dir.join("config.json"),
            &serde_json::Value::Object(config),
        )?;
        save_safetensors(&tensors, &out_dir.join("model.safetensors"))?;
        copy_present(base_dir, out_dir, &COPIED_FILES)
    }

    /// PEFT dir: adapter_config.json + adapter_model.safetensors (LoRA models only).
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let adapter = PeftAdapter {
            task_type: "CAUSAL_LM",
            base_model_id,
            modules_to_save: None,
        };
        write_peft_adapter(&self.tuning, &self.vars, &adapter, out_dir)
    }
}
