//! The shared run path on a toy task whose every gradient is 1: AdamW then moves each
//! tensor by exactly its learning rate per step, so a dropped or misapplied head
//! learning rate shows in the weights, and the outcome of every way a run ends is checked.

use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};
use serde_json::json;

use super::checkpoint::{self, TrainState};
use super::named_metrics::{MetricNames, Metrics, MetricsRow};
use super::runner::{EvalPoint, MicroBatch, TrainTask};
use super::setup::{check_loop_settings, is_new_head, run_task, RunSetup};
use super::{results_csv, Control, TrainError, TrainObserver, TrainOutcome, TrainSummary};
use crate::artifacts::checkpoint::{read_meta, step_dir, CheckpointTask, LmSpec};
use crate::domain::hyperparams::{LoraSettings, LrScheduler, TrainingConfig};
use crate::tasks::sequence_classification::tests::Recorder;
use crate::tasks::sft::SFT_METRICS;
use crate::zoo::params::NamedVar;

const TOY_METRICS: MetricNames = MetricNames {
    train: &["train_loss"],
    valid: &["valid_loss"],
    train_accuracy: None,
    default_best: "valid_loss",
    aliases: &[],
};

/// Each starts at 1.0; the loss is the sum of all their elements (every gradient is 1).
const TENSORS: [&str; 5] = [
    "encoder.layer.0.weight",
    "classifier.weight",
    "pre_classifier.weight",
    "base_model.model.classifier.bias",
    "base_model.model.encoder.layer.0.weight",
];

/// Two examples in one batch: one optimizer step per epoch.
struct ToyTask {
    vars: Vec<NamedVar>,
    first_step_calls: Cell<usize>,
}

impl ToyTask {
    fn new() -> Self {
        let vars = TENSORS
            .iter()
            .map(|name| NamedVar {
                name: name.to_string(),
                var: Var::ones(2, DType::F32, &Device::Cpu).expect("var"),
                weight_decay: true,
                row_grads: None,
            })
            .collect();
        Self {
            vars,
            first_step_calls: Cell::new(0),
        }
    }

    fn value(&self, name: &str) -> f32 {
        let var = self.vars.iter().find(|v| v.name == name).expect("tensor");
        let values: Vec<f32> = var.var.as_tensor().to_vec1().expect("values");
        values[0]
    }
}

impl TrainTask for ToyTask {
    fn n_train(&self) -> usize {
        2
    }

    fn units(&self, indices: &[usize]) -> Result<usize, TrainError> {
        Ok(indices.len())
    }

    fn forward_train(&self, indices: &[usize]) -> Result<MicroBatch, TrainError> {
        let sums = self
            .vars
            .iter()
            .map(|v| v.var.as_tensor().sum_all())
            .collect::<Result<Vec<_>, _>>()?;
        let loss = Tensor::stack(&sums, 0)?.sum_all()?;
        Ok(MicroBatch {
            loss,
            units: indices.len(),
            correct: 0,
            tokens: indices.len() as u64,
            extra: Metrics::default(),
        })
    }

    fn evaluate(&self, _at: &EvalPoint, _row: &mut MetricsRow) -> Result<(), TrainError> {
        Ok(())
    }

    fn before_first_step(
        &self,
        state: &mut TrainState,
        _observer: &mut dyn TrainObserver,
    ) -> Result<(), TrainError> {
        self.first_step_calls.set(self.first_step_calls.get() + 1);
        state.initial_valid_loss = Some(0.5);
        Ok(())
    }
}

/// Constant learning rate, no weight decay, no clipping: each step moves a tensor by its
/// learning rate (AdamW's bias-corrected first steps with a constant gradient).
fn config(head_learning_rate: Option<f64>, n_epochs: usize) -> TrainingConfig {
    TrainingConfig {
        n_epochs,
        batch_size: 2,
        learning_rate_multiplier: 1.0,
        learning_rate: 0.01,
        head_learning_rate,
        lr_scheduler: LrScheduler::Constant,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        max_grad_norm: 0.0,
        gradient_accumulation_steps: 1,
        max_seq_len: 32,
        eval_steps: None,
        save_steps: None,
        early_stopping_patience: None,
        metric_for_best_model: None,
        lora: LoraSettings {
            rank: 0,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        },
        quantize: None,
        task_options: Default::default(),
        gradient_checkpointing: false,
        precision: None,
        export_dtype: None,
        seed: 5,
    }
}

/// Runs `task` through `run_task` with the `classifier.` head; the summary's report says
/// it was built by the closure.
fn run(
    task: &ToyTask,
    cfg: &TrainingConfig,
    work_dir: &Path,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    run_named(task, cfg, work_dir, &TOY_METRICS, observer)
}

