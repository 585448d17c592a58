//! `run_token_classification` on the tiny random BERT: it learns to tag, keeps the best
//! checkpoint by entity F1, reports per entity type, and resumes exactly after a pause.

use candle_core::Device;

use super::*;
use crate::domain::hyperparams::TrainingConfig;
use crate::tasks::sequence_classification::tests::{
    completed, config, fixture, pause_then_resume, resumable_config, Fixture, Recorder,
};

/// Every word of the tiny vocabulary is one token. `place` is a location and `people` a
/// person wherever they stand, so a model can learn the tags from the words alone.
const SENTENCES: [(&str, &str); 8] = [
    ("we liked the place", "O O O B-LOC"),
    ("the people loved it", "O B-PER O O"),
    ("i love the music and the place", "O O O O O O B-LOC"),
    ("the people and the place were fun", "O B-PER O O B-LOC O O"),
    ("he was in the story place", "O O O O B-LOC I-LOC"),
    ("the movie was really fun", "O O O O O"),
    ("they liked the people", "O O O B-PER"),
    ("the film is good", "O O O O"),
];

fn examples() -> Vec<TokenTagsExample> {
    SENTENCES
        .iter()
        .map(|(words, tags)| TokenTagsExample {
            tokens: words.split(' ').map(str::to_string).collect(),
            tags: tags.split(' ').map(str::to_string).collect(),
        })
        .collect()
}

fn tagging_job(fx: &Fixture, work: &str, config: TrainingConfig) -> TokenClassificationJob {
    TokenClassificationJob {
        base_model_dir: fx.base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone(),
        },
        train: examples(),
        valid: Some(examples()),
        labels: ["O", "B-LOC", "I-LOC", "B-PER"].map(String::from).to_vec(),
        config,
        work_dir: fx.base.with_file_name(work),
        device: Device::Cpu,
    }
}

#[test]
fn full_fine_tuning_learns_the_entities_and_keeps_the_best_f1() {
    let fx = fixture();
    let job = tagging_job(&fx, "learn", config(0, 1e-2, 30));
    let mut rec = Recorder::default();
    let summary = completed(run_token_classification(&job, &mut rec).expect("train"));
    // 8 sentences / batch 4 = 2 steps per epoch, evaluated at each epoch end.
    assert_eq!(rec.steps.len(), 60);
    let f1: Vec<(usize, f64)> = rec
        .steps
        .iter()
        .filter_map(|s| Some((s.step, s.value("valid_entity_f1")?)))
        .collect();
    assert_eq!(f1.len(), 30);
    let (first, last) = (f1[0].1, f1[f1.len() - 1].1);
    assert!(first < 0.5, "entity F1 {f1:?}");
    assert_eq!(last, 1.0, "entity F1 {f1:?}");
    // The best checkpoint is the first evaluation at the highest F1.
    let best = f1.iter().find(|(_, f)| *f == 1.0).expect("F1 1.0").0;
    assert_eq!(summary.best_step, best);
    assert_eq!(summary.report["split"], "validation");
    assert_eq!(summary.report["step"], best);
    assert_eq!(
        summary.report["entity_types"],
        serde_json::json!(["LOC", "PER"])
    );
    // 4 locations (one of two words) and 3 persons in the validation sentences, all found.
    assert_eq!(summary.report["per_type"]["LOC"]["support"], 4);
    assert_eq!(summary.report["per_type"]["PER"]["support"], 3);
    // seqeval's classification_report names.
    assert_eq!(summary.report["per_type"]["LOC"]["f1-score"], 1.0);
    assert_eq!(summary.report["per_type"]["PER"]["f1-score"], 1.0);
    assert!(summary
        .results_csv
        .lines()
        .next()
        .is_some_and(|header| header.contains("valid_entity_f1")));
}

#[test]
fn pause_then_resume_equals_uninterrupted_run() {
    let fx = fixture();
    let resumable = resumable_config();
    // 8 sentences / batch 3 = 3 batches; accumulation 2 → 2 steps per epoch, 6 in all.
    let straight = tagging_job(&fx, "straight", resumable.clone());
    let paused = tagging_job(&fx, "paused", resumable);
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        6,
        3,
        run_token_classification,
    );
    assert_eq!(runs.resumed.best_step, runs.expected.best_step);
    assert_eq!(runs.resumed.trained_tokens, runs.expected.trained_tokens);
    assert_eq!(runs.resumed.report, runs.expected.report);
}
