//! Registry tests with a fake catalog and loader: no weights, no database.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use super::registry::{ModelLoader, ModelRegistry, RegistryState, Servable};
use super::test_support::MapCatalog;
use super::{InferError, ServableModel};

const MODEL_BYTES: usize = 100;

#[derive(Debug)]
struct FakeModel {
    name: String,
}

impl Servable for FakeModel {
    fn parameter_bytes(&self) -> usize {
        MODEL_BYTES
    }
}

/// Counts loads per name; can hold loads until the test releases them, and can fail.
#[derive(Default)]
struct FakeLoader {
    loads: Mutex<HashMap<String, usize>>,
    /// When set, each load waits for one message before finishing.
    gate: Mutex<Option<mpsc::Receiver<()>>>,
    fail: AtomicBool,
}

impl FakeLoader {
    fn loads(&self, name: &str) -> usize {
        self.loads
            .lock()
            .expect("loads lock")
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    fn gated(self: &Arc<Self>) -> mpsc::Sender<()> {
        let (sender, receiver) = mpsc::channel();
        *self.gate.lock().expect("gate lock") = Some(receiver);
        sender
    }
}

impl ModelLoader<FakeModel> for FakeLoader {
    fn load(&self, model: &ServableModel) -> Result<FakeModel, InferError> {
        *self
            .loads
            .lock()
            .expect("loads lock")
            .entry(model.name.clone())
            .or_default() += 1;
        if let Some(gate) = self.gate.lock().expect("gate lock").as_ref() {
            gate.recv().expect("test keeps the gate open");
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(InferError::engine("corrupt checkpoint"));
        }
        Ok(FakeModel {
            name: model.name.clone(),
        })
    }
}

fn registry(
    capacity_models: usize,
    failure_ttl: Duration,
) -> (ModelRegistry<FakeModel>, Arc<FakeLoader>, Arc<MapCatalog>) {
    let catalog = MapCatalog::with(&[
        ("a", PathBuf::from("/ckpt/a")),
        ("b", PathBuf::from("/ckpt/b")),
        ("c", PathBuf::from("/ckpt/c")),
    ]);
    let loader = Arc::new(FakeLoader::default());
    let registry = ModelRegistry::new(
        catalog.clone(),
        loader.clone(),
        capacity_models * MODEL_BYTES,
        failure_ttl,
    );
    (registry, loader, catalog)
}

#[tokio::test]
async fn concurrent_requests_for_a_cold_model_share_one_load() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    let gate = loader.gated();
    let mut first = Box::pin(registry.get("a"));
    let mut second = Box::pin(registry.get("a"));
    // Poll both once: the first starts the load, the second finds it `Loading`.
    assert!(matches!(futures::poll!(&mut first), Poll::Pending));
    assert!(matches!(futures::poll!(&mut second), Poll::Pending));
    gate.send(()).expect("loader waits");
    let (first, second) = tokio::join!(first, second);
    let (first, second) = (first.expect("first"), second.expect("second"));
    assert!(Arc::ptr_eq(&first, &second));
    assert_eq!(first.name, "a");
    assert_eq!(loader.loads("a"), 1);
    assert_eq!(registry.used_bytes(), MODEL_BYTES);
}

#[tokio::test]
async fn a_load_completes_and_is_cached_after_its_requests_are_cancelled() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    let gate = loader.gated();
    let mut request = Box::pin(registry.get("a"));
    assert!(matches!(futures::poll!(&mut request), Poll::Pending));
    drop(request);
    gate.send(()).expect("loader waits");
    // The next request either waits on the same load or finds it ready: one load.
    let model = registry.get("a").await.expect("model");
    assert_eq!(model.name, "a");
    assert_eq!(loader.loads("a"), 1);
    assert!(registry.is_loaded("a"));
}

#[tokio::test]
async fn least_recently_used_model_is_evicted_when_bytes_run_out() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    for name in ["a", "b", "c"] {
        registry.get(name).await.expect("load");
    }
    assert!(!registry.is_loaded("a"));
    assert!(registry.is_loaded("b") && registry.is_loaded("c"));
    assert_eq!(registry.used_bytes(), 2 * MODEL_BYTES);
    registry.get("a").await.expect("reload");
    assert_eq!(
        (loader.loads("a"), loader.loads("b"), loader.loads("c")),
        (2, 1, 1)
    );
    // Reloading `a` evicted `b`, the least recently used of b and c.
    assert!(!registry.is_loaded("b"));
    // What `/metrics` lists: the ready models, by name, with their bytes.
    let listed = vec![
        ("a".to_string(), MODEL_BYTES),
        ("c".to_string(), MODEL_BYTES),
    ];
    assert_eq!(registry.loaded(), listed);
}

