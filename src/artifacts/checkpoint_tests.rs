//! `meta.json`: the task enum, the files of earlier versions, the base named by id.

use std::fs;
use std::path::PathBuf;

use candle_core::DType;

use super::*;

/// `json` (a `meta.json` of an earlier version) read from a checkpoint in `dir`.
fn legacy_meta(dir: &Path, json: &str) -> CheckpointMeta {
    fs::write(dir.join(META_FILE), json).expect("write meta");
    read_meta(dir).expect("legacy meta")
}

/// `json` as this version writes it: `base_model_dir` becomes a directory location.
fn as_written_now(json: &str) -> serde_json::Value {
    let mut value: serde_json::Value = serde_json::from_str(json).expect("value");
    let fields = value.as_object_mut().expect("object");
    let path = fields.remove("base_model_dir").expect("legacy field");
    fields.insert(
        "base_model".into(),
        serde_json::json!({"source": "directory", "path": path}),
    );
    value
}

#[test]
fn classification_meta_without_lm_fields_still_loads() {
    // meta.json as written before causal-LM checkpoints existed.
    let old = r#"{"task":"sequence_classification","base_model_dir":"/base",
        "labels":["a","b"],"spec":{"num_labels":2,"lora":null,"classifier_dropout":null},
        "max_seq_len":32,"seed":1}"#;
    let ckpt = tempfile::tempdir().expect("tempdir");
    let dir = ckpt.path();
    fs::write(dir.join(META_FILE), old).expect("write");
    let meta = read_meta(dir).expect("old meta");
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
    let ckpt = tempfile::tempdir().expect("tempdir");
    let dir = ckpt.path();
    let meta = legacy_meta(dir, classifier);
    let (labels, spec) = meta.classifier(dir).expect("classifier");
    assert_eq!(labels, ["negative", "positive"]);
    assert_eq!(spec.lora.as_ref().map(|l| l.rank), Some(8));
    assert!(meta.has_lora());
    assert_eq!(
        meta.base_model,
        BaseLocation::Directory {
            path: PathBuf::from("/models/bert")
        }
    );
    // Writing it again gives the same JSON, the base as a location.
    assert_eq!(
        serde_json::to_value(&meta).expect("to value"),
        as_written_now(classifier)
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
    let meta = legacy_meta(dir, lm);
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
        as_written_now(lm)
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

/// A full fine-tune of a decoder over `base`: the meta the base tests write too.
pub(crate) fn lm_meta(base: BaseLocation) -> CheckpointMeta {
    CheckpointMeta {
        task: CheckpointTask::CausalLm {
            lm: LmSpec {
                lora: None,
                quantize: None,
                export_dtype: None,
            },
        },
        base_model: base,
        max_seq_len: 64,
        seed: 5,
    }
}

#[test]
fn a_base_named_by_id_round_trips_and_wins_over_a_legacy_path() {
    let ckpt = tempfile::tempdir().expect("tempdir");
    let meta = lm_meta(BaseLocation::Models {
        id: "org/base".into(),
        revision: "sha256:ab".into(),
        bytes: 12,
    });
    let mut json = serde_json::to_value(&meta).expect("json");
    assert_eq!(
        json["base_model"],
        serde_json::json!({"source": "models", "id": "org/base", "revision": "sha256:ab", "bytes": 12})
    );
    // A stray legacy path beside the id (as a hand-edited file might have) is not used.
    json["base_model_dir"] = serde_json::json!("/elsewhere");
    fs::write(ckpt.path().join(META_FILE), json.to_string()).expect("write");
    assert_eq!(read_meta(ckpt.path()).expect("meta"), meta);
}

#[test]
fn safetensors_read_through_a_mapping_round_trip_and_a_cut_file_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let device = Device::Cpu;
    let a = Tensor::arange(0f32, 12.0, &device).and_then(|t| t.reshape((3, 4)));
    let b = Tensor::new(&[1u32, 5, 9], &device);
    let tensors = HashMap::from([
        ("a".to_string(), a.expect("a")),
        ("b".to_string(), b.expect("b")),
    ]);
    let path = dir.path().join("t.safetensors");
    candle_core::safetensors::save(&tensors, &path).expect("save");
    let read = read_tensors(dir.path(), "t.safetensors", &device).expect("read");
    assert_eq!(read.len(), 2);
    let values = |name: &str| {
        read[name]
            .flatten_all()
            .and_then(|t| t.to_dtype(DType::F32))
    };
    let a_values = values("a").and_then(|t| t.to_vec1::<f32>()).expect("a");
    assert_eq!(a_values, (0..12).map(|v| v as f32).collect::<Vec<_>>());
    assert_eq!(read["b"].to_vec1::<u32>().expect("b"), [1, 5, 9]);
    // Cut short: the header promises bytes the file does not have.
    let bytes = fs::read(&path).expect("bytes");
    fs::write(&path, &bytes[..bytes.len() - 4]).expect("cut");
    assert!(read_safetensors(&path, &device).is_err());
    fs::write(&path, b"").expect("empty");
    assert!(read_safetensors(&path, &device).is_err());
    assert!(read_safetensors(&dir.path().join("missing"), &device).is_err());
}
