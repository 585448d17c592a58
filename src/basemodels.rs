//! Base models by id: `<models-dir>/<org>/<name>/` Hugging Face directories first, then
//! GGUF files (`<models-dir>/<name>.gguf` is model `<name>`, `<models-dir>/<org>/<name>.gguf`
//! is `<org>/<name>`), then the hf-hub cache (`HF_HOME`). Never the network: a model that is
//! not on disk does not exist.
//!
//! A GGUF model is trained and served from a Hugging Face directory converted from it once
//! (`zoo::gguf::materialize_gguf`) into the data dir: [`BaseModel::local_dir`].

use std::path::{Component, Path, PathBuf};

/// What a base model can be trained as, from `config.json`'s `model_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BaseModelKind {
    /// BERT-family encoders: sequence classification.
    Encoder,
    /// Causal decoders: chat and completion SFT.
    Decoder,
    /// timm image backbones (`config.json` with `architecture`): image classification.
    Vision,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseModel {
    /// The id users pass as `model` (`org/name`).
    pub id: String,
    /// Directory holding `config.json`, the weights and `tokenizer.json`; for a GGUF model,
    /// the `.gguf` file itself (see [`BaseModel::local_dir`]).
    pub dir: PathBuf,
    pub kind: BaseModelKind,
    /// Set for models that are a single GGUF file.
    pub gguf: Option<PathBuf>,
}

impl BaseModel {
    /// Where the Hugging Face directory of this model is (or will be, for GGUF models,
    /// once converted under `cache_root`). The GGUF file's size and modification time are
    /// part of the name, so replacing the file converts it again.
    pub fn local_dir(&self, cache_root: &Path) -> PathBuf {
        let Some(gguf) = &self.gguf else {
            return self.dir.clone();
        };
        let (len, mtime) = std::fs::metadata(gguf)
            .map(|m| {
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                (m.len(), mtime)
            })
            .unwrap_or((0, 0));
        let name = self.id.replace('/', "--");
        cache_root
            .join("gguf")
            .join(format!("{name}-{len}-{mtime}"))
    }

    /// The Hugging Face directory to train or serve from, converting a GGUF file into
    /// [`BaseModel::local_dir`] the first time (blocking: seconds for a small model).
    /// The conversion is atomic, so concurrent callers and crashes are safe.
    pub fn prepare(&self, cache_root: &Path) -> Result<PathBuf, crate::zoo::ZooError> {
        let dir = self.local_dir(cache_root);
        if let Some(gguf) = &self.gguf {
            crate::zoo::gguf::materialize_gguf(gguf, &dir)?;
        }
        Ok(dir)
    }

    /// `message` with this model's paths on the server (its directory or GGUF file, and
    /// `prepared_dir`, where it was converted to) replaced by its id: such messages reach
    /// users, to whom an absolute server path says nothing they can act on.
    pub fn redact_paths(&self, message: &str, prepared_dir: Option<&Path>) -> String {
        let named = format!("`{}`", self.id);
        let mut paths: Vec<String> = [Some(self.dir.as_path()), self.gguf.as_deref(), prepared_dir]
            .into_iter()
            .flatten()
            .map(|path| path.display().to_string())
            .filter(|path| !path.is_empty())
            .collect();
        // Longest first, so a path is replaced whole before any of its prefixes.
        paths.sort_by_key(|path| std::cmp::Reverse(path.len()));
        paths
            .iter()
            .fold(message.to_string(), |text, path| text.replace(path, &named))
    }

    /// [`BaseModel::prepare`] on a blocking thread, under `<data_root>/cache`: how both the
    /// jobs and the serving catalog get a base model's directory. The outer error is a
    /// conversion that panicked.
    pub async fn prepare_in_data_dir(
        &self,
        data_root: &Path,
    ) -> Result<Result<PathBuf, crate::zoo::ZooError>, tokio::task::JoinError> {
        let cache_root = data_root.join("cache");
        let model = self.clone();
        tokio::task::spawn_blocking(move || model.prepare(&cache_root)).await
    }
}

