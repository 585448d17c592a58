//! Token classification against transformers: `tests/fixtures/token_tiny.json` holds what
//! `scripts/make_token_fixture.py` computed with transformers (and PEFT for the adapter) on
//! the tiny exported models of `tasks::parity_models`. Here the same models are written
//! again, loaded back the way they were exported (a merged directory's `model.safetensors`;
//! a base plus `adapter_model.safetensors` with the LoRA of its `adapter_config.json`), and
//! temper's token ids, logits, first-sub-word labels and pipeline entities must be
//! transformers'. Wrong head names or a lost adapter change the logits; an offset off by one
//! changes the entities' `start`/`end`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, IndexOp};
use serde::Deserialize;

use super::pipeline::{Aggregation, EntityTagger, TokenEntity};
use super::{AlignOptions, TagAligner, TokenClassifier, TokenClassifierSpec};
use crate::domain::dataset::TokenTagsExample;
use crate::tasks::parity_models::{
    exported_weights, write_parity_models, ParityModel, ParityTask, PARITY_LABELS,
};
use crate::zoo::{collate, TextTokenizer};

const FIXTURE: &str = include_str!("../../../tests/fixtures/token_tiny.json");
/// transformers and temper sum in different orders; the fixture's smallest margin between
/// a token's best and second-best logit is far above this (checked below).
const TOLERANCE: f32 = 1e-4;
/// What the fixture's margins must exceed for an arg-max to be a safe comparison.
const MIN_MARGIN: f32 = 100.0 * TOLERANCE;
/// More tokens than any fixture text has.
const MAX_LEN: usize = 128;

#[derive(Deserialize)]
struct Fixture {
    models: Vec<FixtureModel>,
}

#[derive(Deserialize)]
struct FixtureModel {
    name: String,
    adapter: bool,
    id2label: HashMap<String, String>,
    texts: Vec<TextCase>,
    words: Vec<WordsCase>,
}

#[derive(Deserialize)]
struct TextCase {
    text: String,
    input_ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    logits: Vec<Vec<f32>>,
    predicted: Vec<String>,
    min_top2_margin: f32,
    pipeline_none: Vec<PipelineEntity>,
    pipeline_simple: Vec<PipelineEntity>,
}

/// One entity of transformers' pipeline: `entity` (aggregation none) or `entity_group`.
#[derive(Deserialize)]
struct PipelineEntity {
    #[serde(alias = "entity_group")]
    entity: String,
    score: f32,
    word: String,
    start: usize,
    end: usize,
}

#[derive(Deserialize)]
struct WordsCase {
    words: Vec<String>,
    input_ids: Vec<u32>,
    word_ids: Vec<Option<usize>>,
    logits: Vec<Vec<f32>>,
    min_top2_margin: f32,
    word_labels: Vec<Option<String>>,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("fixture")
}

/// The model as temper loads what was exported, and its tokenizer. The head gets a
/// different seed than the writer's: every weight must come from the files.
fn load(root: &Path, model: &ParityModel) -> (TokenClassifier, TextTokenizer) {
    let model_dir = root.join(&model.model_dir);
    let (lora, weights) = exported_weights(root, model).expect("exported weights");
    let spec = TokenClassifierSpec {
        num_labels: PARITY_LABELS.len(),
        lora,
        classifier_dropout: None,
    };
    let classifier =
        TokenClassifier::from_pretrained(&model_dir, &spec, &Device::Cpu, 1).expect("model");
    let tensors = candle_core::safetensors::load(weights, &Device::Cpu).expect("weights");
    classifier.load_trainable(&tensors).expect("load weights");
    let tokenizer = TextTokenizer::from_dir(&model_dir).expect("tokenizer");
    (classifier, tokenizer)
}

/// The labels the exported model carries: `id2label` of a merged directory's config, the
/// manifest's for an adapter (its base has none).
fn labels_of(root: &Path, model: &ParityModel) -> Vec<String> {
    if model.adapter_dir.is_some() {
        return model.labels.clone();
    }
    let config =
        std::fs::read_to_string(root.join(&model.model_dir).join("config.json")).expect("config");
    let config: serde_json::Value = serde_json::from_str(&config).expect("config json");
    (0..PARITY_LABELS.len())
        .map(|i| {
            config["id2label"][i.to_string()]
                .as_str()
                .expect("label")
                .to_string()
        })
        .collect()
}

