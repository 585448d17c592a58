//! SFT data: token ids and which tokens are trained on.
//!
//! Chat: the conversation is rendered with the model's own chat template and tokenized
//! once, without adding special tokens (the template writes them). An assistant message
//! with weight 1 is trained on over its char span
//! `[len(render(msgs[..i], add_generation_prompt)), len(render(msgs[..=i])))` — its content
//! plus the template's end-of-turn token; whitespace the template puts after that token
//! (ChatML's "\n") is left out — mapped to tokens through the tokenizer's byte offsets.
//! Both renders must be prefixes of the full text, otherwise the spans would point at the
//! wrong characters and the example is rejected.
//!
//! Prompt/completion: `[bos] + prompt + completion + eos`, tokenized piecewise; only the
//! completion and eos are trained on. Examples longer than `max_seq_len` keep their
//! first `max_seq_len` tokens (OpenAI truncates too); an example left without a trained
//! token is dropped. Both counts are reported.

use std::path::Path;

use serde_json::{json, Value};

use crate::domain::dataset::{ChatExample, ChatMessage, PromptCompletion};
use crate::train::TrainError;
use crate::zoo::chat_template::special_token;
use crate::zoo::{ChatTemplate, TextTokenizer};

/// A tokenized example. `trained[t]`: token `t` is a target (predicted from `t - 1`).
#[derive(Debug, Clone, PartialEq)]
pub struct SftExample {
    pub ids: Vec<u32>,
    pub trained: Vec<bool>,
}

impl SftExample {
    /// Tokens the loss covers (token 0 has no predecessor and never counts).
    pub fn n_targets(&self) -> usize {
        self.trained.iter().skip(1).filter(|&&t| t).count()
    }
}

/// The examples of `run_sft`'s input.
#[derive(Debug, Clone)]
pub enum SftExamples {
    Chat(Vec<ChatExample>),
    PromptCompletion(Vec<PromptCompletion>),
}

