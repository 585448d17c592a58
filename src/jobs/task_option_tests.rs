//! Task options through whole jobs on a tiny random BERT: a QA job's `doc_stride` and
//! `max_answer_length` reach its windows, its checkpoint (which names its base by id) and
//! the model served from it; an option of another task, or a stride a question leaves no
//! room for, fails the job with the param named.
#![allow(clippy::unwrap_used)]

use candle_core::Device;
use serde_json::json;

use super::fine_tune_tests::{job_with, worker, write_model, MODEL};
use super::test_support::*;
use super::{FineTuneRunner, Processed};
use crate::artifacts::checkpoint::{self, CheckpointTask};
use crate::artifacts::{BaseLocation, Fingerprint};
use crate::domain::hyperparams::TaskOptions;
use crate::tasks::question_answering::{load_qa_server, QaTokenizer, QaWindow, WindowSettings};
use crate::zoo::TextTokenizer;

const QUESTION: &str = "who?";
const CONTEXT: &str =
    "the film is nice and the music is good, and mary loved the story of paris in the spring";

/// `n` questions on one long context (about 80 tokens in the tiny vocabulary).
fn squad_jsonl(n: usize) -> Vec<u8> {
    let start = CONTEXT.find("mary").unwrap();
    let row = json!({"context": CONTEXT, "question": QUESTION,
        "answers": {"text": ["mary"], "answer_start": [start]}});
    format!("{row}\n").repeat(n).into_bytes()
}

fn tokenizer(h: &Harness, settings: WindowSettings) -> QaTokenizer {
    let text = TextTokenizer::from_dir(&h.dir.path().join("models").join(MODEL)).unwrap();
    QaTokenizer::new(text.inner(), settings).unwrap()
}

/// Whether the answer `[start, end)` is exactly one context token of some window.
fn is_one_token(windows: &[QaWindow], start: usize, end: usize) -> bool {
    windows
        .iter()
        .any(|w| (0..w.len()).any(|i| w.context_span(i) == Some((start, end))))
}

#[tokio::test]
async fn a_qa_jobs_stride_and_answer_length_reach_its_windows_checkpoint_and_server() {
    let h = harness().await;
    write_model(&h);
    let hyper = json!({"n_epochs": 1, "batch_size": 4, "max_seq_len": 32,
        "doc_stride": 4, "max_answer_length": 1});
    let id = job_with(&h, &squad_jsonl(10), None, hyper).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!(
        row.resolved.as_ref().unwrap().config.task_options,
        TaskOptions {
            doc_stride: Some(4),
            max_answer_length: Some(1),
            ..TaskOptions::default()
        }
    );

    let checkpoints = h
        .ctx
        .store
        .list_checkpoints(&id, None, 100)
        .await
        .unwrap()
        .data;
    let dir = h.ctx.blobs.path(&checkpoints.last().unwrap().artifact_dir);
    let meta = checkpoint::read_meta(&dir).unwrap();
    // The checkpoint names its base by the id the job trained, with that model's fingerprint.
    let base_dir = h.dir.path().join("models").join(MODEL);
    let now = Fingerprint::of(&base_dir).unwrap();
    assert_eq!(
        meta.base_model,
        BaseLocation::Models {
            id: MODEL.to_string(),
            revision: now.revision,
            bytes: now.bytes,
        }
    );
    let CheckpointTask::QuestionAnswering {
        doc_stride,
        max_answer_length,
        ..
    } = meta.task
    else {
        panic!("not a QA checkpoint: {meta:?}");
    };
    assert_eq!(
        (doc_stride, max_answer_length, meta.max_seq_len),
        (4, 1, 32)
    );

    // The served model cuts contexts with the trained stride. A stride is the overlap of
    // consecutive windows, so on a context several windows long the trained 4 gives fewer
    // windows than the 10 the job would have had without the option (a third of 32).
    let long_context = [CONTEXT; 4].join(" ");
    let bases = crate::artifacts::BaseModels::new(&h.ctx.models_dir, h.ctx.blobs.root());
    let server = load_qa_server(&bases.open(&dir).unwrap(), &Device::Cpu).unwrap();
    let windows = server.windows(QUESTION, &long_context).unwrap();
    let trained = tokenizer(
        &h,
        WindowSettings {
            max_seq_len: 32,
            doc_stride: 4,
        },
    );
    let auto = tokenizer(
        &h,
        WindowSettings {
            max_seq_len: 32,
            doc_stride: 10,
        },
    );
    assert_eq!(windows, trained.windows(QUESTION, &long_context).unwrap());
    let auto_windows = auto.windows(QUESTION, &long_context).unwrap().len();
    assert!(
        windows.len() < auto_windows,
        "{} vs {auto_windows}",
        windows.len()
    );

    // Its answers are at most one token long, as trained.
    let question_of = vec![0; windows.len()];
    let answer = &server
        .answer(&[long_context.as_str()], &windows, &question_of, 8)
        .unwrap()[0];
    assert!(
        is_one_token(&windows, answer.start, answer.end),
        "{answer:?}"
    );
}

#[tokio::test]
async fn an_option_of_another_task_fails_the_job_naming_it() {
    // Creation refuses it when the file's format is on record; a job created without
    // that check (here: straight into the store) fails before it trains.
    let h = harness().await;
    write_model(&h);
    let rows: String = (0..10)
        .map(|i| {
            let label = if i % 2 == 0 { "pos" } else { "neg" };
            json!({"text": format!("text {i}"), "label": label}).to_string() + "\n"
        })
        .collect();
    let id = job_with(&h, rows.as_bytes(), None, json!({"doc_stride": 64})).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let error = job(&h.ctx, &id).await.error.unwrap();
    assert_eq!(error["code"], "invalid_hyperparameters");
    assert_eq!(error["param"], "doc_stride");
    assert_eq!(
        error["message"],
        "`doc_stride` is a hyperparameter of extractive question answering (SQuAD data); this job's training data is text classification data"
    );
}

#[tokio::test]
async fn a_question_that_leaves_no_room_for_the_stride_fails_the_job_naming_it() {
    let h = harness().await;
    write_model(&h);
    // After 10 short questions, one whose tokens leave no room in a window of 32.
    let start = CONTEXT.find("mary").unwrap();
    let row = json!({"context": CONTEXT, "question": "tell me who in this story loved the city?",
        "id": "q-long", "answers": {"text": ["mary"], "answer_start": [start]}});
    let mut data = squad_jsonl(10);
    data.extend(format!("{row}\n").into_bytes());
    let hyper = json!({"n_epochs": 1, "batch_size": 4, "max_seq_len": 32, "doc_stride": 20});
    let id = job_with(&h, &data, None, hyper).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Failed(id.clone())
    );
    let error = job(&h.ctx, &id).await.error.unwrap();
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("example 11 (id 'q-long')"), "{message}");
    assert!(message.contains("doc_stride 20"), "{message}");
}
