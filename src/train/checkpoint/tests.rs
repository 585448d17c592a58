//! Checkpoint directories, resume pick and `meta.json` compatibility.

use super::*;

fn contents_for(step: usize) -> (HashMap<String, Tensor>, TrainState, CheckpointMeta) {
    let mut tensors = HashMap::new();
    tensors.insert(
        "w".to_string(),
        Tensor::new(&[step as f32], &Device::Cpu).expect("t"),
    );
    let state = TrainState {
        step,
        ..TrainState::default()
    };
    let meta = CheckpointMeta {
        task: CheckpointTask::SequenceClassification {
            labels: vec!["a".into(), "b".into()],
            spec: ClassifierSpec {
                num_labels: 2,
                lora: None,
                classifier_dropout: None,
            },
        },
        base_model_dir: PathBuf::from("/base"),
        max_seq_len: 32,
        seed: 1,
    };
    (tensors, state, meta)
}

fn write(work: &Path, step: usize) -> PathBuf {
    let (tensors, state, meta) = contents_for(step);
    let contents = CheckpointContents {
        trainable: &tensors,
        optimizer: &tensors,
        state: &state,
        meta: &meta,
    };
    write_checkpoint(work, &contents).expect("write")
}

#[test]
fn write_list_prune_and_resume_pick() {
    let work = tempfile::tempdir().expect("tempdir");
    assert_eq!(latest_resumable(work.path()).expect("none"), None);
    let first = write(work.path(), 2);
    let second = write(work.path(), 10);
    // A half-written checkpoint is never listed.
    fs::create_dir_all(checkpoints_root(work.path()).join("step-20.tmp")).expect("tmp");
    let steps: Vec<usize> = list_checkpoints(work.path())
        .expect("list")
        .iter()
        .map(|c| c.0)
        .collect();
    assert_eq!(steps, vec![2, 10]);
    prune_optimizer_states(work.path(), &second).expect("prune");
    assert!(!first.join(OPTIMIZER_FILE).exists());
    assert!(
        first.join(TRAINABLE_FILE).exists(),
        "older checkpoints stay servable"
    );
    assert!(!checkpoints_root(work.path()).join("step-20.tmp").exists());
    assert_eq!(
        latest_resumable(work.path()).expect("latest"),
        Some((10, second.clone()))
    );
    assert_eq!(read_state(&second).expect("state").step, 10);
    let meta = read_meta(&second).expect("meta");
    assert_eq!(meta.classifier(&second).expect("classifier").0, ["a", "b"]);
    let w = read_tensors(&second, TRAINABLE_FILE, &Device::Cpu).expect("tensors");
    assert_eq!(w["w"].to_vec1::<f32>().expect("w"), vec![10.0]);
}

#[test]
fn classification_meta_without_lm_fields_still_loads() {
    // meta.json as written before causal-LM checkpoints existed.
    let old = r#"{"task":"sequence_classification","base_model_dir":"/base",
        "labels":["a","b"],"spec":{"num_labels":2,"lora":null,"classifier_dropout":null},
        "max_seq_len":32,"seed":1}"#;
    let meta: CheckpointMeta = serde_json::from_str(old).expect("old meta");
    let dir = Path::new("/ckpt");
    assert_eq!(meta.classifier_spec(dir).expect("spec").num_labels, 2);
    assert_eq!(meta.classifier(dir).expect("labels").0, ["a", "b"]);
    assert_eq!((meta.max_seq_len, meta.seed), (32, 1));
    assert!(meta.lm_spec(dir).is_err());
    assert!(!meta.has_lora());
}

#[test]
fn string_tagged_meta_files_load_as_the_task_enum() {
    // Byte for byte what the string-tagged `CheckpointMeta` wrote (serde_json pretty).
    let classifier = r#"{
  "task": "sequence_classification",
  "base_model_dir": "/models/bert",
  "labels": [
    "negative",
    "positive"
  ],
  "spec": {
    "num_labels": 2,
    "lora": {
      "rank": 8,
      "alpha": 16.0,
      "dropout": 0.1,
      "target_modules": []
    },
    "classifier_dropout": null
  },
  "max_seq_len": 128,
  "seed": 42
}"#;
    let meta: CheckpointMeta = serde_json::from_str(classifier).expect("classifier meta");
    let dir = Path::new("/ckpt");
    let (labels, spec) = meta.classifier(dir).expect("classifier");
    assert_eq!(labels, ["negative", "positive"]);
    assert_eq!(spec.lora.as_ref().map(|l| l.rank), Some(8));
    assert!(meta.has_lora());
    assert_eq!(meta.base_model_dir, PathBuf::from("/models/bert"));
    // Writing it again gives the same JSON.
    assert_eq!(
        serde_json::to_value(&meta).expect("to value"),
        serde_json::from_str::<serde_json::Value>(classifier).expect("value")
    );
    let lm = r#"{
  "task": "causal_lm",
  "base_model_dir": "/data/cache/gguf/smol",
  "lm": {
    "lora": null,
    "quantize": "q8_0"
  },
  "max_seq_len": 512,
  "seed": 3
}"#;
    let meta: CheckpointMeta = serde_json::from_str(lm).expect("lm meta");
    let spec = meta.lm_spec(dir).expect("lm");
    assert_eq!(spec.quantize.as_deref(), Some("q8_0"));
    assert!(spec.lora.is_none() && !meta.has_lora());
    let err = meta.classifier(dir).expect_err("not a classifier");
    assert!(
        err.to_string()
            .contains("`causal_lm` checkpoint is not a classifier"),
        "{err}"
    );
    assert_eq!(
        serde_json::to_value(&meta).expect("to value"),
        serde_json::from_str::<serde_json::Value>(lm).expect("value")
    );
}

#[test]
fn unknown_tasks_are_refused_by_name() {
    let work = tempfile::tempdir().expect("tempdir");
    fs::write(
        work.path().join(META_FILE),
        r#"{"task":"regression","base_model_dir":"/b","max_seq_len":8,"seed":1}"#,
    )
    .expect("write");
    let err = read_meta(work.path()).expect_err("unsupported");
    assert!(
        err.to_string().contains("unsupported task `regression`"),
        "{err}"
    );
}

#[test]
fn rewriting_a_step_replaces_it() {
    let work = tempfile::tempdir().expect("tempdir");
    write(work.path(), 3);
    let again = write(work.path(), 3);
    assert_eq!(list_checkpoints(work.path()).expect("list").len(), 1);
    assert!(again.join(OPTIMIZER_FILE).exists());
}
