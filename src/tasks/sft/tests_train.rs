//! SFT training tests on the tiny random decoder (CPU, dropout 0).

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::batch::{make_lm_batch, masked_next_token_loss, TokenTargets};
use super::prepare::{SftExamples, SftTokenizer};
use super::tests_data::{message, two_turn_chat};
use super::{load_lm_checkpoint, run_sft, SftJob};
use crate::artifacts::checkpoint::{self, TRAINABLE_FILE};
use crate::domain::dataset::{ChatExample, ChatRole, PromptCompletion};
use crate::domain::hyperparams::{LoraSettings, LrScheduler, TrainingConfig};
use crate::tasks::sequence_classification::tests::{
    completed, max_abs_diff, pause_then_resume, trainable, Recorder,
};
use crate::train::evaluate::scalar;
use crate::train::SFT_RESULTS_CSV_HEADER;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};

const FACTS: [(&str, &str); 8] = [
    ("Colour of the sky?", "Blue."),
    ("Colour of grass?", "Green."),
    ("Capital of France?", "Paris."),
    ("Capital of Italy?", "Rome."),
    ("Two plus two?", "Four."),
    ("Opposite of hot?", "Cold."),
    ("Animal that barks?", "A dog."),
    ("Opposite of up?", "Down."),
];

fn chats() -> Vec<ChatExample> {
    FACTS
        .iter()
        .map(|(q, a)| ChatExample {
            messages: vec![
                message(ChatRole::System, "Answer briefly.", None),
                message(ChatRole::User, q, None),
                message(ChatRole::Assistant, a, None),
            ],
            tools: None,
        })
        .collect()
}

pub(super) fn config(lora_rank: usize, learning_rate: f64, n_epochs: usize) -> TrainingConfig {
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
        max_seq_len: 64,
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

pub(super) struct Fixture {
    _dir: tempfile::TempDir,
    pub(super) base: PathBuf,
    pub(super) root: PathBuf,
}

pub(super) fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 7).expect("tiny decoder");
    let root = dir.path().to_path_buf();
    Fixture {
        _dir: dir,
        base,
        root,
    }
}

pub(super) fn job(fx: &Fixture, work: &str, config: TrainingConfig, valid: bool) -> SftJob {
    SftJob {
        base_model_dir: fx.base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: fx.base.clone(),
        },
        train: SftExamples::Chat(chats()),
        valid: valid.then(|| SftExamples::Chat(chats()[..5].to_vec())),
        config,
        work_dir: fx.root.join(work),
        device: Device::Cpu,
    }
}

fn full_ft(base: &Path) -> CausalLm {
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    CausalLm::from_pretrained(base, &spec, &Device::Cpu, 0).expect("model")
}

/// Loss and the gradient of every weight for one example under `targets`.
fn loss_and_grads(model: &CausalLm, ids: &[u32], targets: &TokenTargets) -> (f64, Vec<Tensor>) {
    let inputs = crate::zoo::collate(&[ids], 0, &Device::Cpu).expect("collate");
    let hidden = model.hidden_states(&inputs, true).expect("hidden");
    let out = masked_next_token_loss(&hidden, |x| model.lm_head(x), targets).expect("loss");
    let grads = out.loss.backward().expect("backward");
    let per_var = model
        .trainable_vars()
        .iter()
        .map(|v| grads.get(v.var.as_tensor()).expect("grad").clone())
        .collect();
    (scalar(&out.loss).expect("scalar"), per_var)
}

#[test]
fn untrained_labels_change_neither_loss_nor_gradients() {
    let fx = fixture();
    let tok = SftTokenizer::from_dir(&fx.base, &[]).expect("tokenizer");
    let example = tok.chat(&two_turn_chat(), 1).expect("chat");
    let batch = make_lm_batch(std::slice::from_ref(&example), &[0], 0, &Device::Cpu).expect("b");
    let model = full_ft(&fx.base);
    let (loss, grads) = loss_and_grads(&model, &example.ids, &batch.targets);

    // Rewrite the label of every untrained position (system, user, the weight-0 answer,
    // template tokens): nothing may move, bit for bit.
    let mut scrambled = batch.targets.clone();
    for (target, trained) in scrambled.targets.iter_mut().zip(&scrambled.trained) {
        if !trained {
            *target = (*target + 17) % 200;
        }
    }
    assert_ne!(scrambled.targets, batch.targets.targets);
    let (loss2, grads2) = loss_and_grads(&model, &example.ids, &scrambled);
    assert_eq!(loss, loss2);
    for (a, b) in grads.iter().zip(&grads2) {
        assert_eq!(max_abs_diff(a, b), 0.0);
    }

    // The weight-0 answer ("Lyon.<|im_end|>") is not a target: weighting it 1 adds
    // exactly its tokens to the loss and changes it.
    let mut weighted = two_turn_chat();
    weighted.messages[2].weight = Some(1);
    let both = tok.chat(&weighted, 1).expect("chat");
    assert_eq!(both.ids, example.ids);
    let first_answer = tok
        .tokenizer()
        .encode("Lyon.<|im_end|>", false)
        .expect("encode")
        .len();
    assert_eq!(both.n_targets(), example.n_targets() + first_answer);
    let both_batch = make_lm_batch(std::slice::from_ref(&both), &[0], 0, &Device::Cpu).expect("b");
    let (loss3, _) = loss_and_grads(&model, &both.ids, &both_batch.targets);
    assert!((loss3 - loss).abs() > 1e-4, "{loss} vs {loss3}");

    // And a trained label does matter.
    let mut changed = batch.targets.clone();
    let p = changed.trained.iter().position(|&t| t).expect("trained");
    changed.targets[p] = (changed.targets[p] + 1) % 200;
    let (loss4, _) = loss_and_grads(&model, &example.ids, &changed);
    assert!((loss4 - loss).abs() > 1e-4);
}

