//! Writing checkpoint directories, pruning, and the resume pick over them.

use super::*;
use crate::artifacts::checkpoint::{
    latest_resumable, list_checkpoints, read_meta, read_tensors, CheckpointTask,
};
use crate::artifacts::BaseLocation;
use crate::zoo::ClassifierSpec;
use candle_core::Device;

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
        base_model: BaseLocation::Directory {
            path: PathBuf::from("/base"),
        },
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
fn rewriting_a_step_replaces_it() {
    let work = tempfile::tempdir().expect("tempdir");
    write(work.path(), 3);
    let again = write(work.path(), 3);
    assert_eq!(list_checkpoints(work.path()).expect("list").len(), 1);
    assert!(again.join(OPTIMIZER_FILE).exists());
}
