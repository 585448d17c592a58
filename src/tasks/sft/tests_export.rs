//! Exports of causal-LM checkpoints: the merged HF directory reloads to the trained
//! model's logits; adapters only for LoRA.

use candle_core::Device;

use super::tests_train::{config, fixture, job};
use super::{load_lm_checkpoint, run_sft};
use crate::artifacts::ExportFormat;
use crate::tasks::export_checkpoint;
use crate::tasks::sequence_classification::tests::{completed, max_abs_diff, Recorder};

#[test]
fn merged_export_reloads_to_the_trained_logits() {
    let fx = fixture();
    let lora = completed(
        run_sft(
            &job(&fx, "lora", config(8, 1e-2, 2), false),
            &mut Recorder::default(),
        )
        .expect("lora"),
    );
    let merged_dir = fx.root.join("merged");
    export_checkpoint(
        &lora.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Merged,
        "tiny",
        &merged_dir,
    )
    .expect("merged export");
    let trained = load_lm_checkpoint(
        &lora.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("checkpoint");
    let exported = load_lm_checkpoint(
        &merged_dir,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("exported dir");
    let ids = trained
        .tokenizer
        .encode(
            "<|im_start|>user\nColour of grass?<|im_end|>\n<|im_start|>assistant\n",
            false,
        )
        .expect("encode");
    let batch = crate::zoo::collate(&[ids.get_ids()], 0, &Device::Cpu).expect("batch");
    let a = trained.model.forward(&batch, false).expect("trained");
    let b = exported.model.forward(&batch, false).expect("exported");
    let diff = max_abs_diff(&a, &b);
    assert!(diff < 1e-4, "exported logits differ by {diff}");
    assert!(exported.template.is_some(), "chat template copied");

    let adapter_dir = fx.root.join("adapter");
    export_checkpoint(
        &lora.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Adapter,
        "tiny",
        &adapter_dir,
    )
    .expect("adapter export");
    let adapter: serde_json::Value = serde_json::from_slice(
        &std::fs::read(adapter_dir.join("adapter_config.json")).expect("adapter config"),
    )
    .expect("json");
    assert_eq!(adapter["r"], 8);

    let full = completed(
        run_sft(
            &job(&fx, "full", config(0, 3e-3, 1), false),
            &mut Recorder::default(),
        )
        .expect("full"),
    );
    let err = export_checkpoint(
        &full.best_checkpoint,
        &crate::artifacts::BaseModels::default(),
        ExportFormat::Adapter,
        "tiny",
        &fx.root.join("x"),
    )
    .expect_err("full fine-tune has no adapter");
    assert!(err.to_string().contains("no LoRA adapter"), "{err}");
}
