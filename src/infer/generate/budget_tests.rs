//! Bounded generation over the fake model: the context check before anything runs, the
//! KV budget (reserve the worst case, wait for room, refuse what can never fit) and the
//! caches released when a request ends or its client leaves.

use std::sync::Arc;
use std::time::Duration;

use super::engine::{GenEngine, GenEngineConfig};
use super::fake::{first_held_then_second, FakeLm, FakeStats, GREEDY_TEXT, KV_BYTES_PER_TOKEN};
use super::{GenerationEvent, GenerationParams, GenerationRequest, GenerationStream, Prompt};
use crate::infer::InferError;

fn text(prompt: &str, max_tokens: Option<usize>) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(prompt.to_string()),
        params: GenerationParams {
            max_tokens,
            temperature: 0.0,
            ..GenerationParams::default()
        },
    }
}

/// A fake that never stops on its own, with `context_len` tokens of context and a KV
/// budget of `budget_tokens` cached tokens.
fn endless(context_len: usize, budget_tokens: usize) -> (GenEngine, Arc<FakeStats>) {
    let fake = FakeLm {
        context_len,
        stop_tokens: Vec::new(),
        ..FakeLm::default()
    };
    let stats = fake.stats.clone();
    let config = GenEngineConfig {
        kv_cache_bytes: Some(budget_tokens * KV_BYTES_PER_TOKEN),
        ..GenEngineConfig::default()
    };
    (
        GenEngine::spawn("fake", fake, config).expect("spawn"),
        stats,
    )
}

async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..4000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn max_tokens_beyond_the_context_is_refused_before_any_step() {
    let (engine, stats) = endless(64, 64);
    match engine.generate(text("Hello", Some(100_000))).await {
        Err(InferError::ContextLengthExceeded { param, message }) => {
            assert_eq!(param, "max_tokens");
            assert_eq!(
                message,
                "This model's maximum context length is 64 tokens. However, you requested \
                 100001 tokens (1 in your prompt, 100000 in the completion). Please reduce \
                 the length of your prompt or completion."
            );
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    assert_eq!(stats.steps(), 0);
    assert_eq!(stats.live_caches(), 0);
}

#[tokio::test]
async fn without_max_tokens_generation_stops_at_the_context() {
    let (engine, _stats) = endless(40, 40);
    let out = engine
        .generate(text("Hello", None))
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    // The fake fails any step whose cache outgrows what it was created for, so this
    // also shows each cache stays within its reservation.
    assert_eq!(out.usage.prompt_tokens, 1);
    assert_eq!(out.usage.completion_tokens, 39);
    assert_eq!(out.usage.total_tokens, 40);
}

#[tokio::test]
async fn a_request_that_can_never_fit_the_budget_is_refused() {
    let (engine, stats) = endless(100, 100);
    let two = GenerationRequest {
        params: GenerationParams {
            n: 2,
            ..text("Hello", Some(60)).params
        },
        ..text("Hello", Some(60))
    };
    match engine.generate(two).await {
        Err(InferError::InvalidRequest { param, message }) => {
            assert_eq!(param, "max_tokens");
            assert!(
                message.contains("may need 12200 bytes of KV cache (2 sequence(s) of up to 61"),
                "{message}"
            );
            assert!(message.contains("budget of 10000 bytes"), "{message}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
    assert_eq!(stats.steps(), 0);
}

#[tokio::test]
async fn a_request_that_does_not_fit_now_waits_until_the_running_one_ends() {
    // Room for one sequence of 10 tokens: A (1 + 9) fills it, B (3 + 2) must wait.
    let config = GenEngineConfig {
        kv_cache_bytes: Some(10 * KV_BYTES_PER_TOKEN),
        ..GenEngineConfig::default()
    };
    let (a, b, stats) =
        first_held_then_second(config, text("Hello", Some(9)), text("a b", Some(2))).await;
    assert_eq!(a.choices[0].text, GREEDY_TEXT);
    assert_eq!(b.usage.completion_tokens, 2);
    // A ran its 9 steps alone; B's prefill came only after: never two in one step.
    let chunks = stats.chunk_lengths();
    assert!(chunks.iter().all(|step| step.len() == 1), "{chunks:?}");
    assert_eq!(chunks[9], [3]);
    assert_eq!(stats.steps(), 11);
}

#[tokio::test]
async fn a_client_that_leaves_frees_its_cache_and_its_reservation() {
    // A (no max_tokens) reserves the whole budget; B waits for it.
    let (engine, stats) = endless(1_000_000, 1_000_000);
    let mut a = engine.generate(text("Hello", None)).await.expect("a");
    let first = a.next().await.expect("event").expect("ok");
    assert!(matches!(first, GenerationEvent::Delta { .. }));
    assert_eq!(stats.live_caches(), 1);
    let b = engine.submit(text("Hello", Some(2)), None).expect("b");
    drop(a);
    let b = GenerationStream::open(b, 1, false, None).await.expect("b");
    let out = b.collect().await.expect("b");
    assert_eq!(out.choices[0].text, " world!");
    // B started as soon as A's client left, long before A's 999,999 tokens.
    assert!(stats.steps() < 999_999, "{} steps", stats.steps());
    eventually(|| stats.live_caches() == 0 && engine.running_sequences() == 0).await;
}

#[tokio::test]
async fn an_abandoned_non_streaming_request_frees_its_cache() {
    let (engine, stats) = endless(1_000_000, 1_000_000);
    let engine = Arc::new(engine);
    let waiting = engine.clone();
    // What a non-streaming handler does; aborting it is what a client drop does to it.
    let task = tokio::spawn(async move {
        let stream = waiting.generate(text("Hello", None)).await?;
        stream.collect().await
    });
    eventually(|| stats.steps() > 10).await;
    assert_eq!(stats.live_caches(), 1);
    task.abort();
    assert!(task.await.is_err_and(|e| e.is_cancelled()));
    eventually(|| stats.live_caches() == 0 && engine.running_sequences() == 0).await;
    assert!(stats.steps() < 500_000, "{} steps", stats.steps());
}
