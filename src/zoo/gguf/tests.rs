//! GGUF materialization on tiny files written here with candle's `gguf_file::write`, laid
//! out as llama.cpp's converter writes them (Q/K rows permuted for Llama).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tensors::{hf_name, permute_rows, unpermute_rows};
use super::*;
use crate::zoo::test_tensors::max_abs_diff;

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const INTER: usize = 96;
const LAYERS: usize = 2;
const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
const MERGES: [(&str, &str); 5] = [
    ("h", "e"),
    ("l", "l"),
    ("he", "ll"),
    ("hell", "o"),
    ("Ġ", "w"),
];

/// GPT-2's byte → printable-char table (`bytes_to_unicode`).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + n);
            n += 1;
        }
    }
    let mut table = vec![' '; 256];
    for (b, c) in printable.iter().zip(chars) {
        table[*b as usize] = char::from_u32(c).unwrap();
    }
    table
}

pub(super) fn vocab() -> Vec<String> {
    let mut tokens: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    tokens.extend(byte_chars().iter().map(char::to_string));
    tokens.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    tokens
}

fn id_of(token: &str) -> u32 {
    vocab().iter().position(|t| t == token).unwrap() as u32
}

fn random(shape: &[usize], rng: &mut StdRng) -> Tensor {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).unwrap()
}

/// What a tiny GGUF holds: the HF-order weights, and how to write the file.
pub(crate) struct TinyGguf {
    /// transformers name → f32 values as materialization must reproduce them.
    pub(super) expected: HashMap<String, Tensor>,
}

#[derive(Clone, Copy)]
pub(crate) struct Variant {
    pub(super) arch: &'static str,
    pub(super) tied: bool,
    pub(super) tokenizer_model: &'static str,
    /// Every tensor stored as F32 (no block rounding anywhere, for exact comparisons).
    pub(super) all_f32: bool,
}

pub(crate) const LLAMA: Variant = Variant {
    arch: "llama",
    tied: true,
    tokenizer_model: "gpt2",
    all_f32: false,
};

