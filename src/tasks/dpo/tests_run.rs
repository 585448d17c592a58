//! `run_dpo` on the tiny decoder: metrics, best checkpoint, the result as a causal LM,
//! exact resume.

use candle_core::Device;

use super::loss::DEFAULT_BETA;
use super::run::{run_dpo, DpoJob, DpoTask, DPO_METRICS};
use super::tests_prepare::{message, tiny_decoder};
use crate::domain::dataset::{ChatExample, ChatRole, PreferenceExample};
use crate::domain::hyperparams::{LoraSettings, LrScheduler, TrainingConfig};
use crate::tasks::sequence_classification::tests::{completed, pause_then_resume, Recorder};
use crate::tasks::sft::load_lm_checkpoint;
use crate::train::TrainError;
use crate::zoo::decoder::DecoderArch;

/// Questions and their short answers; every rejected answer is the same evasion, which a
/// model learns to disprefer on questions it has not seen too.
const FACTS: [(&str, &str); 12] = [
    ("Colour of the sky?", "Blue."),
    ("Colour of grass?", "Green."),
    ("Capital of France?", "Paris."),
    ("Capital of Italy?", "Rome."),
    ("Two plus two?", "Four."),
    ("Opposite of hot?", "Cold."),
    ("Animal that barks?", "A dog."),
    ("Opposite of up?", "Down."),
    ("Frozen water?", "Ice."),
    ("Day after Monday?", "Tuesday."),
    ("Colour of snow?", "White."),
    ("Three plus one?", "Four."),
];

const EVASION: &str = "I do not know.";

fn pairs(range: std::ops::Range<usize>) -> Vec<PreferenceExample> {
    FACTS[range]
        .iter()
        .map(|(q, answer)| PreferenceExample {
            input: ChatExample {
                messages: vec![
                    message(ChatRole::System, "Answer briefly."),
                    message(ChatRole::User, q),
                ],
                tools: None,
            },
            preferred: message(ChatRole::Assistant, answer),
            non_preferred: message(ChatRole::Assistant, EVASION),
        })
        .collect()
}

fn config(lora_rank: usize, learning_rate: f64, n_epochs: usize) -> TrainingConfig {
    TrainingConfig {
        n_epochs,
        batch_size: 4,
        learning_rate_multiplier: 1.0,
        learning_rate,
        head_learning_rate: None,
        lr_scheduler: LrScheduler::Constant,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        gradient_accumulation_steps: 1,
        max_seq_len: 128,
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
        seed: 3,
        task_options: Default::default(),
    }
}

struct Fixture {
    dir: tempfile::TempDir,
    base: std::path::PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = tiny_decoder(dir.path(), DecoderArch::Llama);
    Fixture { dir, base }
}

fn job(fx: &Fixture, work: &str, config: TrainingConfig, beta: f64) -> DpoJob {
    DpoJob {
        base_model_dir: fx.base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone(),
        },
        train: pairs(0..8),
        valid: Some(pairs(8..12)),
        config,
        beta,
        work_dir: fx.dir.path().join(work),
        device: Device::Cpu,
    }
}

