//! Generation with the real SmolLM2-135M-Instruct (the GGUF asset, materialized to a
//! Hugging Face directory): greedy chat answers a factual question, and two choices
//! batched together equal the single greedy answer. Skipped when `TEMPER_ASSETS` is
//! unset (`scripts/test.sh` sets it).

use std::path::PathBuf;
use std::time::Instant;

use candle_core::Device;
use serde_json::json;

use super::causal::CausalLmBackend;
use super::{
    FinishReason, GenEngine, GenEngineConfig, GenerationParams, GenerationRequest, Prompt,
};

fn smollm2_gguf() -> Option<PathBuf> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping a real-model generation test");
        return None;
    };
    let path = PathBuf::from(assets).join("models/HuggingFaceTB/SmolLM2-135M-Instruct.gguf");
    assert!(path.exists(), "TEMPER_ASSETS set but {path:?} is missing");
    Some(path)
}

fn question(n: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![json!({"role": "user", "content": "What is the capital of France?"})],
            tools: None,
        },
        params: GenerationParams {
            temperature: 0.0,
            max_tokens: Some(24),
            n,
            ..GenerationParams::default()
        },
    }
}

#[tokio::test]
async fn real_smollm2_answers_greedily_and_batches_consistently() {
    let Some(gguf) = smollm2_gguf() else { return };
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("SmolLM2-135M-Instruct");
    crate::zoo::materialize_gguf(&gguf, &dir).expect("materialize");
    let backend = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
    let engine = GenEngine::spawn("smollm2", backend, GenEngineConfig::default()).expect("spawn");

    let start = Instant::now();
    let one = engine
        .generate(question(1))
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    let elapsed = start.elapsed().as_secs_f64();
    let answer = &one.choices[0].text;
    eprintln!(
        "SmolLM2 greedy: {answer:?} ({} prompt + {} completion tokens, {:.1} tokens/s incl. prefill)",
        one.usage.prompt_tokens,
        one.usage.completion_tokens,
        one.usage.completion_tokens as f64 / elapsed
    );
    assert!(answer.contains("Paris"), "{answer:?}");
    // The answer ends at `<|im_end|>`, which never shows in the text.
    assert_eq!(one.choices[0].finish_reason, FinishReason::Stop);
    assert!(!answer.contains("<|im_end|>"));

    let two = engine
        .generate(question(2))
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    for choice in &two.choices {
        assert_eq!(&choice.text, answer, "choice {}", choice.index);
    }
    assert_eq!(two.usage.completion_tokens, 2 * one.usage.completion_tokens);
}
