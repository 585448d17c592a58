//! Chunked prefill in the engine: a prompt longer than the step's prefill budget is read
//! over several steps beside the decoding sequences, and gives the same text.

use std::sync::Arc;

use super::engine::{GenEngine, GenEngineConfig};
use super::fake::{FakeLm, Gate, GREEDY_TEXT};
use super::{GenerationParams, GenerationRequest, GenerationStream, Prompt};

fn greedy(prompt: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(prompt.to_string()),
        params: GenerationParams {
            temperature: 0.0,
            ..GenerationParams::default()
        },
    }
}

#[tokio::test]
async fn a_prompt_beyond_the_prefill_budget_is_read_in_chunks_beside_a_decoding_sequence() {
    let gate = Arc::new(Gate::default());
    let fake = FakeLm {
        gate: Some(gate.clone()),
        ..FakeLm::default()
    };
    let stats = fake.stats.clone();
    let config = GenEngineConfig {
        prefill_chunk_tokens: 2,
        ..GenEngineConfig::default()
    };
    let engine = GenEngine::spawn("fake", fake, config).expect("spawn");
    // A's one-token prompt is read (step 1, held at the gate) before B, 5 tokens, arrives.
    let a = engine.generate(greedy("Hello")).await.expect("a");
    let b = engine.submit(greedy("a b c"), None).expect("b");
    gate.open();
    let b = GenerationStream::open(b, 1, false, None)
        .await
        .expect("b start");
    let (a, b) = tokio::join!(a.collect(), b.collect());
    assert_eq!(a.expect("a").choices[0].text, GREEDY_TEXT);
    // The same text as B read whole (`tests::concurrent_requests_share_one_step`).
    let b = b.expect("b");
    assert_eq!(b.choices[0].text, format!("Hello{GREEDY_TEXT}"));
    assert_eq!(b.usage.prompt_tokens, 5);
    let chunks = stats.chunk_lengths();
    // B's prompt in chunks of 2, 2 and 1, each step beside A's one token.
    assert_eq!(chunks[..4], [vec![1], vec![1, 2], vec![1, 2], vec![1, 1]]);
    // B samples its first token after step 4, then 9 more: 13 steps in all.
    assert_eq!(stats.steps(), 13);
}
