//! Parsing and resolving hyperparameters, `"auto"` on small data included.

use super::*;
use crate::domain::task::Task;
use serde_json::{json, Value};

fn parse(value: Value) -> Result<HyperparamRequest, HyperparamError> {
    HyperparamRequest::parse(value.as_object().expect("test input is an object"))
}

#[test]
fn auto_values_stay_unset_and_resolve_to_task_defaults() {
    let req = parse(
        json!({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}),
    )
    .expect("valid");
    assert_eq!(req, HyperparamRequest::default());
    let cfg = req.resolve(Task::SequenceClassification, 4000, 7);
    assert_eq!(cfg.n_epochs, 3);
    assert_eq!(cfg.batch_size, 16);
    assert_eq!(cfg.learning_rate, 2e-5);
    assert_eq!(cfg.max_seq_len, 128);
    assert_eq!(cfg.lora.rank, 0);
    assert_eq!(cfg.seed, 7);
}

#[test]
fn multiplier_scales_the_default_learning_rate_and_absolute_lr_wins() {
    let cfg = parse(json!({"learning_rate_multiplier": 2.0, "lora_rank": 8}))
        .expect("valid")
        .resolve(Task::ChatSft, 100, 0);
    assert!((cfg.learning_rate - 4e-4).abs() < 1e-12);
    let cfg = parse(json!({"learning_rate_multiplier": 2.0, "learning_rate": 1e-3}))
        .expect("valid")
        .resolve(Task::ChatSft, 100, 0);
    assert_eq!(cfg.learning_rate, 1e-3);
}

#[test]
fn bad_values_name_their_param() {
    for (input, param) in [
        (json!({"n_epochs": 0}), "n_epochs"),
        (json!({"n_epochs": 2.5}), "n_epochs"),
        (json!({"batch_size": 257}), "batch_size"),
        (
            json!({"learning_rate_multiplier": -1}),
            "learning_rate_multiplier",
        ),
        (json!({"lr_scheduler": "step"}), "lr_scheduler"),
        (json!({"warmup_ratio": 1.5}), "warmup_ratio"),
        (json!({"target_modules": []}), "target_modules"),
        (json!({"quantize": "q2_k"}), "quantize"),
        (
            json!({"gradient_checkpointing": "yes"}),
            "gradient_checkpointing",
        ),
        (json!({"precision": "fp16"}), "precision"),
        (json!({"export_dtype": 16}), "export_dtype"),
        (
            json!({"metric_for_best_model": "bleu"}),
            "metric_for_best_model",
        ),
        (json!({"colour": "blue"}), "colour"),
    ] {
        let err = parse(input.clone()).expect_err("must be rejected");
        assert_eq!(err.param, param, "{input}");
    }
}

#[test]
fn auto_epochs_follow_the_cookbook_heuristic() {
    assert_eq!(auto_epochs(10), 10);
    assert_eq!(auto_epochs(20), 5);
    assert_eq!(auto_epochs(60), 3);
    assert_eq!(auto_epochs(1000), 3);
    assert_eq!(auto_epochs(20_000), 1);
}

