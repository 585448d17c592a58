//! A deterministic stand-in for a language model (engine and API tests): a 16-token
//! vocabulary, a tokenizer by longest byte match, and logits from a fixed table keyed
//! by the last token, where one "next" token stands out so greedy decoding follows a
//! known path: `Hello` → ` world` → `!` → ` ST` → `OP` → ` and` → `é` (two byte
//! tokens) → ` more` → `<eos>`. Any other last token leads to `Hello`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use serde_json::Value;

use super::engine::{GenEngine, GenEngineConfig};
use super::{
    Generation, GenerationRequest, GenerationStream, LmBackend, PromptEncoder, StepChunk,
    StepLogits,
};
use crate::infer::InferError;

pub(crate) const EOS: u32 = 0;
const UNK: u32 = 15;
pub(crate) const VOCAB_SIZE: usize = 16;
/// The logit of the table's "next" token; the others lie in 0..=1.
const NEXT_LOGIT: f32 = 4.0;

/// The greedy continuation of `Hello`, and its token count with the final eos.
pub(crate) const GREEDY_TEXT: &str = " world! STOP andé more";
pub(crate) const GREEDY_TOKENS: usize = 9;

fn token_bytes(id: u32) -> &'static [u8] {
    match id {
        1 => b"Hello",
        2 => b" world",
        3 => b"!",
        4 => b" ST",
        5 => b"OP",
        6 => b" and",
        7 => &[0xC3],
        8 => &[0xA9],
        9 => b" more",
        10 => b"a",
        11 => b"b",
        12 => b"c",
        13 => b" ",
        14 => b":",
        _ => b"",
    }
}

fn next_token(last: u32) -> u32 {
    match last {
        1..=8 => last + 1,
        9 => EOS,
        _ => 1,
    }
}

/// The logits after `last`: a fixed pattern in 0..=1 with `next_token(last)` at 4.
pub(crate) fn logits_after(last: u32) -> Vec<f32> {
    let mut row: Vec<f32> = (0..VOCAB_SIZE as u32)
        .map(|v| ((v * 7 + last * 3) % 5) as f32 * 0.25)
        .collect();
    row[next_token(last) as usize] = NEXT_LOGIT;
    row
}

/// Holds every `step` until opened (closed gates let a test queue requests while the
/// engine is mid-step).
#[derive(Default)]
pub(crate) struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    /// Calls of `wait` so far (a test can tell a thread reached the gate).
    arrived: AtomicUsize,
}

impl Gate {
    pub(crate) fn open(&self) {
        *self.open.lock().expect("gate lock") = true;
        self.changed.notify_all();
    }

    pub(crate) fn arrived(&self) -> usize {
        self.arrived.load(Ordering::SeqCst)
    }

    pub(crate) fn wait(&self) {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.lock().expect("gate lock");
        while !*open {
            open = self.changed.wait(open).expect("gate lock");
        }
    }
}

/// What the fake saw: the chunk lengths of every `step` call, and the caches alive.
#[derive(Default)]
pub(crate) struct FakeStats {
    pub(crate) steps: AtomicUsize,
    pub(crate) chunk_lengths: Mutex<Vec<Vec<usize>>>,
    /// Caches created and not dropped yet (each one a sequence's KV memory).
    pub(crate) live_caches: AtomicUsize,
}

impl FakeStats {
    pub(crate) fn live_caches(&self) -> usize {
        self.live_caches.load(Ordering::SeqCst)
    }

    pub(crate) fn steps(&self) -> usize {
        self.steps.load(Ordering::SeqCst)
    }

    pub(crate) fn chunk_lengths(&self) -> Vec<Vec<usize>> {
        self.chunk_lengths.lock().expect("stats lock").clone()
    }
}

/// Bytes the fake reports per cached token (what admission reserves).
pub(crate) const KV_BYTES_PER_TOKEN: usize = 100;

/// A sequence's cache: the tokens seen so far, the most it was created for, and a
/// count of live caches that its drop decrements.
pub(crate) struct FakeCache {
    tokens: Vec<u32>,
    max_tokens: usize,
    stats: Arc<FakeStats>,
}

