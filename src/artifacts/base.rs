//! A checkpoint's base model, named by id in its `meta.json` and found again on whatever
//! server reads it: so a checkpoint survives the models dir or the data dir moving, an
//! adapter can be matched to the base it is served over by id, and a base that was replaced
//! under the same id is refused instead of silently serving the adapter over other weights.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::checkpoint::{read_meta, CheckpointMeta};
use super::ArtifactError;
use crate::basemodels;

/// The directory, inside a job's work dir beside `checkpoints/`, holding the fine-tuned
/// model the job started from (`model: "ft:…"`), written once by the job.
pub const START_MODEL_DIR: &str = "start-model";

/// How much of each end of a weight file the fingerprint reads.
const FINGERPRINT_SPAN: u64 = 1 << 20;

/// Where a checkpoint's base model is (`base_model` in `meta.json`, tagged by `source`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "source", rename_all = "snake_case")]
pub enum BaseLocation {
    /// A base model by the id users train it by (the models dir, a GGUF file in it, or the
    /// hub cache: `basemodels::resolve`); `revision` and `bytes` are its [`Fingerprint`] when
    /// the job trained over it.
    Models {
        id: String,
        revision: String,
        bytes: u64,
    },
    /// The fine-tuned model `id` a job started from, written as [`START_MODEL_DIR`] in the
    /// job's own directory (it outlives the deletion of that model).
    JobStartModel { id: String },
    /// A directory on this server: what checkpoints written before bases were named by id
    /// recorded, and the bases of tests' tiny models.
    Directory { path: PathBuf },
}

impl BaseLocation {
    /// The base model `id`, as the directory it resolves to (`dir`) holds it now.
    pub fn of_base_model(id: &str, dir: &Path) -> Result<Self, ArtifactError> {
        let Fingerprint { revision, bytes } = Fingerprint::of(dir)?;
        Ok(BaseLocation::Models {
            id: id.to_string(),
            revision,
            bytes,
        })
    }

    /// The version of the base recorded, for a base named by id.
    pub fn fingerprint(&self) -> Option<Fingerprint> {
        match self {
            BaseLocation::Models {
                revision, bytes, ..
            } => Some(Fingerprint {
                revision: revision.clone(),
                bytes: *bytes,
            }),
            _ => None,
        }
    }

    /// The base model's id, where the checkpoint names one.
    pub fn id(&self) -> Option<&str> {
        match self {
            BaseLocation::Models { id, .. } | BaseLocation::JobStartModel { id } => Some(id),
            BaseLocation::Directory { .. } => None,
        }
    }
}

/// Which version of a model a directory holds: sha256 over `config.json` and, for each
/// `*.safetensors` file by name, its name, length and first and last MiB; `bytes` sums the
/// weight files. Another fine-tune of the same architecture differs in every tensor, so the
/// sampled ends tell it apart while reading 2 MiB a file, not the model (this runs at every
/// load of every adapter over the base).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    pub revision: String,
    pub bytes: u64,
}

impl Fingerprint {
    pub fn of(dir: &Path) -> Result<Self, ArtifactError> {
        let mut hash = Sha256::new();
        hash.update(fs::read(dir.join("config.json"))?);
        let mut weights: Vec<PathBuf> = fs::read_dir(dir)?
            .map(|entry| entry.map(|entry| entry.path()))
            .collect::<Result<_, _>>()?;
        weights.retain(|path| path.extension().is_some_and(|ext| ext == "safetensors"));
        weights.sort();
        let mut bytes = 0;
        for path in &weights {
            let mut file = fs::File::open(path)?;
            let len = file.metadata()?.len();
            bytes += len;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            hash.update(name.unwrap_or_default().as_bytes());
            hash.update(len.to_le_bytes());
            let mut head = Vec::new();
            (&mut file).take(FINGERPRINT_SPAN).read_to_end(&mut head)?;
            hash.update(&head);
            if len > FINGERPRINT_SPAN {
                // The last MiB, or what the first one left of a file under two.
                file.seek(SeekFrom::Start(
                    FINGERPRINT_SPAN.max(len - FINGERPRINT_SPAN),
                ))?;
                let mut tail = Vec::new();
                file.read_to_end(&mut tail)?;
                hash.update(&tail);
            }
        }
        let revision = hash
            .finalize()
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect::<String>();
        Ok(Self {
            revision: format!("sha256:{revision}"),
            bytes,
        })
    }
}

/// A checkpoint with its base model found: what loading or exporting it needs.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
    /// The base model's Hugging Face directory (a GGUF base converted once).
    pub base_dir: PathBuf,
}

/// Finds the bases checkpoints name: base models by id in the models dir (GGUF files
/// converted under `<data dir>/cache`, as jobs and serving do), a job's starting model in
/// its directory, legacy directories as they are. The default has no models dir: it finds
/// only the bases a checkpoint locates itself (directories, a job's starting model).
#[derive(Debug, Clone, Default)]
pub struct BaseModels {
    /// The models dir and the GGUF conversions' cache root.
    models: Option<(PathBuf, PathBuf)>,
}

impl BaseModels {
    pub fn new(models_dir: &Path, data_root: &Path) -> Self {
        Self {
            models: Some((models_dir.to_path_buf(), data_root.join("cache"))),
        }
    }

    /// Reads the checkpoint in `dir` and finds its base.
    pub fn open(&self, dir: &Path) -> Result<Checkpoint, ArtifactError> {
        let meta = read_meta(dir)?;
        let base_dir = self.base_dir(dir, &meta.base_model)?;
        Ok(Checkpoint {
            dir: dir.to_path_buf(),
            meta,
            base_dir,
        })
    }

    /// The directory of the base `location` names, for the checkpoint in `checkpoint_dir`.
    pub fn base_dir(
        &self,
        checkpoint_dir: &Path,
        location: &BaseLocation,
    ) -> Result<PathBuf, ArtifactError> {
        match location {
            BaseLocation::Models { id, .. } => {
                let found = self.models.as_ref().and_then(|(models_dir, cache_root)| {
                    basemodels::resolve(models_dir, id).map(|base| (base, cache_root))
                });
                let (base, cache_root) = found.ok_or_else(|| {
                    ArtifactError::BaseModel(format!(
                        "the base model `{id}` this checkpoint was trained over is not on this server"
                    ))
                })?;
                let dir = base.prepare(cache_root)?;
                let now = Fingerprint::of(&dir)?;
                if let Some(then) = location.fingerprint().filter(|then| *then != now) {
                    return Err(ArtifactError::BaseModel(format!(
                        "the base model `{id}` is not the one this checkpoint was trained over \
                         ({} weight bytes, revision {}; now {} bytes, revision {}): \
                         put that version back under its id to load this checkpoint",
                        then.bytes, then.revision, now.bytes, now.revision
                    )));
                }
                Ok(dir)
            }
            BaseLocation::JobStartModel { id } => {
                let dir = checkpoint_dir
                    .parent()
                    .and_then(Path::parent)
                    .map(|work_dir| work_dir.join(START_MODEL_DIR))
                    .filter(|dir| dir.join("config.json").is_file())
                    .ok_or_else(|| {
                        ArtifactError::BaseModel(format!(
                            "the starting model `{id}` of this checkpoint's job is missing from its directory"
                        ))
                    })?;
                Ok(dir)
            }
            BaseLocation::Directory { path } => Ok(path.clone()),
        }
    }
}

#[cfg(test)]
#[path = "base_tests.rs"]
mod tests;
