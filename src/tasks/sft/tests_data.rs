//! Data preparation on the tiny decoder's byte-level BPE tokenizer and ChatML template.

use std::path::{Path, PathBuf};

use super::prepare::{SftExamples, SftTokenizer};
use crate::domain::dataset::{ChatExample, ChatMessage, ChatRole, PromptCompletion};
use crate::train::TrainError;
use crate::zoo::decoder::DecoderArch;

pub(crate) fn message(role: ChatRole, content: &str, weight: Option<u8>) -> ChatMessage {
    ChatMessage {
        role,
        content: content.to_string(),
        name: None,
        weight,
        tool_calls: None,
        tool_call_id: None,
        function_call: None,
    }
}

/// system + user + assistant (weight 0) + user + assistant.
pub(crate) fn two_turn_chat() -> ChatExample {
    ChatExample {
        messages: vec![
            message(ChatRole::System, "Answer briefly.", None),
            message(ChatRole::User, "Capital of France?", None),
            message(ChatRole::Assistant, "Lyon.", Some(0)),
            message(ChatRole::User, "Are you sure?", None),
            message(ChatRole::Assistant, "Sorry, it is Paris.", None),
        ],
        tools: None,
    }
}

fn tiny(dir: &Path) -> PathBuf {
    let base = dir.join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 5).expect("tiny decoder");
    base
}

fn decode(tok: &SftTokenizer, ids: &[u32]) -> String {
    tok.tokenizer().decode(ids, false).expect("decode")
}

#[test]
fn only_weighted_assistant_turns_are_trained() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = SftTokenizer::from_dir(&tiny(dir.path()), &[]).expect("tokenizer");
    let example = tok.chat(&two_turn_chat(), 1).expect("chat");
    assert_eq!(example.ids.len(), example.trained.len());
    let trained_ids: Vec<u32> = example
        .ids
        .iter()
        .zip(&example.trained)
        .filter(|(_, &t)| t)
        .map(|(&id, _)| id)
        .collect();
    assert_eq!(
        decode(&tok, &trained_ids),
        "Sorry, it is Paris.<|im_end|>",
        "the second answer and its end-of-turn token, nothing else"
    );
    // The trained tokens are one contiguous run ending at <|im_end|> (id 2), followed
    // only by the template's newline.
    let first = example.trained.iter().position(|&t| t).expect("trained");
    let last = example.trained.iter().rposition(|&t| t).expect("trained");
    assert_eq!(last - first + 1, trained_ids.len());
    assert_eq!(example.ids[last], 2);
    assert_eq!(last, example.ids.len() - 2);
    let alone = tok
        .tokenizer()
        .encode("Sorry, it is Paris.<|im_end|>", false)
        .expect("encode");
    assert_eq!(trained_ids, alone.get_ids());
    assert_eq!(trained_ids.len(), 16);
    assert_eq!(example.n_targets(), 16);
    // The weight-0 answer is in the input but never a target.
    let text = decode(&tok, &example.ids);
    assert!(
        text.contains("<|im_start|>assistant\nLyon.<|im_end|>"),
        "{text}"
    );
}

#[test]
fn prompt_completion_trains_completion_and_eos() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = SftTokenizer::from_dir(&tiny(dir.path()), &[]).expect("tokenizer");
    let pair = PromptCompletion {
        prompt: "Q: 2+2? A:".into(),
        completion: " 4".into(),
    };
    let example = tok.prompt_completion(&pair).expect("pair");
    let prompt_len = tok
        .tokenizer()
        .encode("Q: 2+2? A:", false)
        .expect("encode")
        .len();
    assert_eq!(prompt_len, 10);
    // " 4" is two byte tokens (no merge), then eos <|im_end|> = 2.
    assert_eq!(example.ids.len(), prompt_len + 3);
    assert_eq!(example.ids.last(), Some(&2));
    assert_eq!(
        example.trained,
        (0..prompt_len + 3)
            .map(|t| t >= prompt_len)
            .collect::<Vec<_>>()
    );
    assert_eq!(example.n_targets(), 3);
}

#[test]
fn long_examples_are_truncated_and_empty_ones_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = SftTokenizer::from_dir(&tiny(dir.path()), &[]).expect("tokenizer");
    let short = PromptCompletion {
        prompt: "a".into(),
        completion: "b".into(),
    };
    let long_completion = PromptCompletion {
        prompt: "a".into(),
        completion: "bcdefghijklmnop".into(),
    };
    let long_prompt = PromptCompletion {
        prompt: "abcdefghijklmnop".into(),
        completion: "q".into(),
    };
    let set = SftExamples::PromptCompletion(vec![short, long_completion, long_prompt]);
    let prepared = tok.prepare(&set, 8).expect("prepare");
    assert_eq!(prepared.truncated, 2);
    assert_eq!(
        prepared.dropped, 1,
        "the long prompt leaves no completion token"
    );
    assert_eq!(prepared.examples.len(), 2);
    assert_eq!(prepared.examples[1].ids.len(), 8);
    assert_eq!(prepared.examples[1].n_targets(), 7);
    assert_eq!(prepared.examples[0].n_targets(), 2);
}

fn rewrite_template(base: &Path, template: Option<&str>) {
    let path = base.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    match template {
        Some(t) => config["chat_template"] = t.into(),
        None => {
            config
                .as_object_mut()
                .expect("object")
                .remove("chat_template");
        }
    }
    std::fs::write(&path, serde_json::to_vec(&config).expect("json")).expect("write");
}

#[test]
fn chat_without_a_template_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny(dir.path());
    rewrite_template(&base, None);
    let tok = SftTokenizer::from_dir(&base, &[]).expect("tokenizer");
    let err = tok
        .prepare(&SftExamples::Chat(vec![two_turn_chat()]), 64)
        .expect_err("no template");
    assert!(matches!(err, TrainError::InvalidData(_)));
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn templates_that_are_not_prefix_stable_are_rejected() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny(dir.path());
    // Marks the last message: rendering a prefix marks a different one.
    rewrite_template(
        &base,
        Some("{% for m in messages %}{% if loop.last %}LAST {% endif %}{{ m['content'] }}\n{% endfor %}"),
    );
    let tok = SftTokenizer::from_dir(&base, &[]).expect("tokenizer");
    let chats = SftExamples::Chat(vec![two_turn_chat(), two_turn_chat()]);
    let err = tok.prepare(&chats, 64).expect_err("not prefix stable");
    assert!(err.to_string().starts_with("Example 1: "), "{err}");
    assert!(err.to_string().contains("message 5"), "{err}");
}
