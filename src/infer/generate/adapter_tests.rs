//! Requests for different adapters of one base in one engine: they share decode steps,
//! and each gets what its model gives alone (text exactly, logprobs to rounding) and what
//! the merged model gives.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::Device;

use super::causal::{CausalLmBackend, CausalLmParts};
use super::causal_tests::Gated;
use super::fake::Gate;
use super::{
    GenEngine, GenEngineConfig, Generation, GenerationParams, GenerationRequest, GenerationStream,
    Prompt,
};
use crate::zoo::decoder::tests_adapter::{adapter_tensors, tuned_model};
use crate::zoo::decoder::{CausalLm, DecoderArch, LoraScaling, ServedAdapter};

/// The backend of `model` with the tokenizer and template of the tiny model in `dir`.
fn backend(dir: &Path, model: CausalLm) -> CausalLmBackend {
    let tokenizer = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).expect("tok");
    let template = crate::zoo::ChatTemplate::from_dir(dir).expect("template");
    let eos_token_ids = model.config().eos_token_ids.clone();
    CausalLmBackend::new(CausalLmParts {
        model,
        tokenizer,
        template,
        eos_token_ids,
        context_len: 256,
    })
    .expect("backend")
}

fn request(text: &str) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(text.into()),
        params: GenerationParams {
            temperature: 0.0,
            max_tokens: Some(8),
            logprobs: Some(2),
            ..GenerationParams::default()
        },
    }
}

async fn run(engine: &GenEngine, text: &str, adapter: Option<Arc<ServedAdapter>>) -> Generation {
    let stream = engine
        .generate_keeping(request(text), adapter, None)
        .await
        .expect("accepted");
    stream.collect().await.expect("generated")
}

/// Largest |Δ logprob| of the generated tokens and their alternatives (same tokens).
fn logprob_diff(a: &Generation, b: &Generation) -> f32 {
    let (a, b) = (&a.choices[0].logprobs, &b.choices[0].logprobs);
    let (Some(a), Some(b)) = (a, b) else {
        panic!("logprobs were asked for")
    };
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x.token, y.token);
        worst = worst.max((x.logprob - y.logprob).abs());
        for (p, q) in x.top.iter().zip(&y.top) {
            assert_eq!(p.token, q.token);
            worst = worst.max((p.logprob - q.logprob).abs());
        }
    }
    worst
}

#[tokio::test]
async fn requests_for_different_adapters_share_steps_and_each_get_their_models_answer() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = root.path().join("base");
    crate::zoo::testing::write_tiny_decoder(&dir, DecoderArch::Llama, 5).expect("tiny");
    let spec = crate::zoo::decoder::DecoderSpec {
        lora: None,
        quantize: None,
    };
    let base = || CausalLm::from_pretrained(&dir, &spec, &Device::Cpu, 0).expect("base");
    let scaling = LoraScaling {
        alpha: 16.0,
        rslora: false,
    };
    let adapters: Vec<Arc<ServedAdapter>> = (0..3)
        .map(|k| {
            let tensors = adapter_tensors(&tuned_model(&dir, k));
            let adapter =
                ServedAdapter::from_peft(base().config(), &tensors, scaling, &Device::Cpu);
            Arc::new(adapter.expect("adapter"))
        })
        .collect();
    // Rows: adapter 0, the base, adapters 1 and 2.
    let plan: Vec<(&str, Option<usize>)> = vec![
        ("a dog and the cat", Some(0)),
        ("hello there", None),
        ("the cat", Some(1)),
        ("a dog", Some(2)),
    ];
    let adapter_of = |k: Option<usize>| k.map(|k| adapters[k].clone());

    let gate = Arc::new(Gate::default());
    let steps = Arc::new(Mutex::new(Vec::new()));
    let recording = Gated {
        inner: backend(&dir, base()),
        gate: gate.clone(),
        steps: steps.clone(),
    };
    let engine = GenEngine::spawn("shared", recording, GenEngineConfig::default()).expect("spawn");
    // The first request's prefill waits at the gate while the others queue behind it.
    let first = engine
        .generate_keeping(request(plan[0].0), adapter_of(plan[0].1), None)
        .await
        .expect("first");
    let others: Vec<_> = plan[1..]
        .iter()
        .map(|(text, k)| {
            engine
                .submit(request(text), adapter_of(*k))
                .expect("queued")
        })
        .collect();
    gate.open();
    let mut streams = vec![first];
    for messages in others {
        streams.push(
            GenerationStream::open(messages, 1, true, None)
                .await
                .expect("start"),
        );
    }
    let mut mixed = Vec::new();
    for stream in streams {
        mixed.push(stream.collect().await.expect("generated"));
    }
    let widest = steps
        .lock()
        .expect("steps")
        .iter()
        .map(|step| step.iter().collect::<BTreeSet<_>>().len())
        .max();
    assert_eq!(
        widest,
        Some(4),
        "one step carried the three adapters and the base"
    );

    let solo =
        GenEngine::spawn("solo", backend(&dir, base()), GenEngineConfig::default()).expect("spawn");
    for (i, (text, k)) in plan.iter().enumerate() {
        let alone = run(&solo, text, adapter_of(*k)).await;
        assert_eq!(mixed[i].choices[0].text, alone.choices[0].text, "row {i}");
        let diff = logprob_diff(&mixed[i], &alone);
        assert!(
            diff < 1e-5,
            "row {i}: logprobs {diff} from the adapter alone"
        );

        let mut merged = match k {
            Some(k) => tuned_model(&dir, *k),
            None => base(),
        };
        merged.merge_lora().expect("merge");
        let merged = GenEngine::spawn("merged", backend(&dir, merged), GenEngineConfig::default())
            .expect("spawn");
        let reference = run(&merged, text, None).await;
        assert_eq!(
            mixed[i].choices[0].text, reference.choices[0].text,
            "row {i}"
        );
        let diff = logprob_diff(&mixed[i], &reference);
        assert!(
            diff < 1e-4,
            "row {i}: logprobs {diff} from the merged model"
        );
    }
    // The adapters matter: adapter 0 and the base answer the same prompt differently.
    let base_answer = run(&solo, plan[0].0, None).await;
    assert_ne!(base_answer.choices[0].text, mixed[0].choices[0].text);
}
