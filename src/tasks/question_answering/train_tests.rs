//! `run_question_answering` on the tiny random BERT: it learns to point at the answer span,
//! keeps the best checkpoint by F1, reports SQuAD's scores, and resumes exactly after a
//! pause.

use super::*;
use crate::domain::dataset::QaAnswer;
use crate::tasks::sequence_classification::tests::{
    completed, config, fixture, pause_then_resume, resumable_config, Fixture, Recorder,
};

/// Each context holds a place and people; `where` asks for the first, `who` for the
/// second, so the model must read the question to answer.
const CONTEXTS: [&str; 4] = [
    "we liked the place and the people",
    "the people said the place was really fun",
    "they were at the place with my people",
    "the people and the place were nice",
];

fn examples() -> Vec<QaExample> {
    let questions = [("where was it", "place"), ("who was it", "people")];
    CONTEXTS
        .iter()
        .flat_map(|context| questions.map(|q| (context, q)))
        .enumerate()
        .map(|(i, (context, (question, answer)))| QaExample {
            id: Some(format!("q{i}")),
            question: question.into(),
            context: context.to_string(),
            answers: vec![QaAnswer {
                text: answer.into(),
                answer_start: context.find(answer).expect("answer in every context"),
            }],
        })
        .collect()
}

fn qa_job(fx: &Fixture, work: &str, config: TrainingConfig) -> QuestionAnsweringJob {
    QuestionAnsweringJob {
        base_model_dir: fx.base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone(),
        },
        train: examples(),
        valid: Some(examples()),
        config,
        work_dir: fx.base.with_file_name(work),
        device: Device::Cpu,
    }
}

#[test]
fn full_fine_tuning_learns_the_answer_span_and_keeps_the_best_f1() {
    let fx = fixture();
    let job = qa_job(&fx, "learn", config(0, 1e-2, 30));
    let mut rec = Recorder::default();
    let summary = completed(run_question_answering(&job, &mut rec).expect("train"));
    // One window per question: 8 / batch 4 = 2 steps per epoch.
    assert_eq!(rec.steps.len(), 60);
    let f1: Vec<(usize, f64)> = rec
        .steps
        .iter()
        .filter_map(|s| Some((s.step, s.value("valid_f1")?)))
        .collect();
    assert_eq!(f1.len(), 30);
    // At first it gives one of the two answers to both questions.
    assert!(f1[0].1 <= 50.0, "F1 {f1:?}");
    let last = rec.steps.last().expect("steps");
    assert_eq!(last.value("valid_exact_match"), Some(100.0), "{last:?}");
    let best = f1.iter().find(|(_, f)| *f == 100.0).expect("F1 100").0;
    assert_eq!(summary.best_step, best);
    assert_eq!(summary.report["exact"], 100.0);
    assert_eq!(summary.report["f1"], 100.0);
    assert_eq!(summary.report["total"], 8);
    assert_eq!(summary.report["split"], "validation");
    // Every question has an answer: no SQuAD v2 splits.
    assert!(summary.report.get("NoAns_total").is_none());
}

#[test]
fn pause_then_resume_equals_uninterrupted_run() {
    let fx = fixture();
    let resumable = resumable_config();
    // 8 windows / batch 3 = 3 batches; accumulation 2 → 2 steps per epoch, 6 in all.
    let straight = qa_job(&fx, "straight", resumable.clone());
    let paused = qa_job(&fx, "paused", resumable);
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        6,
        3,
        run_question_answering,
    );
    assert_eq!(runs.resumed.best_step, runs.expected.best_step);
    assert_eq!(runs.resumed.trained_tokens, runs.expected.trained_tokens);
    assert_eq!(runs.resumed.report, runs.expected.report);
}