#[test]
fn lora_dpo_raises_reward_accuracy_and_keeps_the_lowest_validation_loss() {
    let fx = fixture();
    let job = job(&fx, "lora", config(8, 1e-3, 4), DEFAULT_BETA);
    let mut rec = Recorder::default();
    let summary = completed(run_dpo(&job, &mut rec).expect("train"));
    // 8 pairs / batch 4 = 2 steps per epoch.
    assert_eq!(rec.steps.len(), 8);
    let first = &rec.steps[0];
    // The first forward runs before any update: policy = reference.
    assert!((first.train_loss() - std::f64::consts::LN_2).abs() < 1e-6);
    assert_eq!(first.value("train_reward_accuracy"), Some(0.0));
    assert_eq!(first.value("train_rewards_chosen"), Some(0.0));
    assert_eq!(first.value("train_reward_margin"), Some(0.0));
    let names: Vec<&str> = first.metrics.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, DPO_METRICS.columns().collect::<Vec<_>>());
    // Validation at every epoch end, on the whole validation set.
    let evaluated: Vec<_> = rec
        .steps
        .iter()
        .filter_map(|s| Some((s.step, s.value("valid_loss")?)))
        .collect();
    assert_eq!(
        evaluated.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [2, 4, 6, 8]
    );
    let last = rec.steps.last().expect("steps");
    assert_eq!(last.value("train_reward_accuracy"), Some(1.0), "{last:?}");
    assert!(
        last.value("valid_reward_accuracy").expect("acc") >= 0.75,
        "{last:?}"
    );
    assert!(last.value("valid_reward_margin").expect("margin") > 0.0);
    assert!(last.train_loss() < 0.3, "{last:?}");

    let (best_step, best_loss) = evaluated
        .iter()
        .copied()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("evaluations");
    assert!(best_loss < std::f64::consts::LN_2);
    assert_eq!(summary.best_step, best_step);
    assert_eq!(summary.report["task"], "dpo");
    assert_eq!(summary.best_step, 8);
    assert_eq!(summary.report["beta"], DEFAULT_BETA);
    assert_eq!(summary.report["train_pairs"], 8);
    assert_eq!(summary.report["valid_pairs"], 4);
    assert_eq!(summary.report["reference"], "policy with adapters disabled");
    assert!((summary.report["valid_loss"].as_f64().expect("loss") - best_loss).abs() < 1e-12);
    assert_eq!(
        summary.results_csv.lines().next(),
        Some("step,train_loss,train_rewards_chosen,train_rewards_rejected,train_reward_accuracy,train_reward_margin,valid_loss,valid_rewards_chosen,valid_rewards_rejected,valid_reward_accuracy,valid_reward_margin")
    );
    assert_eq!(summary.results_csv.lines().count(), 9);
    let best = summary
        .checkpoints
        .iter()
        .find(|c| c.step == best_step)
        .expect("best checkpoint");
    assert!(
        best.metrics["valid_reward_accuracy"].is_number(),
        "{}",
        best.metrics
    );
    // The result is a causal LM checkpoint: it loads for serving like an SFT result.
    let served = load_lm_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("load");
    assert!(served.template.is_some());
}

#[test]
fn qlora_dpo_learns_over_a_quantized_base_and_loads_for_serving() {
    let fx = fixture();
    let qlora = TrainingConfig {
        quantize: Some("q4_0".into()),
        ..config(8, 1e-3, 4)
    };
    let job = job(&fx, "qlora", qlora, DEFAULT_BETA);
    let mut rec = Recorder::default();
    let summary = completed(run_dpo(&job, &mut rec).expect("train"));
    assert_eq!(rec.steps.len(), 8);
    // The reference is the same quantized base with the adapters off: equal at the start.
    assert!((rec.steps[0].train_loss() - std::f64::consts::LN_2).abs() < 1e-6);
    let last = rec.steps.last().expect("steps");
    assert_eq!(last.value("train_reward_accuracy"), Some(1.0), "{last:?}");
    assert!(last.train_loss() < 0.3, "{last:?}");
    assert!(last.value("valid_reward_margin").expect("margin") > 0.0);
    assert_eq!(summary.report["reference"], "policy with adapters disabled");
    let best = summary.best_checkpoint.clone();
    let meta = crate::artifacts::checkpoint::read_meta(&best).expect("meta");
    assert_eq!(
        meta.lm_spec(&best).expect("lm spec").quantize.as_deref(),
        Some("q4_0")
    );
    // Served like any QLoRA result: the adapters merged over the dequantized base.
    load_lm_checkpoint(
        &best,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("load");
}

#[test]
fn full_fine_tuning_dpo_compares_with_a_frozen_copy() {
    let fx = fixture();
    let job = job(&fx, "full", config(0, 1e-3, 1), 0.1);
    let mut rec = Recorder::default();
    let summary = completed(run_dpo(&job, &mut rec).expect("train"));
    assert_eq!(rec.steps.len(), 2);
    assert!((rec.steps[0].train_loss() - std::f64::consts::LN_2).abs() < 1e-6);
    // After one full-weight update the policy has left the reference.
    let second = &rec.steps[1];
    assert_ne!(
        second.value("train_rewards_chosen"),
        Some(0.0),
        "{second:?}"
    );
    assert_eq!(
        summary.report["reference"],
        "frozen copy of the starting model"
    );
}

#[test]
fn pause_then_resume_equals_uninterrupted_run() {
    let fx = fixture();
    let resumable = TrainingConfig {
        batch_size: 3,
        gradient_accumulation_steps: 2,
        eval_steps: Some(2),
        lr_scheduler: LrScheduler::Cosine,
        warmup_ratio: 0.2,
        ..config(4, 5e-3, 3)
    };
    // 8 pairs / batch 3 = 3 batches; accumulation 2 → 2 steps per epoch, 6 in all.
    let straight = job(&fx, "straight", resumable.clone(), 0.3);
    let paused = job(&fx, "paused", resumable, 0.3);
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        6,
        3,
        run_dpo,
    );
    assert_eq!(runs.resumed.best_step, runs.expected.best_step);
    assert_eq!(runs.resumed.trained_tokens, runs.expected.trained_tokens);
}

