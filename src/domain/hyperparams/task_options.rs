//! Hyperparameters of one task's recipe: run_qa's `doc_stride` and `max_answer_length`,
//! run_ner's `label_all_tokens`, and TRL's DPO `max_prompt_length`.
//!
//! The same struct holds what a user asked for (a key is `None` when not given) and what a
//! job runs with (resolved: the keys of the job's task are set, every other key is `None`,
//! so the job object echoes only the options of its own task). A key given for another
//! task is refused ([`TaskOptions::check_task`]): the job would ignore it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::super::task::Task;
use super::image_options::{ImageOptions, IMAGE_KEYS};
use super::{bad, int_in, HyperparamError};

/// run_qa's `doc_stride`: context tokens shared by consecutive windows.
pub const DEFAULT_DOC_STRIDE: usize = 128;
/// run_qa's `max_answer_length`: the longest answer, in tokens, an answer may be.
pub const DEFAULT_MAX_ANSWER_LENGTH: usize = 30;
/// The largest `max_seq_len` a request may ask for; every length here stays under it.
const MAX_TOKENS: u64 = 32768;

/// Options of the task-specific recipes. Requested: `None` means not given. Resolved: the
/// job's task's keys are set, the others are `None`; `doc_stride` and `max_prompt_length`
/// stay `None` when not given (the window decides the first, the second is no cap).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Extractive QA: tokens of context shared by consecutive windows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_stride: Option<usize>,
    /// Extractive QA: the longest answer, in tokens, evaluation and serving may pick.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_answer_length: Option<usize>,
    /// Token classification: label every sub-word of a word, not only its first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_all_tokens: Option<bool>,
    /// DPO: prompt tokens kept, the prompt's end (TRL ≤ 0.28's `max_prompt_length`:
    /// `prompt_input_ids[-max_prompt_length:]`, before `max_length` cuts the sequence).
    /// TRL 0.29 removed the option (its default was 512), so TRL 1.x caps prompts only by
    /// `max_length`; unset here does the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_length: Option<usize>,
    /// Image classification: the transfer-learning recipe's knobs.
    #[serde(flatten)]
    pub image: ImageOptions,
}

/// Which task each option belongs to, under its request key.
const OWNERS: [(&str, Task); 4] = [
    ("doc_stride", Task::QuestionAnswering),
    ("max_answer_length", Task::QuestionAnswering),
    ("label_all_tokens", Task::TokenClassification),
    ("max_prompt_length", Task::Dpo),
];

/// What data a task's options need, for the refusal message.
fn data_of(task: Task) -> &'static str {
    match task {
        Task::QuestionAnswering => "extractive question answering (SQuAD data)",
        Task::TokenClassification => "token classification (tokens/tags data)",
        Task::ImageClassification => {
            "image classification (an archive of class folders, or image/label JSONL)"
        }
        _ => "DPO (`method.type` `dpo` with preference data)",
    }
}

impl TaskOptions {
    /// Whether `key` is one of these options.
    pub fn is_key(key: &str) -> bool {
        OWNERS.iter().any(|(name, _)| *name == key) || IMAGE_KEYS.contains(&key)
    }

    /// The task that owns `key`.
    fn owner(key: &str) -> Option<Task> {
        if IMAGE_KEYS.contains(&key) {
            return Some(Task::ImageClassification);
        }
        OWNERS
            .iter()
            .find(|(name, _)| *name == key)
            .map(|(_, task)| *task)
    }

    /// Parses one option's value into `self`.
    pub(super) fn parse_key(&mut self, key: &str, value: &Value) -> Result<(), HyperparamError> {
        match key {
            "doc_stride" => self.doc_stride = Some(int_in(key, value, 0, MAX_TOKENS - 1)?),
            "max_answer_length" => {
                self.max_answer_length = Some(int_in(key, value, 1, MAX_TOKENS)?)
            }
            "label_all_tokens" => {
                let flag = value
                    .as_bool()
                    .ok_or_else(|| bad(key, "`label_all_tokens` must be true or false"))?;
                self.label_all_tokens = Some(flag);
            }
            "max_prompt_length" => {
                self.max_prompt_length = Some(int_in(key, value, 1, MAX_TOKENS - 1)?)
            }
            _ => return self.image.parse_key(key, value),
        }
        Ok(())
    }

