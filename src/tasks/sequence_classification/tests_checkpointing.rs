//! `gradient_checkpointing: true` on an encoder job trains the model the plain job trains:
//! the same losses step by step and the same weights, with hidden and attention dropout on
//! (their masks drawn again by the recomputed layers), on the fused CPU path and on the
//! device-generic path a GPU runs.

use super::run_classification;
use super::tests::{completed, config, fixture_with, job, max_abs_diff, trainable, Recorder};
use crate::zoo::fused::with_generic_ops;
use crate::zoo::testing::TinyBertStyle;

fn assert_checkpointing_changes_nothing(generic: bool) {
    let fx = fixture_with(TinyBertStyle {
        dropout: 0.1,
        ..TinyBertStyle::default()
    });
    for (name, rank, lr) in [("lora", 4, 5e-3), ("full", 0, 1e-3)] {
        let run = |checkpointing: bool| {
            let mut cfg = config(rank, lr, 2);
            cfg.gradient_checkpointing = checkpointing;
            let work = format!("{name}-{checkpointing}-{generic}");
            let mut rec = Recorder::default();
            let train = || run_classification(&job(&fx, &work, cfg, false), &mut rec);
            let outcome = if generic {
                with_generic_ops(train)
            } else {
                train()
            };
            let summary = completed(outcome.expect("run"));
            (rec, trainable(&summary.best_checkpoint))
        };
        let (plain, plain_weights) = run(false);
        let (ckpt, ckpt_weights) = run(true);
        assert!(plain.steps.len() >= 2, "{name}: several steps");
        assert_eq!(plain.steps.len(), ckpt.steps.len());
        for (a, b) in plain.steps.iter().zip(&ckpt.steps) {
            let (a, b) = (a.train_loss(), b.train_loss());
            assert!(
                (a - b).abs() < 1e-5,
                "{name} (generic {generic}): {a} vs {b}"
            );
        }
        assert_eq!(plain_weights.len(), ckpt_weights.len());
        for (tensor, value) in &plain_weights {
            let diff = max_abs_diff(value, &ckpt_weights[tensor]);
            assert!(
                diff < 1e-5,
                "{name} (generic {generic}): {tensor} differs by {diff}"
            );
        }
    }
}

#[test]
fn a_checkpointed_encoder_job_trains_exactly_like_the_plain_one() {
    assert_checkpointing_changes_nothing(false);
}

#[test]
fn a_checkpointed_encoder_job_on_the_generic_path_trains_exactly_like_the_plain_one() {
    assert_checkpointing_changes_nothing(true);
}

/// On a GPU (`scripts/gpu-check.sh`): the checkpointed job there trains the CPU's model.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_checkpointed_encoder_job_on_cuda_trains_like_the_cpu() {
        let fx = fixture_with(TinyBertStyle::default());
        let run = |device: candle_core::Device, checkpointing: bool| {
            let mut cfg = config(4, 5e-3, 2);
            cfg.gradient_checkpointing = checkpointing;
            let mut job = job(&fx, &format!("{device:?}-{checkpointing}"), cfg, false);
            job.device = device;
            let mut rec = Recorder::default();
            completed(run_classification(&job, &mut rec).expect("run"));
            rec.steps.iter().map(|s| s.train_loss()).collect::<Vec<_>>()
        };
        let cpu = run(candle_core::Device::Cpu, false);
        let cuda = run(candle_core::Device::new_cuda(0).expect("cuda:0"), true);
        for (a, b) in cpu.iter().zip(&cuda) {
            assert!((a - b).abs() < 1e-3, "{cpu:?} vs {cuda:?}");
        }
    }
}
