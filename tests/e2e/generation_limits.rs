//! Bounded generation over HTTP: token limits beyond the context are 400s before any
//! stream starts (in-process server), and the real binary hands back the memory of
//! abandoned long generations (its RSS read from /proc, so Linux only).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use candle_core::{Device, Tensor};
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::binary::BinaryServer;
use crate::common::{assert_envelope, TestServer, DECODER_MODEL};

#[tokio::test]
async fn token_limits_beyond_the_context_are_400s_before_any_stream() {
    let server = TestServer::spawn().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    for (path, body, param) in [
        (
            "/v1/chat/completions",
            json!({"model": DECODER_MODEL, "messages": user, "max_tokens": 1_000_000_000_000u64,
                   "stream": true}),
            "max_tokens",
        ),
        (
            "/v1/chat/completions",
            json!({"model": DECODER_MODEL, "messages": user,
                   "max_completion_tokens": 5000}),
            "max_completion_tokens",
        ),
        (
            "/v1/completions",
            json!({"model": DECODER_MODEL, "prompt": "hi", "max_tokens": 100_000, "stream": true}),
            "max_tokens",
        ),
    ] {
        let (status, body) = server.post(path, body).await;
        assert_eq!(status, 400, "{body}");
        let error = assert_envelope(&body, Some(param));
        assert_eq!(error["code"], "context_length_exceeded", "{body}");
        let message = error["message"].as_str().expect("message");
        assert!(
            message.starts_with(
                "This model's maximum context length is 1024 tokens. However, you requested"
            ),
            "{message}"
        );
    }
    // Without max_tokens the answer is bounded by the context, and it is served.
    let (status, body) = server
        .post(
            "/v1/chat/completions",
            json!({"model": DECODER_MODEL, "messages": user, "max_tokens": 4}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// A random Llama with a KV cache big enough to measure (2 layers × 16 kv heads × 64
/// dims: 16 KiB per token) but little compute per token, whose greedy text never ends: the rows of the special tokens and of
/// every token that is not plain ASCII are zero in `lm_head`, so their logit (0) always
/// loses to the best of the others, and every token is one visible delta.
fn write_soak_decoder(dir: &Path) {
    temper::zoo::testing::write_tiny_decoder(dir, temper::zoo::decoder::DecoderArch::Llama, 7)
        .expect("tiny decoder");
    // The wide MLP (96 MiB of weights) gives the server a baseline of the order of a real
    // model's, so "within 10% of the baseline" measures the cache given back, not the few
    // MiB of allocator and thread noise that dominate a 20 MiB process.
    let (hidden, layers, heads, head_dim, inter) = (64usize, 2usize, 16usize, 64usize, 65536usize);
    let config_path = dir.join("config.json");
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(&config_path).expect("config")).expect("json");
    for (key, value) in [
        ("hidden_size", hidden),
        ("intermediate_size", inter),
        ("num_hidden_layers", layers),
        ("num_attention_heads", heads),
        ("num_key_value_heads", heads),
        ("head_dim", head_dim),
        ("max_position_embeddings", 4096),
    ] {
        config[key] = json!(value);
    }
    std::fs::write(&config_path, config.to_string()).expect("write config");
    let vocab = temper::zoo::testing::tiny_decoder_vocab();
    let mut rng = StdRng::seed_from_u64(11);
    let mut tensors = HashMap::new();
    let mut put = |name: String, rows: usize, cols: usize, base: f32, spread: f32| {
        let data: Vec<f32> = (0..rows * cols)
            .map(|_| base + rng.random_range(-spread..spread))
            .collect();
        let shape: Vec<usize> = if rows == 1 {
            vec![cols]
        } else {
            vec![rows, cols]
        };
        let tensor = Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor");
        tensors.insert(name, tensor);
    };
    put(
        "model.embed_tokens.weight".into(),
        vocab.len(),
        hidden,
        0.0,
        1.0,
    );
    let scale = 2.0 / (hidden as f32).sqrt();
    for i in 0..layers {
        let p = |m: &str| format!("model.layers.{i}.{m}");
        put(p("input_layernorm.weight"), 1, hidden, 1.0, 0.2);
        put(p("post_attention_layernorm.weight"), 1, hidden, 1.0, 0.2);
        let width = heads * head_dim;
        for m in ["q_proj", "k_proj", "v_proj"] {
            put(
                p(&format!("self_attn.{m}.weight")),
                width,
                hidden,
                0.0,
                scale,
            );
        }
        let o_scale = 2.0 / (width as f32).sqrt();
        put(p("self_attn.o_proj.weight"), hidden, width, 0.0, o_scale);
        put(p("mlp.gate_proj.weight"), inter, hidden, 0.0, scale);
        put(p("mlp.up_proj.weight"), inter, hidden, 0.0, scale);
        let down = 2.0 / (inter as f32).sqrt();
        put(p("mlp.down_proj.weight"), hidden, inter, 0.0, down);
    }
    put("model.norm.weight".into(), 1, hidden, 1.0, 0.2);
    let plain = |token: &str| token.chars().all(|c| c.is_ascii_alphanumeric() || c == 'Ġ');
    let head: Vec<f32> = vocab
        .iter()
        .enumerate()
        .flat_map(|(id, token)| {
            let keep = id > 2 && plain(token);
            (0..hidden)
                .map(|_| {
                    if keep {
                        rng.random_range(-scale..scale)
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f32>>()
        })
        .collect();
    let head = Tensor::from_vec(head, (vocab.len(), hidden), &Device::Cpu).expect("lm_head");
    tensors.insert("lm_head.weight".into(), head);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).expect("save");
}

const SOAK_MODEL: &str = "test-org/soak-llama";

fn long_chat(stream: bool) -> Value {
    json!({"model": SOAK_MODEL, "messages": [{"role": "user", "content": "Tell me a story"}],
           "temperature": 0, "stream": stream})
}

/// Streams a long generation and hangs up after `events` SSE events.
async fn abandon_streamed(client: &reqwest::Client, url: &str, events: usize) {
    let reply = client
        .post(url)
        .json(&long_chat(true))
        .send()
        .await
        .expect("sent");
    assert_eq!(reply.status(), 200);
    let mut body = reply.bytes_stream();
    let mut seen = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        seen += chunk.windows(6).filter(|w| w == b"data: ").count();
        if seen >= events {
            return;
        }
    }
    panic!("the generation ended by itself after {seen} events");
}

/// Sends a long non-streaming generation and hangs up before its answer.
async fn abandon_waiting(url: &str, after: Duration) {
    let client = reqwest::Client::new();
    let reply = client
        .post(url)
        .json(&long_chat(false))
        .timeout(after)
        .send()
        .await;
    assert!(reply.is_err_and(|e| e.is_timeout()));
}

#[tokio::test]
async fn rss_returns_to_its_baseline_after_50_abandoned_long_generations() {
    if !Path::new("/proc/self/status").exists() {
        eprintln!("skipped: needs /proc");
        return;
    }
    let server =
        BinaryServer::spawn_with_models(|models| write_soak_decoder(&models.join(SOAK_MODEL)), &[])
            .await;
    let url = format!("{}/v1/chat/completions", server.base_url);
    let client = reqwest::Client::new();
    // Warm up: load the model and run a round of short generations, 5 at a time as
    // below, so the baseline is a server that has served (threads and pools started).
    let mut warm = long_chat(true);
    warm["max_tokens"] = json!(16);
    let round = (0..5).map(|_| async {
        let reply = client.post(&url).json(&warm).send().await.expect("warm-up");
        assert_eq!(reply.status(), 200);
        reply.bytes().await.expect("warm-up body")
    });
    futures::future::join_all(round).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = server.status_kib("VmRSS") * 1024;
    let mut peak = baseline;
    // 40 streamed, 5 at a time, each abandoned after 400 tokens (~8 MiB of cache each),
    // then 10 non-streaming ones abandoned while they run.
    for _ in 0..8 {
        let round = (0..5).map(|_| abandon_streamed(&client, &url, 400));
        futures::future::join_all(round).await;
        peak = peak.max(server.status_kib("VmRSS") * 1024);
    }
    let round = (0..10).map(|_| abandon_waiting(&url, Duration::from_millis(1000)));
    futures::future::join_all(round).await;
    peak = peak.max(server.status_kib("VmRSS") * 1024);
    // The server goes idle (no generation left running) and gives the memory back.
    let mut last_ticks = server.cpu_ticks();
    let mut settled = None;
    for _ in 0..120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let ticks = server.cpu_ticks();
        let rss = server.status_kib("VmRSS") * 1024;
        if ticks == last_ticks && rss <= baseline + baseline / 10 {
            settled = Some(rss);
            break;
        }
        last_ticks = ticks;
    }
    let now = server.status_kib("VmRSS") * 1024;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    eprintln!(
        "soak: baseline {:.1} MiB, peak {:.1} MiB, after {:.1} MiB",
        mib(baseline),
        mib(peak),
        mib(now)
    );
    assert!(
        peak > baseline + (20 << 20),
        "the generations never grew the server (baseline {baseline}, peak {peak})"
    );
    assert!(
        settled.is_some(),
        "RSS stayed at {:.1} MiB, more than 10% above its baseline of {:.1} MiB (peak {:.1} MiB); \
         largest mappings:\n{}",
        mib(now),
        mib(baseline),
        mib(peak),
        server.largest_mappings(12)
    );
}

#[tokio::test]
async fn a_base_named_with_a_weight_format_is_served_in_it() {
    let server = TestServer::spawn().await;
    let completion = |model: String| json!({"model": model, "prompt": "hello", "max_tokens": 4, "temperature": 0});
    for format in ["q8_0", "q4_1", "auto"] {
        let model = format!("{DECODER_MODEL}@{format}");
        let (status, body) = server
            .post("/v1/completions", completion(model.clone()))
            .await;
        assert_eq!(status, 200, "{model}: {body}");
        assert_eq!(body["model"], model.as_str());
        let tokens = body["usage"]["completion_tokens"].as_u64().expect("usage");
        assert!((1..=4).contains(&tokens), "{body}");
    }
    // This base is no GGUF file: it has no blocks of its own; nor is `q5_k` a format.
    for model in ["gguf", "q5_k"].map(|format| format!("{DECODER_MODEL}@{format}")) {
        let (status, body) = server.post("/v1/completions", completion(model)).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(
            assert_envelope(&body, Some("model"))["code"],
            "model_not_found"
        );
    }
}