/// The `model_type`s our own differentiable models implement (`zoo::config`,
/// `zoo::decoder::config`); any other directory is not offered as a base model.
const ENCODER_TYPES: [&str; 2] = ["bert", "distilbert"];
const DECODER_TYPES: [&str; 2] = ["llama", "qwen2"];

/// Finds a base model by id, or `None` when it is neither in `models_dir` nor in the hf-hub
/// cache, or its directory lacks a file training needs.
pub fn resolve(models_dir: &Path, id: &str) -> Option<BaseModel> {
    resolve_with_cache(models_dir, &hf_hub::Cache::from_env(), id)
}

/// `resolve` against an explicit hf-hub cache (tests use a temp dir instead of `HF_HOME`).
pub fn resolve_with_cache(models_dir: &Path, cache: &hf_hub::Cache, id: &str) -> Option<BaseModel> {
    let relative = safe_relative(id)?;
    let local = models_dir.join(relative);
    if let Some(kind) = inspect(&local) {
        return Some(BaseModel {
            id: id.to_string(),
            dir: local,
            kind,
            gguf: None,
        });
    }
    let gguf = models_dir.join(format!("{id}.gguf"));
    if gguf.is_file() {
        return Some(gguf_model(id.to_string(), gguf));
    }
    from_hf_cache(cache, id)
}

/// Every complete model directory two levels under `models_dir` (`org/name`) and every
/// GGUF file at the top level or one level down, sorted by id.
pub fn list(models_dir: &Path) -> Vec<BaseModel> {
    let mut found: Vec<BaseModel> = gguf_files(models_dir)
        .into_iter()
        .map(|(name, path)| gguf_model(name, path))
        .collect();
    for org in subdirs(models_dir) {
        if let Some(org_name) = file_name(&org) {
            found.extend(
                gguf_files(&org)
                    .into_iter()
                    .map(|(name, path)| gguf_model(format!("{org_name}/{name}"), path)),
            );
        }
        for name in subdirs(&org) {
            let (Some(org_name), Some(model_name)) = (file_name(&org), file_name(&name)) else {
                continue;
            };
            if let Some(kind) = inspect(&name) {
                found.push(BaseModel {
                    id: format!("{org_name}/{model_name}"),
                    dir: name,
                    kind,
                    gguf: None,
                });
            }
        }
    }
    found.sort_by(|a, b| a.id.cmp(&b.id));
    found
}

/// How many ids a "model not found" message lists before it says how many more there are.
const LISTED_IDS: usize = 8;

/// The id in `ids` a user most likely meant by `wanted`: the same name under another org (or
/// none: `SmolLM2-135M-Instruct` for `HuggingFaceTB/SmolLM2-135M-Instruct` and back), else the
/// most similar id (Jaro-Winkler, case-insensitive) when it is similar enough to be a typo.
pub fn closest_id<'a>(wanted: &str, ids: &'a [String]) -> Option<&'a str> {
    let wanted = wanted.trim().to_lowercase();
    let name_of = |id: &str| id.rsplit('/').next().unwrap_or(id).to_string();
    let wanted_name = name_of(&wanted);
    if let Some(same_name) = ids
        .iter()
        .find(|id| name_of(&id.to_lowercase()) == wanted_name)
    {
        return Some(same_name);
    }
    ids.iter()
        .map(|id| (strsim::jaro_winkler(&wanted, &id.to_lowercase()), id))
        .filter(|(similarity, _)| *similarity >= 0.85)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, id)| id.as_str())
}

