//! The task options: parsing and ranges, the task they belong to, resolution, storage.

use serde_json::{json, Value};

use super::super::{HyperparamError, HyperparamRequest, TrainingConfig};
use super::*;

fn parse(value: Value) -> Result<HyperparamRequest, HyperparamError> {
    HyperparamRequest::parse(value.as_object().expect("test input is an object"))
}

#[test]
fn each_option_parses_under_its_own_key() {
    let req = parse(json!({"doc_stride": 64, "max_answer_length": 1,
        "label_all_tokens": true, "max_prompt_length": 100}))
    .expect("valid");
    assert_eq!(
        req.task_options,
        TaskOptions {
            doc_stride: Some(64),
            max_answer_length: Some(1),
            label_all_tokens: Some(true),
            max_prompt_length: Some(100),
            image: Default::default(),
        }
    );
    // Stored and echoed flat, under the request's keys; unset keys are absent.
    let stored = serde_json::to_value(&req).expect("json");
    assert_eq!(stored["doc_stride"], 64);
    assert_eq!(stored["label_all_tokens"], true);
    let unset = serde_json::to_value(HyperparamRequest::default()).expect("json");
    assert!(unset.get("doc_stride").is_none(), "{unset}");
    let read: HyperparamRequest = serde_json::from_value(stored).expect("reads back");
    assert_eq!(read, req);
}

#[test]
fn bad_values_and_lengths_name_their_param() {
    for (input, param, message) in [
        (json!({"doc_stride": -1}), "doc_stride", "`doc_stride` must be an integer"),
        (
            json!({"doc_stride": 32768}),
            "doc_stride",
            "`doc_stride` must be between 0 and 32767, got 32768",
        ),
        (
            json!({"max_answer_length": 0}),
            "max_answer_length",
            "`max_answer_length` must be between 1 and 32768, got 0",
        ),
        (
            json!({"label_all_tokens": "yes"}),
            "label_all_tokens",
            "`label_all_tokens` must be true or false",
        ),
        (
            json!({"max_prompt_length": 0}),
            "max_prompt_length",
            "`max_prompt_length` must be between 1 and 32767, got 0",
        ),
        (
            json!({"doc_stride": 128, "max_seq_len": 128}),
            "doc_stride",
            "`doc_stride` (128) must be less than `max_seq_len` (128): consecutive windows share `doc_stride` tokens of context, so each window must hold more than that besides the question",
        ),
        (
            json!({"max_prompt_length": 256, "max_seq_len": 256}),
            "max_prompt_length",
            "`max_prompt_length` (256) must be less than `max_seq_len` (256), which already bounds prompt + output",
        ),
    ] {
        let err = parse(input.clone()).expect_err("must be rejected");
        assert_eq!((err.param.as_str(), err.message.as_str()), (param, message), "{input}");
    }
    assert!(parse(json!({"doc_stride": 127, "max_seq_len": 128})).is_ok());
    assert!(parse(json!({"doc_stride": 0})).is_ok());
}

#[test]
fn an_option_of_another_task_is_refused_naming_it() {
    let cases = [
        (
            json!({"doc_stride": 64}),
            Task::SequenceClassification,
            "doc_stride",
        ),
        (
            json!({"max_answer_length": 5}),
            Task::TokenClassification,
            "max_answer_length",
        ),
        (
            json!({"label_all_tokens": false}),
            Task::QuestionAnswering,
            "label_all_tokens",
        ),
        (
            json!({"max_prompt_length": 64}),
            Task::ChatSft,
            "max_prompt_length",
        ),
        (json!({"doc_stride": 64}), Task::Dpo, "doc_stride"),
    ];
    for (input, task, param) in cases {
        let err = parse(input.clone())
            .expect("valid alone")
            .check_task(task)
            .expect_err("another task's option");
        assert_eq!(err.param, param, "{input}");
    }
    let err = parse(json!({"doc_stride": 64}))
        .expect("valid")
        .check_task(Task::SequenceClassification)
        .expect_err("classification");
    assert_eq!(
        err.message,
        "`doc_stride` is a hyperparameter of extractive question answering (SQuAD data); this job's training data is text classification data"
    );
    for (input, task) in [
        (
            json!({"doc_stride": 64, "max_answer_length": 5}),
            Task::QuestionAnswering,
        ),
        (json!({"label_all_tokens": true}), Task::TokenClassification),
        (json!({"max_prompt_length": 64}), Task::Dpo),
        (json!({}), Task::SequenceClassification),
    ] {
        let req = parse(input.clone()).expect("valid");
        assert_eq!(req.check_task(task), Ok(()), "{input}");
    }
}

