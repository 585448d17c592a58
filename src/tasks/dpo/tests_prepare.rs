//! Token layout of preference rows on the tiny decoder's byte-level BPE and ChatML template.

use std::path::{Path, PathBuf};

use super::prepare::{PreferenceSequence, PreferenceTokenizer};
use crate::domain::dataset::{ChatExample, ChatMessage, ChatRole, PreferenceExample};
use crate::zoo::decoder::DecoderArch;

pub(crate) fn message(role: ChatRole, content: &str) -> ChatMessage {
    ChatMessage {
        role,
        content: content.to_string(),
        name: None,
        weight: None,
        tool_calls: None,
        tool_call_id: None,
        function_call: None,
    }
}

pub(crate) fn preference(prompt: &str, preferred: &str, non_preferred: &str) -> PreferenceExample {
    PreferenceExample {
        input: ChatExample {
            messages: vec![message(ChatRole::User, prompt)],
            tools: None,
        },
        preferred: message(ChatRole::Assistant, preferred),
        non_preferred: message(ChatRole::Assistant, non_preferred),
    }
}

pub(crate) fn tiny_decoder(dir: &Path, arch: DecoderArch) -> PathBuf {
    let base = dir.join("base");
    crate::zoo::testing::write_tiny_decoder(&base, arch, 5).expect("tiny decoder");
    base
}

fn encode(tok: &PreferenceTokenizer, text: &str) -> Vec<u32> {
    tok.tokenizer()
        .encode(text, false)
        .expect("encode")
        .get_ids()
        .to_vec()
}

#[test]
fn prompt_has_the_generation_prompt_and_completions_end_with_end_of_turn() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = PreferenceTokenizer::from_dir(&tiny_decoder(dir.path(), DecoderArch::Llama), &[])
        .expect("tokenizer");
    let row = tok
        .tokenize(
            &preference("Capital of France?", "Paris.", "Lyon, sure."),
            1,
        )
        .expect("row");
    let prompt_text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(row.prompt, encode(&tok, prompt_text));
    assert_eq!(row.chosen, encode(&tok, "Paris.<|im_end|>"));
    assert_eq!(row.rejected, encode(&tok, "Lyon, sure.<|im_end|>"));
    // "Paris." is P a r is . (one merge), then <|im_end|> (id 2); the template's "\n"
    // after it is not part of the completion.
    assert_eq!(row.chosen.len(), 6);
    assert_eq!(row.chosen.last(), Some(&2));
    assert_eq!(row.rejected.last(), Some(&2));
    // The prompt ends with the generation prompt: the last <|im_start|> (id 1) opens
    // "assistant\n" (a s s is t an t, then "\n": 8 tokens after it).
    assert_eq!(row.prompt.iter().filter(|&&id| id == 1).count(), 3);
    let last_start = row
        .prompt
        .iter()
        .rposition(|&id| id == 1)
        .expect("im_start");
    assert_eq!(row.prompt.len() - last_start, 9);
    let tail = tok
        .tokenizer()
        .decode(&row.prompt[last_start..], false)
        .expect("decode");
    assert_eq!(tail, "<|im_start|>assistant\n");
    // prompt + chosen is exactly the conversation rendered with the answer, minus the
    // trailing newline.
    let full = tok
        .tokenizer()
        .decode(&[row.prompt.clone(), row.chosen.clone()].concat(), false)
        .expect("decode");
    assert_eq!(full, format!("{prompt_text}Paris.<|im_end|>"));

    let prepared = tok
        .prepare(
            &[preference("Capital of France?", "Paris.", "Lyon, sure.")],
            512,
        )
        .expect("prepare");
    let pair = &prepared.pairs[0];
    assert_eq!(prepared.truncated, 0);
    assert_eq!(pair.chosen.n_prompt, row.prompt.len());
    assert_eq!(pair.chosen.completion(), row.chosen.as_slice());
    assert_eq!(pair.rejected.completion(), row.rejected.as_slice());
    assert_eq!(pair.chosen.ids[..pair.chosen.n_prompt], row.prompt[..]);
    assert_eq!(pair.rejected.ids[..pair.rejected.n_prompt], row.prompt[..]);
}

#[test]
fn system_messages_and_tools_reach_the_template() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = PreferenceTokenizer::from_dir(&tiny_decoder(dir.path(), DecoderArch::Qwen2), &[])
        .expect("tokenizer");
    let mut example = preference("Hi", "Hello!", "Go away.");
    example
        .input
        .messages
        .insert(0, message(ChatRole::System, "Be kind."));
    let row = tok.tokenize(&example, 1).expect("row");
    let prompt = tok.tokenizer().decode(&row.prompt, false).expect("decode");
    assert_eq!(
        prompt,
        "<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert_eq!(row.chosen, encode(&tok, "Hello!<|im_end|>"));
}