/// Logits of each sequence (one batch, padded), row-major `tokens × labels`.
fn logits(model: &TokenClassifier, pad_id: u32, sequences: &[&[u32]]) -> Vec<Vec<f32>> {
    let batch = collate(sequences, pad_id, &Device::Cpu).expect("batch");
    let out = model.forward(&batch, false).expect("forward");
    sequences
        .iter()
        .enumerate()
        .map(|(i, ids)| {
            let rows: Vec<Vec<f32>> = out
                .i((i, ..ids.len()))
                .and_then(|t| t.to_vec2())
                .expect("logits");
            rows.concat()
        })
        .collect()
}

fn assert_close(ours: &[f32], theirs: &[Vec<f32>], what: &str) {
    let theirs = theirs.concat();
    assert_eq!(ours.len(), theirs.len(), "{what}: logit count");
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            (a - b).abs() < TOLERANCE,
            "{what}: logit {i}: {a} vs transformers' {b}; if the parity writer changed, rerun \
             scripts/make_token_fixture.py"
        );
    }
}

fn argmax_labels(logits: &[f32], labels: &[String]) -> Vec<String> {
    logits
        .chunks(labels.len())
        .map(|row| {
            let best = (0..row.len())
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .expect("a label");
            labels[best].clone()
        })
        .collect()
}

fn assert_entities(ours: &[TokenEntity], theirs: &[PipelineEntity], what: &str) {
    let key = |e: (&str, &str, usize, usize)| (e.0.to_string(), e.1.to_string(), e.2, e.3);
    let ours_keys: Vec<_> = ours
        .iter()
        .map(|e| key((&e.label, &e.word, e.start, e.end)))
        .collect();
    let theirs_keys: Vec<_> = theirs
        .iter()
        .map(|e| key((&e.entity, &e.word, e.start, e.end)))
        .collect();
    assert_eq!(ours_keys, theirs_keys, "{what}");
    for (a, b) in ours.iter().zip(theirs) {
        assert!(
            (a.score - b.score).abs() < TOLERANCE,
            "{what}: {} score {} vs transformers' {}",
            a.word,
            a.score,
            b.score
        );
    }
}

fn check_texts(
    model: &TokenClassifier,
    tokenizer: &TextTokenizer,
    labels: &[String],
    case: &FixtureModel,
) {
    let tagger = EntityTagger::new(tokenizer.inner(), labels.to_vec(), MAX_LEN);
    let encoded: Vec<_> = case
        .texts
        .iter()
        .map(|c| tagger.encode(&c.text).expect("encode"))
        .collect();
    let ids: Vec<&[u32]> = encoded.iter().map(|e| e.ids.as_slice()).collect();
    let all_logits = logits(model, tokenizer.pad_id(), &ids);
    for ((text_case, encoded), logits) in case.texts.iter().zip(&encoded).zip(&all_logits) {
        let what = format!("{} {:?}", case.name, text_case.text);
        assert_eq!(encoded.ids, text_case.input_ids, "{what}: token ids");
        let offsets = tokenizer
            .inner()
            .encode_char_offsets(text_case.text.as_str(), true)
            .expect("offsets");
        assert_eq!(offsets.get_offsets(), text_case.offsets, "{what}: offsets");
        assert!(text_case.min_top2_margin > MIN_MARGIN, "{what}: margin");
        assert_close(logits, &text_case.logits, &what);
        assert_eq!(argmax_labels(logits, labels), text_case.predicted, "{what}");
        for (aggregation, theirs) in [
            (Aggregation::None, &text_case.pipeline_none),
            (Aggregation::Simple, &text_case.pipeline_simple),
        ] {
            let ours = tagger
                .entities(&text_case.text, encoded, logits, aggregation)
                .expect("entities");
            assert_entities(&ours, theirs, &format!("{what} {aggregation:?}"));
        }
    }
}

