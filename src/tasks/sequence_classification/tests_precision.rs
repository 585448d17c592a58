//! Encoders in mixed precision (`precision: "bf16"`): a classification job's loss curve
//! follows the f32 run's (LoRA and full fine-tuning), and the every-token forward that
//! token classification and QA use gives the f32 logits within bf16's rounding.

use candle_core::{DType, Device};

use super::run_classification;
use super::tests::{completed, config, fixture, job, Recorder};
use crate::domain::hyperparams::{LoraSettings, Precision};
use crate::tasks::token_classification::{TokenClassifier, TokenClassifierSpec};
use crate::zoo::test_tensors::{max_abs, max_abs_diff};

#[test]
fn a_bf16_classification_job_follows_the_f32_loss_curve() {
    let fx = fixture();
    for (name, rank, lr) in [("lora", 4, 5e-3), ("full", 0, 1e-3)] {
        let losses = |precision: Precision| {
            let mut cfg = config(rank, lr, 3);
            cfg.precision = Some(precision);
            let mut rec = Recorder::default();
            let work = format!("{name}-{precision:?}");
            completed(run_classification(&job(&fx, &work, cfg, false), &mut rec).expect("run"));
            rec.steps.iter().map(|s| s.train_loss()).collect::<Vec<_>>()
        };
        let (full, half) = (losses(Precision::F32), losses(Precision::Bf16));
        assert_eq!(full.len(), half.len());
        for (a, b) in full.iter().zip(&half) {
            assert!((a - b).abs() / a < 0.03, "{name}: {full:?} vs {half:?}");
        }
        assert_ne!(full, half, "{name}: the bf16 run multiplied in bf16");
        assert!(
            half[half.len() - 1] < half[0],
            "{name}: bf16 trains {half:?}"
        );
    }
}

#[test]
fn the_every_token_forward_in_bf16_gives_the_f32_logits() {
    let fx = fixture();
    let spec = TokenClassifierSpec {
        num_labels: 5,
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec![],
        }),
        classifier_dropout: None,
    };
    let load = |dtype| {
        TokenClassifier::from_pretrained_in(&fx.base, &spec, &Device::Cpu, 3, dtype).expect("load")
    };
    let ids: [&[u32]; 2] = [&[2, 10, 11, 12, 13, 3], &[2, 14, 15, 3]];
    let batch = crate::zoo::collate(&ids, 0, &Device::Cpu).expect("batch");
    let a = load(DType::F32).forward(&batch, false).expect("f32");
    let b = load(DType::BF16).forward(&batch, false).expect("bf16");
    let relative = max_abs_diff(&a, &b) / max_abs(&a);
    assert!(
        relative > 0.0 && relative < 0.03,
        "bf16 logits off by {relative}"
    );
}

#[test]
fn a_classifier_served_in_bf16_is_smaller_and_gives_the_f32_logits() {
    use crate::tasks::encoder_checkpoint::rebuild_encoder_model_in;
    use crate::zoo::SequenceHead;
    let fx = fixture();
    for (name, rank) in [("lora", 4), ("full", 0)] {
        let work = format!("serve-{name}");
        let mut rec = Recorder::default();
        let summary = completed(
            run_classification(&job(&fx, &work, config(rank, 5e-3, 2), false), &mut rec)
                .expect("run"),
        );
        let dir = &summary.best_checkpoint;
        let ckpt = crate::artifacts::BaseModels::default()
            .open(dir)
            .expect("open");
        let (_, spec) = ckpt.meta.classifier(dir).expect("classifier");
        // As serving loads it: rebuilt, then merged and frozen.
        let serve = |dtype| {
            let mut model =
                rebuild_encoder_model_in::<SequenceHead>(&ckpt, spec, &Device::Cpu, dtype)
                    .expect("rebuild");
            model.freeze_for_inference().expect("freeze");
            model
        };
        let (full, half) = (serve(DType::F32), serve(DType::BF16));
        let (full_bytes, half_bytes) = (full.parameter_bytes(), half.parameter_bytes());
        // Every matrix in bf16 (tables and linears); LayerNorms, biases and the new head
        // stay f32.
        assert!(
            half_bytes * 100 < full_bytes * 55,
            "{name}: {half_bytes} vs {full_bytes}"
        );
        let ids: [&[u32]; 2] = [&[2, 10, 11, 12, 13, 3], &[2, 14, 15, 3]];
        let batch = crate::zoo::collate(&ids, 0, &Device::Cpu).expect("batch");
        let a = full.forward(&batch, false).expect("f32");
        let b = half.forward(&batch, false).expect("bf16");
        let relative = max_abs_diff(&a, &b) / max_abs(&a);
        assert!(
            relative > 0.0 && relative < 0.03,
            "{name}: logits off by {relative}"
        );
    }
}
