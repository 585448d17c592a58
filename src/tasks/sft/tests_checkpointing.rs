//! `gradient_checkpointing: true` trains the model the job trains without it: the same
//! losses step by step and the same weights at the end (LoRA with dropout, whose masks the
//! recomputed layers must draw again, and full fine-tuning).

use super::run_sft;
use super::tests_train::{config, fixture, job};
use crate::tasks::sequence_classification::tests::{completed, max_abs_diff, trainable, Recorder};

#[test]
fn a_checkpointed_job_trains_exactly_like_the_plain_one() {
    let fx = fixture();
    for (name, rank, lr, dropout) in [("lora", 8, 1e-2, 0.1), ("full", 0, 3e-3, 0.0)] {
        let run = |checkpointing: bool| {
            let mut cfg = config(rank, lr, 2);
            cfg.lora.dropout = dropout;
            cfg.gradient_checkpointing = checkpointing;
            let work = format!("{name}-{checkpointing}");
            let mut rec = Recorder::default();
            let summary = completed(run_sft(&job(&fx, &work, cfg, false), &mut rec).expect("run"));
            (rec, trainable(&summary.best_checkpoint))
        };
        let (plain, plain_weights) = run(false);
        let (ckpt, ckpt_weights) = run(true);
        assert_eq!(plain.steps.len(), 4, "{name}: 2 epochs × 2 batches");
        assert_eq!(plain.steps.len(), ckpt.steps.len());
        for (a, b) in plain.steps.iter().zip(&ckpt.steps) {
            let (a, b) = (a.train_loss(), b.train_loss());
            assert!((a - b).abs() < 1e-5, "{name}: step loss {a} vs {b}");
        }
        let first = plain.steps[0].train_loss();
        let last = plain.steps[3].train_loss();
        assert!(last < first, "{name}: the run trains ({first} → {last})");
        assert_eq!(plain_weights.len(), ckpt_weights.len());
        for (tensor, value) in &plain_weights {
            let diff = max_abs_diff(value, &ckpt_weights[tensor]);
            assert!(diff < 1e-5, "{name}: {tensor} differs by {diff}");
        }
    }
}
