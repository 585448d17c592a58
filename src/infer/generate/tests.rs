//! The generation engine over the deterministic fake model (see `fake.rs` for its
//! table): exact texts, stop handling, limits, seeds, logprobs, batching, disconnects.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::engine::{GenEngine, GenEngineConfig};
use super::fake::{
    first_held_then_second, logits_after, FakeLm, FakePrompts, Gate, GREEDY_TEXT, GREEDY_TOKENS,
};
use super::{
    FinishReason, Generation, GenerationEvent, GenerationParams, GenerationRequest,
    GenerationStream, LmBackend, Prompt, PromptEncoder,
};
use crate::infer::InferError;

fn engine(fake: FakeLm) -> GenEngine {
    GenEngine::spawn("fake", fake, GenEngineConfig::default()).expect("spawn")
}

fn greedy() -> GenerationParams {
    GenerationParams {
        temperature: 0.0,
        ..GenerationParams::default()
    }
}

fn text(prompt: &str, params: GenerationParams) -> GenerationRequest {
    GenerationRequest {
        prompt: Prompt::Text(prompt.to_string()),
        params,
    }
}

async fn run(engine: &GenEngine, request: GenerationRequest) -> Generation {
    engine
        .generate(request)
        .await
        .expect("accepted")
        .collect()
        .await
        .expect("generated")
}

/// Every event of a stream, in order.
async fn events(mut stream: GenerationStream) -> Vec<GenerationEvent> {
    let mut all = Vec::new();
    while let Some(event) = stream.next().await {
        all.push(event.expect("event"));
    }
    all
}

fn deltas(events: &[GenerationEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            GenerationEvent::Delta { text, .. } => Some(text.clone()),
            _ => None,
        })
        .collect()
}

/// Polls until `done` holds; the engine thread runs independently of the test runtime.
async fn eventually(mut done: impl FnMut() -> bool) {
    for _ in 0..2000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("condition never held");
}

#[tokio::test]
async fn greedy_decoding_follows_the_table_to_eos() {
    let engine = engine(FakeLm::default());
    let out = run(&engine, text("Hello", greedy())).await;
    assert_eq!(out.choices.len(), 1);
    assert_eq!(out.choices[0].text, GREEDY_TEXT);
    assert_eq!(out.choices[0].finish_reason, FinishReason::Stop);
    assert_eq!(out.choices[0].logprobs, None);
    assert_eq!(out.usage.prompt_tokens, 1);
    assert_eq!(out.usage.completion_tokens, GREEDY_TOKENS);
    assert_eq!(out.usage.total_tokens, GREEDY_TOKENS + 1);
}

#[tokio::test]
async fn chat_prompts_go_through_the_template() {
    let fake = FakeLm::default();
    let rendered = FakePrompts
        .render_chat(&[json!({"role": "user", "content": "hi"})], None)
        .expect("render");
    let prompt_tokens = FakePrompts.encode(&rendered).expect("encode").len();
    let engine = engine(fake);
    let request = GenerationRequest {
        prompt: Prompt::Chat {
            messages: vec![json!({"role": "user", "content": "hi"})],
            tools: None,
        },
        params: greedy(),
    };
    let out = run(&engine, request).await;
    assert_eq!(out.choices[0].text, format!("Hello{GREEDY_TEXT}"));
    assert_eq!(out.usage.prompt_tokens, prompt_tokens);
    assert_eq!(out.usage.completion_tokens, GREEDY_TOKENS + 1);
}

#[tokio::test]
async fn a_stop_string_split_across_tokens_ends_the_text_before_it() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        stop: vec![" STOP".into()],
        ..greedy()
    };
    let stream = engine
        .generate(text("Hello", params))
        .await
        .expect("accepted");
    let all = events(stream).await;
    let pieces = deltas(&all);
    assert_eq!(pieces.concat(), " world!");
    assert!(pieces.iter().all(|d| !d.contains('S')), "{pieces:?}");
    assert!(all.contains(&GenerationEvent::Finished {
        choice: 0,
        reason: FinishReason::Stop
    }));
    let Some(GenerationEvent::Usage(usage)) = all.last() else {
        panic!("usage last: {all:?}");
    };
    // " world", "!", " ST", "OP": the stop string completes on the fourth token.
    assert_eq!(usage.completion_tokens, 4);
}

