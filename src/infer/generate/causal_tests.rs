//! The `CausalLm` adapter on a tiny random decoder written by `zoo::testing`: the engine's
//! cached, batched greedy decoding equals a plain loop of full forwards, batching two
//! requests changes nothing, chat prompts use the model's template, and the checkpoint
//! loader serves a model directory through `InferenceHandle`.

use std::path::Path;
use std::sync::Arc;

use candle_core::{Device, IndexOp};
use serde_json::json;

use super::causal::CausalLmBackend;
use super::fake::Gate;
use super::sampling::argmax;
use super::{
    FinishReason, GenEngine, GenEngineConfig, GenerationParams, GenerationRequest,
    GenerationStream, LmBackend, Prompt, PromptEncoder, StepChunk, StepLogits,
};
use crate::infer::InferError;
use crate::zoo::collate;
use crate::zoo::decoder::{CausalLm, DecoderArch, DecoderSpec};

const MAX_NEW: usize = 8;

fn write_model(root: &Path, arch: DecoderArch) -> std::path::PathBuf {
    let dir = root.join(format!("{arch:?}"));
    crate::zoo::testing::write_tiny_decoder(&dir, arch, 5).expect("tiny decoder");
    dir
}

fn greedy(max_tokens: usize) -> GenerationParams {
    GenerationParams {
        temperature: 0.0,
        max_tokens: Some(max_tokens),
        ..GenerationParams::default()
    }
}

/// Greedy decoding by re-running the whole sequence each step (no cache, no batching).
fn reference(dir: &Path, backend: &CausalLmBackend, prompt: &[u32]) -> (String, FinishReason) {
    let spec = DecoderSpec {
        lora: None,
        quantize: None,
    };
    let model = CausalLm::from_pretrained(dir, &spec, &Device::Cpu, 0).expect("model");
    let mut ids = prompt.to_vec();
    let mut generated = Vec::new();
    for _ in 0..MAX_NEW {
        let batch = collate(&[ids.as_slice()], 0, &Device::Cpu).expect("batch");
        let logits = model.forward(&batch, false).expect("forward");
        let last: Vec<f32> = logits
            .i((0, ids.len() - 1))
            .and_then(|row| row.to_vec1())
            .expect("row");
        let next = argmax(&last);
        if backend.stop_token_ids().contains(&next) {
            let text = backend.decode(&generated).expect("decode");
            return (text, FinishReason::Stop);
        }
        generated.push(next);
        ids.push(next);
    }
    (
        backend.decode(&generated).expect("decode"),
        FinishReason::Length,
    )
}

#[tokio::test]
async fn cached_batched_greedy_equals_full_forwards() {
    let root = tempfile::tempdir().expect("tmp");
    for arch in [DecoderArch::Llama, DecoderArch::Qwen2] {
        let dir = write_model(root.path(), arch);
        let backend = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
        let prompt = "the cat sat on the mat";
        let prompt_ids = backend.prompt_encoder().encode(prompt).expect("encode");
        let (expected, reason) = reference(&dir, &backend, &prompt_ids);
        // A random model that stopped at once would make this comparison vacuous.
        assert!(expected.chars().count() >= 3, "{arch:?}: {expected:?}");
        let engine = GenEngine::spawn("tiny", backend, GenEngineConfig::default()).expect("spawn");
        let request = GenerationRequest {
            prompt: Prompt::Text(prompt.into()),
            params: greedy(MAX_NEW),
        };
        let out = engine
            .generate(request)
            .await
            .expect("accepted")
            .collect()
            .await
            .expect("generated");
        assert_eq!(out.choices[0].text, expected, "{arch:?}");
        assert_eq!(out.choices[0].finish_reason, reason, "{arch:?}");
        assert_eq!(out.usage.prompt_tokens, prompt_ids.len());
    }
}

/// Holds every step until the gate opens, so a test can queue a second request while
/// the first one's prefill is in flight; records which adapters each step carried (by
/// address, 0 for the base).
pub(super) struct Gated {
    pub(super) inner: CausalLmBackend,
    pub(super) gate: Arc<Gate>,
    pub(super) steps: Arc<std::sync::Mutex<Vec<Vec<usize>>>>,
}

