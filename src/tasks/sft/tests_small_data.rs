//! The README's chat shape on small data: 20 short chats under `"auto"` hyperparameters must
//! learn where the old recipe (batch 4: 25 steps) barely moved; and a model whose context is
//! shorter than the default `max_seq_len` trains, cut to its context, instead of failing.

use std::path::Path;

use candle_core::Device;

use super::prepare::SftExamples;
use super::tests_data::message;
use super::{run_sft, SftJob};
use crate::domain::dataset::{ChatExample, ChatRole};
use crate::domain::hyperparams::{HyperparamRequest, TrainingConfig};
use crate::domain::task::Task;
use crate::tasks::sequence_classification::tests::{completed, Recorder};
use crate::zoo::decoder::DecoderArch;

const QUESTIONS: [(&str, &str); 20] = [
    ("Where is my order?", "It ships today."),
    ("Can I get a refund?", "Yes, within 30 days."),
    ("How do I reset my password?", "Use the login page."),
    ("Do you ship abroad?", "Yes, to the EU."),
    ("What are your hours?", "Nine to five."),
    ("Is there a free plan?", "Yes, for one user."),
    ("How do I cancel?", "In your settings."),
    ("Can I change my email?", "Yes, in your profile."),
    ("Do you have an app?", "Yes, on both stores."),
    ("Is my data safe?", "It is encrypted."),
    ("How much is shipping?", "Five euros."),
    ("Can I pay by card?", "Yes, all cards."),
    ("Where are you based?", "In Lisbon."),
    ("Can I add a user?", "Yes, on the team plan."),
    ("Do you offer support?", "Yes, by email."),
    ("Is there a discount?", "Ten percent yearly."),
    ("How do I export data?", "From the dashboard."),
    ("Can I pause my plan?", "Yes, for three months."),
    ("What is the trial?", "Fourteen days."),
    ("Do prices include tax?", "Yes, they do."),
];

fn chats() -> Vec<ChatExample> {
    QUESTIONS
        .iter()
        .map(|(question, answer)| ChatExample {
            messages: vec![
                message(ChatRole::System, "You are a support bot.", None),
                message(ChatRole::User, question, None),
                message(ChatRole::Assistant, answer, None),
            ],
            tools: None,
        })
        .collect()
}

/// Trains on the 20 chats (validated on the same chats) and returns the full validation
/// loss before and after, and the mean token accuracy after.
fn train(base: &Path, work_dir: &Path, config: TrainingConfig) -> (f64, f64, f64, Vec<String>) {
    let job = SftJob {
        base_model_dir: base.to_path_buf(),
        base_model: crate::artifacts::BaseLocation::Directory {
            path: base.to_path_buf(),
        },
        train: SftExamples::Chat(chats()),
        valid: Some(SftExamples::Chat(chats())),
        config,
        work_dir: work_dir.to_path_buf(),
        device: Device::Cpu,
    };
    let mut recorder = Recorder::default();
    let summary = completed(run_sft(&job, &mut recorder).expect("training"));
    let number = |key: &str| summary.report[key].as_f64().expect(key);
    (
        number("initial_full_valid_loss"),
        number("full_valid_loss"),
        number("full_valid_mean_token_accuracy"),
        recorder.events,
    )
}

/// `"auto"` for 20 chats, or with a fixed `learning_rate`.
fn auto_config(learning_rate: Option<f64>) -> TrainingConfig {
    let request = HyperparamRequest {
        learning_rate,
        ..HyperparamRequest::default()
    };
    request.resolve(Task::ChatSft, 20, 3)
}

/// What `"auto"` used to resolve to for 20 chats: batch 4, 5 epochs (25 steps).
fn old_config(learning_rate: Option<f64>) -> TrainingConfig {
    TrainingConfig {
        batch_size: 4,
        ..auto_config(learning_rate)
    }
}

/// A random decoder has nothing pretrained for an adapter to steer, so the tiny model trains
/// at 1e-2 (as the other tiny-decoder tests do) and this tests the batch and epochs `"auto"`
/// now picks.
#[test]
fn auto_steps_learn_twenty_chats_on_the_tiny_decoder() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 7).expect("decoder");
    let auto = auto_config(Some(1e-2));
    assert_eq!((auto.batch_size, auto.n_epochs), (1, 5), "{auto:?}");
    let (before, after, accuracy, _) = train(&base, &tmp.path().join("auto"), auto);
    let (old_before, old_after, old_accuracy, _) =
        train(&base, &tmp.path().join("old"), old_config(Some(1e-2)));
    eprintln!(
        "tiny decoder: auto loss {before:.3} -> {after:.3}, token accuracy {accuracy:.3}; old recipe {old_before:.3} -> {old_after:.3}, {old_accuracy:.3}"
    );
    // Measured (seeded, CPU): auto 6.084 -> 2.131, token accuracy 0.619; the old recipe
    // 6.084 -> 2.743, 0.540: the same 100 example passes, four times the steps.
    assert!(after <= 0.4 * before, "auto: loss {before} -> {after}");
    assert!(accuracy >= 0.58, "auto: token accuracy {accuracy}");
    assert!(
        old_after - after >= 0.3,
        "auto ended at loss {after}, the old recipe at {old_after}"
    );
}

#[test]
fn a_context_shorter_than_max_seq_len_is_used_instead_of_failing() {
    let tmp = tempfile::tempdir().expect("tmp");
    let base = tmp.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&base, DecoderArch::Llama, 7).expect("decoder");
    let config_path = base.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).expect("read")).expect("json");
    config["max_position_embeddings"] = 64.into();
    std::fs::write(&config_path, config.to_string()).expect("write");
    // Longer than 64 tokens, so a 512-token max_seq_len would reach past the context.
    let long = ChatExample {
        messages: vec![
            message(ChatRole::User, &"Tell me about the plans. ".repeat(8), None),
            message(ChatRole::Assistant, "There are three plans.", None),
        ],
        tools: None,
    };
    let mut train = chats();
    train.push(long);
    let job = SftJob {
        base_model_dir: base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory { path: base.clone() },
        train: SftExamples::Chat(train),
        valid: None,
        config: TrainingConfig {
            n_epochs: 1,
            ..auto_config(None)
        },
        work_dir: tmp.path().join("work"),
        device: Device::Cpu,
    };
    assert_eq!(job.config.max_seq_len, 512);
    let mut recorder = Recorder::default();
    let summary = completed(run_sft(&job, &mut recorder).expect("training within the context"));
    assert!(summary.trained_tokens > 0);
    assert!(
        recorder.events.iter().any(|e| e
            == "max_seq_len=512 is longer than the model's context of 64 tokens (max_position_embeddings); training with max_seq_len=64"),
        "{:?}",
        recorder.events
    );
}
