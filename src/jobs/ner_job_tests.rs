//! A token-classification (NER) job through the real runner on a tiny random BERT: CoNLL
//! training data, JSONL validation data, the IOB1 event, named metrics, the per-entity-type
//! report and the merged export.
#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};

use super::fine_tune_tests::{assert_in_order, job_with, worker, write_model, MODEL};
use super::results::base64_decode;
use super::test_support::*;
use super::{FineTuneRunner, Processed};
use crate::artifacts::ExportFormat;
use crate::blobs::Blobs;

const SENTENCES: [(&str, &str); 4] = [
    ("i love the paris film", "O O O B-LOC O"),
    ("we liked the new york story", "O O O B-LOC I-LOC O"),
    ("john was in paris", "B-PER O O B-LOC"),
    ("the movie was really good", "O O O O O"),
];

/// `n` sentences as CoNLL text (`token tag` lines, blank line between sentences), the
/// first one opening an entity with `I-PER` (IOB1 style).
fn conll(n: usize) -> Vec<u8> {
    let mut out = String::from("-DOCSTART- O\n\nmary I-PER\nloved I-PER\nit O\n\n");
    for (words, tags) in SENTENCES.iter().cycle().take(n - 1) {
        for (word, tag) in words.split(' ').zip(tags.split(' ')) {
            out.push_str(&format!("{word}\t{tag}\n"));
        }
        out.push('\n');
    }
    out.into_bytes()
}

fn jsonl(n: usize) -> Vec<u8> {
    SENTENCES
        .iter()
        .cycle()
        .take(n)
        .map(|(words, tags)| {
            let tokens: Vec<&str> = words.split(' ').collect();
            let tags: Vec<&str> = tags.split(' ').collect();
            json!({"tokens": tokens, "tags": tags}).to_string() + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

#[tokio::test]
async fn a_token_classification_job_trains_reports_and_exports() {
    let h = harness().await;
    write_model(&h);
    let hyper = json!({"n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": "auto"});
    let id = job_with(&h, &conll(12), Some(&jsonl(4)), hyper).await;
    assert_eq!(
        worker(&h, FineTuneRunner).process_next().await.unwrap(),
        Processed::Succeeded(id.clone())
    );
    let row = job(&h.ctx, &id).await;
    assert_eq!(row.task.as_deref(), Some("token_classification"));
    assert_in_order(
        &messages(&h.ctx, &id).await,
        &[
            "Validating training file: file-train and validation file: file-valid",
            "1 tag(s) begin an entity with `I-` (first: `I-PER` in example 1, line 3)",
            "Files validated, moving job to queued state",
            "Step 1/6: training loss=",
            "Step 6/6: training loss=",
            "Best checkpoint: step ",
            "The job has successfully completed",
        ],
    );
    // 12 sentences, batches of 4, 2 epochs.
    assert_eq!(
        metric_steps(&h.ctx, &id).await,
        (1..=6).collect::<Vec<u64>>()
    );

    let read = |file_id: String| {
        let blobs = h.ctx.blobs.clone();
        async move { blobs.read(&Blobs::file_rel(&file_id)).await.unwrap() }
    };
    let csv = read(row.result_files[0].clone()).await;
    let csv =
        String::from_utf8(base64_decode(std::str::from_utf8(&csv).unwrap()).unwrap()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "step,train_loss,train_token_accuracy,valid_loss,valid_entity_precision,\
         valid_entity_recall,valid_entity_f1,valid_token_accuracy"
    );
    assert_eq!(lines.len(), 7, "{csv}");
    // Epoch ends (steps 3 and 6) evaluate: every validation cell is filled.
    assert!(
        lines[3].starts_with("3,") && !lines[3].contains(",,"),
        "{csv}"
    );

    let report: Value = serde_json::from_slice(&read(row.result_files[1].clone()).await).unwrap();
    assert_eq!(report["split"], "validation");
    assert_eq!(
        report["labels"],
        json!(["O", "B-LOC", "I-LOC", "B-PER", "I-PER"])
    );
    // Validation holds 4 sentences: LOC ×3, PER ×1 (exact spans).
    assert_eq!(report["per_type"]["LOC"]["support"], json!(3));
    assert_eq!(report["per_type"]["PER"]["support"], json!(1));
    for key in ["micro_avg", "macro_avg", "weighted_avg"] {
        assert!(report[key]["f1-score"].is_number(), "{key}: {report}");
    }

    let checkpoints = h
        .ctx
        .store
        .list_checkpoints(&id, None, 100)
        .await
        .unwrap()
        .data;
    let last = checkpoints.iter().find(|c| c.step_number == 6).unwrap();
    assert!(
        last.metrics["valid_entity_f1"].is_number(),
        "{:?}",
        last.metrics
    );

    let out = tempfile::tempdir().unwrap();
    let dir = h.ctx.blobs.path(&last.artifact_dir);
    let bases = crate::artifacts::BaseModels::new(&h.ctx.models_dir, h.ctx.blobs.root());
    crate::tasks::export_checkpoint(&dir, &bases, ExportFormat::Merged, MODEL, out.path()).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "BertForTokenClassification");
    assert_eq!(config["id2label"]["2"], "I-LOC");
    assert!(crate::tasks::export_checkpoint(
        &dir,
        &bases,
        ExportFormat::Adapter,
        MODEL,
        out.path()
    )
    .is_err());
}