impl LmBackend for Gated {
    type Cache = <CausalLmBackend as LmBackend>::Cache;
    fn prompt_encoder(&self) -> Arc<dyn PromptEncoder> {
        self.inner.prompt_encoder()
    }
    fn decode(&self, ids: &[u32]) -> Result<String, InferError> {
        self.inner.decode(ids)
    }
    fn stop_token_ids(&self) -> &[u32] {
        self.inner.stop_token_ids()
    }
    fn new_cache(&self, max_tokens: usize) -> Self::Cache {
        self.inner.new_cache(max_tokens)
    }
    fn kv_cache_bytes(&self, tokens: usize) -> usize {
        self.inner.kv_cache_bytes(tokens)
    }
    fn step(
        &mut self,
        chunks: &mut [StepChunk<'_, Self::Cache>],
    ) -> Result<StepLogits, InferError> {
        self.gate.wait();
        let adapters = chunks
            .iter()
            .map(|c| c.adapter.map_or(0, |a| std::ptr::from_ref(a) as usize))
            .collect();
        if let Ok(mut steps) = self.steps.lock() {
            steps.push(adapters);
        }
        self.inner.step(chunks)
    }
    fn context_len(&self) -> usize {
        self.inner.context_len()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn parameter_bytes(&self) -> usize {
        self.inner.parameter_bytes()
    }
}

fn chat_request() -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![json!({"role": "user", "content": "hello there"})],
            tools: None,
        },
        params: greedy(6),
    }
}

fn text_request() -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text("a dog and the cat".into()),
        params: greedy(6),
    }
}

async fn alone(engine: &GenEngine, request: GenerationRequest) -> String {
    let out = engine.generate(request).await.expect("ok").collect().await;
    out.expect("generated").choices[0].text.clone()
}

#[tokio::test]
async fn two_requests_in_one_batch_equal_each_alone() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = write_model(root.path(), DecoderArch::Llama);
    let single = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
    let single = GenEngine::spawn("single", single, GenEngineConfig::default()).expect("spawn");
    let expected_text = alone(&single, text_request()).await;
    let expected_chat = alone(&single, chat_request()).await;
    assert!(!expected_text.is_empty() && !expected_chat.is_empty());
    assert_ne!(expected_text, expected_chat);

    let gate = Arc::new(Gate::default());
    let gated = Gated {
        inner: CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load"),
        gate: gate.clone(),
        steps: Arc::default(),
    };
    let engine = GenEngine::spawn("gated", gated, GenEngineConfig::default()).expect("spawn");
    let first = engine.generate(text_request()).await.expect("first");
    let second = engine.submit(chat_request(), None).expect("second");
    gate.open();
    let second = GenerationStream::open(second, 1, false, None)
        .await
        .expect("second start");
    let (first, second) = tokio::join!(first.collect(), second.collect());
    assert_eq!(first.expect("first").choices[0].text, expected_text);
    assert_eq!(second.expect("second").choices[0].text, expected_chat);
}

#[test]
fn chat_prompts_use_the_model_template_and_its_end_of_turn() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = write_model(root.path(), DecoderArch::Llama);
    let backend = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
    let text = backend
        .prompt_encoder()
        .render_chat(&[json!({"role": "user", "content": "hi"})], None)
        .expect("render");
    assert_eq!(
        text,
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n\
         <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    let ids = backend.prompt_encoder().encode(&text).expect("encode");
    // Special tokens in the rendered text stay single tokens.
    assert_eq!(ids[0], 1);
    assert_eq!(backend.stop_token_ids(), [2]);
    assert_eq!(backend.decode(&[2]).expect("decode"), "");
    assert_eq!(backend.context_len(), 1024);
}

#[tokio::test]
async fn the_handle_serves_a_causal_model_directory() {
    let root = tempfile::tempdir().expect("tmp");
    let dir = write_model(root.path(), DecoderArch::Qwen2);
    let direct = CausalLmBackend::load_dir(&dir, &Device::Cpu).expect("load");
    let direct = GenEngine::spawn("direct", direct, GenEngineConfig::default()).expect("spawn");
    let expected = alone(&direct, chat_request()).await;
    let catalog = crate::infer::test_support::MapCatalog::with_kind(
        &[("tiny-lm", dir.clone())],
        crate::infer::ServedKind::CausalLm,
    );
    let handle = crate::infer::InferenceHandle::new(
        catalog,
        1 << 30,
        tokio_util::sync::CancellationToken::new(),
    );
    let messages = vec![json!({"role": "user", "content": "hello there"})];
    let out = handle
        .chat("tiny-lm", messages, None, greedy(6))
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    assert_eq!(out.choices[0].text, expected);
    assert!(handle.is_loaded("tiny-lm"));
    match handle.classify("tiny-lm", vec!["x".into()]).await {
        Err(InferError::InvalidRequest { param, .. }) => assert_eq!(param, "model"),
        other => panic!("expected a 400, got {other:?}"),
    }
}