#[test]
fn a_non_positive_beta_is_invalid_data() {
    let fx = fixture();
    for beta in [0.0, -0.1, f64::NAN] {
        let job = job(&fx, "beta", config(4, 1e-3, 1), beta);
        match run_dpo(&job, &mut Recorder::default()) {
            Err(TrainError::InvalidData(message)) => {
                assert!(
                    message.contains("`beta` must be a positive number"),
                    "{message}"
                )
            }
            Err(other) => panic!("unexpected error {other}"),
            Ok(_) => panic!("beta {beta} was accepted"),
        }
    }
}

#[test]
fn max_prompt_length_from_the_job_settings_cuts_every_prompt_and_says_so() {
    let fx = fixture();
    let plain = DpoTask::prepare(
        &job(&fx, "plain", config(8, 1e-3, 1), DEFAULT_BETA),
        &mut Recorder::default(),
    )
    .expect("prepare");
    let mut capped = config(8, 1e-3, 1);
    capped.task_options.max_prompt_length = Some(6);
    let mut rec = Recorder::default();
    let cut = DpoTask::prepare(&job(&fx, "cut", capped, DEFAULT_BETA), &mut rec).expect("prepare");
    assert_eq!(cut.train.len(), 8);
    for (whole, kept) in plain.train.iter().zip(&cut.train) {
        let prompt = &whole.chosen.ids[..whole.chosen.n_prompt];
        assert!(prompt.len() > 6);
        assert_eq!(kept.chosen.n_prompt, 6);
        assert_eq!(kept.chosen.ids[..6], prompt[prompt.len() - 6..]);
        assert_eq!(kept.chosen.completion(), whole.chosen.completion());
        assert_eq!(kept.rejected.completion(), whole.rejected.completion());
    }
    assert!(
        rec.events.iter().any(|e| e
            == "8 training prompts were longer than max_prompt_length: each kept its last max_prompt_length tokens"),
        "{:?}",
        rec.events
    );
    assert!(
        rec.events
            .iter()
            .any(|e| e.starts_with("4 validation prompts")),
        "{:?}",
        rec.events
    );
}

#[test]
fn a_dpo_job_that_cannot_fit_fails_before_loading() {
    let fx = fixture();
    crate::tasks::sft::tests_memory::inflate_config(&fx.base);
    let job = job(&fx, "too-big", config(8, 1e-3, 1), DEFAULT_BETA);
    let mut rec = Recorder::default();
    let Err(TrainError::DoesNotFit(message)) = run_dpo(&job, &mut rec) else {
        panic!("an over-sized DPO job must fail the memory check");
    };
    assert!(message.contains("on `cpu`"), "{message}");
    assert!(rec.steps.is_empty() && !job.work_dir.exists());
}

#[test]
fn bf16_dpo_with_checkpointing_follows_the_f32_run() {
    use crate::domain::hyperparams::Precision;
    let fx = fixture();
    for (name, rank, lr) in [("lora", 8, 1e-3), ("full", 0, 2e-4)] {
        let losses = |mixed: bool| {
            let mut cfg = config(rank, lr, 3);
            if mixed {
                cfg.precision = Some(Precision::Bf16);
                cfg.gradient_checkpointing = true;
            }
            let work = format!("{name}-{mixed}");
            let mut rec = Recorder::default();
            completed(run_dpo(&job(&fx, &work, cfg, DEFAULT_BETA), &mut rec).expect("train"));
            rec.steps.iter().map(|s| s.train_loss()).collect::<Vec<_>>()
        };
        let (plain, mixed) = (losses(false), losses(true));
        // The reference is the starting policy in the same precision: ln 2 at the start.
        assert!(
            (mixed[0] - std::f64::consts::LN_2).abs() < 1e-5,
            "{name}: {mixed:?}"
        );
        for (a, b) in plain.iter().zip(&mixed) {
            assert!((a - b).abs() / a < 0.03, "{name}: {plain:?} vs {mixed:?}");
        }
        assert!(
            mixed[mixed.len() - 1] < mixed[0],
            "{name}: learns {mixed:?}"
        );
        assert_ne!(plain, mixed, "{name}: the mixed run ran in bf16");
    }
}
