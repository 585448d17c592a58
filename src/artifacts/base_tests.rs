//! A checkpoint's base: the fingerprint, and finding the base again by id, as a job's
//! starting model, or as a directory.

use std::fs;

use super::*;
use crate::artifacts::checkpoint::tests::lm_meta;
use crate::artifacts::checkpoint::META_FILE;

/// `models/org/tiny`, a base model `basemodels::resolve` finds (an encoder config, a
/// tokenizer, `weights` as its safetensors bytes; nothing here loads them).
fn models_dir_with_base(root: &Path, weights: &[u8]) -> PathBuf {
    let dir = root.join("models").join("org").join("tiny");
    fs::create_dir_all(&dir).expect("dir");
    fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).expect("config");
    fs::write(dir.join("tokenizer.json"), "{}").expect("tokenizer");
    fs::write(dir.join("model.safetensors"), weights).expect("weights");
    dir
}

/// A checkpoint directory `dir` whose `meta.json` names `base`.
fn checkpoint_over(dir: &Path, base: BaseLocation) {
    fs::create_dir_all(dir).expect("checkpoint dir");
    let json = serde_json::to_vec(&lm_meta(base)).expect("json");
    fs::write(dir.join(META_FILE), json).expect("meta");
}

#[test]
fn the_fingerprint_follows_the_config_and_the_weights() {
    let root = tempfile::tempdir().expect("tempdir");
    let weights: Vec<u8> = (0..3 * FINGERPRINT_SPAN as usize)
        .map(|i| i as u8)
        .collect();
    let dir = models_dir_with_base(root.path(), &weights);
    let first = Fingerprint::of(&dir).expect("fingerprint");
    assert_eq!(first.bytes, weights.len() as u64);
    assert!(first.revision.starts_with("sha256:") && first.revision.len() == 7 + 64);
    assert_eq!(Fingerprint::of(&dir).expect("again"), first);

    // Another fine-tune of the same shape: its last bytes differ.
    let mut other = weights.clone();
    let last = other.len() - 1;
    other[last] ^= 1;
    fs::write(dir.join("model.safetensors"), &other).expect("other weights");
    let changed = Fingerprint::of(&dir).expect("changed");
    assert_eq!(changed.bytes, first.bytes);
    assert_ne!(changed.revision, first.revision);

    fs::write(dir.join("model.safetensors"), &weights).expect("weights back");
    assert_eq!(Fingerprint::of(&dir).expect("restored"), first);
    fs::write(dir.join("config.json"), r#"{"model_type": "bert", "x": 1}"#).expect("config");
    assert_ne!(
        Fingerprint::of(&dir).expect("config").revision,
        first.revision
    );

    // A second weight file (a sharded model) counts in both.
    fs::write(dir.join("config.json"), r#"{"model_type": "bert"}"#).expect("config back");
    fs::write(dir.join("model-00002.safetensors"), [7u8; 10]).expect("shard");
    let sharded = Fingerprint::of(&dir).expect("sharded");
    assert_eq!(sharded.bytes, first.bytes + 10);
    assert_ne!(sharded.revision, first.revision);
}

#[test]
fn a_base_named_by_id_is_found_in_the_models_dir_in_its_version() {
    let root = tempfile::tempdir().expect("tempdir");
    let base_dir = models_dir_with_base(root.path(), b"weights v1");
    let location = BaseLocation::of_base_model("org/tiny", &base_dir).expect("location");
    let BaseLocation::Models { ref id, bytes, .. } = location else {
        panic!("a models-dir location: {location:?}");
    };
    assert_eq!((id.as_str(), bytes), ("org/tiny", 10));
    let ckpt_dir = root.path().join("job").join("checkpoints").join("step-3");
    checkpoint_over(&ckpt_dir, location.clone());

    let bases = BaseModels::new(&root.path().join("models"), &root.path().join("data"));
    let opened = bases.open(&ckpt_dir).expect("open");
    assert_eq!(opened.base_dir, base_dir);
    assert_eq!(opened.meta.base_model, location);
    assert_eq!(opened.dir, ckpt_dir);

    // The same models dir seen from elsewhere (a moved install) still finds it.
    let moved = root.path().join("moved-models");
    fs::rename(root.path().join("models"), &moved).expect("move");
    let elsewhere = BaseModels::new(&moved, &root.path().join("data"));
    assert_eq!(
        elsewhere.open(&ckpt_dir).expect("moved").base_dir,
        moved.join("org").join("tiny")
    );

    // Other weights under the same id are refused, naming the model by id.
    fs::write(moved.join("org/tiny/model.safetensors"), b"weights v2").expect("v2");
    let err = elsewhere.open(&ckpt_dir).expect_err("changed base");
    let message = err.to_string();
    assert!(
        message
            .contains("the base model `org/tiny` is not the one this checkpoint was trained over"),
        "{message}"
    );
    assert!(
        !message.contains(&root.path().display().to_string()),
        "{message}"
    );

    // Gone from the models dir, or no models dir at all.
    let err = bases.open(&ckpt_dir).expect_err("missing base");
    assert!(
        err.to_string().contains(
            "the base model `org/tiny` this checkpoint was trained over is not on this server"
        ),
        "{err}"
    );
    let err = BaseModels::default()
        .open(&ckpt_dir)
        .expect_err("no models dir");
    assert!(matches!(err, ArtifactError::BaseModel(_)), "{err}");
}

#[test]
fn a_jobs_starting_model_is_found_beside_its_checkpoints() {
    let root = tempfile::tempdir().expect("tempdir");
    let work = root.path().join("job");
    let ckpt_dir = work.join("checkpoints").join("step-2");
    let location = BaseLocation::JobStartModel {
        id: "ft:org/tiny:acme::abc".into(),
    };
    checkpoint_over(&ckpt_dir, location);
    let bases = BaseModels::default();
    let err = bases.open(&ckpt_dir).expect_err("not written yet");
    assert!(
        err.to_string().contains(
            "the starting model `ft:org/tiny:acme::abc` of this checkpoint's job is missing"
        ),
        "{err}"
    );
    fs::create_dir_all(work.join(START_MODEL_DIR)).expect("start model");
    fs::write(work.join(START_MODEL_DIR).join("config.json"), "{}").expect("config");
    assert_eq!(
        bases.open(&ckpt_dir).expect("open").base_dir,
        work.join(START_MODEL_DIR)
    );
}

#[test]
fn a_directory_base_is_taken_as_it_is() {
    let root = tempfile::tempdir().expect("tempdir");
    let ckpt_dir = root.path().join("step-1");
    let path = root.path().join("some-base");
    checkpoint_over(&ckpt_dir, BaseLocation::Directory { path: path.clone() });
    assert_eq!(
        BaseModels::default()
            .open(&ckpt_dir)
            .expect("open")
            .base_dir,
        path
    );
    assert_eq!(BaseLocation::Directory { path }.id(), None);
}