    fn given(&self, key: &str) -> bool {
        match key {
            "doc_stride" => self.doc_stride.is_some(),
            "max_answer_length" => self.max_answer_length.is_some(),
            "label_all_tokens" => self.label_all_tokens.is_some(),
            "max_prompt_length" => self.max_prompt_length.is_some(),
            _ => self.image.given(key),
        }
    }

    /// The length checks: `doc_stride` and `max_prompt_length` must be shorter than
    /// `max_seq_len` (a stride as long as the window would never advance, and run_qa
    /// refuses it; a prompt cap that long can never cut anything).
    pub(super) fn check_lengths(&self, max_seq_len: usize) -> Result<(), HyperparamError> {
        if let Some(stride) = self.doc_stride.filter(|s| *s >= max_seq_len) {
            return Err(bad(
                "doc_stride",
                format!(
                    "`doc_stride` ({stride}) must be less than `max_seq_len` ({max_seq_len}): consecutive windows share `doc_stride` tokens of context, so each window must hold more than that besides the question"
                ),
            ));
        }
        if let Some(prompt) = self.max_prompt_length.filter(|p| *p >= max_seq_len) {
            return Err(bad(
                "max_prompt_length",
                format!(
                    "`max_prompt_length` ({prompt}) must be less than `max_seq_len` ({max_seq_len}), which already bounds prompt + output"
                ),
            ));
        }
        Ok(())
    }

    /// Refuses an option of another task than `task`, then checks the lengths against the
    /// `max_seq_len` the job will run with.
    pub(super) fn check_task(&self, task: Task, max_seq_len: usize) -> Result<(), HyperparamError> {
        let keys = OWNERS.iter().map(|(key, _)| *key).chain(IMAGE_KEYS);
        if let Some((key, owner)) = keys
            .filter_map(|key| Some((key, Self::owner(key)?)))
            .find(|(key, owner)| *owner != task && self.given(key))
        {
            return Err(bad(
                key,
                format!(
                    "`{key}` is a hyperparameter of {}; this job's training data is {} data",
                    data_of(owner),
                    task.label()
                ),
            ));
        }
        self.check_lengths(max_seq_len)
    }

    /// The options `task` runs with: its own keys resolved to run_qa's / run_ner's defaults
    /// when not given, every other key `None`. `doc_stride` stays `None` when not given: its
    /// default depends on the window the model allows ([`TaskOptions::doc_stride_for`]).
    pub(super) fn resolve(&self, task: Task) -> TaskOptions {
        match task {
            Task::QuestionAnswering => TaskOptions {
                doc_stride: self.doc_stride,
                max_answer_length: Some(
                    self.max_answer_length.unwrap_or(DEFAULT_MAX_ANSWER_LENGTH),
                ),
                ..TaskOptions::default()
            },
            Task::TokenClassification => TaskOptions {
                label_all_tokens: Some(self.label_all_tokens.unwrap_or(false)),
                ..TaskOptions::default()
            },
            Task::Dpo => TaskOptions {
                max_prompt_length: self.max_prompt_length,
                ..TaskOptions::default()
            },
            Task::ImageClassification => TaskOptions {
                image: self.image.resolve(),
                ..TaskOptions::default()
            },
            _ => TaskOptions::default(),
        }
    }

    /// QA's stride for windows of `window` tokens: the one given, else run_qa's 128 but at
    /// most a third of the window (a model with fewer positions than `max_seq_len`, or a
    /// short `max_seq_len`, still leaves room for the question).
    pub fn doc_stride_for(&self, window: usize) -> usize {
        self.doc_stride
            .unwrap_or_else(|| DEFAULT_DOC_STRIDE.min(window / 3))
    }

    /// QA's longest answer (run_qa's default on a config that predates the option).
    pub fn max_answer_length(&self) -> usize {
        self.max_answer_length.unwrap_or(DEFAULT_MAX_ANSWER_LENGTH)
    }

    /// NER's sub-word labelling (run_ner's default, first sub-word only, when unset).
    pub fn label_all_tokens(&self) -> bool {
        self.label_all_tokens.unwrap_or(false)
    }
}

#[cfg(test)]
#[path = "task_options_tests.rs"]
mod tests;
