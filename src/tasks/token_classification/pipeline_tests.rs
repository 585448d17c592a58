#![allow(clippy::unwrap_used)]

use super::*;
use crate::zoo::testing::write_tiny_bert;
use crate::zoo::TextTokenizer;

const LABELS: [&str; 3] = ["O", "B-LOC", "I-LOC"];

/// The tiny WordPiece tokenizer with BERT's WordPiece decoder (as MiniLM's tokenizer.json has).
fn tagger(max_len: usize) -> EntityTagger {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_bert(dir.path(), 1).unwrap();
    let mut tokenizer = TextTokenizer::from_dir(dir.path()).unwrap().inner().clone();
    tokenizer.with_decoder(Some(tokenizers::decoders::wordpiece::WordPiece::default()));
    EntityTagger::new(
        &tokenizer,
        LABELS.iter().map(|s| s.to_string()).collect(),
        max_len,
    )
}

/// `Zürich is € nice`: [CLS] z ##u ##r ##i ##c ##h is [UNK] nice [SEP].
const TEXT: &str = "Zürich is € nice";

/// One logits row per token: a 4 on the chosen label, 0 elsewhere.
fn logits(chosen: &[usize]) -> Vec<f32> {
    chosen
        .iter()
        .flat_map(|&label| (0..3).map(move |i| if i == label { 4.0 } else { 0.0 }))
        .collect()
}

/// [CLS] and [SEP] say B-LOC (ignored: special tokens); z B-LOC, ##u…##h I-LOC, is O,
/// € B-LOC, nice I-LOC.
const CHOSEN: [usize; 11] = [1, 1, 2, 2, 2, 2, 2, 0, 1, 2, 1];

fn score() -> f32 {
    4f32.exp() / (4f32.exp() + 2.0)
}

#[test]
fn none_gives_one_entity_per_non_o_token_with_character_offsets() {
    let tagger = tagger(64);
    let encoded = tagger.encode(TEXT).unwrap();
    assert_eq!(encoded.ids.len(), 11);
    let entities = tagger
        .entities(TEXT, &encoded, &logits(&CHOSEN), Aggregation::None)
        .unwrap();
    let got: Vec<(&str, &str, usize, usize)> = entities
        .iter()
        .map(|e| (e.label.as_str(), e.word.as_str(), e.start, e.end))
        .collect();
    assert_eq!(
        got,
        [
            ("B-LOC", "z", 0, 1),
            ("I-LOC", "##u", 1, 2),
            ("I-LOC", "##r", 2, 3),
            ("I-LOC", "##i", 3, 4),
            ("I-LOC", "##c", 4, 5),
            ("I-LOC", "##h", 5, 6),
            // An unknown token's word is the text it covers; offsets count characters.
            ("B-LOC", "€", 10, 11),
            ("I-LOC", "nice", 12, 16),
        ]
    );
    assert!(entities.iter().all(|e| (e.score - score()).abs() < 1e-6));
    // `index` is the token's place in the input ids, [CLS] = 0 (€ is the 9th token).
    let indices: Vec<Option<usize>> = entities.iter().map(|e| e.index).collect();
    let want = [1, 2, 3, 4, 5, 6, 8, 9].map(Some);
    assert_eq!(indices, want);
}

#[test]
fn simple_groups_b_and_i_of_one_type_and_decodes_the_word() {
    let tagger = tagger(64);
    let encoded = tagger.encode(TEXT).unwrap();
    let mut rows = logits(&CHOSEN);
    // ##u is less sure: the group's score is the mean.
    rows[2 * 3..3 * 3].copy_from_slice(&[0.0, 0.0, 2.0]);
    let entities = tagger
        .entities(TEXT, &encoded, &rows, Aggregation::Simple)
        .unwrap();
    let got: Vec<(&str, &str, usize, usize)> = entities
        .iter()
        .map(|e| (e.label.as_str(), e.word.as_str(), e.start, e.end))
        .collect();
    assert_eq!(got, [("LOC", "zurich", 0, 6), ("LOC", "€ nice", 10, 16)]);
    assert!(entities.iter().all(|e| e.index.is_none()));
    let unsure = 2f32.exp() / (2f32.exp() + 2.0);
    let mean = (5.0 * score() + unsure) / 6.0;
    assert!((entities[0].score - mean).abs() < 1e-6);
    assert_eq!(&TEXT[TEXT.char_indices().nth(10).unwrap().0..], "€ nice");
}

#[test]
fn grouping_follows_the_pipelines_rules() {
    let tagger = tagger(64);
    let token = |label: &str, start: usize| TokenEntity {
        label: label.to_string(),
        score: 0.5,
        index: Some(start + 1),
        word: format!("w{start}"),
        start,
        end: start + 1,
    };
    let labels = [
        "I-PER", "I-PER", "B-PER", "I-LOC", "E-LOC", "O", "PER", "PER",
    ];
    let tokens = labels
        .iter()
        .enumerate()
        .map(|(i, l)| token(l, i))
        .collect();
    let groups = tagger.group(tokens).unwrap();
    let got: Vec<(&str, usize, usize)> = groups
        .iter()
        .map(|g| (g.label.as_str(), g.start, g.end))
        .collect();
    assert_eq!(
        got,
        [
            // An I- run starts a group; B- always starts one; a type change splits.
            ("PER", 0, 2),
            ("PER", 2, 3),
            ("LOC", 3, 4),
            // `E-LOC` is no B-/I- tag: its own type, named after its first `-`.
            ("LOC", 4, 5),
            ("O", 5, 6),
            // Labels without a prefix continue a group of the same label.
            ("PER", 6, 8),
        ]
    );
    assert_eq!(groups[0].word, "w0 w1");
}

#[test]
fn long_texts_are_truncated_and_wrong_logit_shapes_are_errors() {
    let tagger = tagger(8);
    // [CLS] z ##u ##r ##i ##c ##h [SEP]: the first 6 tokens, the specials kept.
    let truncated = tagger.encode(TEXT).unwrap();
    assert_eq!(truncated.ids.len(), 8);
    let entities = tagger
        .entities(TEXT, &truncated, &logits(&CHOSEN[..8]), Aggregation::Simple)
        .unwrap();
    let got: Vec<(&str, &str, usize, usize)> = entities
        .iter()
        .map(|e| (e.label.as_str(), e.word.as_str(), e.start, e.end))
        .collect();
    assert_eq!(got, [("LOC", "zurich", 0, 6)]);
    let short = tagger.encode("nice").unwrap();
    assert_eq!(short.ids.len(), 3);
    assert_eq!(
        tagger.entities("nice", &short, &[0.0; 8], Aggregation::None),
        Err(PipelineError::LogitShape {
            got: 8,
            tokens: 3,
            labels: 3
        })
    );
}

#[test]
fn aggregation_reads_as_the_wire_spells_it() {
    assert_eq!(
        serde_json::from_str::<Aggregation>("\"none\"").unwrap(),
        Aggregation::None
    );
    assert_eq!(
        serde_json::from_str::<Aggregation>("\"simple\"").unwrap(),
        Aggregation::Simple
    );
    assert!(serde_json::from_str::<Aggregation>("\"first\"").is_err());
    assert_eq!(Aggregation::default(), Aggregation::Simple);
}
