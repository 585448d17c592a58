//! The real language model behind a generation engine: `zoo::decoder::CausalLm` (LoRA
//! already merged) with its tokenizer and chat template. Each request's `KvCache` is
//! created here and owned by the request; `step` runs every chunk through
//! `forward_cached_logits` together and hands the sampler the output tensor as it is.

use std::path::Path;
use std::sync::Arc;

use candle_core::Device;
use serde_json::Value;

use super::{LmBackend, PromptEncoder, StepChunk, StepLogits};
use crate::infer::InferError;
use crate::zoo::chat_template::special_token;
use crate::zoo::decoder::{CausalLm, DecoderSpec, KvCache, SeqChunk};
use crate::zoo::ChatTemplate;

/// What a loaded decoder brings (the fields of `tasks::sft::LoadedLm`).
pub struct CausalLmParts {
    /// Merged: no LoRA branches left.
    pub model: CausalLm,
    pub tokenizer: tokenizers::Tokenizer,
    pub template: Option<ChatTemplate>,
    /// Generation stops at any of these (eos ids and the template's end-of-turn token).
    pub eos_token_ids: Vec<u32>,
    /// Most tokens per sequence; capped by the model's position embeddings.
    pub context_len: usize,
}

pub struct CausalLmBackend {
    model: CausalLm,
    prompts: Arc<CausalPrompts>,
    stop_ids: Vec<u32>,
    context_len: usize,
}

/// The tokenizer and chat template, shared by the engine (detokenizing) and its callers
/// (rendering and tokenizing prompts).
struct CausalPrompts {
    tokenizer: tokenizers::Tokenizer,
    template: Option<ChatTemplate>,
}

impl PromptEncoder for CausalPrompts {
    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| InferError::engine(format!("tokenizing: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    fn render_chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<String, InferError> {
        let template = self.template.as_ref().ok_or_else(|| {
            InferError::invalid(
                "messages",
                "This model has no chat template; use /v1/completions with a raw prompt.",
            )
        })?;
        // A template refusing the conversation (roles out of order…) is the caller's to fix.
        template
            .render(messages, tools, true)
            .map_err(|e| InferError::invalid("messages", e.to_string()))
    }
}

impl CausalLmBackend {
    pub fn new(parts: CausalLmParts) -> Result<Self, InferError> {
        let CausalLmParts {
            model,
            mut tokenizer,
            template,
            eos_token_ids,
            context_len,
        } = parts;
        // Prompts are never padded nor cut by the tokenizer: the engine checks lengths.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| InferError::engine(format!("tokenizer: {e}")))?;
        let context_len = context_len
            .min(model.config().max_position_embeddings)
            .max(2);
        Ok(Self {
            model,
            prompts: Arc::new(CausalPrompts {
                tokenizer,
                template,
            }),
            stop_ids: eos_token_ids,
            context_len,
        })
    }

    /// A plain Hugging Face model directory (a base model or a merged export): weights,
    /// `tokenizer.json`, the chat template and eos tokens from `tokenizer_config.json`.
    /// The served path (`CheckpointLoader`) goes through `tasks::sft::load_lm_checkpoint`,
    /// which also takes fine-tuning checkpoints; this stays for tests and tools.
    pub fn load_dir(dir: &Path, device: &Device) -> Result<Self, InferError> {
        let fail = |e: &dyn std::fmt::Display| {
            InferError::engine(format!("loading `{}`: {e}", dir.display()))
        };
        let spec = DecoderSpec {
            lora: None,
            quantize: None,
        };
        let model = CausalLm::from_pretrained(dir, &spec, device, 0).map_err(|e| fail(&e))?;
        let tokenizer =
            tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| fail(&e))?;
        let template = ChatTemplate::from_dir(dir).map_err(|e| fail(&e))?;
        let mut eos_token_ids = model.config().eos_token_ids.clone();
        let config_path = dir.join("tokenizer_config.json");
        if config_path.exists() {
            let text = std::fs::read(&config_path).map_err(|e| fail(&e))?;
            let config: Value = serde_json::from_slice(&text).map_err(|e| fail(&e))?;
            let eos = special_token(&config, "eos_token").and_then(|t| tokenizer.token_to_id(&t));
            if let Some(id) = eos.filter(|id| !eos_token_ids.contains(id)) {
                eos_token_ids.push(id);
            }
        }
        let context_len = model.config().max_position_embeddings;
        Self::new(CausalLmParts {
            model,
            tokenizer,
            template,
            eos_token_ids,
            context_len,
        })
    }
}

impl LmBackend for CausalLmBackend {
    type Cache = KvCache;

    fn prompt_encoder(&self) -> Arc<dyn PromptEncoder> {
        self.prompts.clone()
    }

    fn decode(&self, ids: &[u32]) -> Result<String, InferError> {
        self.prompts
            .tokenizer
            .decode(ids, true)
            .map_err(|e| InferError::engine(format!("detokenizing: {e}")))
    }

    fn stop_token_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    fn new_cache(&self, max_tokens: usize) -> KvCache {
        self.model.new_cache_for(max_tokens)
    }

    fn kv_cache_bytes(&self, tokens: usize) -> usize {
        self.model.kv_cache_bytes(tokens)
    }

    fn step(&mut self, chunks: &mut [StepChunk<'_, KvCache>]) -> Result<StepLogits, InferError> {
        let mut seqs: Vec<SeqChunk<'_>> = chunks
            .iter_mut()
            .map(|chunk| SeqChunk {
                tokens: chunk.tokens,
                cache: chunk.cache,
                adapter: chunk.adapter,
            })
            .collect();
        let logits = self
            .model
            .forward_cached_logits(&mut seqs)
            .map_err(|e| InferError::engine(format!("decoder forward: {e}")))?;
        StepLogits::from_tensor(logits)
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn vocab_size(&self) -> usize {
        self.model.config().vocab_size
    }

    fn parameter_bytes(&self) -> usize {
        self.model.parameter_bytes()
    }
}