impl SftExamples {
    pub fn len(&self) -> usize {
        match self {
            SftExamples::Chat(v) => v.len(),
            SftExamples::PromptCompletion(v) => v.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A tokenized split plus what preparation had to change.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedSet {
    pub examples: Vec<SftExample>,
    /// Examples cut to `max_seq_len` tokens.
    pub truncated: usize,
    /// Examples dropped because no trained token was left.
    pub dropped: usize,
}

/// Tokenizer, chat template and the special tokens SFT adds itself.
pub struct SftTokenizer {
    tokenizer: TextTokenizer,
    template: Option<ChatTemplate>,
    /// Prepended to prompt/completion examples when `add_bos_token` is set.
    bos_id: Option<u32>,
    /// Appended to completions.
    eos_id: Option<u32>,
}

impl SftTokenizer {
    /// `model_eos` (from the model config) is the end of a completion when
    /// `tokenizer_config.json` names no `eos_token`.
    pub fn from_dir(dir: &Path, model_eos: &[u32]) -> Result<Self, TrainError> {
        let tokenizer = TextTokenizer::from_dir(dir)?;
        let template = ChatTemplate::from_dir(dir)?;
        let config_path = dir.join("tokenizer_config.json");
        let config: Value = if config_path.exists() {
            serde_json::from_slice(&std::fs::read(&config_path)?)?
        } else {
            Value::Null
        };
        let id_of =
            |key: &str| special_token(&config, key).and_then(|t| tokenizer.inner().token_to_id(&t));
        let add_bos = config
            .get("add_bos_token")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let bos_id = if add_bos { id_of("bos_token") } else { None };
        let eos_id = id_of("eos_token").or_else(|| model_eos.first().copied());
        Ok(Self {
            tokenizer,
            template,
            bos_id,
            eos_id,
        })
    }

    pub fn pad_id(&self) -> u32 {
        self.tokenizer.pad_id()
    }

    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.tokenizer.inner()
    }

    pub fn template(&self) -> Option<&ChatTemplate> {
        self.template.as_ref()
    }

    fn encode(&self, text: &str) -> Result<tokenizers::Encoding, TrainError> {
        self.tokenizer
            .inner()
            .encode(text, false)
            .map_err(|e| TrainError::InvalidData(format!("tokenizer: {e}")))
    }

    /// `number` is the 1-based example number used in error messages.
    pub fn chat(&self, example: &ChatExample, number: usize) -> Result<SftExample, TrainError> {
        let template = self.template.as_ref().ok_or_else(|| {
            TrainError::InvalidData(
                "the base model has no chat template (`chat_template` in tokenizer_config.json or chat_template.jinja); train it with prompt/completion examples instead".into(),
            )
        })?;
        let messages: Vec<Value> = example.messages.iter().map(message_json).collect();
        let tools = example.tools.as_ref();
        let render = |upto: usize, generation: bool| {
            template
                .render(&messages[..upto], tools, generation)
                .map_err(|e| TrainError::InvalidData(format!("Example {number}: {e}")))
        };
        let text = render(messages.len(), false)?;
        let mut spans = Vec::new();
        for (i, message) in example.messages.iter().enumerate() {
            if !message.is_trained() {
                continue;
            }
            let before = render(i, true)?;
            let through = render(i + 1, false)?;
            if !text.starts_with(&before) || !text.starts_with(&through) {
                return Err(TrainError::InvalidData(format!(
                    "Example {number}: the chat template renders message {} differently depending on the messages after it, so its tokens cannot be located",
                    i + 1
                )));
            }
            let end = through.trim_end().len().max(before.len());
            spans.push((before.len(), end));
        }
        let encoding = self.encode(&text)?;
        let trained = encoding
            .get_offsets()
            .iter()
            .map(|&(s, e)| {
                spans.iter().any(|&(start, end)| {
                    if s == e {
                        (start..end).contains(&s)
                    } else {
                        s < end && e > start
                    }
                })
            })
            .collect();
        Ok(SftExample {
            ids: encoding.get_ids().to_vec(),
            trained,
        })
    }

    pub fn prompt_completion(&self, example: &PromptCompletion) -> Result<SftExample, TrainError> {
        let prompt = self.encode(&example.prompt)?;
        let completion = self.encode(&example.completion)?;
        let mut ids: Vec<u32> = self.bos_id.into_iter().collect();
        ids.extend_from_slice(prompt.get_ids());
        let n_prompt = ids.len();
        ids.extend_from_slice(completion.get_ids());
        ids.extend(self.eos_id);
        let trained = (0..ids.len()).map(|t| t >= n_prompt).collect();
        Ok(SftExample { ids, trained })
    }

    /// Tokenizes a split, truncating to `max_seq_len` and dropping examples without a
    /// trained token.
    pub fn prepare(
        &self,
        examples: &SftExamples,
        max_seq_len: usize,
    ) -> Result<PreparedSet, TrainError> {
        let encoded: Vec<SftExample> = match examples {
            SftExamples::Chat(chats) => chats
                .iter()
                .enumerate()
                .map(|(i, e)| self.chat(e, i + 1))
                .collect::<Result<_, _>>()?,
            SftExamples::PromptCompletion(pairs) => pairs
                .iter()
                .map(|e| self.prompt_completion(e))
                .collect::<Result<_, _>>()?,
        };
        let mut set = PreparedSet {
            examples: Vec::with_capacity(encoded.len()),
            truncated: 0,
            dropped: 0,
        };
        for mut example in encoded {
            if example.ids.len() > max_seq_len {
                example.ids.truncate(max_seq_len);
                example.trained.truncate(max_seq_len);
                set.truncated += 1;
            }
            if example.n_targets() == 0 {
                set.dropped += 1;
            } else {
                set.examples.push(example);
            }
        }
        Ok(set)
    }
}

/// The OpenAI-shaped message a chat template expects: absent fields stay absent (templates
/// test `message.tool_calls is defined`), `weight` is ours and not passed on.
fn message_json(message: &ChatMessage) -> Value {
    let mut object = json!({"role": message.role.as_str(), "content": message.content});
    let optional = [
        ("name", message.name.clone().map(Value::String)),
        ("tool_calls", message.tool_calls.clone()),
        (
            "tool_call_id",
            message.tool_call_id.clone().map(Value::String),
        ),
        ("function_call", message.function_call.clone()),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            object[key] = value;
        }
    }
    object
}