#[tokio::test]
async fn max_tokens_and_the_context_end_with_length() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        max_tokens: Some(3),
        ..greedy()
    };
    let out = run(&engine, text("Hello", params)).await;
    assert_eq!(out.choices[0].text, " world! ST");
    assert_eq!(out.choices[0].finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 3);

    let short = self::engine(FakeLm {
        context_len: 5,
        ..FakeLm::default()
    });
    let out = run(&short, text("Hello", greedy())).await;
    assert_eq!(out.choices[0].text, " world! STOP");
    assert_eq!(out.choices[0].finish_reason, FinishReason::Length);
    assert_eq!(out.usage.total_tokens, 5);
    let too_long = short.generate(text("Hello Hello Hello", greedy())).await;
    match too_long {
        Err(InferError::ContextLengthExceeded { param, message }) => {
            assert_eq!(param, "prompt");
            assert!(
                message.contains("maximum context length is 5 tokens"),
                "{message}"
            );
            assert!(message.contains("(5 in your prompt, 1 in the"), "{message}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn streamed_text_never_splits_a_character() {
    let engine = engine(FakeLm::default());
    let stream = engine.generate(text("Hello", greedy())).await.expect("ok");
    let pieces = deltas(&events(stream).await);
    assert!(pieces.iter().all(|d| !d.contains('\u{FFFD}')), "{pieces:?}");
    assert!(pieces.contains(&"é".to_string()), "{pieces:?}");
    assert_eq!(pieces.concat(), GREEDY_TEXT);
}

fn sampled(seed: u64) -> GenerationParams {
    GenerationParams {
        temperature: 1.0,
        seed: Some(seed),
        ..GenerationParams::default()
    }
}

#[tokio::test]
async fn the_same_seed_gives_the_same_text_and_seeds_differ() {
    let engine = engine(FakeLm::default());
    let first = run(&engine, text("Hello", sampled(5))).await;
    let again = run(&engine, text("Hello", sampled(5))).await;
    assert_eq!(first.choices[0].text, again.choices[0].text);
    let mut texts = std::collections::BTreeSet::new();
    for seed in 0..6 {
        texts.insert(
            run(&engine, text("Hello", sampled(seed))).await.choices[0]
                .text
                .clone(),
        );
    }
    assert!(texts.len() >= 2, "six seeds gave {texts:?}");
}

#[tokio::test]
async fn choice_i_uses_seed_plus_i() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        n: 3,
        max_tokens: Some(6),
        ..sampled(11)
    };
    let out = run(&engine, text("Hello", params)).await;
    assert_eq!(out.choices.len(), 3);
    let mut completion_tokens = 0;
    for (i, choice) in out.choices.iter().enumerate() {
        assert_eq!(choice.index, i);
        let single = GenerationParams {
            max_tokens: Some(6),
            ..sampled(11 + i as u64)
        };
        let alone = run(&engine, text("Hello", single)).await;
        assert_eq!(choice.text, alone.choices[0].text, "choice {i}");
        completion_tokens += alone.usage.completion_tokens;
    }
    assert_eq!(out.usage.prompt_tokens, 1);
    assert_eq!(out.usage.completion_tokens, completion_tokens);
}

#[tokio::test]
async fn a_tiny_top_p_is_greedy() {
    let engine = engine(FakeLm::default());
    for seed in 0..4 {
        let params = GenerationParams {
            top_p: 1e-6,
            ..sampled(seed)
        };
        let out = run(&engine, text("Hello", params)).await;
        assert_eq!(out.choices[0].text, GREEDY_TEXT, "seed {seed}");
    }
}

/// Log-softmax computed independently of the engine, in f64.
fn expected_logprobs(row: &[f32]) -> Vec<f64> {
    let z: f64 = row.iter().map(|&l| f64::from(l).exp()).sum::<f64>().ln();
    row.iter().map(|&l| f64::from(l) - z).collect()
}

