//! `ModelRegistry`: model name → loaded model, with single-flight loads, a byte budget per
//! serving device and least-recently-used eviction within each device.
//!
//! The async shell ([`ModelRegistry`]) only moves work around: it asks the pure
//! [`RegistryState`] what to do, spawns loads and waits on them. Every decision (what is
//! cached, what to evict, whether a failure is still fresh) lives in `RegistryState`, so
//! the tests call it directly as well as through the shell.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::catalog::{ModelCatalog, ServableModel};
use super::InferError;

/// A loaded model the registry can account for.
pub trait Servable: Send + Sync + 'static {
    /// Memory the model holds, counted against the registry's budget.
    fn parameter_bytes(&self) -> usize;
}

/// Turns a catalog entry into a loaded model. Called on a blocking thread (loads read
/// files and build tensors for seconds), never on the async runtime.
pub trait ModelLoader<M>: Send + Sync + 'static {
    fn load(&self, model: &ServableModel) -> Result<M, InferError>;

    /// Loads onto serving device `slot` (the index of its budget in the registry); a
    /// loader that serves on one device loads as [`Self::load`] does.
    fn load_on(&self, model: &ServableModel, slot: usize) -> Result<M, InferError> {
        let _one_device = slot;
        self.load(model)
    }
}

/// The outcome of one load, shared by every request that waited on it.
type LoadOutcome<M> = Result<Arc<M>, Arc<InferError>>;

enum EntryState<M> {
    /// A load is running; its task publishes the outcome on this channel (the task holds
    /// the only sender and drops it when done, so waiters never hang on a dead load).
    Loading {
        generation: u64,
        done: watch::Receiver<Option<LoadOutcome<M>>>,
    },
    Ready(Arc<M>),
    /// The last load failed; requests get this error until `failure_ttl` has passed,
    /// so a broken checkpoint is not re-read by every request in a burst.
    Failed {
        error: Arc<InferError>,
        at: Instant,
    },
}

struct Entry<M> {
    state: EntryState<M>,
    /// The serving device (budget index) the model is loaded on, or loading onto.
    slot: usize,
    /// `parameter_bytes` once `Ready`, 0 otherwise.
    bytes: usize,
    /// Logical clock of the last use; the smallest is evicted first.
    last_used: u64,
}

/// What a request should do next, decided under the lock.
pub(crate) enum Lookup<M> {
    Ready(Arc<M>),
    Failed(Arc<InferError>),
    /// Wait for a load that is already running.
    Wait(watch::Receiver<Option<LoadOutcome<M>>>),
    /// This request must start the load, onto serving device `slot`: it got the only
    /// sender.
    Start {
        generation: u64,
        slot: usize,
        done: watch::Sender<Option<LoadOutcome<M>>>,
    },
    Closed,
}

/// The registry's bookkeeping, free of IO and async.
pub(crate) struct RegistryState<M> {
    entries: HashMap<String, Entry<M>>,
    /// One budget per serving device.
    capacity_bytes: Vec<usize>,
    failure_ttl: Duration,
    clock: u64,
    next_generation: u64,
    /// Set at shutdown: nothing new is loaded or cached afterwards.
    closed: bool,
}

impl<M: Servable> RegistryState<M> {
    #[cfg(test)]
    pub(crate) fn new(capacity_bytes: usize, failure_ttl: Duration) -> Self {
        Self::with_budgets(vec![capacity_bytes], failure_ttl)
    }

