//! What the generation engine records for `/metrics`, over the deterministic fake model.

use super::engine::{GenEngine, GenEngineConfig};
use super::fake::{FakeLm, GREEDY_TOKENS};
use super::{GenerationParams, GenerationRequest, Prompt};
use crate::telemetry::metrics::scrape::{bucket, histogram, parse, value, Series};
use crate::telemetry::metrics::{Format, Metrics, Snapshot};

fn scrape(metrics: &Metrics) -> Vec<Series> {
    parse(
        &metrics
            .render(&Snapshot::default(), Format::Prometheus)
            .expect("render"),
    )
}

#[tokio::test]
async fn an_engine_records_its_tokens_batches_and_first_token() {
    let metrics = Metrics::new();
    let engine = GenEngine::spawn_recorded(
        "fake",
        FakeLm::default(),
        GenEngineConfig::default(),
        &metrics.generation(),
    )
    .expect("spawn");
    // Two greedy choices of one request: they decode side by side to the table's eos.
    let request = GenerationRequest {
        prompt: Prompt::Text("Hello".into()),
        params: GenerationParams {
            temperature: 0.0,
            n: 2,
            ..GenerationParams::default()
        },
    };
    let generation = engine
        .generate(request)
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    let tokens = generation.usage.completion_tokens;
    assert_eq!(tokens, 2 * GREEDY_TOKENS);

    let parsed = scrape(&metrics);
    assert_eq!(
        value(&parsed, "temper_generation_tokens_total", &[]),
        Some(tokens as f64)
    );
    // One step per token, both sequences in each: the prompt fits in one step's budget.
    let batches = histogram(&parsed, "temper_generation_batch_sequences", &[]);
    assert_eq!(batches.count, Some(GREEDY_TOKENS as u64));
    assert_eq!(batches.sum.map(|s| s.as_f64()), Some(tokens as f64));
    assert_eq!(bucket(&batches, 1.0), 0.0);
    assert_eq!(bucket(&batches, 2.0), GREEDY_TOKENS as f64);
    let first_token = histogram(
        &parsed,
        "temper_generation_time_to_first_token_seconds",
        &[],
    );
    assert_eq!(first_token.count, Some(1));
    let label = [("model", "fake")];
    let rate = value(&parsed, "temper_generation_tokens_per_second", &label);
    assert!(rate.is_some_and(|r| r >= 0.0), "{rate:?}");

    drop(engine);
    let parsed = scrape(&metrics);
    assert_eq!(
        value(&parsed, "temper_generation_tokens_per_second", &label),
        None
    );
    // The counters outlive the engine.
    assert_eq!(
        value(&parsed, "temper_generation_tokens_total", &[]),
        Some(tokens as f64)
    );
}
