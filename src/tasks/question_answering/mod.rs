//! Extractive question answering (transformers' `run_qa.py` recipe, SQuAD v1 and v2).
//!
//! - [`windows`]: question + context through the tokenizer into overlapping windows, and the
//!   start/end token labels of training windows.
//! - [`head`]: `QuestionAnsweringModel`, the encoder + `qa_outputs` head, its loss and exports.
//! - [`postprocess`]: per-window logits → one answer with character offsets and a score.
//! - [`metrics`]: the official SQuAD exact match and F1, with v2's HasAns/NoAns splits.
//! - [`evaluate`]: examples → labelled windows; a model's loss, answers and scores on a set.
//! - [`serve`]: `QaServer`, a loaded model answering batches of questions.
//! - `train.rs`: the runner task (`run_question_answering`, `QA_METRICS`:
//!   `valid_exact_match`, `valid_f1`); `report.rs`: `squad_report.json` with the
//!   HasAns/NoAns splits; `export.rs`: checkpoint → server, merged HF dir, PEFT adapter.
//!
//! Served by `infer::question_answering` (`/v1/question_answering`); checkpoint variant
//! `CheckpointTask::QuestionAnswering`.
//!
//! The data itself (SQuAD JSONL and nested JSON files) is parsed in
//! `domain::dataset::squad`.

pub mod evaluate;
mod export;
pub mod head;
pub mod metrics;
pub mod postprocess;
mod report;
pub mod serve;
mod train;
pub mod windows;

pub(crate) use export::export_qa_checkpoint;
pub use export::load_qa_server;
pub use report::squad_report;
pub use train::{
    plan_question_answering, run_question_answering, QuestionAnsweringJob, QA_METRICS,
};

pub use head::{collate_windows, QaBatch, QaModelSpec, QuestionAnsweringModel, SpanLogits};
pub use metrics::{squad_scores, ScoredQuestion, SplitScores, SquadScores, SquadVersion};
pub use postprocess::{best_answer, AnswerSettings, QaPrediction, WindowLogits};
pub use windows::{span_label, QaTokenizer, QaWindow, SpanLabel, WindowSettings};

#[cfg(test)]
#[path = "fixture_tests.rs"]
mod fixture_tests;