    /// One serving device per budget (at least one).
    pub(crate) fn with_budgets(mut capacity_bytes: Vec<usize>, failure_ttl: Duration) -> Self {
        if capacity_bytes.is_empty() {
            capacity_bytes.push(0);
        }
        Self {
            entries: HashMap::new(),
            capacity_bytes,
            failure_ttl,
            clock: 0,
            next_generation: 0,
            closed: false,
        }
    }

    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Finds `name`, or registers a new load for it (single flight: only the first
    /// request for a cold model gets `Start`, later ones `Wait` on the same load).
    pub(crate) fn lookup(&mut self, name: &str, now: Instant) -> Lookup<M> {
        if self.closed {
            return Lookup::Closed;
        }
        let tick = self.tick();
        if let Some(entry) = self.entries.get_mut(name) {
            match &entry.state {
                EntryState::Ready(model) => {
                    entry.last_used = tick;
                    return Lookup::Ready(model.clone());
                }
                EntryState::Failed { error, at } if now.duration_since(*at) < self.failure_ttl => {
                    return Lookup::Failed(error.clone());
                }
                // A load whose task vanished without an answer (runtime shutting down)
                // is treated as cold rather than waited on forever.
                EntryState::Loading { done, .. }
                    if done.borrow().is_some() || done.has_changed().is_ok() =>
                {
                    return Lookup::Wait(done.clone());
                }
                _ => {}
            }
        }
        self.next_generation += 1;
        let generation = self.next_generation;
        let slot = self.place();
        let (sender, receiver) = watch::channel(None);
        let state = EntryState::Loading {
            generation,
            done: receiver,
        };
        self.entries.insert(
            name.to_string(),
            Entry {
                state,
                slot,
                bytes: 0,
                last_used: tick,
            },
        );
        Lookup::Start {
            generation,
            slot,
            done: sender,
        }
    }

    /// The serving device a new model goes to: the one with the most of its budget free;
    /// on a tie the one with fewer loads in flight (their size is not known yet), then the
    /// lower index.
    fn place(&self) -> usize {
        let free = |slot: usize| -> (i128, usize) {
            let on_slot = self.entries.values().filter(|e| e.slot == slot);
            let loading = on_slot
                .clone()
                .filter(|e| matches!(e.state, EntryState::Loading { .. }))
                .count();
            let used: usize = on_slot.map(|e| e.bytes).sum();
            (self.capacity_bytes[slot] as i128 - used as i128, loading)
        };
        (0..self.capacity_bytes.len())
            .max_by(|&a, &b| {
                let ((free_a, loading_a), (free_b, loading_b)) = (free(a), free(b));
                free_a
                    .cmp(&free_b)
                    .then(loading_b.cmp(&loading_a))
                    .then(b.cmp(&a))
            })
            .unwrap_or(0)
    }

    /// Records the outcome of load `generation` and returns the models that no longer
    /// fit the budget (the caller drops them off the runtime: dropping an engine joins
    /// its thread). A load whose entry was evicted meanwhile is answered but not cached.
    pub(crate) fn finish_load(
        &mut self,
        name: &str,
        generation: u64,
        outcome: &LoadOutcome<M>,
        now: Instant,
    ) -> Vec<Arc<M>> {
        let current = matches!(
            self.entries.get(name).map(|e| &e.state),
            Some(EntryState::Loading { generation: g, .. }) if *g == generation
        );
        if !current || self.closed {
            return match outcome {
                Ok(model) => vec![model.clone()],
                Err(_) => Vec::new(),
            };
        }
        match outcome {
            Ok(model) => {
                let tick = self.tick();
                let slot = self.entries.get(name).map_or(0, |e| e.slot);
                self.entries.insert(
                    name.to_string(),
                    Entry {
                        state: EntryState::Ready(model.clone()),
                        slot,
                        bytes: model.parameter_bytes(),
                        last_used: tick,
                    },
                );
                self.evict_to_fit(name, slot)
            }
            // An unknown name is not remembered: the model may be created a moment later.
            Err(error) if matches!(**error, InferError::ModelNotFound(_)) => {
                self.entries.remove(name);
                Vec::new()
            }
            Err(error) => {
                let state = EntryState::Failed {
                    error: error.clone(),
                    at: now,
                };
                if let Some(entry) = self.entries.get_mut(name) {
                    entry.state = state;
                }
                Vec::new()
            }
        }
    }

    pub(crate) fn used_bytes(&self) -> usize {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// The ready models and their bytes, by name.
    pub(crate) fn loaded(&self) -> Vec<(String, usize)> {
        let mut loaded: Vec<(String, usize)> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(e.state, EntryState::Ready(_)))
            .map(|(name, e)| (name.clone(), e.bytes))
            .collect();
        loaded.sort();
        loaded
    }

    /// Bytes of the models loaded on serving device `slot`.
    pub(crate) fn used_bytes_on(&self, slot: usize) -> usize {
        self.entries
            .values()
            .filter(|e| e.slot == slot)
            .map(|e| e.bytes)
            .sum()
    }

    /// The serving device `name` is loaded on or loading onto.
    pub(crate) fn slot_of(&self, name: &str) -> Option<usize> {
        self.entries.get(name).map(|e| e.slot)
    }

    /// Evicts least-recently-used ready models of device `slot` (never `keep`) until its
    /// budget holds. A single model larger than the whole budget stays: refusing it would
    /// make it unservable, and the operator sized the budget for the models they serve.
    fn evict_to_fit(&mut self, keep: &str, slot: usize) -> Vec<Arc<M>> {
        let mut evicted = Vec::new();
        let capacity = self.capacity_bytes.get(slot).copied().unwrap_or(0);
        while self.used_bytes_on(slot) > capacity {
            let victim = self
                .entries
                .iter()
                .filter(|(name, e)| name.as_str() != keep && e.bytes > 0 && e.slot == slot)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(name, _)| name.clone());
            let Some(victim) = victim else { break };
            tracing::info!(model = %victim, "evicting model to fit the inference cache");
            evicted.extend(self.remove(&victim));
        }
        evicted
    }

