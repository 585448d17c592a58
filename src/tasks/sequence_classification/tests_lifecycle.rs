//! Trainer lifecycle tests on a tiny random BERT (CPU, dropout 0): pause/resume, cancel,
//! early stopping, gradient accumulation.

use candle_core::Device;

use super::tests::{
    completed, config, fixture, job, max_abs_diff, pause_then_resume, resumable_config,
    toy_examples, Recorder,
};
use super::*;
use crate::artifacts::checkpoint;
use crate::domain::hyperparams::TrainingConfig;
use crate::train::{Control, TrainOutcome};

#[test]
fn pause_then_resume_equals_uninterrupted_run() {
    let fx = fixture();
    // 16 examples / batch 3 = 6 batches; accumulation 2 → 3 steps per epoch, 9 in all.
    let straight = job(&fx, "straight", resumable_config(), true);
    let paused = job(&fx, "paused", resumable_config(), true);
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        9,
        4,
        run_classification,
    );
    assert_eq!(runs.resumed.trained_tokens, runs.expected.trained_tokens);
}

/// A fixture whose tiny BERT drops 10 % of its hidden and attention activations.
fn fixture_with_dropout() -> super::tests::Fixture {
    super::tests::fixture_with(crate::zoo::testing::TinyBertStyle {
        dropout: 0.1,
        ..Default::default()
    })
}

#[test]
fn with_dropout_a_resumed_run_draws_the_uninterrupted_runs_masks() {
    let fx = fixture_with_dropout();
    let straight = job(&fx, "straight", resumable_config(), true);
    let paused = job(&fx, "paused", resumable_config(), true);
    pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        9,
        4,
        run_classification,
    );
}

#[test]
fn with_dropout_two_runs_of_one_seed_have_the_same_losses() {
    let fx = fixture_with_dropout();
    let losses = |work: &str, seed: u64| {
        let cfg = TrainingConfig {
            seed,
            ..resumable_config()
        };
        let mut rec = Recorder::default();
        completed(run_classification(&job(&fx, work, cfg, false), &mut rec).expect("run"));
        rec.steps.iter().map(|s| s.train_loss()).collect::<Vec<_>>()
    };
    let (first, again) = (losses("first", 11), losses("again", 11));
    assert_eq!(first.len(), 9);
    assert_eq!(first, again);
}

#[test]
fn cancel_stops_within_one_step_without_saving() {
    let fx = fixture();
    let job = job(&fx, "cancel", config(4, 1e-2, 10), false);
    let mut rec = Recorder::scripted(2, Control::Cancel);
    assert!(matches!(
        run_classification(&job, &mut rec).expect("run"),
        TrainOutcome::Cancelled
    ));
    assert_eq!(rec.steps.len(), 2);
    assert!(rec.checkpoints.is_empty());
    assert!(checkpoint::list_checkpoints(&job.work_dir)
        .expect("list")
        .is_empty());
}