#[tokio::test]
async fn logprobs_are_the_log_softmax_of_the_logits() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        max_tokens: Some(2),
        logprobs: Some(3),
        ..greedy()
    };
    let out = run(&engine, text("Hello", params)).await;
    let logprobs = out.choices[0].logprobs.clone().expect("logprobs");
    assert_eq!(logprobs.len(), 2);
    // First token: " world" (id 2) after "Hello" (id 1).
    let expected = expected_logprobs(&logits_after(1));
    assert_eq!(logprobs[0].token, " world");
    assert!((f64::from(logprobs[0].logprob) - expected[2]).abs() < 1e-5);
    let mut ranked: Vec<usize> = (0..expected.len()).collect();
    ranked.sort_by(|&a, &b| expected[b].total_cmp(&expected[a]).then(a.cmp(&b)));
    assert_eq!(logprobs[0].top.len(), 3);
    let fake = FakeLm::default();
    for (alt, &id) in logprobs[0].top.iter().zip(&ranked) {
        assert_eq!(alt.token, fake.decode(&[id as u32]).expect("decode"));
        assert!((f64::from(alt.logprob) - expected[id]).abs() < 1e-5);
    }
    // Second token: "!" (id 3) after " world" (id 2).
    let expected = expected_logprobs(&logits_after(2));
    assert_eq!(logprobs[1].token, "!");
    assert!((f64::from(logprobs[1].logprob) - expected[3]).abs() < 1e-5);
}

#[tokio::test]
async fn concurrent_requests_share_one_step() {
    // A is accepted and its prefill step is held at the gate; B queues meanwhile.
    let (a, b, stats) = first_held_then_second(
        GenEngineConfig::default(),
        text("Hello", greedy()),
        text("a b c", greedy()),
    )
    .await;
    assert_eq!(a.choices[0].text, GREEDY_TEXT);
    assert_eq!(b.choices[0].text, format!("Hello{GREEDY_TEXT}"));
    let chunks = stats.chunk_lengths();
    // Step 1: A's prefill. Step 2: A's next token and B's 5-token prefill, together.
    assert_eq!(chunks[0], [1]);
    assert_eq!(chunks[1], [1, 5]);
    assert!(chunks[2..].iter().all(|c| c.iter().all(|&l| l == 1)));
    // A needs 9 steps, B 10 starting one later: 11 steps in all, not 19.
    assert_eq!(stats.steps(), 11);
}

#[tokio::test]
async fn a_dropped_stream_frees_its_sequence() {
    let fake = FakeLm {
        context_len: 1_000_000,
        stop_tokens: Vec::new(),
        ..FakeLm::default()
    };
    let stats = fake.stats.clone();
    let engine = engine(fake);
    let mut stream = engine.generate(text("Hello", greedy())).await.expect("ok");
    let first = stream.next().await.expect("event").expect("ok");
    assert!(matches!(first, GenerationEvent::Delta { .. }));
    drop(stream);
    eventually(|| engine.running_sequences() == 0).await;
    let steps = stats.steps();
    assert!(steps < 100_000, "{steps} steps after the client left");
    // The engine keeps serving.
    let params = GenerationParams {
        max_tokens: Some(2),
        ..greedy()
    };
    assert_eq!(
        run(&engine, text("Hello", params)).await.choices[0].text,
        " world!"
    );
}

#[tokio::test]
async fn a_full_queue_answers_overloaded() {
    let gate = Arc::new(Gate::default());
    let fake = FakeLm {
        gate: Some(gate.clone()),
        ..FakeLm::default()
    };
    let config = GenEngineConfig {
        max_batch_sequences: 4,
        max_queued_sequences: 2,
        ..GenEngineConfig::default()
    };
    let engine = GenEngine::spawn("fake", fake, config).expect("spawn");
    let params = GenerationParams { n: 2, ..greedy() };
    let first = engine.generate(text("Hello", params)).await.expect("first");
    let refused = engine.generate(text("Hello", greedy())).await;
    assert!(matches!(refused, Err(InferError::Overloaded)));
    let too_many = GenerationParams { n: 3, ..greedy() };
    match engine.generate(text("Hello", too_many)).await {
        Err(InferError::InvalidRequest { param, .. }) => assert_eq!(param, "n"),
        other => panic!("expected 400, got {:?}", other.map(|_| ())),
    }
    gate.open();
    assert_eq!(first.collect().await.expect("first").choices.len(), 2);
    let later = run(&engine, text("Hello", greedy())).await;
    assert_eq!(later.choices[0].text, GREEDY_TEXT);
}

#[tokio::test]
async fn a_failed_step_fails_the_running_requests_and_the_engine_goes_on() {
    let fake = FakeLm {
        fail_at_step: Some(3),
        ..FakeLm::default()
    };
    let engine = engine(fake);
    let mut stream = engine.generate(text("Hello", greedy())).await.expect("ok");
    let mut error = None;
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            error = Some(e);
        }
    }
    assert_eq!(error, Some(InferError::engine("fake step failure")));
    let out = run(&engine, text("Hello", greedy())).await;
    assert_eq!(out.choices[0].text, GREEDY_TEXT);
}