#[test]
fn auto_on_small_data_takes_enough_steps_and_says_why() {
    // The README's 60 labelled tickets: batch 1 (OpenAI's ~0.2% of the examples), 3
    // epochs, 180 steps; the encoder at 2e-5, the new head at 1e-3.
    let (cfg, why) =
        HyperparamRequest::default().resolve_explained(Task::SequenceClassification, 60, 0);
    assert_eq!((cfg.batch_size, cfg.n_epochs), (1, 3));
    assert_eq!(cfg.learning_rate, 2e-5);
    assert_eq!(cfg.head_learning_rate, Some(1e-3));
    assert_eq!(why.len(), 3, "{why:?}");
    assert_eq!(
        why[0],
        "batch_size=auto → 1 for 60 examples: text classification's usual 16 would make only 12 optimizer steps in 3 epochs, too few to learn from; 1 makes 180 (at least 100 where the data allows)"
    );
    assert_eq!(
        why[1],
        "n_epochs=auto → 3 for 60 examples: OpenAI's 3 epochs; 180 optimizer steps in all"
    );
    assert!(
        why[2].starts_with(
            "learning_rate=auto → 2e-5: the text classification recipe's 2e-5 for full fine-tuning"
        ) && why[2].ends_with(
            "the new classification head learns at its own 1e-3, so a small set moves it"
        ),
        "{}",
        why[2]
    );

    // The README's 20 chats: 5 epochs (at least 100 example passes) of batch 1.
    let cfg = HyperparamRequest::default().resolve(Task::ChatSft, 20, 0);
    assert_eq!(
        (cfg.batch_size, cfg.n_epochs, cfg.head_learning_rate),
        (1, 5, None)
    );

    // A batch the user fixed: the epochs rise instead, to at most 25.
    let (cfg, why) = parse(json!({"batch_size": 16}))
        .expect("valid")
        .resolve_explained(Task::SequenceClassification, 60, 0);
    assert_eq!(cfg.n_epochs, 25);
    assert_eq!(
        why[0],
        "n_epochs=auto → 25 for 60 examples: raised from OpenAI's 3 so that the run takes at least 100 optimizer steps (4 per epoch; at most 25 epochs); 100 optimizer steps in all"
    );

    // An explicit learning rate is every tensor's, as in transformers' Trainer.
    let cfg = parse(json!({"learning_rate": 5e-5}))
        .expect("valid")
        .resolve(Task::SequenceClassification, 60, 0);
    assert_eq!(cfg.head_learning_rate, None);

    // Large sets keep the recipe: 4,000 examples, batch 16, 3 epochs.
    let cfg = HyperparamRequest::default().resolve(Task::SequenceClassification, 4000, 0);
    assert_eq!((cfg.batch_size, cfg.n_epochs), (16, 3));
}

#[test]
fn gradient_checkpointing_is_off_unless_asked_and_refused_for_images() {
    let off = parse(json!({}))
        .expect("valid")
        .resolve(Task::ChatSft, 100, 0);
    assert!(!off.gradient_checkpointing);
    let req = parse(json!({"gradient_checkpointing": true})).expect("valid");
    for task in [
        Task::ChatSft,
        Task::Dpo,
        Task::SequenceClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
    ] {
        assert!(req.check_task(task).is_ok(), "{task:?}");
        assert!(req.resolve(task, 100, 0).gradient_checkpointing, "{task:?}");
    }
    let err = req
        .check_task(Task::ImageClassification)
        .expect_err("images take no checkpointing");
    assert_eq!(err.param, "gradient_checkpointing");
    assert!(
        err.message.contains("image classification"),
        "{}",
        err.message
    );
    let off = parse(json!({"gradient_checkpointing": false})).expect("valid");
    assert!(off.check_task(Task::ImageClassification).is_ok());
}

#[test]
fn precision_is_for_text_jobs_and_export_dtype_for_causal_lms() {
    let req = parse(json!({"precision": "bf16", "export_dtype": "bf16"})).expect("valid");
    for task in [Task::ChatSft, Task::CompletionSft, Task::Dpo] {
        assert!(req.check_task(task).is_ok(), "{task:?}");
        let cfg = req.resolve(task, 100, 0);
        assert_eq!(cfg.precision, Some(Precision::Bf16));
        assert_eq!(cfg.export_dtype, Some(Precision::Bf16));
    }
    let err = req
        .check_task(Task::ImageClassification)
        .expect_err("CNNs train in f32");
    assert_eq!(err.param, "precision");
    // Encoders take `precision`, not `export_dtype`.
    let err = req
        .check_task(Task::SequenceClassification)
        .expect_err("no bf16 encoder export");
    assert_eq!(err.param, "export_dtype");
    let encoder = parse(json!({"precision": "bf16"})).expect("valid");
    for task in [
        Task::SequenceClassification,
        Task::TokenClassification,
        Task::QuestionAnswering,
    ] {
        assert!(encoder.check_task(task).is_ok(), "{task:?}");
    }
    let unset = parse(json!({}))
        .expect("valid")
        .resolve(Task::ChatSft, 100, 0);
    assert_eq!((unset.precision, unset.export_dtype), (None, None));
}
