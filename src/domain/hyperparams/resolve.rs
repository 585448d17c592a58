//! Resolving a request once the task and the number of examples are known: per-task
//! defaults, and OpenAI's `"auto"` rules for epochs and batch size.

use super::{HyperparamRequest, LoraSettings, LrScheduler, TrainingConfig};
use crate::domain::task::{DefaultsKey, Task};

/// Per-task defaults, as transformers' `Trainer` recipes and peft examples use them.
pub(super) struct TaskDefaults {
    pub(super) full_lr: f64,
    pub(super) lora_lr: f64,
    pub(super) lora_rank: usize,
    pub(super) lora_alpha: f64,
    pub(super) batch_size: usize,
    pub(super) max_seq_len: usize,
}

pub(super) fn defaults(task: Task) -> TaskDefaults {
    if task == Task::QuestionAnswering {
        // run_qa's recipe: windows of 384 tokens.
        let encoder = defaults_for(DefaultsKey::EncoderFineTune);
        return TaskDefaults {
            max_seq_len: 384,
            ..encoder
        };
    }
    defaults_for(task.defaults_key())
}

fn defaults_for(key: DefaultsKey) -> TaskDefaults {
    match key {
        // BERT recipe: full fine-tuning, lr 2e-5, batch 16, 128 tokens.
        DefaultsKey::EncoderFineTune => TaskDefaults {
            full_lr: 2e-5,
            lora_lr: 5e-4,
            lora_rank: 0,
            lora_alpha: 16.0,
            batch_size: 16,
            max_seq_len: 128,
        },
        // Decoder SFT: LoRA r=8, α=16, lr 2e-4 (peft's usual recipe).
        DefaultsKey::DecoderLora => TaskDefaults {
            full_lr: 2e-5,
            lora_lr: 2e-4,
            lora_rank: 8,
            lora_alpha: 16.0,
            batch_size: 4,
            max_seq_len: 512,
        },
        // torchvision's transfer-learning recipe: a new head at lr 1e-3, batch 32, no LoRA;
        // images have no sequence length (the field stays at 1, unused).
        DefaultsKey::ImageTransfer => TaskDefaults {
            full_lr: 1e-3,
            lora_lr: 1e-3,
            lora_rank: 0,
            lora_alpha: 16.0,
            batch_size: 32,
            max_seq_len: 1,
        },
    }
}

/// OpenAI's `"auto"` epochs, the rule of its fine-tuning cookbook: 3 epochs, but at least
/// 100 and at most 25,000 example passes, and between 1 and 25 epochs.
pub fn auto_epochs(n_examples: usize) -> usize {
    let n = n_examples.max(1);
    if n * TARGET_EPOCHS < MIN_TARGET_EXAMPLES {
        (MIN_TARGET_EXAMPLES / n).min(MAX_AUTO_EPOCHS)
    } else if n * TARGET_EPOCHS > MAX_TARGET_EXAMPLES {
        (MAX_TARGET_EXAMPLES / n).max(1)
    } else {
        TARGET_EPOCHS
    }
}

const TARGET_EPOCHS: usize = 3;
const MIN_TARGET_EXAMPLES: usize = 100;
const MAX_TARGET_EXAMPLES: usize = 25_000;
const MAX_AUTO_EPOCHS: usize = 25;

/// Fewer optimizer steps than this leave a fresh head or LoRA adapter where it started (60
/// examples in batches of 16 for 3 epochs are 12 steps: nothing learned). OpenAI reaches
/// about this many on a small set by its batch size (~0.2% of the examples, so 1) times the
/// cookbook's epochs; `"auto"` does the same: a smaller batch first, then more epochs.
pub const MIN_AUTO_STEPS: usize = 100;

/// The learning rate of a classification head made from scratch, under an `"auto"`
/// learning rate (times the multiplier): a random head next to a pretrained encoder at the
/// encoder's 2e-5 barely moves in a small set's steps, so it gets the rate a linear probe
/// is trained at.
pub const AUTO_HEAD_LEARNING_RATE: f64 = 1e-3;

/// Optimizer steps in one epoch of `n` examples.
fn steps_per_epoch(n: usize, batch_size: usize, accumulation: usize) -> usize {
    n.div_ceil(batch_size.max(1)).div_ceil(accumulation.max(1))
}

/// The largest batch, at most the task's default, with which `n_epochs` over `n` examples
/// take [`MIN_AUTO_STEPS`] optimizer steps (1 when none does).
fn auto_batch_size(default: usize, n: usize, n_epochs: usize, accumulation: usize) -> usize {
    (1..=default.max(1))
        .rev()
        .find(|&batch| n_epochs * steps_per_epoch(n, batch, accumulation) >= MIN_AUTO_STEPS)
        .unwrap_or(1)
}

impl HyperparamRequest {
    /// Replaces every `"auto"` with the number the job will use.
    pub fn resolve(&self, task: Task, n_examples: usize, seed: u64) -> TrainingConfig {
        self.resolve_explained(task, n_examples, seed).0
    }

