//! Trainer tests on a tiny random BERT (CPU, dropout 0).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::*;
use crate::artifacts::checkpoint::{self, TRAINABLE_FILE};
use crate::artifacts::ExportFormat;
use crate::domain::dataset::LabeledText;
use crate::domain::hyperparams::{LoraSettings, LrScheduler, TrainingConfig};
use crate::tasks::export_checkpoint;
use crate::train::{
    Control, EventLevel, SavedCheckpoint, StepMetrics, TrainError, TrainObserver, TrainOutcome,
    TrainSummary, RESULTS_CSV_HEADER,
};
pub(crate) use crate::zoo::test_tensors::max_abs_diff;

const POSITIVE: [&str; 8] = [
    "good movie",
    "great film",
    "i loved it",
    "excellent story",
    "amazing acting",
    "wonderful music",
    "best book ever",
    "really fun and happy",
];
const NEGATIVE: [&str; 8] = [
    "bad movie",
    "terrible film",
    "i hated it",
    "awful story",
    "horrible acting",
    "dull music",
    "worst book ever",
    "really boring and sad",
];

pub(crate) fn toy_examples() -> Vec<LabeledText> {
    let pos = POSITIVE.iter().map(|t| (t, "pos"));
    let neg = NEGATIVE.iter().map(|t| (t, "neg"));
    pos.zip(neg)
        .flat_map(|(a, b)| [a, b])
        .map(|(text, label)| LabeledText {
            text: text.to_string(),
            label: label.to_string(),
        })
        .collect()
}

pub(crate) fn config(lora_rank: usize, learning_rate: f64, n_epochs: usize) -> TrainingConfig {
    TrainingConfig {
        n_epochs,
        batch_size: 4,
        learning_rate_multiplier: 1.0,
        learning_rate,
        head_learning_rate: None,
        lr_scheduler: LrScheduler::Linear,
        warmup_ratio: 0.0,
        weight_decay: 0.01,
        max_grad_norm: 1.0,
        gradient_accumulation_steps: 1,
        max_seq_len: 32,
        eval_steps: None,
        save_steps: None,
        early_stopping_patience: None,
        metric_for_best_model: None,
        lora: LoraSettings {
            rank: lora_rank,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        },
        quantize: None,
        gradient_checkpointing: false,
        precision: None,
        export_dtype: None,
        seed: 11,
        task_options: Default::default(),
    }
}

/// Batch 3, accumulation 2, eval every 2 steps, cosine with warmup, LoRA r 4: every part of
/// the loop state a resume must restore.
pub(crate) fn resumable_config() -> TrainingConfig {
    TrainingConfig {
        batch_size: 3,
        gradient_accumulation_steps: 2,
        eval_steps: Some(2),
        lr_scheduler: LrScheduler::Cosine,
        warmup_ratio: 0.2,
        ..config(4, 5e-3, 3)
    }
}

pub(crate) struct Fixture {
    _dir: tempfile::TempDir,
    pub(crate) base: PathBuf,
    root: PathBuf,
}

pub(crate) fn fixture() -> Fixture {
    fixture_with(crate::zoo::testing::TinyBertStyle::default())
}

/// [`fixture`] with its tiny BERT written in `style` (a dropout probability, …).
pub(crate) fn fixture_with(style: crate::zoo::testing::TinyBertStyle) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base");
    crate::zoo::testing::write_tiny_bert_with(&base, 3, style).expect("tiny bert");
    let root = dir.path().to_path_buf();
    Fixture {
        _dir: dir,
        base,
        root,
    }
}

pub(crate) fn job(
    fx: &Fixture,
    work: &str,
    config: TrainingConfig,
    valid: bool,
) -> ClassificationJob {
    ClassificationJob {
        base_model_dir: fx.base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone(),
        },
        train: toy_examples(),
        valid: valid.then(|| toy_examples()[..8].to_vec()),
        labels: vec!["neg".to_string(), "pos".to_string()],
        config,
        work_dir: fx.root.join(work),
        device: Device::Cpu,
    }
}

/// Records everything; `script[i]` answers the i-th control poll (Continue after).
/// Shared with the SFT tests.
#[derive(Default)]
pub(crate) struct Recorder {
    script: Vec<Control>,
    polls: usize,
    pub(crate) steps: Vec<StepMetrics>,
    pub(crate) checkpoints: Vec<SavedCheckpoint>,
    pub(crate) events: Vec<String>,
}

impl Recorder {
    pub(crate) fn scripted(at_poll: usize, control: Control) -> Self {
        let mut script = vec![Control::Continue; at_poll];
        script.push(control);
        Self {
            script,
            ..Self::default()
        }
    }
}