pub(crate) fn write_tiny_gguf(path: &Path, v: Variant) -> TinyGguf {
    let mut rng = StdRng::seed_from_u64(7);
    let vocab = vocab();
    // (gguf name, tensor as written, storage type, expected HF tensor)
    let mut written: Vec<(String, QTensor)> = Vec::new();
    let mut expected = HashMap::new();
    let mut add =
        |gguf: &str, hf_order: Tensor, dtype: GgmlDType, rows_for_permute: Option<usize>| {
            let on_disk = match rows_for_permute {
                Some(n_head) if v.arch == "llama" => permute_rows(&hf_order, n_head).unwrap(),
                _ => hf_order.clone(),
            };
            let dtype = if v.all_f32 { GgmlDType::F32 } else { dtype };
            let q = QTensor::quantize(&on_disk, dtype).unwrap();
            // What dequantization can give back: the rounded values, in HF row order.
            let back = q.dequantize(&Device::Cpu).unwrap();
            let back = match rows_for_permute {
                Some(n_head) if v.arch == "llama" => unpermute_rows(&back, n_head).unwrap(),
                _ => back,
            };
            expected.insert(hf_name(gguf).unwrap(), back);
            written.push((gguf.to_string(), q));
        };
    add(
        "token_embd.weight",
        random(&[vocab.len(), HIDDEN], &mut rng),
        GgmlDType::Q8_0,
        None,
    );
    add(
        "output_norm.weight",
        random(&[HIDDEN], &mut rng),
        GgmlDType::F32,
        None,
    );
    if !v.tied {
        add(
            "output.weight",
            random(&[vocab.len(), HIDDEN], &mut rng),
            GgmlDType::F32,
            None,
        );
    }
    for l in 0..LAYERS {
        let b = |s: &str| format!("blk.{l}.{s}");
        // Permuted in blocks: serving a file's own blocks must undo it by whole rows.
        add(
            &b("attn_q.weight"),
            random(&[HIDDEN, HIDDEN], &mut rng),
            GgmlDType::Q4_1,
            Some(HEADS),
        );
        add(
            &b("attn_k.weight"),
            random(&[KV_HEADS * HEAD_DIM, HIDDEN], &mut rng),
            GgmlDType::Q8_0,
            Some(KV_HEADS),
        );
        add(
            &b("attn_v.weight"),
            random(&[KV_HEADS * HEAD_DIM, HIDDEN], &mut rng),
            GgmlDType::Q8_0,
            None,
        );
        add(
            &b("attn_output.weight"),
            random(&[HIDDEN, HIDDEN], &mut rng),
            GgmlDType::Q4_0,
            None,
        );
        if v.arch == "qwen2" {
            add(
                &b("attn_q.bias"),
                random(&[HIDDEN], &mut rng),
                GgmlDType::F32,
                Some(HEADS),
            );
            add(
                &b("attn_k.bias"),
                random(&[KV_HEADS * HEAD_DIM], &mut rng),
                GgmlDType::F32,
                Some(KV_HEADS),
            );
            add(
                &b("attn_v.bias"),
                random(&[KV_HEADS * HEAD_DIM], &mut rng),
                GgmlDType::F32,
                None,
            );
        }
        add(
            &b("ffn_gate.weight"),
            random(&[INTER, HIDDEN], &mut rng),
            GgmlDType::Q8_0,
            None,
        );
        add(
            &b("ffn_up.weight"),
            random(&[INTER, HIDDEN], &mut rng),
            GgmlDType::Q8_0,
            None,
        );
        add(
            &b("ffn_down.weight"),
            random(&[HIDDEN, INTER], &mut rng),
            GgmlDType::Q8_0,
            None,
        );
        add(
            &b("attn_norm.weight"),
            random(&[HIDDEN], &mut rng),
            GgmlDType::F32,
            None,
        );
        add(
            &b("ffn_norm.weight"),
            random(&[HIDDEN], &mut rng),
            GgmlDType::F32,
            None,
        );
    }

    let arch_key = |k: &str| format!("{}.{k}", v.arch);
    let strings = |items: Vec<String>| Value::Array(items.into_iter().map(Value::String).collect());
    let mut types = vec![Value::I32(3); SPECIALS.len()];
    types.resize(vocab.len(), Value::I32(1));
    let metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(v.arch.into())),
        (arch_key("block_count"), Value::U32(LAYERS as u32)),
        (arch_key("context_length"), Value::U32(256)),
        (arch_key("embedding_length"), Value::U32(HIDDEN as u32)),
        (arch_key("feed_forward_length"), Value::U32(INTER as u32)),
        (arch_key("attention.head_count"), Value::U32(HEADS as u32)),
        (arch_key("attention.head_count_kv"), Value::U32(KV_HEADS as u32)),
        (arch_key("rope.freq_base"), Value::F32(50000.0)),
        (arch_key("rope.dimension_count"), Value::U32(HEAD_DIM as u32)),
        (arch_key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
        ("tokenizer.ggml.model".into(), Value::String(v.tokenizer_model.into())),
        ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
        ("tokenizer.ggml.tokens".into(), strings(vocab.clone())),
        ("tokenizer.ggml.token_type".into(), Value::Array(types)),
        ("tokenizer.ggml.merges".into(), strings(MERGES.iter().map(|(a, b)| format!("{a} {b}")).collect())),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ("tokenizer.chat_template".into(), Value::String("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}".into())),
    ];
    let meta_refs: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = written.iter().map(|(k, q)| (k.as_str(), q)).collect();
    let mut file = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
    TinyGguf { expected }
}

fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub(super) fn materialize(v: Variant) -> (tempfile::TempDir, std::path::PathBuf, TinyGguf) {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    let tiny = write_tiny_gguf(&gguf, v);
    let out = tmp.path().join("tiny-hf");
    materialize_gguf(&gguf, &out).unwrap();
    (tmp, out, tiny)
}