#[tokio::test]
async fn using_a_model_protects_it_from_eviction() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    registry.get("a").await.expect("a");
    registry.get("b").await.expect("b");
    registry.get("a").await.expect("a again, from cache");
    registry.get("c").await.expect("c");
    assert!(registry.is_loaded("a") && registry.is_loaded("c"));
    assert!(!registry.is_loaded("b"));
    assert_eq!(loader.loads("a"), 1);
}

#[tokio::test]
async fn a_failed_load_is_reported_then_retried_after_the_ttl() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    loader.fail.store(true, Ordering::SeqCst);
    let error = registry.get("a").await.expect_err("load fails");
    assert_eq!(error, InferError::engine("corrupt checkpoint"));
    assert!(!registry.is_loaded("a"));
    loader.fail.store(false, Ordering::SeqCst);
    registry.get("a").await.expect("retried with ttl 0");
    assert_eq!(loader.loads("a"), 2);
}

#[tokio::test]
async fn a_fresh_failure_is_answered_without_reloading() {
    let (registry, loader, _) = registry(2, Duration::from_secs(3600));
    loader.fail.store(true, Ordering::SeqCst);
    registry.get("a").await.expect_err("load fails");
    loader.fail.store(false, Ordering::SeqCst);
    let error = registry.get("a").await.expect_err("failure still fresh");
    assert_eq!(error, InferError::engine("corrupt checkpoint"));
    assert_eq!(loader.loads("a"), 1);
}

#[tokio::test]
async fn unknown_model_is_not_found_and_not_remembered() {
    let (registry, loader, catalog) = registry(2, Duration::from_secs(3600));
    for _ in 0..2 {
        let error = registry.get("nope").await.expect_err("unknown");
        assert_eq!(error, InferError::ModelNotFound("nope".into()));
    }
    // Not cached as a failure: each request asks the catalog again.
    assert_eq!(catalog.resolves(), 2);
    assert_eq!(loader.loads("nope"), 0);
}

#[tokio::test]
async fn catalog_errors_are_engine_errors() {
    let (registry, _, _) = registry(2, Duration::ZERO);
    let error = registry
        .get("catalog-down")
        .await
        .expect_err("lookup fails");
    assert_eq!(
        error,
        InferError::engine("model catalog: database is locked")
    );
}

#[tokio::test]
async fn evict_forgets_a_model_and_frees_its_bytes() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    registry.get("a").await.expect("a");
    registry.evict("a");
    assert!(!registry.is_loaded("a"));
    assert_eq!(registry.used_bytes(), 0);
    registry.get("a").await.expect("reload");
    assert_eq!(loader.loads("a"), 2);
}

#[tokio::test]
async fn evicting_a_loading_model_answers_its_waiters_without_caching() {
    let (registry, loader, _) = registry(2, Duration::ZERO);
    let gate = loader.gated();
    let mut request = Box::pin(registry.get("a"));
    assert!(matches!(futures::poll!(&mut request), Poll::Pending));
    registry.evict("a");
    gate.send(()).expect("loader waits");
    assert_eq!(request.await.expect("answered").name, "a");
    assert!(!registry.is_loaded("a"));
    assert_eq!(registry.used_bytes(), 0);
}

#[tokio::test]
async fn closed_registry_refuses_requests_and_drops_models() {
    let (registry, _, _) = registry(2, Duration::ZERO);
    registry.get("a").await.expect("a");
    registry.close();
    assert_eq!(registry.used_bytes(), 0);
    let error = registry.get("a").await.expect_err("closed");
    assert_eq!(error, InferError::engine("inference is shutting down"));
}

#[test]
fn a_model_larger_than_the_budget_stays_loaded_alone() {
    let mut state = RegistryState::<FakeModel>::new(MODEL_BYTES / 2, Duration::ZERO);
    let now = Instant::now();
    for name in ["a", "b"] {
        let super::registry::Lookup::Start { generation, .. } = state.lookup(name, now) else {
            panic!("cold model must start a load");
        };
        let model = Arc::new(FakeModel { name: name.into() });
        state.finish_load(name, generation, &Ok(model), now);
    }
    assert!(!state.is_ready("a"));
    assert!(state.is_ready("b"));
    assert_eq!(state.used_bytes(), MODEL_BYTES);
}