    /// [`HyperparamRequest::resolve`], and for each `"auto"` a sentence saying what it
    /// became and why (the job's events show them).
    pub fn resolve_explained(
        &self,
        task: Task,
        n_examples: usize,
        seed: u64,
    ) -> (TrainingConfig, Vec<String>) {
        let d = defaults(task);
        let n = n_examples.max(1);
        let rank = self.lora_rank.unwrap_or(d.lora_rank);
        let multiplier = self.learning_rate_multiplier.unwrap_or(1.0);
        let base_lr = if rank == 0 { d.full_lr } else { d.lora_lr };
        let accumulation = self.gradient_accumulation_steps.unwrap_or(1);
        let mut why = Vec::new();
        let cookbook_epochs = self.n_epochs.unwrap_or_else(|| auto_epochs(n));
        let batch_size = self.batch_size.unwrap_or_else(|| {
            let batch = auto_batch_size(d.batch_size, n, cookbook_epochs, accumulation);
            let default_steps = cookbook_epochs * steps_per_epoch(n, d.batch_size, accumulation);
            why.push(if batch < d.batch_size {
                format!(
                    "batch_size=auto → {batch} for {n} examples: {}'s usual {} would make only {default_steps} optimizer steps in {cookbook_epochs} epochs, too few to learn from; {batch} makes {} (at least {MIN_AUTO_STEPS} where the data allows)",
                    task.label(),
                    d.batch_size,
                    cookbook_epochs * steps_per_epoch(n, batch, accumulation),
                )
            } else {
                format!(
                    "batch_size=auto → {batch} for {n} examples: {}'s usual batch, already {default_steps} optimizer steps in {cookbook_epochs} epochs",
                    task.label()
                )
            });
            batch
        });
        let per_epoch = steps_per_epoch(n, batch_size, accumulation);
        let n_epochs = self.n_epochs.unwrap_or_else(|| {
            let for_steps = MIN_AUTO_STEPS.div_ceil(per_epoch).min(MAX_AUTO_EPOCHS);
            let epochs = cookbook_epochs.max(for_steps);
            let reason = if epochs > cookbook_epochs {
                format!(
                    "raised from OpenAI's {cookbook_epochs} so that the run takes at least {MIN_AUTO_STEPS} optimizer steps ({per_epoch} per epoch; at most {MAX_AUTO_EPOCHS} epochs)"
                )
            } else if cookbook_epochs != TARGET_EPOCHS {
                format!(
                    "OpenAI's rule: {TARGET_EPOCHS} epochs, but at least {MIN_TARGET_EXAMPLES} and at most {MAX_TARGET_EXAMPLES} example passes"
                )
            } else {
                format!("OpenAI's {TARGET_EPOCHS} epochs")
            };
            why.push(format!(
                "n_epochs=auto → {epochs} for {n} examples: {reason}; {} optimizer steps in all",
                epochs * per_epoch
            ));
            epochs
        });
        let learning_rate = self.learning_rate.unwrap_or(base_lr * multiplier);
        let head_learning_rate = (task == Task::SequenceClassification
            && self.learning_rate.is_none())
        .then(|| (AUTO_HEAD_LEARNING_RATE * multiplier).max(learning_rate));
        if self.learning_rate.is_none() {
            let tuning = if rank == 0 {
                "full fine-tuning"
            } else {
                "LoRA"
            };
            let mut sentence = format!(
                "learning_rate=auto → {learning_rate:e}: the {} recipe's {base_lr:e} for {tuning}, times learning_rate_multiplier {multiplier}",
                task.label()
            );
            if let Some(head) = head_learning_rate {
                sentence.push_str(&format!(
                    "; the new classification head learns at its own {head:e}, so a small set moves it"
                ));
            }
            why.push(sentence);
        }
        let config = TrainingConfig {
            n_epochs,
            batch_size,
            learning_rate_multiplier: multiplier,
            learning_rate,
            head_learning_rate,
            lr_scheduler: self.lr_scheduler.unwrap_or(LrScheduler::Linear),
            warmup_ratio: self.warmup_ratio.unwrap_or(0.0),
            weight_decay: self.weight_decay.unwrap_or(0.0),
            max_grad_norm: self.max_grad_norm.unwrap_or(1.0),
            gradient_accumulation_steps: accumulation,
            max_seq_len: self.max_seq_len.unwrap_or(d.max_seq_len),
            eval_steps: self.eval_steps,
            save_steps: self.save_steps,
            early_stopping_patience: self.early_stopping_patience,
            metric_for_best_model: self.metric_for_best_model.clone(),
            lora: LoraSettings {
                rank,
                alpha: self.lora_alpha.unwrap_or(d.lora_alpha),
                dropout: self.lora_dropout.unwrap_or(0.0),
                target_modules: self.target_modules.clone().unwrap_or_default(),
            },
            quantize: self.quantize.clone(),
            gradient_checkpointing: self.gradient_checkpointing.unwrap_or(false),
            precision: self.precision,
            export_dtype: self.export_dtype,
            seed,
            task_options: self.task_options.resolve(task),
        };
        (config, why)
    }
}
