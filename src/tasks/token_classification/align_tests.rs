#![allow(clippy::unwrap_used)]

use std::path::Path;

use candle_core::Device;

use super::*;
use crate::zoo::testing::write_tiny_bert;
use crate::zoo::TextTokenizer;

fn sentence(tokens: &[&str], tags: &[&str]) -> TokenTagsExample {
    TokenTagsExample {
        tokens: tokens.iter().map(|s| s.to_string()).collect(),
        tags: tags.iter().map(|s| s.to_string()).collect(),
    }
}

fn labels(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn tiny_tokenizer(dir: &Path) -> Tokenizer {
    write_tiny_bert(dir, 3).unwrap();
    TextTokenizer::from_dir(dir).unwrap().inner().clone()
}

fn options(max_seq_len: usize, label_all_tokens: bool) -> AlignOptions {
    AlignOptions {
        max_seq_len,
        label_all_tokens,
    }
}

#[test]
fn the_tag_goes_on_the_first_sub_word_only() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tiny_tokenizer(dir.path());
    let label_set = labels(&["O", "B-LOC", "I-LOC"]);
    // `Paris` is not in the tiny vocabulary: p ##a ##r ##i ##s.
    let example = sentence(&["Paris", "is", "nice"], &["B-LOC", "O", "O"]);
    let aligner = TagAligner::new(&tokenizer, &label_set, options(64, false)).unwrap();
    let aligned = aligner.align(1, &example).unwrap();
    let vocab = crate::zoo::testing::tiny_vocab();
    let id = |token: &str| vocab.iter().position(|v| v == token).unwrap() as u32;
    assert_eq!(
        aligned.ids,
        [
            id("[CLS]"),
            id("p"),
            id("##a"),
            id("##r"),
            id("##i"),
            id("##s"),
            id("is"),
            id("nice"),
            id("[SEP]")
        ]
    );
    let none = None;
    assert_eq!(
        aligned.labels,
        [
            none,
            Some(1),
            none,
            none,
            none,
            none,
            Some(0),
            Some(0),
            none
        ]
    );
    assert_eq!(aligned.labelled(), 3);

    // label_all_tokens: the later sub-words of a `B-LOC` word carry `I-LOC`.
    let all = TagAligner::new(&tokenizer, &label_set, options(64, true)).unwrap();
    assert_eq!(
        all.align(1, &example).unwrap().labels,
        [
            none,
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            Some(0),
            Some(0),
            none
        ]
    );
}

#[test]
fn truncation_keeps_the_final_sep_and_drops_later_words() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tiny_tokenizer(dir.path());
    let label_set = labels(&["O", "B-LOC"]);
    let example = sentence(&["Paris", "is", "nice"], &["B-LOC", "O", "O"]);
    let aligner = TagAligner::new(&tokenizer, &label_set, options(4, false)).unwrap();
    let aligned = aligner.align(1, &example).unwrap();
    assert_eq!(aligned.ids.len(), 4);
    assert_eq!((aligned.ids[0], aligned.ids[3]), (2, 3), "[CLS] … [SEP]");
    assert_eq!(aligned.labels, [None, Some(1), None, None]);
}

#[test]
fn unknown_tags_and_unlabelable_sentences_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tiny_tokenizer(dir.path());
    let aligner = TagAligner::new(&tokenizer, &labels(&["O"]), options(64, false)).unwrap();
    let error = aligner
        .align(7, &sentence(&["a"], &["B-PER"]))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "Example 7: tag `B-PER` is not one of the training tags"
    );
    let error = aligner
        .align(2, &sentence(&[""], &["O"]))
        .unwrap_err()
        .to_string();
    assert!(error.starts_with("Example 2: no word"), "{error}");
    assert!(TagAligner::new(&tokenizer, &labels(&["O"]), options(2, false)).is_err());
}