impl TrainObserver for Recorder {
    fn on_event(&mut self, _level: EventLevel, message: String) {
        self.events.push(message);
    }
    fn on_step(&mut self, metrics: &StepMetrics) {
        self.steps.push(metrics.clone());
    }
    fn on_checkpoint(&mut self, ckpt: &SavedCheckpoint) {
        self.checkpoints.push(ckpt.clone());
    }
    fn control(&mut self) -> Control {
        let answer = self
            .script
            .get(self.polls)
            .copied()
            .unwrap_or(Control::Continue);
        self.polls += 1;
        answer
    }
}

pub(crate) fn completed(outcome: TrainOutcome) -> TrainSummary {
    match outcome {
        TrainOutcome::Completed(summary) => summary,
        other => panic!("expected completion, got {other:?}"),
    }
}

pub(crate) fn trainable(dir: &Path) -> HashMap<String, Tensor> {
    checkpoint::read_tensors(dir, TRAINABLE_FILE, &Device::Cpu).expect("trainable")
}

/// Both checkpoints hold the same tensors, within 1e-6.
pub(crate) fn assert_same_trainables(a: &Path, b: &Path) {
    let (a, b) = (trainable(a), trainable(b));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let diff = max_abs_diff(t, &b[name]);
        assert!(diff <= 1e-6, "{name} differs by {diff}");
    }
}

/// Both runs of a pause/resume comparison, for the task-specific checks.
pub(crate) struct PauseResume {
    pub(crate) straight: Recorder,
    pub(crate) second: Recorder,
    pub(crate) expected: TrainSummary,
    pub(crate) resumed: TrainSummary,
}

/// Runs `straight` through, and `paused` with a pause after step `pause_at` and then again
/// to the end; checks what must hold for every task: the pause lands at `pause_at` with
/// its checkpoint, the second run resumes there, the two final checkpoints hold the same
/// tensors, and the remaining steps have the same losses (1e-6) and learning rates.
pub(crate) fn pause_then_resume<J>(
    straight: (&J, &Path),
    paused: (&J, &Path),
    total_steps: usize,
    pause_at: usize,
    run: impl Fn(&J, &mut dyn TrainObserver) -> Result<TrainOutcome, TrainError>,
) -> PauseResume {
    let mut straight_rec = Recorder::default();
    let expected = completed(run(straight.0, &mut straight_rec).expect("straight"));
    assert_eq!(straight_rec.steps.len(), total_steps);

    let mut first = Recorder::scripted(pause_at, Control::Pause);
    match run(paused.0, &mut first).expect("first half") {
        TrainOutcome::Stopped { step } => assert_eq!(step, pause_at),
        other => panic!("expected Stopped, got {other:?}"),
    }
    assert_eq!(first.checkpoints.last().map(|c| c.step), Some(pause_at));
    let mut second = Recorder::default();
    let resumed = completed(run(paused.0, &mut second).expect("second half"));
    let resuming = format!("Resuming from step {pause_at}");
    assert!(second.events.contains(&resuming), "{:?}", second.events);
    assert_eq!(second.steps.first().map(|s| s.step), Some(pause_at + 1));
    assert_eq!(first.steps.len() + second.steps.len(), total_steps);
    assert_same_trainables(
        &checkpoint::step_dir(straight.1, total_steps),
        &checkpoint::step_dir(paused.1, total_steps),
    );
    for (x, y) in straight_rec.steps[pause_at..].iter().zip(&second.steps) {
        assert!(
            (x.train_loss() - y.train_loss()).abs() < 1e-6,
            "{x:?} vs {y:?}"
        );
        assert_eq!(x.learning_rate, y.learning_rate);
        assert_eq!(
            x.value("valid_loss").is_some(),
            y.value("valid_loss").is_some()
        );
    }
    assert_eq!(
        resumed.results_csv.lines().count(),
        expected.results_csv.lines().count()
    );
    PauseResume {
        straight: straight_rec,
        second,
        expected,
        resumed,
    }
}

fn accuracy(report: &serde_json::Value) -> f64 {
    report["accuracy"].as_f64().expect("accuracy")
}