impl Drop for FakeCache {
    fn drop(&mut self) {
        self.stats.live_caches.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(crate) struct FakeLm {
    pub(crate) context_len: usize,
    pub(crate) stop_tokens: Vec<u32>,
    pub(crate) stats: Arc<FakeStats>,
    pub(crate) gate: Option<Arc<Gate>>,
    /// The `step` call (1-based) that fails, to test error handling.
    pub(crate) fail_at_step: Option<usize>,
    /// Holds the tokenizing of every prompt containing `slow` until it opens.
    pub(crate) prompt_gate: Option<Arc<Gate>>,
}

impl Default for FakeLm {
    fn default() -> Self {
        Self {
            context_len: 64,
            stop_tokens: vec![EOS],
            stats: Arc::new(FakeStats::default()),
            gate: None,
            fail_at_step: None,
            prompt_gate: None,
        }
    }
}

/// `first` and `second` on an engine of the gated fake with `config`: `first` is accepted
/// and its first step held at the gate while `second` is queued, then both run to their
/// ends. Returns both answers and what the fake saw.
pub(crate) async fn first_held_then_second(
    config: GenEngineConfig,
    first: GenerationRequest,
    second: GenerationRequest,
) -> (Generation, Generation, Arc<FakeStats>) {
    let gate = Arc::new(Gate::default());
    let fake = FakeLm {
        gate: Some(gate.clone()),
        ..FakeLm::default()
    };
    let stats = fake.stats.clone();
    let engine = GenEngine::spawn("fake", fake, config).expect("spawn");
    let first = engine.generate(first).await.expect("first accepted");
    let second = engine.submit(second, None).expect("second queued");
    gate.open();
    let second = GenerationStream::open(second, 1, false, None)
        .await
        .expect("second started");
    let (first, second) = tokio::join!(first.collect(), second.collect());
    (
        first.expect("first generated"),
        second.expect("second generated"),
        stats,
    )
}

/// The fake's prompt side: `role: content` chat lines and its greedy byte vocabulary.
pub(crate) struct FakePrompts;

impl PromptEncoder for FakePrompts {
    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        let bytes = text.as_bytes();
        let mut ids = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let best = (1..UNK)
                .filter(|&id| bytes[at..].starts_with(token_bytes(id)))
                .max_by_key(|&id| token_bytes(id).len());
            match best {
                Some(id) => {
                    ids.push(id);
                    at += token_bytes(id).len();
                }
                None => {
                    ids.push(UNK);
                    at += 1;
                }
            }
        }
        Ok(ids)
    }

    /// `role: content` lines, then `assistant:`.
    fn render_chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<String, InferError> {
        if tools.is_some() {
            return Err(InferError::invalid(
                "tools",
                "the fake has no tool template",
            ));
        }
        let mut text = String::new();
        for message in messages {
            let role = message["role"].as_str().unwrap_or("?");
            let content = message["content"].as_str().unwrap_or("");
            text.push_str(&format!("{role}: {content}\n"));
        }
        text.push_str("assistant:");
        Ok(text)
    }
}

/// [`FakePrompts`] whose tokenizing of a prompt containing `slow` waits for the gate.
struct SlowPrompts {
    gate: Arc<Gate>,
}

impl PromptEncoder for SlowPrompts {
    fn encode(&self, text: &str) -> Result<Vec<u32>, InferError> {
        if text.contains("slow") {
            self.gate.wait();
        }
        FakePrompts.encode(text)
    }

    fn render_chat(&self, messages: &[Value], tools: Option<&Value>) -> Result<String, InferError> {
        FakePrompts.render_chat(messages, tools)
    }
}

impl LmBackend for FakeLm {
    type Cache = FakeCache;

    fn prompt_encoder(&self) -> Arc<dyn PromptEncoder> {
        match &self.prompt_gate {
            Some(gate) => Arc::new(SlowPrompts { gate: gate.clone() }),
            None => Arc::new(FakePrompts),
        }
    }

    fn decode(&self, ids: &[u32]) -> Result<String, InferError> {
        let bytes: Vec<u8> = ids
            .iter()
            .flat_map(|&id| token_bytes(id))
            .copied()
            .collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn stop_token_ids(&self) -> &[u32] {
        &self.stop_tokens
    }

    fn new_cache(&self, max_tokens: usize) -> FakeCache {
        self.stats.live_caches.fetch_add(1, Ordering::SeqCst);
        FakeCache {
            tokens: Vec::new(),
            max_tokens,
            stats: self.stats.clone(),
        }
    }

    fn kv_cache_bytes(&self, tokens: usize) -> usize {
        tokens.saturating_mul(KV_BYTES_PER_TOKEN)
    }

    fn step(&mut self, chunks: &mut [StepChunk<'_, FakeCache>]) -> Result<StepLogits, InferError> {
        if let Some(gate) = &self.gate {
            gate.wait();
        }
        let step = self.stats.steps.fetch_add(1, Ordering::SeqCst) + 1;
        if self.fail_at_step == Some(step) {
            return Err(InferError::engine("fake step failure"));
        }
        self.stats
            .chunk_lengths
            .lock()
            .expect("stats lock")
            .push(chunks.iter().map(|chunk| chunk.tokens.len()).collect());
        let rows = chunks
            .iter_mut()
            .map(|StepChunk { tokens, cache, .. }| {
                cache.tokens.extend_from_slice(tokens);
                if cache.tokens.len() > self.context_len {
                    return Err(InferError::engine("fake context overflow"));
                }
                // A sequence outgrowing its reservation would break the KV budget.
                if cache.tokens.len() > cache.max_tokens {
                    return Err(InferError::engine("fake cache beyond its reservation"));
                }
                let last = cache
                    .tokens
                    .last()
                    .copied()
                    .ok_or_else(|| InferError::engine("empty chunk"))?;
                Ok(logits_after(last))
            })
            .collect::<Result<Vec<_>, InferError>>()?;
        StepLogits::from_rows(rows, VOCAB_SIZE)
    }

    fn context_len(&self) -> usize {
        self.context_len
    }

    fn vocab_size(&self) -> usize {
        VOCAB_SIZE
    }

    fn parameter_bytes(&self) -> usize {
        1000
    }
}