    /// Forgets `name` (any state) and returns its model if one was loaded.
    pub(crate) fn remove(&mut self, name: &str) -> Option<Arc<M>> {
        match self.entries.remove(name)?.state {
            EntryState::Ready(model) => Some(model),
            _ => None,
        }
    }

    /// Shutdown: forgets everything and refuses new loads.
    pub(crate) fn close(&mut self) -> Vec<Arc<M>> {
        self.closed = true;
        let names: Vec<String> = self.entries.keys().cloned().collect();
        names.iter().filter_map(|n| self.remove(n)).collect()
    }

    pub(crate) fn is_ready(&self, name: &str) -> bool {
        matches!(
            self.entries.get(name).map(|e| &e.state),
            Some(EntryState::Ready(_))
        )
    }
}

/// Drops models on a blocking thread when a runtime is around: dropping the last
/// handle of an engine joins its thread, which may be finishing a forward pass.
fn release<M: Send + Sync + 'static>(models: Vec<Arc<M>>) {
    if models.is_empty() {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn_blocking(move || drop(models))),
        Err(_) => drop(models),
    }
}

/// Loaded models by name. Cheap to share behind an `Arc`.
pub struct ModelRegistry<M> {
    catalog: Arc<dyn ModelCatalog>,
    loader: Arc<dyn ModelLoader<M>>,
    /// Bookkeeping only: held for a few map operations, never across an `.await` or a
    /// load, so a std mutex is right. Load tasks lock it once to publish their outcome.
    state: Arc<Mutex<RegistryState<M>>>,
}

impl<M: Servable> ModelRegistry<M> {
    /// `capacity_bytes` bounds the summed `parameter_bytes` of loaded models; a failed
    /// load is reported for `failure_ttl` before the next request retries it.
    pub fn new(
        catalog: Arc<dyn ModelCatalog>,
        loader: Arc<dyn ModelLoader<M>>,
        capacity_bytes: usize,
        failure_ttl: Duration,
    ) -> Self {
        Self::with_budgets(catalog, loader, vec![capacity_bytes], failure_ttl)
    }