fn sft_example(question: &str, answer: &str) -> crate::domain::dataset::ChatExample {
    use crate::domain::dataset::{ChatMessage, ChatRole};
    let message = |role, content: &str| ChatMessage {
        role,
        content: content.to_string(),
        name: None,
        weight: None,
        tool_calls: None,
        tool_call_id: None,
        function_call: None,
    };
    crate::domain::dataset::ChatExample {
        messages: vec![
            message(ChatRole::User, question),
            message(ChatRole::Assistant, answer),
        ],
        tools: None,
    }
}

/// A LoRA SFT checkpoint is served through the checkpoint loader (adapters merged), and
/// its greedy chat answer equals full forwards of `tasks::sft::load_lm_checkpoint`'s model.
#[tokio::test]
async fn a_fine_tuned_checkpoint_is_served_with_its_adapters() {
    use crate::domain::hyperparams::{LoraSettings, LrScheduler, TrainingConfig};
    use crate::tasks::sft::{run_sft, SftExamples, SftJob};
    use crate::train::TrainOutcome;
    let root = tempfile::tempdir().expect("tmp");
    let base = write_model(root.path(), DecoderArch::Llama);
    let config = TrainingConfig {
        n_epochs: 2,
        batch_size: 2,
        learning_rate_multiplier: 1.0,
        learning_rate: 1e-2,
        head_learning_rate: None,
        lr_scheduler: LrScheduler::Linear,
        warmup_ratio: 0.0,
        weight_decay: 0.0,
        max_grad_norm: 1.0,
        gradient_accumulation_steps: 1,
        max_seq_len: 64,
        eval_steps: None,
        save_steps: None,
        early_stopping_patience: None,
        metric_for_best_model: None,
        lora: LoraSettings {
            rank: 4,
            alpha: 16.0,
            dropout: 0.0,
            target_modules: Vec::new(),
        },
        quantize: None,
        gradient_checkpointing: false,
        precision: None,
        export_dtype: None,
        seed: 1,
        task_options: Default::default(),
    };
    let job = SftJob {
        base_model_dir: base.clone(),
        base_model: crate::artifacts::BaseLocation::Directory { path: base.clone() },
        train: SftExamples::Chat(vec![
            sft_example("Capital of France?", "Paris."),
            sft_example("Colour of grass?", "Green."),
            sft_example("Two plus two?", "Four."),
            sft_example("Opposite of up?", "Down."),
        ]),
        valid: None,
        config,
        work_dir: root.path().join("job"),
        device: Device::Cpu,
    };
    let mut observer = crate::tasks::sequence_classification::tests::Recorder::default();
    let summary = match run_sft(&job, &mut observer).expect("sft") {
        TrainOutcome::Completed(summary) => summary,
        _ => panic!("training did not complete"),
    };
    let checkpoint = summary.best_checkpoint;

    let loaded = crate::tasks::sft::load_lm_checkpoint(
        &checkpoint,
        &crate::artifacts::BaseModels::default(),
        &Device::Cpu,
    )
    .expect("load");
    let messages = vec![json!({"role": "user", "content": "Capital of France?"})];
    let template = loaded.template.as_ref().expect("template");
    let prompt = template.render(&messages, None, true).expect("render");
    let prompt_ids = loaded
        .tokenizer
        .encode(prompt.as_str(), false)
        .expect("encode")
        .get_ids()
        .to_vec();
    let mut ids = prompt_ids.clone();
    let mut generated = Vec::new();
    for _ in 0..MAX_NEW {
        let batch = collate(&[ids.as_slice()], 0, &Device::Cpu).expect("batch");
        let logits = loaded.model.forward(&batch, false).expect("forward");
        let last: Vec<f32> = logits
            .i((0, ids.len() - 1))
            .and_then(|row| row.to_vec1())
            .expect("row");
        let next = argmax(&last);
        if loaded.eos_token_ids.contains(&next) {
            break;
        }
        generated.push(next);
        ids.push(next);
    }
    let expected = loaded.tokenizer.decode(&generated, true).expect("decode");
    assert!(!generated.is_empty(), "the reference stopped at once");

    let catalog = crate::infer::test_support::MapCatalog::with_kind(
        &[("ft:tiny:temper::abcd1234", checkpoint)],
        crate::infer::ServedKind::CausalLm,
    );
    let handle = crate::infer::InferenceHandle::new(
        catalog,
        1 << 30,
        tokio_util::sync::CancellationToken::new(),
    );
    let out = handle
        .chat("ft:tiny:temper::abcd1234", messages, None, greedy(MAX_NEW))
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated");
    assert_eq!(out.usage.prompt_tokens, prompt_ids.len());
    assert_eq!(out.choices[0].text, expected);
}
