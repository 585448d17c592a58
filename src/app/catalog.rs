//! `StoreCatalog`: what a model name means to the server: fine-tuned models and
//! checkpoints through the `models` table (LoRA ones as adapters over their base), then
//! base decoders from the models dir.

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use crate::artifacts::{BaseLocation, Fingerprint};
use crate::basemodels::{self, BaseModelKind};
use crate::blobs::Blobs;
use crate::config::ServeDtype;
use crate::infer::catalog::AdapterBase;
use crate::infer::{ModelCatalog, ServableModel, ServedKind};
use crate::store::Store;

/// Resolves servable model names: fine-tuned models and checkpoints through the `models`
/// table, then base decoders from the models dir (served as they are, for comparison).
pub(super) struct StoreCatalog {
    pub(super) store: Store,
    pub(super) blobs: Blobs,
    pub(super) models_dir: PathBuf,
}

impl StoreCatalog {
    /// A base model by id: a decoder served as it is (its GGUF converted on a blocking
    /// thread the first time), or an encoder served only as the shared base of its LoRA
    /// classifiers. Image backbones are not servable without a trained head.
    async fn base_model(&self, id: &str) -> Result<Option<ServableModel>, String> {
        let Some(base) = basemodels::resolve(&self.models_dir, id) else {
            return Ok(None);
        };
        let kind = match base.kind {
            BaseModelKind::Decoder => ServedKind::CausalLm,
            BaseModelKind::Encoder => ServedKind::SharedEncoder,
            BaseModelKind::Vision => return Ok(None),
        };
        let name = base.id.clone();
        let gguf = base.gguf.clone();
        let dir = base
            .prepare_in_data_dir(self.blobs.root())
            .await
            .map_err(|e| format!("preparing base model `{name}`: {e}"))?
            .map_err(|e| format!("preparing base model `{name}`: {e}"))?;
        Ok(Some(ServableModel {
            name,
            dir,
            kind,
            adapter_of: None,
            serve_dtype: None,
            gguf,
        }))
    }

    /// `<base decoder id>@<format>` (`@q8_0`, `@q4_0`, `@q4_1`, `@auto`, and `@gguf` for a
    /// base made from a GGUF file, as `--serve-dtype` spells them): that decoder served in
    /// that weight format whatever the server's default, as a model of its own (its own
    /// engine and memory), so one request can compare formats.
    async fn base_decoder_in_format(&self, name: &str) -> Result<Option<ServableModel>, String> {
        let Some((id, format)) = name.rsplit_once('@') else {
            return Ok(None);
        };
        let Some(dtype) = ServeDtype::parse(format) else {
            return Ok(None);
        };
        let base = self.base_of_kind(id, ServedKind::CausalLm).await?;
        // Only a base made from a GGUF file has blocks of its own to serve.
        let base = base.filter(|base| dtype != ServeDtype::Gguf || base.gguf.is_some());
        Ok(base.map(|base| ServableModel {
            name: name.to_string(),
            serve_dtype: Some(dtype),
            ..base
        }))
    }

    /// [`Self::base_model`] when it is of `kind`.
    async fn base_of_kind(
        &self,
        id: &str,
        kind: ServedKind,
    ) -> Result<Option<ServableModel>, String> {
        Ok(self.base_model(id).await?.filter(|base| base.kind == kind))
    }

