use serde_json::json;

use super::*;
use crate::domain::hyperparams::{LrScheduler, TaskOptions};

fn parse(method: Value) -> Result<JobSpec, SpecError> {
    JobSpec::parse(Some(&method), None)
}

#[test]
fn no_method_is_supervised_with_every_knob_auto() {
    let spec = JobSpec::parse(None, None).expect("valid");
    assert_eq!(spec, JobSpec::default());
    assert_eq!(spec.method.name(), "supervised");
    assert_eq!(spec.method.hyperparameters(), &HyperparamRequest::default());
    assert_eq!(spec.method.resolved_beta(), None);
}

#[test]
fn method_keys_win_over_the_legacy_object_and_extras_are_typed() {
    let legacy = json!({"n_epochs": 5, "batch_size": 4});
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 3, "lora_rank": 8, "lr_scheduler": "cosine", "learning_rate_multiplier": "auto"}}});
    let spec = JobSpec::parse(Some(&method), Some(&legacy)).expect("valid");
    let Method::Supervised { hyperparameters } = &spec.method else {
        panic!("supervised expected: {spec:?}");
    };
    assert_eq!(hyperparameters.n_epochs, Some(3));
    assert_eq!(hyperparameters.batch_size, Some(4));
    assert_eq!(hyperparameters.lora_rank, Some(8));
    assert_eq!(hyperparameters.lr_scheduler, Some(LrScheduler::Cosine));
    assert_eq!(hyperparameters.learning_rate_multiplier, None);
}

#[test]
fn dpo_takes_beta_as_a_number_or_auto_and_its_other_knobs() {
    let spec = parse(json!({"type": "dpo", "dpo": {"hyperparameters":
        {"beta": 0.25, "n_epochs": 2, "lora_rank": 4}}}))
    .expect("valid");
    let Method::Dpo {
        hyperparameters,
        beta,
    } = &spec.method
    else {
        panic!("dpo expected: {spec:?}");
    };
    assert_eq!(*beta, Some(0.25));
    assert_eq!(hyperparameters.n_epochs, Some(2));
    assert_eq!(hyperparameters.lora_rank, Some(4));
    assert_eq!(spec.method.name(), "dpo");
    assert_eq!(spec.method.resolved_beta(), Some((0.25, None)));

    for auto in [json!("auto"), Value::Null] {
        let spec = parse(json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": auto}}}))
            .expect("valid");
        assert_eq!(
            spec.method,
            Method::Dpo {
                hyperparameters: HyperparamRequest::default(),
                beta: None
            }
        );
    }
    let spec = parse(json!({"type": "dpo"})).expect("valid");
    let (beta, why) = spec.method.resolved_beta().expect("dpo has a beta");
    assert_eq!(beta, 0.1);
    assert_eq!(
        why.as_deref(),
        Some("beta=auto → 0.1: the DPO paper's and TRL's default")
    );
}

#[test]
fn bad_methods_and_betas_name_their_param() {
    let cases = [
        (json!({"type": "reinforcement"}), "method.type"),
        (json!({"type": 3}), "method.type"),
        (json!({"type": "dpo", "dpo": []}), "method.dpo"),
        (
            json!({"type": "supervised", "supervised": {"hyperparameters": 1}}),
            "method.supervised.hyperparameters",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}),
            "beta",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": -0.5}}}),
            "beta",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}),
            "beta",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}),
            "beta",
        ),
        (
            json!({"type": "supervised", "supervised": {"hyperparameters": {"beta": 0.1}}}),
            "beta",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 0}}}),
            "n_epochs",
        ),
        (
            json!({"type": "dpo", "dpo": {"hyperparameters": {"bogus": 1}}}),
            "bogus",
        ),
    ];
    for (method, param) in cases {
        let err = parse(method.clone()).expect_err("must fail");
        assert_eq!(err.param, param, "{method}: {}", err.message);
    }
    let err = parse(json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}))
        .expect_err("zero beta");
    assert_eq!(
        err.message,
        "`beta` must be \"auto\" or a number greater than 0 and at most 2."
    );
    assert_eq!(
        JobSpec::parse(None, Some(&json!("x")))
            .expect_err("not an object")
            .param,
        "hyperparameters"
    );
}