fn run_named(
    task: &ToyTask,
    cfg: &TrainingConfig,
    work_dir: &Path,
    names: &'static MetricNames,
    observer: &mut dyn TrainObserver,
) -> Result<TrainOutcome, TrainError> {
    let setup = RunSetup {
        config: cfg,
        work_dir,
        device: &Device::Cpu,
        names,
        checkpoint: CheckpointTask::CausalLm {
            lm: LmSpec {
                lora: None,
                quantize: None,
                export_dtype: None,
            },
        },
        base_model: crate::artifacts::BaseLocation::Directory {
            path: work_dir.join("base"),
        },
        max_seq_len: 7,
        new_head: &["classifier."],
        vars: task.vars.clone(),
        has_valid: false,
        buffers: Vec::new(),
        pretrained_lr_scale: 1.0,
    };
    run_task(setup, task, observer, |trainer, _observer| {
        let (best_step, best_checkpoint) = trainer.best_checkpoint()?;
        Ok(TrainSummary {
            best_step,
            best_checkpoint,
            trained_tokens: trainer.state.tokens_seen,
            results_csv: results_csv(&trainer.state.history, names),
            report: json!({ "built_by": "summarize", "step": trainer.state.step }),
            checkpoints: trainer.saved_checkpoints(),
        })
    })
}

fn assert_moved(task: &ToyTask, name: &str, by: f32) {
    let moved = 1.0 - task.value(name);
    assert!(
        (moved - by).abs() < 1e-5,
        "{name} moved by {moved}, not {by}"
    );
}

#[test]
fn the_new_head_learns_at_head_learning_rate_with_or_without_peft_prefix() {
    let dir = tempfile::tempdir().expect("tempdir");
    let task = ToyTask::new();
    let cfg = config(Some(0.1), 2);
    let mut observer = Recorder::default();
    let outcome = run(&task, &cfg, dir.path(), &mut observer).expect("run");
    assert!(matches!(outcome, TrainOutcome::Completed(_)), "{outcome:?}");
    // Two steps: 2 × 0.1 for the head, 2 × 0.01 for everything else.
    assert_moved(&task, "classifier.weight", 0.2);
    assert_moved(&task, "base_model.model.classifier.bias", 0.2);
    assert_moved(&task, "encoder.layer.0.weight", 0.02);
    assert_moved(&task, "base_model.model.encoder.layer.0.weight", 0.02);
    // A prefix, not a substring: `pre_classifier.` is not under `classifier.`.
    assert_moved(&task, "pre_classifier.weight", 0.02);
}

#[test]
fn without_head_learning_rate_every_tensor_learns_at_learning_rate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let task = ToyTask::new();
    let mut observer = Recorder::default();
    run(&task, &config(None, 2), dir.path(), &mut observer).expect("run");
    for name in TENSORS {
        assert_moved(&task, name, 0.02);
    }
}

#[test]
fn is_new_head_strips_the_peft_prefix_and_matches_any_listed_prefix() {
    let heads = ["classifier.", "pre_classifier."];
    assert!(is_new_head("classifier.weight", &heads));
    assert!(is_new_head("base_model.model.pre_classifier.bias", &heads));
    assert!(!is_new_head("bert.encoder.classifier.weight", &heads));
    assert!(!is_new_head("classifier.weight", &[]));
}

#[test]
fn a_pause_stops_at_its_checkpoint_and_the_next_run_resumes_to_the_closures_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(None, 3);
    // The second control poll (before step 2) pauses; step 1 was saved at its epoch end.
    let first = ToyTask::new();
    let mut paused = Recorder::scripted(1, Control::Pause);
    let outcome = run(&first, &cfg, dir.path(), &mut paused).expect("first run");
    assert!(
        matches!(outcome, TrainOutcome::Stopped { step: 1 }),
        "{outcome:?}"
    );
    assert_eq!(first.first_step_calls.get(), 1);
    let meta = read_meta(&step_dir(dir.path(), 1)).expect("meta");
    assert_eq!((meta.max_seq_len, meta.seed), (7, 5));
    assert_eq!(
        meta.base_model,
        crate::artifacts::BaseLocation::Directory {
            path: dir.path().join("base")
        }
    );
    assert_eq!(meta.task.name(), "causal_lm");

    let second = ToyTask::new();
    let mut resumed = Recorder::default();
    let outcome = run(&second, &cfg, dir.path(), &mut resumed).expect("second run");
    let TrainOutcome::Completed(summary) = outcome else {
        panic!("expected completion, got {outcome:?}");
    };
    assert_eq!(
        summary.report,
        json!({ "built_by": "summarize", "step": 3 })
    );
    assert_eq!(summary.best_step, 3);
    assert_eq!(summary.trained_tokens, 6);
    let steps: Vec<usize> = resumed.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, vec![2, 3]);
    assert!(resumed.events.iter().any(|e| e == "Resuming from step 1"));
    assert_eq!(second.first_step_calls.get(), 0, "not called on resume");
    // The resumed weights continued from step 1: three steps of 0.01 in all.
    assert_moved(&second, "encoder.layer.0.weight", 0.03);
    let state = checkpoint::read_state(&step_dir(dir.path(), 3)).expect("state");
    assert_eq!(
        state.initial_valid_loss,
        Some(0.5),
        "kept from the first run"
    );
}

