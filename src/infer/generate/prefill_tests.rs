//! Chunked prefill in the engine: a prompt longer than the step's prefill budget is read
//! over several steps beside the decoding sequences, and gives the same text.

use super::engine::GenEngineConfig;
use super::fake::{first_held_then_second, GREEDY_TEXT};
use super::{GenerationParams, GenerationRequest, Prompt};

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
    let config = GenEngineConfig {
        prefill_chunk_tokens: 2,
        ..GenEngineConfig::default()
    };
    // A's one-token prompt is read (step 1, held at the gate) before B, 5 tokens, arrives.
    let (a, b, stats) = first_held_then_second(config, greedy("Hello"), greedy("a b c")).await;
    assert_eq!(a.choices[0].text, GREEDY_TEXT);
    // The same text as B read whole (`tests::concurrent_requests_share_one_step`).
    assert_eq!(b.choices[0].text, format!("Hello{GREEDY_TEXT}"));
    assert_eq!(b.usage.prompt_tokens, 5);
    let chunks = stats.chunk_lengths();
    // B's prompt in chunks of 2, 2 and 1, each step beside A's one token.
    assert_eq!(chunks[..4], [vec![1], vec![1, 2], vec![1, 2], vec![1, 1]]);
    // B samples its first token after step 4, then 9 more: 13 steps in all.
    assert_eq!(stats.steps(), 13);
}