    /// The base a LoRA checkpoint in `dir` of a `kind` model is served over, unmerged:
    /// `base` (the job's model) when it is a base model of the models dir of the matching
    /// kind and the checkpoint names that very model, in the version it holds now (id and
    /// fingerprint; a checkpoint of an earlier version names its directory). Anything else
    /// (full fine-tunes, QLoRA, a fine-tune of a fine-tune, a base since replaced) is served
    /// merged, as its own model.
    async fn adapter_base(
        &self,
        dir: &Path,
        kind: ServedKind,
        base: &str,
    ) -> Result<Option<AdapterBase>, String> {
        let (read, base_kind): (fn(&Path) -> _, _) = match kind {
            ServedKind::CausalLm => (decoder_adapter_base, ServedKind::CausalLm),
            ServedKind::Classifier => (classifier_adapter_base, ServedKind::SharedEncoder),
            _ => return Ok(None),
        };
        let checkpoint = dir.to_path_buf();
        let trained_over = tokio::task::spawn_blocking(move || read(&checkpoint))
            .await
            .map_err(|e| format!("reading checkpoint: {e}"))?
            .map_err(|e| format!("reading checkpoint: {e}"))?;
        let Some(trained_over) = trained_over else {
            return Ok(None);
        };
        let Some(base) = self.base_of_kind(base, base_kind).await? else {
            return Ok(None);
        };
        let (id, base_dir) = (base.name.clone(), base.dir.clone());
        let same = tokio::task::spawn_blocking(move || names_base(&trained_over, &id, &base_dir))
            .await
            .map_err(|e| format!("reading base model: {e}"))?;
        Ok(same.then_some(AdapterBase {
            name: base.name,
            dir: base.dir,
            slot: 0,
        }))
    }
}

/// Whether a checkpoint trained over `location` is over base model `base_id` as it is now
/// in `base_dir`.
fn names_base(location: &BaseLocation, base_id: &str, base_dir: &Path) -> bool {
    match location {
        BaseLocation::Models { id, .. } => {
            id == base_id && location.fingerprint() == Fingerprint::of(base_dir).ok()
        }
        BaseLocation::Directory { path } => match (path.canonicalize(), base_dir.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        },
        BaseLocation::JobStartModel { .. } => false,
    }
}

fn decoder_adapter_base(dir: &Path) -> Result<Option<BaseLocation>, crate::train::TrainError> {
    crate::tasks::sft::adapter::adapter_base(dir)
}

fn classifier_adapter_base(dir: &Path) -> Result<Option<BaseLocation>, crate::train::TrainError> {
    crate::tasks::sequence_classification::shared::adapter_base(dir)
}