/// Pre-tokenized words as training aligns them: the same ids, the tag on each word's first
/// sub-word (transformers' word ids), and there the same predicted label.
fn check_words(
    model: &TokenClassifier,
    tokenizer: &TextTokenizer,
    labels: &[String],
    case: &FixtureModel,
) {
    let options = AlignOptions {
        max_seq_len: MAX_LEN,
        label_all_tokens: false,
    };
    let aligner = TagAligner::new(tokenizer.inner(), labels, options).expect("aligner");
    for words_case in &case.words {
        let what = format!("{} {:?}", case.name, words_case.words);
        let example = TokenTagsExample {
            tokens: words_case.words.clone(),
            tags: vec!["O".to_string(); words_case.words.len()],
        };
        let aligned = aligner.align(1, &example).expect("align");
        assert_eq!(aligned.ids, words_case.input_ids, "{what}: token ids");
        let first_sub_words: Vec<usize> = (0..words_case.word_ids.len())
            .filter(|&p| {
                words_case.word_ids[p].is_some()
                    && (p == 0 || words_case.word_ids[p - 1] != words_case.word_ids[p])
            })
            .collect();
        let labelled: Vec<usize> = (0..aligned.labels.len())
            .filter(|&p| aligned.labels[p].is_some())
            .collect();
        assert_eq!(labelled, first_sub_words, "{what}: labelled positions");
        assert!(words_case.min_top2_margin > MIN_MARGIN, "{what}: margin");
        let logits = logits(model, tokenizer.pad_id(), &[&aligned.ids]).remove(0);
        assert_close(&logits, &words_case.logits, &what);
        let predicted = argmax_labels(&logits, labels);
        let ours: Vec<&String> = labelled.iter().map(|&p| &predicted[p]).collect();
        let theirs: Vec<&String> = words_case.word_labels.iter().flatten().collect();
        assert_eq!(ours, theirs, "{what}: word labels");
    }
}

#[test]
fn exported_token_classifiers_match_transformers_and_peft() {
    let fixture = fixture();
    let root = tempfile::tempdir().expect("tmp");
    let written = write_parity_models(root.path()).expect("parity models");
    let models: Vec<&ParityModel> = written
        .iter()
        .filter(|m| m.task == ParityTask::TokenClassification)
        .collect();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    let fixture_names: Vec<&str> = fixture.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, fixture_names);
    assert_eq!(names, ["bert-token", "bert-token-lora", "distilbert-token"]);
    for (model, case) in models.iter().zip(&fixture.models) {
        assert_eq!(case.adapter, model.adapter_dir.is_some(), "{}", case.name);
        let labels = labels_of(root.path(), model);
        assert_eq!(labels, PARITY_LABELS, "{}", case.name);
        let mut fixture_labels: Vec<(usize, &String)> = case
            .id2label
            .iter()
            .map(|(id, label)| (id.parse().expect("id"), label))
            .collect();
        fixture_labels.sort();
        let fixture_labels: Vec<&String> = fixture_labels.into_iter().map(|(_, l)| l).collect();
        assert_eq!(
            fixture_labels,
            labels.iter().collect::<Vec<_>>(),
            "{}",
            case.name
        );
        let (classifier, tokenizer) = load(root.path(), model);
        check_texts(&classifier, &tokenizer, &labels, case);
        check_words(&classifier, &tokenizer, &labels, case);
    }
}

/// The comparison above is only as good as the fixture: it must hold entities of both types,
/// groups of several tokens and sub-words split off a word.
#[test]
fn the_token_fixture_exercises_both_entity_types_groups_and_sub_words() {
    let models = fixture().models;
    let texts = || models.iter().flat_map(|m| &m.texts);
    let groups: Vec<&PipelineEntity> = texts().flat_map(|t| &t.pipeline_simple).collect();
    for kind in ["LOC", "PER"] {
        assert!(groups.iter().any(|g| g.entity == kind), "{kind}");
    }
    let none_count: usize = texts().map(|t| t.pipeline_none.len()).sum();
    assert!(groups.len() < none_count, "no group of several tokens");
    assert!(
        texts()
            .flat_map(|t| &t.pipeline_none)
            .any(|e| e.word.starts_with("##")),
        "no sub-word entity"
    );
}