    /// One serving device per entry of `capacity_bytes`, each with that budget: a new
    /// model is loaded (`ModelLoader::load_on`) onto the device with the most room.
    pub fn with_budgets(
        catalog: Arc<dyn ModelCatalog>,
        loader: Arc<dyn ModelLoader<M>>,
        capacity_bytes: Vec<usize>,
        failure_ttl: Duration,
    ) -> Self {
        let state = RegistryState::with_budgets(capacity_bytes, failure_ttl);
        Self {
            catalog,
            loader,
            state: Arc::new(Mutex::new(state)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RegistryState<M>> {
        lock_state(&self.state)
    }

    /// The loaded model for `name`, loading it if needed. Concurrent requests for a cold
    /// model wait on one load. The load runs in its own task, so it completes (and is
    /// cached) even if every waiting request is cancelled.
    pub async fn get(&self, name: &str) -> Result<Arc<M>, InferError> {
        let lookup = self.lock().lookup(name, Instant::now());
        let mut done = match lookup {
            Lookup::Ready(model) => return Ok(model),
            Lookup::Failed(error) => return Err((*error).clone()),
            Lookup::Closed => return Err(InferError::engine("inference is shutting down")),
            Lookup::Wait(done) => done,
            Lookup::Start {
                generation,
                slot,
                done,
            } => {
                let receiver = done.subscribe();
                self.spawn_load(name.to_string(), (generation, slot), done);
                receiver
            }
        };
        let outcome = done
            .wait_for(Option::is_some)
            .await
            .map_err(|_| InferError::engine("model load was abandoned"))?;
        match outcome.as_ref() {
            Some(Ok(model)) => Ok(model.clone()),
            Some(Err(error)) => Err((**error).clone()),
            None => Err(InferError::engine("model load was abandoned")),
        }
    }

    fn spawn_load(
        &self,
        name: String,
        (generation, slot): (u64, usize),
        done: watch::Sender<Option<LoadOutcome<M>>>,
    ) {
        let catalog = self.catalog.clone();
        let loader = self.loader.clone();
        let state = self.state.clone();
        tokio::spawn(async move {
            let outcome = resolve_and_load(catalog, loader, &name, slot).await;
            if let Err(error) = &outcome {
                tracing::warn!(model = %name, %error, "model load failed");
            }
            let outcome = outcome.map(Arc::new).map_err(Arc::new);
            let evicted =
                lock_state(&state).finish_load(&name, generation, &outcome, Instant::now());
            release(evicted);
            // Waiters subscribed through the entry; ignoring the error is right when all
            // of them were cancelled.
            let _ = done.send(Some(outcome));
        });
    }

    /// Forgets `name` (after the model was deleted). In-flight requests finish on the
    /// engine they hold; the engine's thread ends when the last of them drops it.
    pub fn evict(&self, name: &str) {
        let removed = self.lock().remove(name);
        release(removed.into_iter().collect());
    }

    /// Shutdown: drops every model and refuses later requests.
    pub fn close(&self) {
        let models = self.lock().close();
        release(models);
    }

    pub fn used_bytes(&self) -> usize {
        self.lock().used_bytes()
    }

    pub fn is_loaded(&self, name: &str) -> bool {
        self.lock().is_ready(name)
    }

    /// The ready models and their bytes, by name.
    pub fn loaded(&self) -> Vec<(String, usize)> {
        self.lock().loaded()
    }

    /// The serving device (budget index) `name` is loaded on or loading onto.
    pub fn device_slot(&self, name: &str) -> Option<usize> {
        self.lock().slot_of(name)
    }
}

/// A poisoned lock means a panic mid-update of plain maps; the maps stay usable
/// (every update is a single insert/remove), so keep serving.
fn lock_state<M>(state: &Mutex<RegistryState<M>>) -> MutexGuard<'_, RegistryState<M>> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn resolve_and_load<M: Servable>(
    catalog: Arc<dyn ModelCatalog>,
    loader: Arc<dyn ModelLoader<M>>,
    name: &str,
    slot: usize,
) -> Result<M, InferError> {
    let model = catalog
        .resolve(name)
        .await
        .map_err(|e| InferError::engine(format!("model catalog: {e}")))?
        .ok_or_else(|| InferError::ModelNotFound(name.to_string()))?;
    tokio::task::spawn_blocking(move || loader.load_on(&model, slot))
        .await
        .map_err(|e| InferError::engine(format!("model load panicked: {e}")))?
}