/// The sentence a "model not found" error ends with: the closest id, then the base models
/// that do exist (ids only: never a server path), or how to add one when there are none.
/// `kind` keeps the list to the models the caller can use (decoders for chat).
pub fn not_found_hint(models_dir: &Path, wanted: &str, kind: Option<BaseModelKind>) -> String {
    let ids: Vec<String> = list(models_dir)
        .into_iter()
        .filter(|m| kind.is_none_or(|k| m.kind == k))
        .map(|m| m.id)
        .collect();
    if ids.is_empty() {
        return " No base models are installed: put Hugging Face directories (`<org>/<name>/`) or GGUF files in the models directory (`--models-dir`).".to_string();
    }
    let mut hint = String::new();
    if let Some(closest) = closest_id(wanted, &ids) {
        hint.push_str(&format!(" Did you mean `{closest}`?"));
    }
    let listed: Vec<String> = ids
        .iter()
        .take(LISTED_IDS)
        .map(|id| format!("`{id}`"))
        .collect();
    hint.push_str(&format!(" Base models available: {}", listed.join(", ")));
    if ids.len() > LISTED_IDS {
        hint.push_str(&format!(
            " and {} more (GET /v1/models)",
            ids.len() - LISTED_IDS
        ));
    }
    hint.push('.');
    hint
}

/// `org/name` as a relative path, refusing anything that could leave the models dir.
fn safe_relative(id: &str) -> Option<PathBuf> {
    if id.is_empty() || id.contains('\\') || id.contains(':') {
        return None;
    }
    let path = PathBuf::from(id);
    let all_normal = path.components().all(|c| matches!(c, Component::Normal(_)));
    all_normal.then_some(path)
}

/// GGUF files hold decoders (llama.cpp's format).
fn gguf_model(id: String, path: PathBuf) -> BaseModel {
    BaseModel {
        id,
        dir: path.clone(),
        kind: BaseModelKind::Decoder,
        gguf: Some(path),
    }
}

/// `(stem, path)` of the `.gguf` files directly in `dir`.
fn gguf_files(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "gguf"))
        .filter_map(|p| Some((p.file_stem()?.to_str()?.to_string(), p)))
        .collect()
}

fn from_hf_cache(cache: &hf_hub::Cache, id: &str) -> Option<BaseModel> {
    let repo = cache.model(id.to_string());
    let config = repo.get("config.json")?;
    let dir = config.parent()?.to_path_buf();
    let kind = inspect(&dir)?;
    Some(BaseModel {
        id: id.to_string(),
        dir,
        kind,
        gguf: None,
    })
}