#[tokio::test]
async fn a_prompt_being_tokenized_does_not_hold_back_running_sequences() {
    let prompt_gate = Arc::new(Gate::default());
    let fake = FakeLm {
        prompt_gate: Some(prompt_gate.clone()),
        ..FakeLm::default()
    };
    let stats = fake.stats.clone();
    let engine = Arc::new(engine(fake));
    // B's prompt stays in tokenization (a blocking thread) until the gate opens.
    let slow = {
        let engine = engine.clone();
        tokio::spawn(async move { run(&engine, text("slow", greedy())).await })
    };
    // A runs to its end meanwhile. With tokenization on the engine thread it would wait for
    // B's prompt: the timeout only turns that hang into a failure.
    let a = tokio::time::timeout(
        Duration::from_secs(300),
        run(&engine, text("Hello", greedy())),
    )
    .await;
    let slow_finished_first = slow.is_finished();
    let steps_alone = stats.steps();
    // Opened before asserting: a runtime does not finish while a blocking task waits.
    prompt_gate.open();
    let a = a.expect("A finished while B's prompt was being tokenized");
    assert_eq!(a.choices[0].text, GREEDY_TEXT);
    assert!(!slow_finished_first);
    assert!(stats.chunk_lengths()[..steps_alone]
        .iter()
        .all(|step| step.len() == 1));
    let b = slow.await.expect("b");
    let slow_tokens = FakePrompts.encode("slow").expect("encode").len();
    assert_eq!(b.usage.prompt_tokens, slow_tokens);
    assert!(b.usage.completion_tokens > 0);
}

#[tokio::test]
async fn a_prompt_being_tokenized_holds_its_place_in_the_queue() {
    let prompt_gate = Arc::new(Gate::default());
    let fake = FakeLm {
        prompt_gate: Some(prompt_gate.clone()),
        ..FakeLm::default()
    };
    let config = GenEngineConfig {
        max_queued_sequences: 1,
        ..GenEngineConfig::default()
    };
    let engine = Arc::new(GenEngine::spawn("fake", fake, config).expect("spawn"));
    let slow = {
        let engine = engine.clone();
        tokio::spawn(async move { run(&engine, text("slow", greedy())).await })
    };
    // Until its tokenizing reaches the gate the slow request may not have its place yet.
    while prompt_gate.arrived() == 0 {
        tokio::task::yield_now().await;
    }
    let refused = matches!(
        engine.generate(text("Hello", greedy())).await,
        Err(InferError::Overloaded)
    );
    // Opened before asserting: a runtime does not finish while a blocking task waits.
    prompt_gate.open();
    assert!(
        refused,
        "a request got in while the slow prompt held the queue's place"
    );
    let done = slow.await.expect("slow");
    assert!(done.usage.completion_tokens > 0);
    assert_eq!(
        run(&engine, text("Hello", greedy())).await.choices[0].text,
        GREEDY_TEXT
    );
}

#[tokio::test]
async fn logit_bias_steers_greedy_decoding_past_eos() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        max_tokens: Some(12),
        logit_bias: vec![(super::fake::EOS, -100.0)],
        ..greedy()
    };
    let out = run(&engine, text("Hello", params)).await;
    let choice = &out.choices[0];
    // Where the table ends in eos the bias sends greedy on; the length limit ends it.
    assert!(choice.text.starts_with(GREEDY_TEXT), "{}", choice.text);
    assert!(choice.text.len() > GREEDY_TEXT.len(), "{}", choice.text);
    assert_eq!(choice.finish_reason, FinishReason::Length);
    assert_eq!(out.usage.completion_tokens, 12);
}

#[tokio::test]
async fn logit_bias_naming_a_token_beyond_the_vocabulary_is_refused() {
    let engine = engine(FakeLm::default());
    let params = GenerationParams {
        logit_bias: vec![(3, 1.0), (super::fake::VOCAB_SIZE as u32, 1.0)],
        ..greedy()
    };
    match engine.generate(text("Hello", params)).await {
        Err(InferError::InvalidRequest { param, message }) => {
            assert_eq!(param, "logit_bias");
            assert!(message.contains("token 16"), "{message}");
        }
        other => panic!("expected a 400, got {:?}", other.map(|_| "a stream")),
    }
    assert_eq!(engine.running_sequences(), 0);
}