impl ModelCatalog for StoreCatalog {
    fn resolve(&self, model: &str) -> BoxFuture<'_, Result<Option<ServableModel>, String>> {
        let name = model.to_string();
        Box::pin(async move {
            let row = self
                .store
                .get_model(&name)
                .await
                .map_err(|e| e.to_string())?;
            let Some(row) = row else {
                return match self.base_model(&name).await? {
                    Some(base) => Ok(Some(base)),
                    None => self.base_decoder_in_format(&name).await,
                };
            };
            // A kind this build does not serve (a row from a newer version) is no model.
            let Some(kind) = ServedKind::from_stored(&row.kind) else {
                return Ok(None);
            };
            let dir = self.blobs.path(&row.artifact_dir);
            let adapter_of = match (kind, row.base_model.as_deref()) {
                (kind, Some(base)) if row.registered_adapter => {
                    // Registered adapters were checked against the base when registered;
                    // one whose base left the models dir is no model.
                    let base_kind = match kind {
                        ServedKind::Classifier => ServedKind::SharedEncoder,
                        _ => ServedKind::CausalLm,
                    };
                    let Some(base) = self.base_of_kind(base, base_kind).await? else {
                        return Ok(None);
                    };
                    Some(AdapterBase {
                        name: base.name,
                        dir: base.dir,
                        slot: 0,
                    })
                }
                (kind, Some(base)) => self.adapter_base(&dir, kind, base).await?,
                _ => None,
            };
            Ok(Some(ServableModel {
                name: row.id,
                dir,
                kind,
                adapter_of,
                serve_dtype: None,
                gguf: None,
            }))
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::infer::ModelCatalog;
    use crate::store::ModelRow;

    async fn catalog() -> (tempfile::TempDir, StoreCatalog) {
        let tmp = tempfile::tempdir().unwrap();
        let catalog = StoreCatalog {
            store: Store::open_in_memory().await.unwrap(),
            blobs: Blobs::new(tmp.path().join("data")).unwrap(),
            models_dir: tmp.path().join("models"),
        };
        (tmp, catalog)
    }

    /// A models dir under `root` holding the tiny GGUF decoder `tiny-chat`.
    fn with_tiny_chat(root: &Path) -> PathBuf {
        let models = root.join("models");
        std::fs::create_dir_all(&models).unwrap();
        crate::zoo::gguf::tests::write_tiny_gguf(
            &models.join("tiny-chat.gguf"),
            crate::zoo::gguf::tests::LLAMA,
        );
        models
    }

    /// A `causal_lm` model row over `base`, its weights in `artifact_dir`.
    fn causal_row(
        id: &str,
        base: Option<&str>,
        artifact_dir: String,
        registered: bool,
    ) -> ModelRow {
        ModelRow {
            id: id.into(),
            created_at: 0,
            owned_by: "temper".into(),
            job_id: None,
            base_model: base.map(str::to_string),
            kind: ServedKind::CausalLm.as_str().into(),
            artifact_dir,
            step: None,
            is_checkpoint: false,
            registered_adapter: registered,
        }
    }

    #[tokio::test]
    async fn model_rows_map_to_their_engine_and_unknown_kinds_are_not_served() {
        let (_tmp, catalog) = catalog().await;
        for (id, kind) in [
            ("ft:a", ServedKind::CausalLm.as_str()),
            ("ft:b", ServedKind::Classifier.as_str()),
            ("ft:c", "x"),
            ("ft:d", ServedKind::TokenClassifier.as_str()),
        ] {
            let row = ModelRow {
                id: id.into(),
                created_at: 0,
                owned_by: "temper".into(),
                job_id: None,
                base_model: None,
                kind: kind.into(),
                artifact_dir: format!("models/{id}"),
                step: None,
                is_checkpoint: false,
                registered_adapter: false,
            };
            catalog.store.insert_model(&row).await.unwrap();
        }
        let kind = |m: Option<ServableModel>| m.map(|m| m.kind);
        assert_eq!(
            kind(catalog.resolve("ft:a").await.unwrap()),
            Some(ServedKind::CausalLm)
        );
        assert_eq!(
            kind(catalog.resolve("ft:b").await.unwrap()),
            Some(ServedKind::Classifier)
        );
        assert_eq!(catalog.resolve("ft:c").await.unwrap(), None);
        assert_eq!(
            kind(catalog.resolve("ft:d").await.unwrap()),
            Some(ServedKind::TokenClassifier)
        );
        assert_eq!(catalog.resolve("nobody/nothing").await.unwrap(), None);
    }

    #[tokio::test]
    async fn base_decoders_are_served_from_the_models_dir_and_encoders_as_shared_bases() {
        let (tmp, catalog) = catalog().await;
        let models = with_tiny_chat(tmp.path());
        crate::zoo::testing::write_tiny_bert(&models.join("org/bert"), 1).unwrap();

        let served = catalog.resolve("tiny-chat").await.unwrap().unwrap();
        assert_eq!(served.kind, ServedKind::CausalLm);
        assert_eq!(served.name, "tiny-chat");
        assert!(served.dir.starts_with(tmp.path().join("data/cache/gguf")));
        assert!(served.dir.join("model.safetensors").exists());
        let encoder = catalog.resolve("org/bert").await.unwrap().unwrap();
        assert_eq!(encoder.kind, ServedKind::SharedEncoder);
        assert_eq!(encoder.dir, models.join("org/bert"));
        assert_eq!(encoder.adapter_of, None);
    }

    #[tokio::test]
    async fn a_base_decoder_named_with_a_format_is_served_in_it_as_a_model_of_its_own() {
        let (tmp, catalog) = catalog().await;
        let models = with_tiny_chat(tmp.path());
        crate::zoo::testing::write_tiny_bert(&models.join("org/bert"), 1).unwrap();
        let decoder = crate::zoo::decoder::DecoderArch::Llama;
        crate::zoo::testing::write_tiny_decoder(&models.join("org/dec"), decoder, 1).unwrap();
        let plain = catalog.resolve("tiny-chat").await.unwrap().unwrap();
        assert_eq!(plain.serve_dtype, None);
        assert_eq!(plain.gguf, Some(models.join("tiny-chat.gguf")));
        for (name, dtype) in [
            ("tiny-chat@q8_0", ServeDtype::Q8_0),
            ("tiny-chat@Q4_0", ServeDtype::Q4_0),
            ("tiny-chat@q4_1", ServeDtype::Q4_1),
            ("tiny-chat@auto", ServeDtype::Auto),
            ("tiny-chat@gguf", ServeDtype::Gguf),
            ("org/dec@q8_0", ServeDtype::Q8_0),
        ] {
            let served = catalog.resolve(name).await.unwrap().unwrap();
            assert_eq!(served.name, name);
            assert_eq!(served.serve_dtype, Some(dtype));
            assert_eq!(served.kind, ServedKind::CausalLm);
        }
        let gguf_blocks = catalog.resolve("tiny-chat@gguf").await.unwrap().unwrap();
        assert_eq!(
            (&gguf_blocks.dir, &gguf_blocks.gguf),
            (&plain.dir, &plain.gguf)
        );
        // A decoder that is no GGUF file has no blocks of its own.
        for unknown in [
            "tiny-chat@q5_k",
            "tiny-chat@",
            "org/bert@q8_0",
            "nobody@q8_0",
            "org/dec@gguf",
        ] {
            assert_eq!(catalog.resolve(unknown).await.unwrap(), None, "{unknown}");
        }
    }

    #[tokio::test]
    async fn lora_classifiers_of_a_base_encoder_are_served_as_adapters_over_it() {
        use crate::tasks::sequence_classification::shared::tests::train_classifier;
        let (tmp, catalog) = catalog().await;
        let base = tmp.path().join("models/org/bert");
        crate::zoo::testing::write_tiny_bert(&base, 1).unwrap();
        let data = tmp.path().join("data");
        let lora = train_classifier(&base, &data.join("jobs/lora"), 4, 5e-3);
        let full = train_classifier(&base, &data.join("jobs/full"), 0, 1e-3);
        for (id, dir) in [("ft:lora", &lora), ("ft:full", &full)] {
            let row = ModelRow {
                kind: ServedKind::Classifier.as_str().into(),
                base_model: Some("org/bert".into()),
                ..causal_row(id, None, relative(&data, dir), false)
            };
            catalog.store.insert_model(&row).await.unwrap();
        }
        let served = catalog.resolve("ft:lora").await.unwrap().unwrap();
        assert_eq!(served.kind, ServedKind::Classifier);
        assert_eq!(
            served.adapter_of,
            Some(AdapterBase {
                name: "org/bert".into(),
                dir: base,
                slot: 0,
            })
        );
        let full = catalog.resolve("ft:full").await.unwrap().unwrap();
        assert_eq!((full.kind, full.adapter_of), (ServedKind::Classifier, None));

        // A registered classifier adapter is served over its base encoder too.
        let row = ModelRow {
            kind: ServedKind::Classifier.as_str().into(),
            base_model: Some("org/bert".into()),
            ..causal_row("acme/sentiment", None, "adapters/x".into(), true)
        };
        catalog.store.insert_model(&row).await.unwrap();
        let registered = catalog.resolve("acme/sentiment").await.unwrap().unwrap();
        let base = registered.adapter_of.unwrap();
        assert_eq!(
            (base.name.as_str(), registered.kind),
            ("org/bert", ServedKind::Classifier)
        );
    }

    fn relative(data: &Path, dir: &Path) -> String {
        dir.strip_prefix(data)
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }

    #[tokio::test]
    async fn lora_checkpoints_of_a_base_decoder_are_served_as_adapters_over_it() {
        use crate::artifacts::checkpoint::LmSpec;
        use crate::infer::adapter_handle_tests::{write_lm_checkpoint, write_lora_checkpoint};
        use crate::zoo::decoder::tests_adapter::{adapter_tensors, tuned_model};
        let (tmp, catalog) = catalog().await;
        with_tiny_chat(tmp.path());
        let base = catalog.resolve("tiny-chat").await.unwrap().unwrap().dir;
        let tensors = adapter_tensors(&tuned_model(&base, 0));
        let data = tmp.path().join("data");
        // The same weights somewhere else: a checkpoint trained over it is not an adapter
        // of `tiny-chat` as served.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&elsewhere).unwrap();
        for entry in std::fs::read_dir(&base).unwrap() {
            let path = entry.unwrap().path();
            std::fs::copy(&path, elsewhere.join(path.file_name().unwrap())).unwrap();
        }
        let lora = write_lora_checkpoint(&data.join("jobs/lora"), &base, &tensors);
        let moved = write_lora_checkpoint(&data.join("jobs/moved"), &elsewhere, &tensors);
        let spec = |lora: bool, quantize: Option<&str>| LmSpec {
            lora: lora.then(|| crate::domain::hyperparams::LoraSettings {
                rank: 4,
                alpha: 16.0,
                dropout: 0.0,
                target_modules: Vec::new(),
            }),
            quantize: quantize.map(str::to_string),
            export_dtype: None,
        };
        let qlora = write_lm_checkpoint(
            &data.join("jobs/qlora"),
            &base,
            &tensors,
            spec(true, Some("q8_0")),
        );
        let full = write_lm_checkpoint(&data.join("jobs/full"), &base, &tensors, spec(false, None));
        let rows = [
            ("ft:lora", &lora, Some("tiny-chat")),
            ("ft:moved", &moved, Some("tiny-chat")),
            ("ft:qlora", &qlora, Some("tiny-chat")),
            ("ft:full", &full, Some("tiny-chat")),
            ("ft:no-base", &lora, None),
            ("ft:other-base", &lora, Some("nobody/nothing")),
        ];
        for (id, dir, base_model) in rows {
            let artifact_dir = dir
                .strip_prefix(&data)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let row = causal_row(id, base_model, artifact_dir, false);
            catalog.store.insert_model(&row).await.unwrap();
        }
        let adapter_of = |m: Option<ServableModel>| m.unwrap().adapter_of;
        assert_eq!(
            adapter_of(catalog.resolve("ft:lora").await.unwrap()),
            Some(AdapterBase {
                name: "tiny-chat".into(),
                dir: base.clone(),
                slot: 0,
            })
        );
        for id in [
            "ft:moved",
            "ft:qlora",
            "ft:full",
            "ft:no-base",
            "ft:other-base",
        ] {
            assert_eq!(adapter_of(catalog.resolve(id).await.unwrap()), None, "{id}");
        }
    }

    #[tokio::test]
    async fn registered_adapters_are_served_over_their_base_while_it_exists() {
        let (tmp, catalog) = catalog().await;
        with_tiny_chat(tmp.path());
        for (id, base) in [("acme/bot", "tiny-chat"), ("acme/orphan", "gone/base")] {
            let artifact_dir = format!("adapters/{}", id.replace('/', "-"));
            let row = causal_row(id, Some(base), artifact_dir, true);
            catalog.store.insert_model(&row).await.unwrap();
        }
        let served = catalog.resolve("acme/bot").await.unwrap().unwrap();
        assert_eq!(served.dir, tmp.path().join("data/adapters/acme-bot"));
        let base = served.adapter_of.unwrap();
        assert_eq!(base.name, "tiny-chat");
        assert!(base.dir.join("config.json").exists());
        assert_eq!(catalog.resolve("acme/orphan").await.unwrap(), None);
    }
}