#[test]
fn full_finetune_memorises_toy_set() {
    let fx = fixture();
    let job = job(&fx, "full", config(0, 3e-3, 30), false);
    let mut rec = Recorder::default();
    let summary = completed(run_classification(&job, &mut rec).expect("train"));
    assert_eq!(rec.steps.len(), 120, "30 epochs × 4 batches");
    assert_eq!(rec.steps[119].total_steps, 120);
    assert_eq!(rec.steps[119].epoch, 30);
    assert!(
        accuracy(&summary.report) >= 0.9,
        "report {}",
        summary.report
    );
    assert_eq!(summary.report["split"], "train");
    let cm = &summary.report["confusion_matrix"];
    let total: u64 = (0..2)
        .flat_map(|r| (0..2).map(move |c| (r, c)))
        .map(|(r, c)| cm[r][c].as_u64().expect("cell"))
        .sum();
    assert_eq!(total, 16);
    let first_loss = rec.steps[0].train_loss();
    assert!(
        rec.steps[119].train_loss() < first_loss * 0.5,
        "loss {first_loss} → {}",
        rec.steps[119].train_loss()
    );
    // Without validation the last checkpoint (one per epoch) is the best.
    assert_eq!(summary.checkpoints.len(), 30);
    assert_eq!(summary.best_step, 120);
    assert_eq!(rec.checkpoints.len(), 30);
    // Tokens: every example once per epoch.
    let tokenizer = crate::zoo::TextTokenizer::from_dir(&fx.base).expect("tokenizer");
    let per_epoch: usize = toy_examples()
        .iter()
        .map(|e| tokenizer.encode(&e.text, 32).expect("encode").len())
        .sum();
    assert_eq!(summary.trained_tokens, 30 * per_epoch as u64);
    assert_eq!(rec.steps[119].tokens_seen, summary.trained_tokens);
    // CSV: header + one row per step, validation cells blank.
    let lines: Vec<&str> = summary.results_csv.lines().collect();
    assert_eq!(lines.len(), 121);
    assert_eq!(lines[0], RESULTS_CSV_HEADER);
    assert!(lines[1].starts_with("1,") && lines[1].ends_with(",,,"));
    // Only the newest checkpoint keeps optimizer state.
    let with_optimizer = checkpoint::list_checkpoints(&job.work_dir)
        .expect("list")
        .iter()
        .filter(|(_, d)| d.join(checkpoint::OPTIMIZER_FILE).exists())
        .count();
    assert_eq!(with_optimizer, 1);
    let err = export_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Adapter,
        "tiny",
        &fx.root.join("x"),
    )
    .expect_err("full fine-tune has no adapter");
    assert!(err.to_string().contains("no LoRA adapter"), "{err}");
}

#[test]
fn lora_memorises_and_leaves_the_base_untouched() {
    let fx = fixture();
    let job = job(&fx, "lora", config(4, 3e-2, 30), true);
    let mut rec = Recorder::default();
    let summary = completed(run_classification(&job, &mut rec).expect("train"));
    let train_acc = rec
        .steps
        .iter()
        .rev()
        .take(4)
        .map(|s| s.value("train_accuracy").expect("train accuracy"))
        .sum::<f64>()
        / 4.0;
    assert!(
        train_acc >= 0.9,
        "train accuracy over the last epoch {train_acc}"
    );
    assert_eq!(summary.report["split"], "validation");
    assert!(
        accuracy(&summary.report) >= 0.9,
        "report {}",
        summary.report
    );
    // Validation at each epoch end: 30 evaluations, reported in those steps' metrics.
    assert_eq!(
        rec.steps
            .iter()
            .filter(|s| s.value("valid_accuracy").is_some())
            .count(),
        30
    );
    let tensors = trainable(&summary.best_checkpoint);
    assert!(
        tensors
            .keys()
            .all(|k| k.contains("lora_") || !k.contains("encoder.")),
        "{:?}",
        tensors.keys()
    );
    // With every B zeroed the merged weights must be the base weights, bit for bit.
    let (model, _, labels, max_len) = load_classifier_checkpoint(
        &crate::artifacts::BaseModels::default()
            .open(&summary.best_checkpoint)
            .expect("open checkpoint"),
        &Device::Cpu,
    )
    .expect("load");
    assert_eq!((labels.len(), max_len), (2, 32));
    let zeroed: HashMap<String, Tensor> = tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                if k.contains("lora_B") {
                    t.zeros_like().expect("zeros")
                } else {
                    t.clone()
                },
            )
        })
        .collect();
    model.load_trainable(&zeroed).expect("load zeroed");
    let merged = model.merged_tensors().expect("merged");
    let base = candle_core::safetensors::load(fx.base.join("model.safetensors"), &Device::Cpu)
        .expect("base");
    let mut compared = 0;
    for (name, base_t) in &base {
        if let Some(m) = merged
            .get(name)
            .or_else(|| merged.get(&format!("bert.{name}")))
        {
            assert_eq!(max_abs_diff(m, base_t), 0.0, "{name} changed");
            compared += 1;
        }
    }
    assert!(compared >= 20, "only {compared} base tensors compared");
    export_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Adapter,
        "tiny",
        &fx.root.join("adapter"),
    )
    .expect("adapter export");
    assert!(fx.root.join("adapter/adapter_config.json").exists());
    export_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Merged,
        "tiny",
        &fx.root.join("merged"),
    )
    .expect("merged export");
    assert!(fx.root.join("merged/config.json").exists());
}