#[test]
fn lengths_are_checked_against_the_tasks_default_max_seq_len() {
    // QA windows default to 384 tokens, DPO sequences to 512.
    let stride = |n: usize| parse(json!({"doc_stride": n})).expect("valid");
    assert_eq!(stride(383).check_task(Task::QuestionAnswering), Ok(()));
    let err = stride(384)
        .check_task(Task::QuestionAnswering)
        .expect_err("no room");
    assert_eq!(err.param, "doc_stride");
    assert!(err
        .message
        .starts_with("`doc_stride` (384) must be less than `max_seq_len` (384)"));
    let prompt = |n: usize| parse(json!({"max_prompt_length": n})).expect("valid");
    assert_eq!(prompt(511).check_task(Task::Dpo), Ok(()));
    let err = prompt(512).check_task(Task::Dpo).expect_err("never cuts");
    assert_eq!(err.param, "max_prompt_length");
}

#[test]
fn a_job_resolves_only_its_own_tasks_options() {
    let none = HyperparamRequest::default();
    let qa = none.resolve(Task::QuestionAnswering, 100, 0).task_options;
    assert_eq!(
        qa,
        TaskOptions {
            max_answer_length: Some(30),
            ..TaskOptions::default()
        }
    );
    assert_eq!(qa.doc_stride_for(384), 128);
    // A window the model caps at 128 tokens gets a third of it, as before the option.
    assert_eq!(qa.doc_stride_for(128), 42);
    let ner = none.resolve(Task::TokenClassification, 100, 0).task_options;
    assert_eq!(ner.label_all_tokens, Some(false));
    assert_eq!(
        none.resolve(Task::Dpo, 100, 0).task_options,
        TaskOptions::default()
    );
    for task in [
        Task::SequenceClassification,
        Task::ChatSft,
        Task::CompletionSft,
    ] {
        assert_eq!(
            none.resolve(task, 100, 0).task_options,
            TaskOptions::default()
        );
    }

    let given = parse(json!({"doc_stride": 7, "max_answer_length": 1})).expect("valid");
    let qa = given.resolve(Task::QuestionAnswering, 100, 0).task_options;
    assert_eq!((qa.doc_stride, qa.max_answer_length), (Some(7), Some(1)));
    // A stride given is used as given, whatever the window.
    assert_eq!(qa.doc_stride_for(128), 7);
    let ner = parse(json!({"label_all_tokens": true}))
        .expect("valid")
        .resolve(Task::TokenClassification, 100, 0)
        .task_options;
    assert!(ner.label_all_tokens());
    let dpo = parse(json!({"max_prompt_length": 64}))
        .expect("valid")
        .resolve(Task::Dpo, 100, 0)
        .task_options;
    assert_eq!(dpo.max_prompt_length, Some(64));
}

#[test]
fn a_config_stored_before_the_options_reads_with_none_given() {
    let config = HyperparamRequest::default().resolve(Task::QuestionAnswering, 100, 3);
    let mut stored = serde_json::to_value(&config).expect("json");
    assert_eq!(stored["task_options"], json!({"max_answer_length": 30}));
    stored
        .as_object_mut()
        .expect("object")
        .remove("task_options");
    let read: TrainingConfig = serde_json::from_value(stored).expect("old config reads");
    assert_eq!(read.task_options, TaskOptions::default());
    // run_qa's and run_ner's defaults then.
    assert_eq!(read.task_options.max_answer_length(), 30);
    assert_eq!(read.task_options.doc_stride_for(384), 128);
    assert!(!read.task_options.label_all_tokens());
}
