//! Mixed precision (`precision: "bf16"`): frozen matrices stored in bf16, trained tensors
//! in f32, the projections' matmuls in bf16; the loss curve follows the f32 run's, and the
//! merged export is f32 or bf16 as `export_dtype` asks.

use candle_core::{DType, Device};

use super::tests_train::{config, fixture, job};
use super::{load_lm_checkpoint, run_sft};
use crate::artifacts::ExportFormat;
use crate::domain::hyperparams::{LoraSettings, Precision};
use crate::tasks::export_checkpoint;
use crate::tasks::sequence_classification::tests::{completed, Recorder};
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};
use crate::zoo::linear::LinearBase;

#[test]
fn bf16_stores_frozen_matrices_in_bf16_and_trains_f32_masters() {
    let fx = fixture();
    let spec = DecoderSpec {
        lora: Some(LoraSettings {
            rank: 4,
            alpha: 8.0,
            dropout: 0.0,
            target_modules: vec![],
        }),
        quantize: None,
    };
    let lm = CausalLm::from_pretrained_in(&fx.base, &spec, &Device::Cpu, 0, DType::BF16)
        .expect("bf16 model");
    assert_eq!(lm.decoder.embed.tensor().dtype(), DType::BF16);
    let layer = &lm.decoder.layers[0];
    assert_eq!(
        layer.input_norm.tensor().dtype(),
        DType::F32,
        "norms stay f32"
    );
    match layer.q.base() {
        LinearBase::Dense(w) => assert_eq!(w.tensor().dtype(), DType::BF16),
        LinearBase::Quantized(_) | LinearBase::PackedBf16(_) => panic!("dense base expected"),
    }
    assert!(lm
        .trainable_vars()
        .iter()
        .all(|v| v.var.dtype() == DType::F32));
    let ids = crate::zoo::collate(&[&[1u32, 40, 41, 42][..]], 0, &Device::Cpu).expect("ids");
    let hidden = lm.hidden_states(&ids, true).expect("forward");
    assert_eq!(hidden.dtype(), DType::F32, "the residual stream is f32");
    // Full fine-tuning keeps every weight an f32 master.
    let full = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let lm = CausalLm::from_pretrained_in(&fx.base, &full, &Device::Cpu, 0, DType::BF16)
        .expect("bf16 full");
    assert!(lm
        .trainable_vars()
        .iter()
        .all(|v| v.var.dtype() == DType::F32));
}

/// Per-step train losses of a 3-epoch run of `arch` in `precision`.
fn losses(arch: DecoderArch, rank: usize, lr: f64, precision: Precision) -> Vec<f64> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut fx = fixture();
    fx.base = dir.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&fx.base, arch, 7).expect("tiny decoder");
    let mut cfg = config(rank, lr, 3);
    cfg.precision = Some(precision);
    let mut rec = Recorder::default();
    completed(run_sft(&job(&fx, "run", cfg, false), &mut rec).expect("run"));
    rec.steps.iter().map(|s| s.train_loss()).collect()
}

#[test]
fn a_bf16_run_follows_the_f32_loss_curve() {
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        for (name, rank, lr) in [("lora", 8, 1e-2), ("full", 0, 3e-3)] {
            let f32_run = losses(arch, rank, lr, Precision::F32);
            let bf16_run = losses(arch, rank, lr, Precision::Bf16);
            assert_eq!(f32_run.len(), bf16_run.len());
            let mut largest = 0f64;
            for (a, b) in f32_run.iter().zip(&bf16_run) {
                largest = largest.max((a - b).abs() / a);
            }
            eprintln!(
                "{arch:?} {name}: f32 {f32_run:?}\n  bf16 {bf16_run:?}\n  worst {largest:.4}"
            );
            assert!(
                largest < 0.03,
                "{arch:?} {name}: bf16 strays {largest} from f32"
            );
            assert!(largest > 0.0, "{arch:?} {name}: bf16 ran in f32");
            let (first, last) = (bf16_run[0], bf16_run[bf16_run.len() - 1]);
            assert!(
                last < 0.8 * first,
                "{arch:?} {name}: bf16 trains ({first} → {last})"
            );
        }
    }
}