#[test]
fn early_stopping_ends_a_plateau() {
    let fx = fixture();
    // Learning rate 0: the validation loss never improves after the first evaluation.
    let cfg = TrainingConfig {
        eval_steps: Some(1),
        early_stopping_patience: Some(2),
        metric_for_best_model: Some("valid_loss".into()),
        ..config(4, 0.0, 5)
    };
    let job = job(&fx, "plateau", cfg, true);
    let mut rec = Recorder::default();
    let summary = completed(run_classification(&job, &mut rec).expect("run"));
    assert_eq!(
        rec.steps.len(),
        3,
        "best at step 1, two evaluations without improvement"
    );
    assert_eq!(summary.best_step, 1);
    assert!(
        rec.events
            .iter()
            .any(|e| e.starts_with("Early stopping at step 3")),
        "{:?}",
        rec.events
    );
    let lines: Vec<&str> = summary.results_csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(
        lines.iter().skip(1).all(|l| !l.ends_with(",,,")),
        "every step evaluated: {lines:?}"
    );
    for key in [
        "per_class",
        "accuracy",
        "macro_avg",
        "weighted_avg",
        "confusion_matrix",
        "labels",
    ] {
        assert!(summary.report.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(
        summary.report["per_class"]["pos"]["support"].as_u64(),
        Some(4)
    );
}

#[test]
fn accumulated_micro_batches_equal_the_full_batch() {
    use super::data::{encode_examples, make_batch};
    use super::evaluate::forward_batch;
    use crate::train::optim::{AdamW, AdamWConfig, OptimParam};
    use crate::zoo::{ClassifierSpec, SequenceClassifier, TextTokenizer};

    let fx = fixture();
    let spec = ClassifierSpec {
        num_labels: 2,
        lora: None,
        classifier_dropout: None,
    };
    let model =
        SequenceClassifier::from_pretrained(&fx.base, &spec, &Device::Cpu, 5).expect("model");
    let tokenizer = TextTokenizer::from_dir(&fx.base).expect("tokenizer");
    let labels = vec!["neg".to_string(), "pos".to_string()];
    let examples = encode_examples(&tokenizer, &toy_examples(), &labels, 32).expect("encode");
    let params = model
        .trainable_vars()
        .into_iter()
        .map(OptimParam::from)
        .collect();
    let opt = AdamW::new(params, AdamWConfig::default()).expect("opt");
    let pad = tokenizer.pad_id();
    let full = make_batch(&examples, &[0, 1, 2, 3, 4], pad, &Device::Cpu).expect("full");
    let full_grads = opt
        .gradients(
            &forward_batch(&model, &full, true)
                .expect("fwd")
                .loss
                .backward()
                .expect("bwd"),
        )
        .expect("grads");
    // Unequal micro-batches (2 + 3), each weighted by its share of the examples.
    let mut acc = None;
    for (indices, share) in [(vec![0, 1], 0.4), (vec![2, 3, 4], 0.6)] {
        let batch = make_batch(&examples, &indices, pad, &Device::Cpu).expect("micro");
        let loss = (forward_batch(&model, &batch, true).expect("fwd").loss * share).expect("scale");
        let store = loss.backward().expect("bwd");
        match acc.as_mut() {
            None => acc = Some(opt.gradients(&store).expect("grads")),
            Some(acc) => opt.accumulate(acc, &store).expect("accumulate"),
        }
    }
    let acc = acc.expect("grads");
    let n = model.trainable_vars().len();
    let mut checked = 0;
    for i in 0..n {
        if let (Some(a), Some(b)) = (full_grads.get(i), acc.get(i)) {
            let (a, b) = (
                a.to_dense(&Device::Cpu).expect("a"),
                b.to_dense(&Device::Cpu).expect("b"),
            );
            let diff = max_abs_diff(&a, &b);
            assert!(diff < 1e-5, "parameter {i} gradient differs by {diff}");
            checked += 1;
        }
    }
    assert_eq!(checked, n, "every trainable tensor has a gradient");
}

#[test]
fn a_classification_job_that_cannot_fit_fails_before_loading() {
    let fx = fixture();
    // The tiny BERT's config made to describe one of 2^38 parameters: only the config is
    // read before the check, so nothing else needs to change.
    let path = fx.base.join("config.json");
    let mut raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    raw["hidden_size"] = 65536.into();
    raw["intermediate_size"] = 262144.into();
    raw["num_hidden_layers"] = 24.into();
    std::fs::write(&path, serde_json::to_vec(&raw).expect("json")).expect("write");
    let job = job(&fx, "too-big", config(0, 1e-3, 1), false);
    let Err(crate::train::TrainError::DoesNotFit(message)) =
        run_classification(&job, &mut Recorder::default())
    else {
        panic!("an over-sized job must fail the memory check");
    };
    assert!(message.starts_with("This job needs about "), "{message}");
    assert!(message.contains("on `cpu`"), "{message}");
    assert!(!job.work_dir.exists(), "nothing was written");
}
