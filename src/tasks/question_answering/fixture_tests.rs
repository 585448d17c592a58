//! Extractive QA against transformers: `tests/fixtures/qa_tiny.json` holds what
//! `scripts/make_qa_fixture.py` computed with transformers (and PEFT for the adapter) on the
//! tiny exported models of `tasks::parity_models`, at a small `max_seq_len` / `doc_stride` so
//! that contexts span several windows. Here the same models are written again, loaded back
//! the way they were exported, and temper's windows (ids, segments, context offsets), start
//! and end logits and answers (run_qa's choice, the pipeline's score; SQuAD v1 and v2) must
//! be transformers'.

use std::path::Path;

use candle_core::Device;
use serde::Deserialize;

use super::evaluate::{answers, window_logits};
use super::{AnswerSettings, QaModelSpec, QaTokenizer, QaWindow, QuestionAnsweringModel};
use super::{QaPrediction, WindowSettings};
use crate::tasks::parity_models::{exported_weights, write_parity_models, ParityModel, ParityTask};
use crate::zoo::TextTokenizer;

const FIXTURE: &str = include_str!("../../../tests/fixtures/qa_tiny.json");
/// transformers and temper sum in different orders; the fixture's margins are far above.
const TOLERANCE: f32 = 1e-4;
const MIN_MARGIN: f32 = 100.0 * TOLERANCE;

#[derive(Deserialize)]
struct Fixture {
    max_seq_len: usize,
    doc_stride: usize,
    max_answer_length: usize,
    n_best: usize,
    models: Vec<FixtureModel>,
}

#[derive(Deserialize)]
struct FixtureModel {
    name: String,
    adapter: bool,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    question: String,
    context: String,
    windows: Vec<FixtureWindow>,
    run_qa: Answer,
    run_qa_v2: Answer,
}

#[derive(Deserialize)]
struct FixtureWindow {
    input_ids: Vec<u32>,
    token_type_ids: Vec<u32>,
    offsets: Vec<Option<(usize, usize)>>,
    start_logits: Vec<f32>,
    end_logits: Vec<f32>,
    min_top2_margin: f32,
}

#[derive(Deserialize)]
struct Answer {
    answer: String,
    start: usize,
    end: usize,
    score: f32,
    /// The window the span was found in (`None` for the null answer).
    window: Option<usize>,
}

fn fixture() -> Fixture {
    serde_json::from_str(FIXTURE).expect("fixture")
}

/// The model as temper loads what was exported (a different head seed than the writer's:
/// every weight must come from the files), and its tokenizer.
fn load(root: &Path, model: &ParityModel) -> (QuestionAnsweringModel, TextTokenizer) {
    let model_dir = root.join(&model.model_dir);
    let (lora, weights) = exported_weights(root, model).expect("exported weights");
    let spec = QaModelSpec { lora };
    let qa =
        QuestionAnsweringModel::from_pretrained(&model_dir, &spec, &Device::Cpu, 1).expect("model");
    let tensors = candle_core::safetensors::load(weights, &Device::Cpu).expect("weights");
    qa.load_trainable(&tensors).expect("load weights");
    (qa, TextTokenizer::from_dir(&model_dir).expect("tokenizer"))
}

fn check_windows(ours: &[QaWindow], theirs: &[FixtureWindow], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}: window count");
    for (i, (window, expected)) in ours.iter().zip(theirs).enumerate() {
        assert_eq!(
            window.input_ids, expected.input_ids,
            "{what} window {i}: ids"
        );
        assert_eq!(
            window.type_ids, expected.token_type_ids,
            "{what} window {i}: segments"
        );
        let spans: Vec<Option<(usize, usize)>> =
            (0..window.len()).map(|t| window.context_span(t)).collect();
        assert_eq!(
            spans, expected.offsets,
            "{what} window {i}: context offsets"
        );
        assert!(
            expected.min_top2_margin > MIN_MARGIN,
            "{what} window {i}: margin"
        );
    }
}

fn check_logits(ours: &[f32], theirs: &[f32], what: &str) {
    assert_eq!(ours.len(), theirs.len(), "{what}");
    for (t, (a, b)) in ours.iter().zip(theirs).enumerate() {
        assert!(
            (a - b).abs() < TOLERANCE,
            "{what} token {t}: {a} vs transformers' {b}; if the parity writer changed, rerun \
             scripts/make_qa_fixture.py"
        );
    }
}