#[test]
fn truncation_cuts_the_prompt_from_the_left_first_then_the_completion() {
    let prompt: Vec<u32> = (10..20).collect();
    let completion: Vec<u32> = vec![50, 51, 52, 53];
    let (fits, cut) = PreferenceSequence::truncated(&prompt, &completion, 14);
    assert!(!cut);
    assert_eq!(fits.ids.len(), 14);
    assert_eq!(fits.n_prompt, 10);

    let (left, cut) = PreferenceSequence::truncated(&prompt, &completion, 8);
    assert!(cut);
    assert_eq!(left.ids, vec![16, 17, 18, 19, 50, 51, 52, 53]);
    assert_eq!(left.n_prompt, 4);

    // One prompt token always stays; the completion then keeps its start.
    let (both, _) = PreferenceSequence::truncated(&prompt, &completion, 3);
    assert_eq!(both.ids, vec![19, 50, 51]);
    assert_eq!(both.n_prompt, 1);
    assert_eq!(both.completion(), &[50, 51]);
}

#[test]
fn prepare_counts_truncated_pairs_and_truncates_each_side_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tok = PreferenceTokenizer::from_dir(&tiny_decoder(dir.path(), DecoderArch::Llama), &[])
        .expect("tokenizer");
    let short = preference("Hi", "Yo.", "No.");
    let long = preference("Hi", "Yo.", "No no no no no no no no no no no no no no no.");
    let full = tok.tokenize(&long, 2).expect("row");
    let max_length = full.prompt.len() + full.chosen.len() + 2;
    assert!(full.prompt.len() + full.rejected.len() > max_length);
    let prepared = tok.prepare(&[short, long], max_length).expect("prepare");
    assert_eq!(prepared.truncated, 1);
    let pair = &prepared.pairs[1];
    // The chosen side fits and keeps its whole prompt; the rejected side loses prompt
    // tokens from the left and keeps its whole completion.
    assert_eq!(pair.chosen.n_prompt, full.prompt.len());
    assert_eq!(pair.rejected.ids.len(), max_length);
    assert_eq!(pair.rejected.completion(), full.rejected.as_slice());
    let dropped = full.prompt.len() + full.rejected.len() - max_length;
    assert_eq!(pair.rejected.n_prompt, full.prompt.len() - dropped);
    assert_eq!(
        pair.rejected.ids[..pair.rejected.n_prompt],
        full.prompt[dropped..]
    );
}

#[test]
fn a_model_without_chat_template_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), DecoderArch::Llama);
    let config_path = base.join("tokenizer_config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("read")).expect("json");
    config
        .as_object_mut()
        .expect("object")
        .remove("chat_template");
    std::fs::write(&config_path, config.to_string()).expect("write");
    let err = PreferenceTokenizer::from_dir(&base, &[])
        .err()
        .expect("refused");
    assert!(err.to_string().contains("no chat template"), "{err}");
}

#[test]
fn max_prompt_length_keeps_the_end_of_a_long_prompt_as_trl_did() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), DecoderArch::Llama);
    let short = preference("Hi", "Yo.", "No.");
    let long = preference("Tell me a long story about the sea, please.", "Yo.", "No.");
    let plain = PreferenceTokenizer::from_dir(&base, &[]).expect("tokenizer");
    let short_prompt = plain.tokenize(&short, 1).expect("row").prompt;
    let full = plain.tokenize(&long, 2).expect("row");
    assert!(full.prompt.len() > short_prompt.len());
    // Without the option only max_length cuts, and 512 cuts nothing.
    let uncut = plain
        .prepare(&[short.clone(), long.clone()], 512)
        .expect("prepare");
    assert_eq!((uncut.prompts_cut, uncut.truncated), (0, 0));
    assert_eq!(uncut.pairs[1].chosen.n_prompt, full.prompt.len());

    let keep = short_prompt.len();
    let capped = PreferenceTokenizer::from_dir(&base, &[])
        .expect("tokenizer")
        .with_max_prompt_length(Some(keep));
    let prepared = capped.prepare(&[short, long], 512).expect("prepare");
    // The short prompt fits; the long one keeps its last `keep` tokens (TRL's
    // `prompt_input_ids[-max_prompt_length:]`), and both completions stay whole.
    assert_eq!((prepared.prompts_cut, prepared.truncated), (1, 0));
    assert_eq!(prepared.pairs[0].chosen.n_prompt, keep);
    for side in [&prepared.pairs[1].chosen, &prepared.pairs[1].rejected] {
        assert_eq!(side.n_prompt, keep);
        assert_eq!(side.ids[..keep], full.prompt[full.prompt.len() - keep..]);
    }
    assert_eq!(
        prepared.pairs[1].chosen.completion(),
        full.chosen.as_slice()
    );
    assert_eq!(
        prepared.pairs[1].rejected.completion(),
        full.rejected.as_slice()
    );
}
