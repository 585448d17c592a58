//! Greedy decoding against an independent implementation: `tests/fixtures/greedy_tiny.json`
//! holds transformers' greedy tokens and their log-probabilities on the tiny random
//! decoders (seed 7), computed once by `scripts/make_greedy_fixture.py`. Both prompts of a
//! model go through one engine at once, so this also covers the KV cache and batching.

use candle_core::{Device, IndexOp};
use serde::Deserialize;

use super::causal::CausalLmBackend;
use super::{FinishReason, GenEngine, GenEngineConfig, GenerationParams, GenerationRequest};
use super::{LmBackend, Prompt};
use crate::zoo::collate;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};

const FIXTURE: &str = include_str!("../../../tests/fixtures/greedy_tiny.json");
/// transformers and temper sum in different orders; the fixture's margins between the best
/// and second-best logit (≥ 0.01) are far above this.
const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Fixture {
    max_new_tokens: usize,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    arch: String,
    seed: u64,
    prompt: String,
    prompt_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    logprobs: Vec<f32>,
    finish_reason: String,
    first_logits: Vec<f32>,
}

fn arch_of(name: &str) -> DecoderArch {
    match name {
        "Llama" => DecoderArch::Llama,
        "Qwen2" => DecoderArch::Qwen2,
        other => panic!("fixture arch {other}"),
    }
}

/// The weights are the fixture's: the prompt's last logits agree before any decoding.
fn check_prompt_logits(dir: &std::path::Path, case: &Case) {
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let model = CausalLm::from_pretrained(dir, &spec, &Device::Cpu, 0).expect("model");
    let batch = collate(&[case.prompt_ids.as_slice()], 0, &Device::Cpu).expect("batch");
    let logits: Vec<f32> = model
        .forward(&batch, false)
        .and_then(|l| Ok(l.i((0, case.prompt_ids.len() - 1))?.to_vec1()?))
        .expect("logits");
    for (i, (ours, theirs)) in logits.iter().zip(&case.first_logits).enumerate() {
        assert!(
            (ours - theirs).abs() < TOLERANCE,
            "{} logit {i}: {ours} vs {theirs}; if the tiny writer changed, rerun \
             scripts/make_greedy_fixture.py",
            case.arch
        );
    }
}

#[tokio::test]
async fn greedy_decoding_matches_the_transformers_fixture() {
    let fixture: Fixture = serde_json::from_str(FIXTURE).expect("fixture");
    let root = tempfile::tempdir().expect("tmp");
    for arch in ["Llama", "Qwen2"] {
        let cases: Vec<&Case> = fixture.cases.iter().filter(|c| c.arch == arch).collect();
        assert_eq!(cases.len(), 2, "{arch}");
        let dir = root.path().join(arch);
        crate::zoo::testing::write_tiny_decoder(&dir, arch_of(arch), cases[0].seed)
            .expect("tiny decoder");
        check_prompt_logits(&dir, cases[0]);
        let backend = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
        for case in &cases {
            assert_eq!(
                backend
                    .prompt_encoder()
                    .encode(&case.prompt)
                    .expect("encode"),
                case.prompt_ids
            );
        }
        let expected_tokens: Vec<Vec<String>> = cases
            .iter()
            .map(|c| {
                c.generated_ids
                    .iter()
                    .map(|&id| backend.decode(&[id]).expect("decode"))
                    .collect()
            })
            .collect();
        let engine = GenEngine::spawn("tiny", backend, GenEngineConfig::default()).expect("spawn");
        let params = GenerationParams {
            temperature: 0.0,
            max_tokens: Some(fixture.max_new_tokens),
            logprobs: Some(0),
            ..GenerationParams::default()
        };
        // Both requests are queued before either is collected: they share decode steps.
        let mut streams = Vec::new();
        for case in &cases {
            let request = GenerationRequest {
                prompt: Prompt::Text(case.prompt.clone()),
                params: params.clone(),
            };
            streams.push(engine.generate(request).await.expect("accepted"));
        }
        for ((case, stream), tokens) in cases.iter().zip(streams).zip(&expected_tokens) {
            let out = stream.collect().await.expect("generated");
            let choice = &out.choices[0];
            let logprobs = choice.logprobs.as_ref().expect("logprobs");
            let ours: Vec<&str> = logprobs.iter().map(|l| l.token.as_str()).collect();
            assert_eq!(ours, *tokens, "{arch} {:?}", case.prompt);
            for (step, (ours, theirs)) in logprobs.iter().zip(&case.logprobs).enumerate() {
                assert!(
                    (ours.logprob - theirs).abs() < TOLERANCE,
                    "{arch} {:?} step {step}: {} vs {theirs}",
                    case.prompt,
                    ours.logprob
                );
            }
            assert_eq!(out.usage.completion_tokens, case.generated_ids.len());
            let reason = match case.finish_reason.as_str() {
                "stop" => FinishReason::Stop,
                _ => FinishReason::Length,
            };
            assert_eq!(choice.finish_reason, reason, "{arch} {:?}", case.prompt);
        }
    }
}