#[test]
fn the_merged_export_is_in_the_asked_dtype() {
    let fx = fixture();
    for (export_dtype, dtype, name) in [
        (None, DType::F32, "float32"),
        (Some(Precision::Bf16), DType::BF16, "bfloat16"),
        (Some(Precision::F32), DType::F32, "float32"),
    ] {
        let mut cfg = config(8, 1e-2, 1);
        cfg.precision = Some(Precision::Bf16);
        cfg.export_dtype = export_dtype;
        let work = format!("{export_dtype:?}");
        let mut rec = Recorder::default();
        let summary = completed(run_sft(&job(&fx, &work, cfg, false), &mut rec).expect("run"));
        let out = fx.root.join(format!("{work}-merged"));
        export_checkpoint(
            &summary.best_checkpoint,
            &crate::artifacts::BaseModels::default(),
            ExportFormat::Merged,
            "tiny",
            &out,
        )
        .expect("export");
        let tensors = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
            .expect("safetensors");
        assert!(!tensors.is_empty());
        assert!(
            tensors.values().all(|t| t.dtype() == dtype),
            "{export_dtype:?}"
        );
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("config.json")).expect("config"))
                .expect("json");
        assert_eq!(config["torch_dtype"], name);
        // The bf16 export loads back (as f32) and generates.
        let loaded =
            load_lm_checkpoint(&out, &crate::artifacts::BaseModels::default(), &Device::Cpu)
                .expect("reload");
        let ids = crate::zoo::collate(&[&[1u32, 40, 41][..]], 0, &Device::Cpu).expect("ids");
        assert_eq!(
            loaded.model.forward(&ids, false).expect("logits").dims()[1],
            3
        );
    }
}

#[test]
fn bf16_on_the_generic_path_a_gpu_runs_follows_the_f32_curve_too() {
    let f32_run = losses(DecoderArch::Llama, 8, 1e-2, Precision::F32);
    let bf16_generic = crate::zoo::fused::with_generic_ops(|| {
        losses(DecoderArch::Llama, 8, 1e-2, Precision::Bf16)
    });
    for (a, b) in f32_run.iter().zip(&bf16_generic) {
        assert!((a - b).abs() / a < 0.03, "{a} vs {b}");
    }
    assert_ne!(f32_run, bf16_generic);
}

/// On a GPU (`scripts/gpu-check.sh`: `--features cuda -- --ignored on_cuda`): a job left at
/// its default precision runs in bf16 there, checkpointed, and follows the f32 CPU run.
#[cfg(feature = "cuda")]
mod on_cuda {
    use super::*;

    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn a_default_precision_checkpointed_job_on_cuda_follows_the_f32_cpu_run() {
        let gpu = Device::new_cuda(0).expect("cuda:0");
        let fx = fixture();
        for (name, rank, lr) in [("lora", 8, 1e-2), ("full", 0, 3e-3)] {
            let cpu_losses = {
                let mut rec = Recorder::default();
                let cfg = config(rank, lr, 3);
                completed(
                    run_sft(&job(&fx, &format!("{name}-cpu"), cfg, false), &mut rec).expect("cpu"),
                );
                rec.steps.iter().map(|s| s.train_loss()).collect::<Vec<_>>()
            };
            let mut cfg = config(rank, lr, 3);
            cfg.gradient_checkpointing = true;
            let mut cuda_job = job(&fx, &format!("{name}-cuda"), cfg, false);
            cuda_job.device = gpu.clone();
            let mut rec = Recorder::default();
            completed(run_sft(&cuda_job, &mut rec).expect("cuda"));
            let cuda_losses: Vec<f64> = rec.steps.iter().map(|s| s.train_loss()).collect();
            for (a, b) in cpu_losses.iter().zip(&cuda_losses) {
                assert!(
                    (a - b).abs() / a < 0.03,
                    "{name}: {cpu_losses:?} vs {cuda_losses:?}"
                );
            }
            assert_ne!(cpu_losses, cuda_losses, "{name}: the GPU ran bf16");
        }
    }
}