#[test]
fn a_cancel_ends_the_run_cancelled_without_a_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let task = ToyTask::new();
    let mut observer = Recorder::scripted(1, Control::Cancel);
    let outcome = run(&task, &config(None, 3), dir.path(), &mut observer).expect("run");
    assert!(matches!(outcome, TrainOutcome::Cancelled), "{outcome:?}");
    let steps: Vec<usize> = observer.steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, vec![1]);
}

#[test]
fn loop_settings_below_one_are_refused() {
    assert!(check_loop_settings(&config(None, 1)).is_ok());
    for cfg in [
        TrainingConfig {
            batch_size: 0,
            ..config(None, 1)
        },
        config(None, 0),
    ] {
        let err = check_loop_settings(&cfg).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "`batch_size` and `n_epochs` must be at least 1"
        );
    }
}

/// `state.json` of step 1 as the version before named metrics wrote it for an SFT job
/// (fixed columns: `train_accuracy`, `valid_accuracy`, `valid_f1`, `full_valid_accuracy`).
const PREVIOUS_VERSION_SFT_STATE: &str = r#"{"step":1,"epoch":1,"batch_in_epoch":0,"best_metric":null,"best_step":1,"evals_without_improvement":0,"history":[{"step":1,"train_loss":2.0,"train_accuracy":0.5,"valid_loss":1.5,"valid_accuracy":0.375,"valid_f1":null,"full_valid_loss":1.625,"full_valid_accuracy":0.25}],"tokens_seen":2,"checkpoints":[{"step":1,"epoch_end":true}],"initial_valid_loss":1.75,"initial_valid_accuracy":0.125}"#;

#[test]
fn an_sft_job_resumed_from_a_previous_version_checkpoint_reports_its_metrics_under_current_names() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(None, 3);
    let mut paused = Recorder::scripted(1, Control::Pause);
    let first = ToyTask::new();
    let outcome = run_named(&first, &cfg, dir.path(), &SFT_METRICS, &mut paused).expect("run");
    assert!(matches!(outcome, TrainOutcome::Stopped { step: 1 }));
    let step_1 = step_dir(dir.path(), 1);
    std::fs::write(step_1.join("state.json"), PREVIOUS_VERSION_SFT_STATE).expect("old state");

    let mut resumed = Recorder::default();
    let outcome = run_named(
        &ToyTask::new(),
        &cfg,
        dir.path(),
        &SFT_METRICS,
        &mut resumed,
    )
    .expect("resume");
    let TrainOutcome::Completed(summary) = outcome else {
        panic!("expected completion, got {outcome:?}");
    };
    let step_1_row = summary.results_csv.lines().nth(1).expect("row of step 1");
    assert_eq!(step_1_row, "1,2,0.5,1.5,0.375,1.625,0.25");
    // The re-announced checkpoint of step 1 carries the renamed metrics too.
    let announced = resumed
        .checkpoints
        .iter()
        .find(|c| c.step == 1)
        .expect("step 1 re-announced");
    assert_eq!(
        announced.metrics,
        json!({
            "step": 1,
            "train_loss": 2.0,
            "train_mean_token_accuracy": 0.5,
            "valid_loss": 1.5,
            "valid_mean_token_accuracy": 0.375,
            "full_valid_loss": 1.625,
            "full_valid_mean_token_accuracy": 0.25
        })
    );
    // And the checkpoints written after the resume store them under the current names.
    let state = checkpoint::read_state(&step_dir(dir.path(), 3)).expect("state");
    assert_eq!(
        state.history[0].get("full_valid_mean_token_accuracy"),
        Some(0.25)
    );
    assert_eq!(state.history[0].get("full_valid_accuracy"), None);
}