#[test]
fn llama_tensors_come_back_in_hf_order_with_hf_names() {
    let (_tmp, out, tiny) = materialize(LLAMA);
    let got = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<_> = got.keys().cloned().collect();
    names.sort();
    let mut want: Vec<_> = tiny.expected.keys().cloned().collect();
    want.sort();
    assert_eq!(names, want);
    assert_eq!(names.len(), 2 + 9 * LAYERS);
    assert!(!got.contains_key("lm_head.weight"));
    for (name, expected) in &tiny.expected {
        let t = &got[name];
        assert_eq!(t.dtype(), candle_core::DType::F32, "{name}");
        assert_eq!(t.dims(), expected.dims(), "{name}");
        let diff = max_abs_diff(t, expected);
        assert_eq!(diff, 0.0, "{name} differs by {diff}");
    }
    assert_eq!(
        got["model.layers.1.self_attn.k_proj.weight"].dims(),
        &[KV_HEADS * HEAD_DIM, HIDDEN]
    );
}

#[test]
fn permutation_is_llama_cpps_and_the_inverse_undoes_it() {
    // 2 heads of 4 rows: llama.cpp interleaves each head's two halves.
    let rows = Tensor::arange(0f32, 8.0, &Device::Cpu).unwrap();
    let permuted = permute_rows(&rows, 2).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(permuted, [0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
    let w = Tensor::arange(0f32, 48.0, &Device::Cpu)
        .unwrap()
        .reshape((12, 4))
        .unwrap();
    let back = unpermute_rows(&permute_rows(&w, 3).unwrap(), 3).unwrap();
    assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    assert!(unpermute_rows(&w, 5).is_err());
}

#[test]
fn llama_cpp_names_map_to_transformers_names() {
    for (gguf, hf) in [
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output_norm.weight", "model.norm.weight"),
        ("output.weight", "lm_head.weight"),
        (
            "blk.11.attn_q.bias",
            "model.layers.11.self_attn.q_proj.bias",
        ),
        (
            "blk.0.attn_output.weight",
            "model.layers.0.self_attn.o_proj.weight",
        ),
        (
            "blk.3.ffn_down.weight",
            "model.layers.3.mlp.down_proj.weight",
        ),
        (
            "blk.2.attn_norm.weight",
            "model.layers.2.input_layernorm.weight",
        ),
        (
            "blk.2.ffn_norm.weight",
            "model.layers.2.post_attention_layernorm.weight",
        ),
    ] {
        assert_eq!(hf_name(gguf).as_deref(), Some(hf), "{gguf}");
    }
    assert_eq!(hf_name("rope_freqs.weight"), None);
    assert_eq!(hf_name("blk.x.attn_q.weight"), None);
}

#[test]
fn config_and_generation_config_come_from_the_metadata() {
    let (_tmp, out, _) = materialize(LLAMA);
    let c = read_json(&out.join("config.json"));
    assert_eq!(c["model_type"], "llama");
    assert_eq!(c["architectures"][0], "LlamaForCausalLM");
    assert_eq!(c["hidden_size"], HIDDEN);
    assert_eq!(c["intermediate_size"], INTER);
    assert_eq!(c["num_hidden_layers"], LAYERS);
    assert_eq!(c["num_attention_heads"], HEADS);
    assert_eq!(c["num_key_value_heads"], KV_HEADS);
    assert_eq!(c["head_dim"], HEAD_DIM);
    assert_eq!(c["rope_theta"], 50000.0);
    assert!((c["rms_norm_eps"].as_f64().unwrap() - 1e-5).abs() < 1e-9);
    assert_eq!(c["max_position_embeddings"], 256);
    assert_eq!(c["vocab_size"], vocab().len());
    assert_eq!(c["tie_word_embeddings"], true);
    assert_eq!(
        (c["bos_token_id"].as_u64(), c["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );
    let g = read_json(&out.join("generation_config.json"));
    assert_eq!(
        (g["bos_token_id"].as_u64(), g["eos_token_id"].as_u64()),
        (Some(1), Some(2))
    );
    assert_eq!(g["pad_token_id"], 0);
}

#[test]
fn tokenizer_encodes_merges_and_specials_and_decodes_back() {
    let (_tmp, out, _) = materialize(LLAMA);
    let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    let enc = tok.encode("hello world 42", true).unwrap();
    let expected: Vec<u32> = ["hello", "Ġw", "o", "r", "l", "d", "Ġ", "4", "2"]
        .iter()
        .map(|t| id_of(t))
        .collect();
    assert_eq!(enc.get_ids(), expected.as_slice());
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello world 42");
    let chat = tok
        .encode("<|im_start|>user\nhello<|im_end|>", true)
        .unwrap();
    assert_eq!(
        chat.get_ids(),
        &[
            1,
            id_of("u"),
            id_of("s"),
            id_of("e"),
            id_of("r"),
            id_of("Ċ"),
            id_of("hello"),
            2
        ]
    );
    assert_eq!(tok.decode(chat.get_ids(), true).unwrap(), "user\nhello");
    // Char offsets (SFT maps assistant spans through them) point back into the text.
    let offsets: Vec<(usize, usize)> = chat.get_offsets().to_vec();
    assert_eq!(offsets[0], (0, 12));
    assert_eq!(offsets[6], (17, 22));
    assert_eq!(offsets[7], (22, 32));

    let tc = read_json(&out.join("tokenizer_config.json"));
    assert_eq!(tc["bos_token"], "<|im_start|>");
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert_eq!(tc["pad_token"], "<|endoftext|>");
    assert_eq!(tc["add_bos_token"], false);
    assert!(tc["chat_template"]
        .as_str()
        .unwrap()
        .starts_with("{% for m in messages %}"));
    assert_eq!(tc["added_tokens_decoder"]["1"]["special"], true);
}

#[test]
fn untied_output_becomes_lm_head() {
    let (_tmp, out, tiny) = materialize(Variant {
        tied: false,
        ..LLAMA
    });
    let got = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    let diff = (&got["lm_head.weight"] - &tiny.expected["lm_head.weight"])
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap();
    assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0);
    assert_eq!(
        read_json(&out.join("config.json"))["tie_word_embeddings"],
        false
    );
}

#[test]
fn qwen2_rows_are_not_permuted_and_biases_are_kept() {
    let (_tmp, out, tiny) = materialize(Variant {
        arch: "qwen2",
        ..LLAMA
    });
    let got = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    for name in [
        "model.layers.0.self_attn.q_proj.weight",
        "model.layers.1.self_attn.k_proj.bias",
    ] {
        let diff = (&got[name] - &tiny.expected[name])
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "{name}");
    }
    assert_eq!(read_json(&out.join("config.json"))["model_type"], "qwen2");
}

#[test]
fn an_existing_directory_is_reused_and_no_temporary_is_left() {
    let (tmp, out, _) = materialize(LLAMA);
    let marker = out.join("marker");
    std::fs::write(&marker, "kept").unwrap();
    materialize_gguf(&tmp.path().join("tiny.gguf"), &out).unwrap();
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "kept");
    let entries: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries.len(), 2, "{entries:?}");

    let incomplete = tmp.path().join("incomplete");
    std::fs::create_dir(&incomplete).unwrap();
    let err = materialize_gguf(&tmp.path().join("tiny.gguf"), &incomplete).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
}

#[test]
fn a_failed_conversion_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("spm.gguf");
    write_tiny_gguf(
        &gguf,
        Variant {
            tokenizer_model: "llama",
            ..LLAMA
        },
    );
    let err = materialize_gguf(&gguf, &tmp.path().join("out")).unwrap_err();
    assert!(err.to_string().contains("tokenizer model `llama`"), "{err}");
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}