#[test]
fn a_spec_round_trips_through_its_stored_json() {
    let specs = [
        JobSpec::default(),
        parse(
            json!({"type": "supervised", "supervised": {"hyperparameters":
            {"n_epochs": 2, "target_modules": ["query"], "quantize": "q8_0"}}}),
        )
        .expect("valid"),
        parse(json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "batch_size": 2}}}))
            .expect("valid"),
    ];
    for spec in specs {
        let stored = serde_json::to_string(&spec).expect("json");
        let read: JobSpec = serde_json::from_str(&stored).expect("reads back");
        assert_eq!(read, spec, "{stored}");
    }
    let stored = serde_json::to_value(JobSpec {
        method: Method::Dpo {
            hyperparameters: HyperparamRequest::default(),
            beta: Some(0.5),
        },
    })
    .expect("json");
    assert_eq!(stored["method"]["type"], "dpo");
    assert_eq!(stored["method"]["beta"], 0.5);
}

#[test]
fn a_legacy_echo_reads_back_with_its_resolved_numbers() {
    // What the worker used to write back into `method` once "auto" was resolved.
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0, "lora_rank": 4}}});
    let legacy = json!({"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 1.0});
    let spec = JobSpec::from_legacy_echo(&method, &legacy).expect("valid");
    let request = spec.method.hyperparameters();
    assert_eq!(
        (
            request.n_epochs,
            request.batch_size,
            request.learning_rate_multiplier
        ),
        (Some(3), Some(8), Some(1.0))
    );
    assert_eq!(request.lora_rank, Some(4));

    // Creation used to accept a meaningless `beta` on supervised jobs: such rows still read.
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": "auto", "beta": 0.1}}});
    let spec = JobSpec::from_legacy_echo(&method, &Value::Null).expect("readable");
    assert_eq!(spec, JobSpec::default());
    // DPO rows had a null legacy object and `beta` in the dpo section.
    let method =
        json!({"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": "auto"}}});
    let spec = JobSpec::from_legacy_echo(&method, &Value::Null).expect("readable");
    assert_eq!(spec.method.resolved_beta(), Some((0.1, None)));
}

#[test]
fn the_data_decides_which_task_options_a_job_may_carry() {
    let supervised = parse(
        json!({"type": "supervised", "supervised": {"hyperparameters":
        {"doc_stride": 64, "max_answer_length": 10}}}),
    )
    .expect("valid");
    assert_eq!(
        supervised.task_on(DataFormat::QuestionAnswering),
        Some(Task::QuestionAnswering)
    );
    assert_eq!(supervised.task_on(DataFormat::Preference), None);
    assert_eq!(supervised.check_task(Task::QuestionAnswering), Ok(()));
    let err = supervised
        .check_task(Task::SequenceClassification)
        .expect_err("not a QA job");
    assert_eq!(err.param, "doc_stride");

    let dpo = parse(json!({"type": "dpo", "dpo": {"hyperparameters": {"max_prompt_length": 64}}}))
        .expect("valid");
    // A dpo job trains DPO whatever the file holds (other data fails it when it starts).
    assert_eq!(dpo.task_on(DataFormat::Classification), Some(Task::Dpo));
    assert_eq!(dpo.check_task(Task::Dpo), Ok(()));
}

#[test]
fn a_spec_stored_before_the_task_options_reads_with_none_given() {
    // A supervised spec as the previous version stored it.
    let stored = json!({"method": {"type": "supervised", "hyperparameters": {
        "n_epochs": 2, "batch_size": null, "learning_rate_multiplier": null,
        "learning_rate": null, "lr_scheduler": null, "warmup_ratio": null,
        "weight_decay": null, "max_grad_norm": null, "gradient_accumulation_steps": null,
        "max_seq_len": null, "eval_steps": null, "save_steps": null,
        "early_stopping_patience": null, "metric_for_best_model": null, "lora_rank": null,
        "lora_alpha": null, "lora_dropout": null, "target_modules": null, "quantize": null}}});
    let spec: JobSpec = serde_json::from_value(stored).expect("old spec reads");
    let request = spec.method.hyperparameters();
    assert_eq!(request.n_epochs, Some(2));
    assert_eq!(request.task_options, TaskOptions::default());
}