fn last_epoch_loss(rec: &Recorder, per_epoch: usize) -> f64 {
    let last: Vec<f64> = rec
        .steps
        .iter()
        .rev()
        .take(per_epoch)
        .map(|s| s.train_loss())
        .collect();
    last.iter().sum::<f64>() / last.len() as f64
}

#[test]
fn lora_and_full_fine_tuning_lower_the_loss() {
    let fx = fixture();
    for (name, rank, lr) in [("lora", 8, 1e-2), ("full", 0, 3e-3)] {
        let job = job(&fx, name, config(rank, lr, 15), false);
        let mut rec = Recorder::default();
        let summary = completed(run_sft(&job, &mut rec).expect("train"));
        assert_eq!(rec.steps.len(), 30, "15 epochs × 2 batches");
        let first = rec.steps[0].train_loss();
        let last = last_epoch_loss(&rec, 2);
        eprintln!("{name}: train loss {first:.4} → {last:.4}");
        assert!(last < 0.15 * first, "{name}: loss {first} → {last}");
        let accuracy = |i: usize| {
            rec.steps[i]
                .value("train_mean_token_accuracy")
                .expect("accuracy")
        };
        assert!(accuracy(29) > accuracy(0));
        assert_eq!(summary.best_step, 30, "no validation: the last checkpoint");
        let names: Vec<String> = trainable(&summary.best_checkpoint).into_keys().collect();
        if rank > 0 {
            assert!(names.iter().all(|n| n.contains("lora_")), "{names:?}");
        } else {
            assert!(names.iter().any(|n| n == "lm_head.weight"), "{names:?}");
        }
    }
}

