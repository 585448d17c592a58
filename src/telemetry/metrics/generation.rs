//! Text generation: tokens sampled, each loaded model's current tokens/s, time to first
//! token and the sequences per batched step. Recorded by the generation engine's thread
//! (`infer::generate::worker`) through an [`EngineMetrics`], one per engine.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::FloatGauge;

/// Time to first token, in seconds: from a few milliseconds on an idle engine to the
/// tens of seconds a long queue can take.
const FIRST_TOKEN_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Sequences in one step: powers of two up to eight times the default batch (32).
const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabel {
    model: String,
}

/// The generation metrics; cheap to clone. `Default` gives recorders attached to no
/// registry (engines built in tests record into them unseen).
#[derive(Debug, Clone)]
pub struct GenerationMetrics {
    tokens: Counter,
    tokens_per_second: Family<ModelLabel, FloatGauge>,
    first_token: Histogram,
    batch_sequences: Histogram,
}

impl Default for GenerationMetrics {
    fn default() -> Self {
        GenerationMetrics {
            tokens: Counter::default(),
            tokens_per_second: Family::default(),
            first_token: Histogram::new(FIRST_TOKEN_BUCKETS),
            batch_sequences: Histogram::new(BATCH_BUCKETS),
        }
    }
}

impl GenerationMetrics {
    pub(super) fn register(registry: &mut Registry) -> GenerationMetrics {
        let metrics = GenerationMetrics::default();
        registry.register(
            "generation_tokens",
            "Tokens sampled by the generation engines (a final stop token included)",
            metrics.tokens.clone(),
        );
        registry.register(
            "generation_tokens_per_second",
            "Tokens each loaded language model sampled per second over its last batched \
             step; 0 while it has nothing to generate",
            metrics.tokens_per_second.clone(),
        );
        registry.register_with_unit(
            "generation_time_to_first_token",
            "Time from a generation request's arrival at its engine (before its prompt is \
             tokenized) to its first sampled token",
            Unit::Seconds,
            metrics.first_token.clone(),
        );
        registry.register(
            "generation_batch_sequences",
            "Sequences fed through the model together in one batched step",
            metrics.batch_sequences.clone(),
        );
        metrics
    }

    /// The recorder of the engine serving `model`; its tokens/s series lives as long as it.
    pub fn engine(&self, model: &str) -> EngineMetrics {
        let engine = EngineMetrics {
            metrics: self.clone(),
            label: ModelLabel {
                model: model.to_string(),
            },
        };
        engine.idle();
        engine
    }
}

/// One engine's recorder. Dropped with the engine, it removes the engine's tokens/s series.
#[derive(Debug)]
pub struct EngineMetrics {
    metrics: GenerationMetrics,
    label: ModelLabel,
}

impl EngineMetrics {
    /// One batched step fed `sequences` sequences and sampled `sampled` tokens in `elapsed`.
    pub fn step(&self, sequences: usize, sampled: usize, elapsed: Duration) {
        let metrics = &self.metrics;
        metrics.batch_sequences.observe(sequences as f64);
        metrics.tokens.inc_by(sampled as u64);
        let seconds = elapsed.as_secs_f64();
        if seconds > 0.0 {
            metrics
                .tokens_per_second
                .get_or_create(&self.label)
                .set(sampled as f64 / seconds);
        }
    }

    /// A request got its first token `waited` after it arrived.
    pub fn first_token(&self, waited: Duration) {
        self.metrics.first_token.observe(waited.as_secs_f64());
    }

    /// Nothing is running: the engine generates 0 tokens/s until its next step.
    pub fn idle(&self) {
        self.metrics
            .tokens_per_second
            .get_or_create(&self.label)
            .set(0.0);
    }
}

impl Drop for EngineMetrics {
    fn drop(&mut self) {
        // An engine evicted while its last streams finish can outlive its successor's
        // start; the successor's next step (or idle) puts the series back.
        self.metrics.tokens_per_second.remove(&self.label);
    }
}
