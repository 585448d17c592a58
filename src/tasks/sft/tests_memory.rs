//! The memory check before the model loads (`train::memory`): through `run_sft` and
//! `run_dpo`, with the real free memory of this machine.
#![allow(clippy::unwrap_used)]

use super::tests_train::{config, fixture, job};
use super::*;
use crate::tasks::sequence_classification::tests::{completed, Recorder};
use crate::train::TrainError;

/// The tiny model's config.json made to describe a model no machine here can hold (a 2^40
/// parameter decoder): the check reads only the config, so it fails before any weight is
/// read, and the weights on disk stay the tiny ones.
pub(crate) fn inflate_config(base: &std::path::Path) {
    let path = base.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["hidden_size"] = 65536.into();
    config["intermediate_size"] = 262144.into();
    config["num_hidden_layers"] = 64.into();
    config["num_attention_heads"] = 512.into();
    config["num_key_value_heads"] = 512.into();
    config["head_dim"] = 128.into();
    std::fs::write(&path, serde_json::to_vec(&config).unwrap()).unwrap();
}

#[test]
fn a_job_that_cannot_fit_fails_before_loading_and_says_what_would() {
    let fx = fixture();
    inflate_config(&fx.base);
    let job = job(&fx, "too-big", config(0, 1e-3, 1), false);
    let mut recorder = Recorder::default();
    let Err(TrainError::DoesNotFit(message)) = run_sft(&job, &mut recorder) else {
        panic!("an over-sized job must fail the memory check");
    };
    assert!(message.starts_with("This job needs about "), "{message}");
    assert!(message.contains("on `cpu`"), "{message}");
    assert!(message.contains("Shorter examples"), "{message}");
    assert!(recorder.steps.is_empty());
    assert!(!job.work_dir.exists(), "nothing was written");
}

#[test]
fn a_job_that_fits_logs_its_estimate() {
    let fx = fixture();
    let job = job(&fx, "fits", config(8, 1e-2, 1), false);
    let mut recorder = Recorder::default();
    completed(run_sft(&job, &mut recorder).unwrap());
    let line = recorder
        .events
        .iter()
        .find(|e| e.starts_with("Estimated peak memory "))
        .unwrap();
    assert!(line.ends_with(" GiB available on cpu"), "{line}");
}