#[test]
fn metrics_csv_and_validation_before_training() {
    let fx = fixture();
    let cfg = TrainingConfig {
        eval_steps: Some(1),
        ..config(8, 1e-2, 3)
    };
    let job = job(&fx, "metrics", cfg, true);
    let mut rec = Recorder::default();
    let summary = completed(run_sft(&job, &mut rec).expect("train"));
    let before = rec
        .events
        .iter()
        .find(|e| e.starts_with("Before training: full validation loss="))
        .expect("validation before training");
    let initial = summary.report["initial_full_valid_loss"]
        .as_f64()
        .expect("initial loss");
    assert!(before.contains(&format!("{initial:.4}")), "{before}");
    let lines: Vec<&str> = summary.results_csv.lines().collect();
    assert_eq!(lines[0], SFT_RESULTS_CSV_HEADER);
    assert_eq!(lines.len(), 7, "header + 6 steps");
    // Step 1: batch validation only; step 2 ends epoch 1: full validation too.
    let cells = |line: &str| line.split(',').map(str::to_owned).collect::<Vec<_>>();
    let step1 = cells(lines[1]);
    assert_eq!(step1.len(), 7);
    assert!(!step1[3].is_empty() && !step1[4].is_empty());
    assert!(step1[5].is_empty() && step1[6].is_empty());
    let step2 = cells(lines[2]);
    assert!(!step2[5].is_empty() && !step2[6].is_empty());
    assert_eq!(
        rec.steps
            .iter()
            .filter(|s| s.value("full_valid_loss").is_some())
            .count(),
        3
    );
    // Best = lowest full validation loss; it beats the base model's.
    let after = summary.report["full_valid_loss"].as_f64().expect("after");
    eprintln!("full valid loss {initial:.4} → {after:.4}");
    assert!(after < initial, "{initial} → {after}");
    let best = rec
        .steps
        .iter()
        .filter_map(|s| s.value("full_valid_loss").map(|l| (s.step, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .expect("full validations");
    assert_eq!(summary.best_step, best.0);
    let metrics = &rec.checkpoints[0].metrics;
    for key in [
        "train_loss",
        "train_mean_token_accuracy",
        "valid_loss",
        "valid_mean_token_accuracy",
        "full_valid_loss",
        "full_valid_mean_token_accuracy",
    ] {
        assert!(metrics.get(key).is_some(), "{key} missing in {metrics}");
    }
}

#[test]
fn prompt_completion_trains_and_reports_truncation() {
    let fx = fixture();
    let pairs: Vec<PromptCompletion> = FACTS
        .iter()
        .map(|(q, a)| PromptCompletion {
            prompt: format!("Q: {q}\nA:"),
            completion: format!(" {a}"),
        })
        .collect();
    let job = SftJob {
        train: SftExamples::PromptCompletion(pairs),
        valid: None,
        config: TrainingConfig {
            max_seq_len: 24,
            ..config(8, 1e-2, 2)
        },
        ..job(&fx, "pc", config(8, 1e-2, 2), false)
    };
    let mut rec = Recorder::default();
    let summary = completed(run_sft(&job, &mut rec).expect("train"));
    assert_eq!(rec.steps.len(), 4);
    assert!(
        rec.events.iter().any(|e| e.ends_with(
            "training examples were longer than max_seq_len (24) tokens and were truncated"
        )),
        "{:?}",
        rec.events
    );
    assert_eq!(summary.report["train_examples"], 8);
}

fn resumable_config() -> TrainingConfig {
    TrainingConfig {
        batch_size: 3,
        gradient_accumulation_steps: 2,
        eval_steps: Some(2),
        lr_scheduler: LrScheduler::Cosine,
        warmup_ratio: 0.2,
        ..config(4, 5e-3, 3)
    }
}

#[test]
fn pause_then_resume_equals_uninterrupted_run() {
    let fx = fixture();
    // 8 examples / batch 3 = 3 batches; accumulation 2 → 2 steps per epoch, 6 in all.
    let straight = job(&fx, "straight", resumable_config(), true);
    let paused = job(&fx, "paused", resumable_config(), true);
    let runs = pause_then_resume(
        (&straight, &straight.work_dir),
        (&paused, &paused.work_dir),
        6,
        3,
        run_sft,
    );
    // The resumed run does not measure the base model again.
    assert!(!runs
        .second
        .events
        .iter()
        .any(|e| e.starts_with("Before training")));
    assert!(runs
        .straight
        .events
        .iter()
        .any(|e| e.starts_with("Before training")));
    assert_eq!(runs.resumed.results_csv, runs.expected.results_csv);
    assert_eq!(
        runs.resumed.report["initial_full_valid_loss"],
        runs.expected.report["initial_full_valid_loss"]
    );
}

#[test]
fn loaded_checkpoint_gives_the_trained_logits() {
    let fx = fixture();
    let job = job(&fx, "load", config(8, 1e-2, 2), false);
    let summary = completed(run_sft(&job, &mut Recorder::default()).expect("train"));
    // The trained model, unmerged: base + LoRA tensors of the checkpoint.
    let spec = DecoderSpec {
        lora: Some(job.config.lora.clone()),
        quantize: None,
    };
    let unmerged = CausalLm::from_pretrained(&fx.base, &spec, &Device::Cpu, 3).expect("model");
    let tensors = checkpoint::read_tensors(&summary.best_checkpoint, TRAINABLE_FILE, &Device::Cpu)
        .expect("tensors");
    unmerged.load_trainable(&tensors).expect("load");
    let loaded = load_lm_checkpoint(
        &summary.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("loaded");
    assert_eq!(loaded.max_seq_len, 64);
    assert!(loaded.template.is_some());
    assert!(loaded.eos_token_ids.contains(&2));
    let ids = loaded
        .tokenizer
        .encode("<|im_start|>user\nCapital of France?<|im_end|>", false)
        .expect("encode");
    let batch = crate::zoo::collate(&[ids.get_ids()], 0, &Device::Cpu).expect("batch");
    let expected = unmerged.forward(&batch, false).expect("unmerged");
    let merged = loaded.model.forward(&batch, false).expect("merged");
    let diff = max_abs_diff(&expected, &merged);
    assert!(diff < 1e-4, "merged logits differ by {diff}");
    let base = load_lm_checkpoint(
        &fx.base,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("base dir");
    assert_eq!(base.max_seq_len, 1024);
    let base_logits = base.model.forward(&batch, false).expect("base");
    assert!(
        max_abs_diff(&base_logits, &merged) > 1e-3,
        "training changed the model"
    );
}

#[test]
fn qwen2_with_tied_embeddings_trains_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().join("qwen2");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Qwen2, 9).expect("tiny qwen2");
    let fx = Fixture {
        base,
        root: dir.path().to_path_buf(),
        _dir: dir,
    };
    let job = job(&fx, "qwen2", config(8, 1e-2, 15), false);
    let mut rec = Recorder::default();
    completed(run_sft(&job, &mut rec).expect("train"));
    let (first, last) = (rec.steps[0].train_loss(), last_epoch_loss(&rec, 2));
    eprintln!("qwen2 lora: train loss {first:.4} → {last:.4}");
    assert!(last < 0.25 * first, "loss {first} → {last}");
}