#[test]
fn collate_pads_ids_and_labels_to_the_longest_sentence() {
    let examples = [
        AlignedExample {
            ids: vec![2, 10, 11, 3],
            labels: vec![None, Some(1), Some(0), None],
        },
        AlignedExample {
            ids: vec![2, 12, 3],
            labels: vec![None, Some(2), None],
        },
    ];
    let batch = collate_tagged(&examples, &[1, 0], 0, &Device::Cpu).unwrap();
    let ids: Vec<Vec<u32>> = batch.inputs.input_ids.to_vec2().unwrap();
    assert_eq!(ids, vec![vec![2, 12, 3, 0], vec![2, 10, 11, 3]]);
    assert_eq!(
        batch.labels,
        [None, Some(2), None, None, None, Some(1), Some(0), None]
    );
    assert_eq!(batch.labelled(), 3);
    assert!(collate_tagged(&examples, &[2], 0, &Device::Cpu).is_err());
}

/// MiniLM-L6's own tokenizer.json (bert-base-uncased WordPiece); skipped without the assets.
#[test]
fn minilm_tokenizer_aligns_like_transformers() {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping the MiniLM tokenizer alignment test");
        return;
    };
    let path = Path::new(&assets).join("models/sentence-transformers/all-MiniLM-L6-v2");
    assert!(path.exists(), "TEMPER_ASSETS set but {path:?} is missing");
    let tokenizer = TextTokenizer::from_dir(&path).unwrap().inner().clone();
    let label_set = labels(&["O", "B-LOC", "B-ORG", "I-ORG"]);
    let example = sentence(
        &["HuggingFace", "lives", "in", "Brooklyn"],
        &["B-ORG", "O", "O", "B-LOC"],
    );
    let aligner = TagAligner::new(&tokenizer, &label_set, options(128, false)).unwrap();
    let aligned = aligner.align(1, &example).unwrap();
    // bert-base-uncased ids: hugging ##face lives in brooklyn.
    assert_eq!(aligned.ids, [101, 17662, 12172, 3268, 1999, 6613, 102]);
    assert_eq!(
        aligned.labels,
        [None, Some(2), None, Some(0), Some(0), Some(1), None]
    );
    let all = TagAligner::new(&tokenizer, &label_set, options(128, true)).unwrap();
    assert_eq!(
        all.align(1, &example).unwrap().labels,
        [None, Some(2), Some(3), Some(0), Some(0), Some(1), None]
    );
}

#[test]
fn the_jobs_label_all_tokens_changes_the_labelled_positions_of_a_training_batch() {
    use crate::domain::hyperparams::HyperparamRequest;
    use crate::domain::task::Task;

    let dir = tempfile::tempdir().unwrap();
    let tokenizer = tiny_tokenizer(dir.path());
    let label_set = labels(&["O", "B-LOC", "I-LOC"]);
    // `Paris` is p ##a ##r ##i ##s in the tiny vocabulary.
    let examples = [
        sentence(&["Paris", "is", "nice"], &["B-LOC", "O", "O"]),
        sentence(&["nice"], &["O"]),
    ];
    let batch_for = |request: serde_json::Value| {
        let request = HyperparamRequest::parse(request.as_object().unwrap()).unwrap();
        let config = request.resolve(Task::TokenClassification, 2, 0);
        let aligner =
            TagAligner::new(&tokenizer, &label_set, AlignOptions::for_training(&config)).unwrap();
        let aligned: Vec<AlignedExample> = examples
            .iter()
            .enumerate()
            .map(|(i, example)| aligner.align(i + 1, example).unwrap())
            .collect();
        collate_tagged(&aligned, &[0, 1], 0, &Device::Cpu).unwrap()
    };
    let first_only = batch_for(serde_json::json!({"max_seq_len": 64}));
    let every = batch_for(serde_json::json!({"max_seq_len": 64, "label_all_tokens": true}));
    // Row 0 of the B × T labels: the four later sub-words of `Paris` get `I-LOC` only
    // with label_all_tokens; row 1 (one word, one sub-word) is the same either way.
    let none = None;
    let width = first_only.labels.len() / 2;
    assert_eq!(
        first_only.labels[..width],
        [
            none,
            Some(1),
            none,
            none,
            none,
            none,
            Some(0),
            Some(0),
            none
        ]
    );
    assert_eq!(
        every.labels[..width],
        [
            none,
            Some(1),
            Some(2),
            Some(2),
            Some(2),
            Some(2),
            Some(0),
            Some(0),
            none
        ]
    );
    assert_eq!(first_only.labels[width..], every.labels[width..]);
    assert_eq!((first_only.labelled(), every.labelled()), (4, 8));
}
