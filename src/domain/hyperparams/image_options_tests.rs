#![allow(clippy::unwrap_used)]

use serde_json::json;

use super::*;
use crate::domain::hyperparams::HyperparamRequest;
use crate::domain::task::Task;

fn request(hyperparameters: serde_json::Value) -> Result<HyperparamRequest, HyperparamError> {
    HyperparamRequest::parse(hyperparameters.as_object().unwrap())
}

#[test]
fn image_knobs_parse_and_resolve_to_the_recipe_defaults() {
    let req = request(json!({
        "head_hidden": 256,
        "unfreeze_schedule": [{"epoch": 2, "blocks": 1}, {"epoch": 4, "blocks": 3}],
        "optimizer": "adam",
        "image_size": 112,
    }))
    .unwrap();
    let config = req.resolve(Task::ImageClassification, 5000, 1);
    let image = &config.task_options.image;
    assert_eq!(image.freeze_backbone, Some(true));
    assert_eq!(image.head_hidden, Some(256));
    assert_eq!(image.head_dropout, Some(DEFAULT_HEAD_DROPOUT));
    assert_eq!(
        image.backbone_lr_multiplier,
        Some(DEFAULT_BACKBONE_LR_MULTIPLIER)
    );
    assert_eq!(image.optimizer, Some(OptimizerKind::Adam));
    assert_eq!(image.image_size, Some(112));
    assert_eq!(image.augment, Some(true));
    // The transfer recipe's numbers: lr 1e-3, batch 32.
    assert_eq!(config.learning_rate, 1e-3);
    assert_eq!(config.batch_size, 32);
    assert_eq!(config.lora.rank, 0);
    // The job object echoes the knobs under their own names.
    let echoed = serde_json::to_value(&config.task_options).unwrap();
    assert_eq!(
        echoed["unfreeze_schedule"],
        json!([{"epoch": 2, "blocks": 1}, {"epoch": 4, "blocks": 3}])
    );
    assert_eq!(echoed["optimizer"], json!("adam"));
}

#[test]
fn the_schedule_says_how_many_last_units_train_each_epoch() {
    let options = ImageOptions {
        unfreeze_schedule: Some(vec![
            UnfreezeStep {
                epoch: 2,
                blocks: 1,
            },
            UnfreezeStep {
                epoch: 4,
                blocks: 3,
            },
        ]),
        ..ImageOptions::default()
    }
    .resolve();
    let by_epoch: Vec<usize> = (0..5).map(|e| options.trainable_units(e, 9)).collect();
    assert_eq!(by_epoch, [0, 1, 1, 3, 3]);
    assert_eq!(options.max_trainable_units(5, 9), 3);
    assert_eq!(options.max_trainable_units(2, 9), 1);
    // More blocks than the backbone has: all of them.
    let all = ImageOptions {
        unfreeze_schedule: Some(vec![UnfreezeStep {
            epoch: 1,
            blocks: 50,
        }]),
        ..ImageOptions::default()
    };
    assert_eq!(all.trainable_units(0, 5), 5);
    let unfrozen = ImageOptions {
        freeze_backbone: Some(false),
        ..ImageOptions::default()
    };
    assert_eq!(unfrozen.trainable_units(0, 5), 5);
}

#[test]
fn bad_image_knobs_name_themselves() {
    for (value, param, needle) in [
        (
            json!({"unfreeze_schedule": [{"epoch": 0, "blocks": 1}]}),
            "unfreeze_schedule.epoch",
            "between 1",
        ),
        (
            json!({"unfreeze_schedule": [{"epoch": 3, "blocks": 2}, {"epoch": 2, "blocks": 3}]}),
            "unfreeze_schedule",
            "increasing epochs",
        ),
        (
            json!({"unfreeze_schedule": [{"epoch": 2, "blocks": 3}, {"epoch": 3, "blocks": 1}]}),
            "unfreeze_schedule",
            "never fewer blocks",
        ),
        (
            json!({"unfreeze_schedule": [{"epoch": 2}]}),
            "unfreeze_schedule",
            "list of",
        ),
        (
            json!({"unfreeze_schedule": {"epoch": 2, "blocks": 1}}),
            "unfreeze_schedule",
            "list of",
        ),
        (
            json!({"optimizer": "sgd"}),
            "optimizer",
            "\"adamw\" or \"adam\"",
        ),
        (json!({"image_size": 8}), "image_size", "between 32"),
        (json!({"head_dropout": 1.0}), "head_dropout", "at most 0.95"),
        (
            json!({"freeze_backbone": "yes"}),
            "freeze_backbone",
            "true or false",
        ),
    ] {
        let error = request(value.clone()).unwrap_err();
        assert_eq!(error.param, param, "{value}");
        assert!(error.message.contains(needle), "{value}: {}", error.message);
    }
}

#[test]
fn image_knobs_on_a_text_job_are_refused() {
    let req = request(json!({"freeze_backbone": false})).unwrap();
    let error = req.check_task(Task::SequenceClassification).unwrap_err();
    assert_eq!(error.param, "freeze_backbone");
    assert!(
        error.message.contains("image classification"),
        "{}",
        error.message
    );
    assert!(req.check_task(Task::ImageClassification).is_ok());
    // And a text knob on an image job.
    let req = request(json!({"doc_stride": 64})).unwrap();
    assert!(req.check_task(Task::ImageClassification).is_err());
}