fn check_answer(ours: &QaPrediction, theirs: &Answer, what: &str) {
    assert_eq!(
        (ours.text.as_str(), ours.start, ours.end),
        (theirs.answer.as_str(), theirs.start, theirs.end),
        "{what}"
    );
    assert!(
        (ours.score - theirs.score).abs() < TOLERANCE,
        "{what}: score {} vs {}",
        ours.score,
        theirs.score
    );
}

#[test]
fn exported_qa_models_match_transformers_and_peft() {
    let fixture = fixture();
    let root = tempfile::tempdir().expect("tmp");
    let written = write_parity_models(root.path()).expect("parity models");
    let models: Vec<&ParityModel> = written
        .iter()
        .filter(|m| m.task == ParityTask::QuestionAnswering)
        .collect();
    let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
    let fixture_names: Vec<&str> = fixture.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, fixture_names);
    assert_eq!(names, ["bert-qa", "bert-qa-lora", "distilbert-qa"]);
    let settings = WindowSettings {
        max_seq_len: fixture.max_seq_len,
        doc_stride: fixture.doc_stride,
    };
    for (model, case) in models.iter().zip(&fixture.models) {
        assert_eq!(case.adapter, model.adapter_dir.is_some(), "{}", case.name);
        let (qa, tokenizer) = load(root.path(), model);
        let qa_tokenizer = QaTokenizer::new(tokenizer.inner(), settings).expect("qa tokenizer");
        let mut windows = Vec::new();
        let mut question_of = Vec::new();
        for (index, question) in case.cases.iter().enumerate() {
            let ours = qa_tokenizer
                .windows(&question.question, &question.context)
                .expect("windows");
            let what = format!("{} {:?}", case.name, question.question);
            check_windows(&ours, &question.windows, &what);
            question_of.extend(std::iter::repeat_n(index, ours.len()));
            windows.extend(ours);
        }
        // Three windows a batch: batches mix questions and pad shorter windows.
        let (logits, _) = window_logits(&qa, &windows, None, 3, tokenizer.pad_id(), &Device::Cpu)
            .expect("logits");
        let expected = case.cases.iter().flat_map(|c| &c.windows);
        for (i, ((start, end), theirs)) in logits.iter().zip(expected).enumerate() {
            check_logits(
                start,
                &theirs.start_logits,
                &format!("{} window {i} start", case.name),
            );
            check_logits(
                end,
                &theirs.end_logits,
                &format!("{} window {i} end", case.name),
            );
        }
        let contexts: Vec<&str> = case.cases.iter().map(|c| c.context.as_str()).collect();
        for allow_no_answer in [false, true] {
            let answer_settings = AnswerSettings {
                n_best: fixture.n_best,
                max_answer_length: fixture.max_answer_length,
                allow_no_answer,
                ..AnswerSettings::default()
            };
            let predictions = answers(&contexts, &windows, &question_of, &logits, &answer_settings);
            for (prediction, question) in predictions.iter().zip(&case.cases) {
                let expected = if allow_no_answer {
                    &question.run_qa_v2
                } else {
                    &question.run_qa
                };
                let what = format!("{} {:?} v2 {allow_no_answer}", case.name, question.question);
                check_answer(prediction, expected, &what);
            }
        }
    }
}

/// The comparison above is only as good as the fixture: contexts over several windows, an
/// answer found past the first window, and a question that SQuAD v2 rules leave unanswered.
#[test]
fn the_qa_fixture_exercises_several_windows_and_null_answers() {
    let fixture = fixture();
    for model in &fixture.models {
        let windows = |c: &Case| c.windows.len();
        assert!(
            model.cases.iter().any(|c| windows(c) >= 3),
            "{}",
            model.name
        );
        assert!(
            model.cases.iter().all(|c| !c.run_qa.answer.is_empty()),
            "{}",
            model.name
        );
        assert!(
            model.cases.iter().any(|c| c.run_qa.window > Some(0)),
            "{}: every answer is in a first window",
            model.name
        );
    }
    let cases = || fixture.models.iter().flat_map(|m| &m.cases);
    assert!(
        cases().any(|c| c.run_qa_v2.answer.is_empty()),
        "no null answer"
    );
    assert!(
        cases().any(|c| !c.run_qa_v2.answer.is_empty()),
        "only null answers"
    );
}
