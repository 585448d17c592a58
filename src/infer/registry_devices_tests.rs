//! A registry over several serving devices: each device has its own byte budget, a new
//! model goes to the device with the most budget free (the loader is told which), and
//! eviction only makes room on the device that overflowed.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::registry::{ModelLoader, ModelRegistry, Servable};
use super::test_support::MapCatalog;
use super::{InferError, ServableModel};

const MODEL_BYTES: usize = 100;

struct Placed {
    slot: usize,
}

impl Servable for Placed {
    fn parameter_bytes(&self) -> usize {
        MODEL_BYTES
    }
}

/// Records the device each model was loaded on.
#[derive(Default)]
struct SlotLoader {
    loads: Mutex<Vec<(String, usize)>>,
}

impl ModelLoader<Placed> for SlotLoader {
    fn load(&self, _: &ServableModel) -> Result<Placed, InferError> {
        Err(InferError::engine(
            "a multi-device registry loads with load_on",
        ))
    }

    fn load_on(&self, model: &ServableModel, slot: usize) -> Result<Placed, InferError> {
        self.loads
            .lock()
            .map_err(|_| InferError::engine("poisoned"))?
            .push((model.name.clone(), slot));
        Ok(Placed { slot })
    }
}

fn registry(budgets: Vec<usize>) -> (ModelRegistry<Placed>, Arc<SlotLoader>) {
    let names = ["a", "b", "c", "d", "e"];
    let entries: Vec<(&str, PathBuf)> = names
        .iter()
        .map(|n| (*n, PathBuf::from(format!("/ckpt/{n}"))))
        .collect();
    let loader = Arc::new(SlotLoader::default());
    let registry = ModelRegistry::with_budgets(
        MapCatalog::with(&entries),
        loader.clone(),
        budgets,
        Duration::ZERO,
    );
    (registry, loader)
}

#[tokio::test]
async fn models_spread_over_the_devices_and_evict_within_one() {
    let (registry, loader) = registry(vec![2 * MODEL_BYTES, 2 * MODEL_BYTES]);
    for name in ["a", "b", "c", "d"] {
        registry.get(name).await.expect("load");
    }
    // Equal room: the lower index first, then alternately.
    let slots: Vec<Option<usize>> = ["a", "b", "c", "d"]
        .iter()
        .map(|n| registry.device_slot(n))
        .collect();
    assert_eq!(slots, [Some(0), Some(1), Some(0), Some(1)]);
    assert_eq!(registry.used_bytes(), 4 * MODEL_BYTES, "both budgets full");
    // Both full: `e` goes to device 0 and evicts that device's least recently used model.
    registry.get("b").await.expect("still loaded");
    let e = registry.get("e").await.expect("load e");
    assert_eq!(e.slot, 0);
    assert!(!registry.is_loaded("a"), "a was device 0's oldest");
    for kept in ["b", "c", "d", "e"] {
        assert!(registry.is_loaded(kept), "{kept}");
    }
    let loads = loader.loads.lock().expect("loads").clone();
    let expected: Vec<(String, usize)> = [("a", 0), ("b", 1), ("c", 0), ("d", 1), ("e", 0)]
        .iter()
        .map(|(n, s)| (n.to_string(), *s))
        .collect();
    assert_eq!(loads, expected);
}

#[tokio::test]
async fn a_new_model_goes_to_the_device_with_the_most_room() {
    let (registry, _) = registry(vec![MODEL_BYTES, 3 * MODEL_BYTES]);
    for name in ["a", "b", "c"] {
        registry.get(name).await.expect("load");
    }
    // Device 1 has 300 bytes: a and b go there (300, then 200 free against 100), then c
    // finds 100 free on both and takes device 0.
    let slots: Vec<Option<usize>> = ["a", "b", "c"]
        .iter()
        .map(|n| registry.device_slot(n))
        .collect();
    assert_eq!(slots, [Some(1), Some(1), Some(0)]);
}