/// The model kind when `dir` holds everything training needs.
fn inspect(dir: &Path) -> Option<BaseModelKind> {
    let has_weights = dir.join("model.safetensors").is_file()
        || dir.join("model.safetensors.index.json").is_file();
    if !has_weights {
        return None;
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    // timm's layout has no tokenizer: its config names an `architecture` temper builds.
    if let Some(architecture) = config.get("architecture").and_then(|v| v.as_str()) {
        return crate::zoo::vision::Family::of(architecture)
            .is_ok()
            .then_some(BaseModelKind::Vision);
    }
    if !dir.join("tokenizer.json").is_file() {
        return None;
    }
    kind_of(&config)
}

/// transformers 4.x and 5.x both write `model_type` at the top level; 5.x may nest the text
/// model's config under `text_config`.
fn kind_of(config: &serde_json::Value) -> Option<BaseModelKind> {
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .or_else(|| {
            config
                .pointer("/text_config/model_type")
                .and_then(|v| v.as_str())
        })?;
    if ENCODER_TYPES.contains(&model_type) {
        Some(BaseModelKind::Encoder)
    } else if DECODER_TYPES.contains(&model_type) {
        Some(BaseModelKind::Decoder)
    } else {
        None
    }
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect()
}

fn file_name(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_model(dir: &Path, model_type: &str, weights: &str) {
        std::fs::create_dir_all(dir).expect("mkdir");
        let config = serde_json::json!({ "model_type": model_type });
        std::fs::write(dir.join("config.json"), config.to_string()).expect("config");
        std::fs::write(dir.join(weights), b"{}").expect("weights");
        std::fs::write(dir.join("tokenizer.json"), b"{}").expect("tokenizer");
    }

    #[test]
    fn local_directories_resolve_with_their_kind() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_model(&tmp.path().join("acme/enc"), "bert", "model.safetensors");
        write_model(
            &tmp.path().join("acme/dec"),
            "qwen2",
            "model.safetensors.index.json",
        );
        let enc = resolve(tmp.path(), "acme/enc").expect("encoder found");
        assert_eq!(enc.kind, BaseModelKind::Encoder);
        assert_eq!(enc.dir, tmp.path().join("acme/enc"));
        let dec = resolve(tmp.path(), "acme/dec").expect("decoder found");
        assert_eq!(dec.kind, BaseModelKind::Decoder);
        let ids: Vec<String> = list(tmp.path()).into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["acme/dec", "acme/enc"]);
    }

    #[test]
    fn incomplete_or_unknown_models_do_not_resolve() {
        let tmp = tempfile::tempdir().expect("tmp");
        write_model(
            &tmp.path().join("acme/odd"),
            "wav2vec2",
            "model.safetensors",
        );
        write_model(
            &tmp.path().join("acme/partial"),
            "bert",
            "model.safetensors",
        );
        std::fs::remove_file(tmp.path().join("acme/partial/tokenizer.json")).expect("rm");
        assert_eq!(resolve(tmp.path(), "acme/odd"), None);
        assert_eq!(resolve(tmp.path(), "acme/partial"), None);
        assert!(list(tmp.path()).is_empty());
    }

    #[test]
    fn ids_cannot_escape_the_models_dir() {
        for id in [
            "../etc",
            "/abs/path",
            "acme/../../x",
            "",
            "ft:acme/enc:temper::x",
        ] {
            assert_eq!(safe_relative(id), None, "{id}");
        }
        assert_eq!(safe_relative("acme/enc"), Some(PathBuf::from("acme/enc")));
    }

    #[test]
    fn hf_hub_cache_snapshots_resolve() {
        let tmp = tempfile::tempdir().expect("tmp");
        let repo = tmp.path().join("hub/models--acme--cached");
        std::fs::create_dir_all(repo.join("refs")).expect("refs");
        std::fs::write(repo.join("refs/main"), "abc123").expect("ref");
        let snapshot = repo.join("snapshots/abc123");
        write_model(&snapshot, "distilbert", "model.safetensors");
        let cache = hf_hub::Cache::new(tmp.path().join("hub"));
        let empty_models_dir = tmp.path().join("models");
        let found =
            resolve_with_cache(&empty_models_dir, &cache, "acme/cached").expect("from the cache");
        assert_eq!(found.dir, snapshot);
        assert_eq!(found.kind, BaseModelKind::Encoder);
        assert_eq!(
            resolve_with_cache(&empty_models_dir, &cache, "acme/missing"),
            None
        );
    }

    #[test]
    fn gguf_files_resolve_as_decoders_at_top_level_and_under_an_org() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::write(tmp.path().join("Tiny-1M.gguf"), b"GGUF").expect("gguf");
        std::fs::create_dir_all(tmp.path().join("acme")).expect("org");
        std::fs::write(tmp.path().join("acme/Chat-2M.gguf"), b"GGUF").expect("gguf");
        std::fs::write(tmp.path().join("acme/notes.txt"), b"x").expect("txt");
        let tiny = resolve(tmp.path(), "Tiny-1M").expect("top-level gguf");
        assert_eq!(tiny.kind, BaseModelKind::Decoder);
        assert_eq!(
            tiny.gguf.as_deref(),
            Some(tmp.path().join("Tiny-1M.gguf").as_path())
        );
        let chat = resolve(tmp.path(), "acme/Chat-2M").expect("org gguf");
        assert_eq!(chat.dir, tmp.path().join("acme/Chat-2M.gguf"));
        assert_eq!(resolve(tmp.path(), "acme/notes"), None);
        let ids: Vec<String> = list(tmp.path()).into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["Tiny-1M", "acme/Chat-2M"]);

        let cache = tmp.path().join("cache");
        let local = tiny.local_dir(&cache);
        let name = local.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(local.starts_with(cache.join("gguf")), "{}", local.display());
        assert!(
            name.starts_with("Tiny-1M-4-"),
            "{name}: id, file size, mtime"
        );
        assert_eq!(
            chat.local_dir(&cache).parent(),
            Some(cache.join("gguf").as_path())
        );
        let dir_model = resolve(tmp.path(), "acme/Chat-2M").map(|m| BaseModel { gguf: None, ..m });
        assert_eq!(
            dir_model.map(|m| m.local_dir(&cache)),
            Some(tmp.path().join("acme/Chat-2M.gguf"))
        );
    }

    #[test]
    fn not_found_names_the_closest_id_and_the_models_that_exist() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("HuggingFaceTB")).expect("org");
        std::fs::write(
            tmp.path().join("HuggingFaceTB/SmolLM2-135M-Instruct.gguf"),
            b"GGUF",
        )
        .expect("gguf");
        write_model(
            &tmp.path().join("sentence-transformers/all-MiniLM-L6-v2"),
            "bert",
            "model.safetensors",
        );
        let ids: Vec<String> = list(tmp.path()).into_iter().map(|m| m.id).collect();
        assert_eq!(
            closest_id("SmolLM2-135M-Instruct", &ids),
            Some("HuggingFaceTB/SmolLM2-135M-Instruct")
        );
        assert_eq!(
            closest_id("sentence-transformers/all-MiniLM-L6-v3", &ids),
            Some("sentence-transformers/all-MiniLM-L6-v2")
        );
        assert_eq!(closest_id("gpt-4o-mini", &ids), None);

        let hint = not_found_hint(tmp.path(), "SmolLM2-135M-Instruct", None);
        assert_eq!(
            hint,
            " Did you mean `HuggingFaceTB/SmolLM2-135M-Instruct`? Base models available: `HuggingFaceTB/SmolLM2-135M-Instruct`, `sentence-transformers/all-MiniLM-L6-v2`."
        );
        let decoders = not_found_hint(tmp.path(), "gpt-4o-mini", Some(BaseModelKind::Decoder));
        assert_eq!(
            decoders,
            " Base models available: `HuggingFaceTB/SmolLM2-135M-Instruct`."
        );
        let root = tmp.path().to_string_lossy().to_string();
        assert!(!hint.contains(&root), "{hint}");
        let empty = tempfile::tempdir().expect("tmp");
        let none = not_found_hint(empty.path(), "x/y", None);
        assert!(none.contains("No base models are installed"), "{none}");
        assert!(!none.contains(&empty.path().to_string_lossy().to_string()));
    }

    #[test]
    fn server_paths_in_messages_become_the_model_id() {
        let tmp = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(tmp.path().join("acme")).expect("org");
        std::fs::write(tmp.path().join("acme/Chat-2M.gguf"), b"GGUF").expect("gguf");
        let model = resolve(tmp.path(), "acme/Chat-2M").expect("gguf model");
        let converted = model.local_dir(&tmp.path().join("cache"));
        let message = format!(
            "reading {}/config.json: missing; converting {}: bad magic",
            converted.display(),
            tmp.path().join("acme/Chat-2M.gguf").display()
        );
        assert_eq!(
            model.redact_paths(&message, Some(&converted)),
            "reading `acme/Chat-2M`/config.json: missing; converting `acme/Chat-2M`: bad magic"
        );
    }

    #[test]
    fn nested_text_config_model_type_is_read() {
        let config = serde_json::json!({ "text_config": { "model_type": "llama" } });
        assert_eq!(kind_of(&config), Some(BaseModelKind::Decoder));
    }
}
