//! Numeric tests of the decoder on tiny random checkpoints (CPU, deterministic).
#![allow(clippy::unwrap_used)]

use super::config::RopeScaling;
use super::*;
use crate::zoo::testing::{write_tiny_decoder, TINY_SPECIAL_TOKENS};

#[test]
fn tiny_tokenizer_round_trips_text_and_keeps_specials_whole() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), DecoderArch::Llama, 1).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
    let text = "Is the answer 42? Yes, you're right: ünïcode ✓ works.";
    let enc = tok.encode(text, false).unwrap();
    // Merges apply: " the" is one token, so fewer ids than bytes.
    assert!(enc.get_ids().len() < text.len(), "{:?}", enc.get_ids());
    assert!(enc.get_tokens().iter().any(|t| t == "Ġthe"));
    assert_eq!(tok.decode(enc.get_ids(), false).unwrap(), text);
    for (id, special) in TINY_SPECIAL_TOKENS.iter().enumerate() {
        assert_eq!(tok.token_to_id(special), Some(id as u32));
    }
    let chat = "<|im_start|>user\nhi<|im_end|>\n";
    let ids = tok.encode(chat, false).unwrap().get_ids().to_vec();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2));
    assert_eq!(tok.decode(&ids, false).unwrap(), chat);
    assert_eq!(tok.decode(&ids, true).unwrap(), "user\nhi\n");
    let (cfg, _) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(cfg.vocab_size, tok.get_vocab_size(true));
}

#[test]
fn tiny_configs_parse_as_both_transformers_versions_write_them() {
    let dir = tempfile::tempdir().unwrap();
    write_tiny_decoder(dir.path(), DecoderArch::Llama, 1).unwrap();
    let (llama, raw) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(raw["torch_dtype"], "float32");
    assert_eq!(llama.arch, DecoderArch::Llama);
    assert_eq!((llama.hidden_size, llama.head_dim), (64, 16));
    assert_eq!(
        (llama.num_attention_heads, llama.num_key_value_heads),
        (4, 2)
    );
    assert!(!llama.tie_word_embeddings && !llama.attention_bias);
    assert_eq!(llama.rope_theta, 10000.0);
    assert_eq!(
        (llama.bos_token_id, llama.eos_token_ids.clone()),
        (Some(1), vec![2])
    );
    write_tiny_decoder(dir.path(), DecoderArch::Qwen2, 1).unwrap();
    let (qwen, raw) = DecoderConfig::from_dir(dir.path()).unwrap();
    assert_eq!(raw["dtype"], "float32");
    assert_eq!(qwen.arch, DecoderArch::Qwen2);
    assert!(qwen.tie_word_embeddings && qwen.attention_bias);
    assert_eq!(qwen.rope_theta, 1_000_000.0);
    assert_eq!(qwen.rope_scaling, None);
}

#[test]
fn config_handles_nesting_eos_lists_defaults_and_llama3_scaling() {
    let text = r#"{"architectures":["X"],"text_config":{"model_type":"llama","hidden_size":96,
        "intermediate_size":64,"num_hidden_layers":1,"num_attention_heads":3,"head_dim":40,
        "eos_token_id":[5,7],"rope_parameters":{"rope_type":"llama3","rope_theta":500000.0,
        "factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
        "original_max_position_embeddings":8192}}}"#;
    let (c, _) = DecoderConfig::from_json(text).unwrap();
    assert_eq!(c.head_dim, 40);
    assert_eq!(c.num_key_value_heads, 3);
    assert_eq!(c.eos_token_ids, vec![5, 7]);
    assert_eq!(c.bos_token_id, None);
    assert_eq!((c.rms_norm_eps, c.rope_theta), (1e-6, 500000.0));
    assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 8.0));
    let f = c.inv_freq();
    assert_eq!(f.len(), 20);
    // Highest frequency kept, lowest divided by the factor.
    assert_eq!(f[0], 1.0);
    let plain_last = 1.0 / 500000f64.powf(38.0 / 40.0);
    assert!(((f[19] as f64) - plain_last / 8.0).abs() < 1e-12);
    let bad = r#"{"model_type":"gpt2","hidden_size":8}"#;
    assert!(matches!(
        DecoderConfig::from_json(bad),
        Err(crate::zoo::ZooError::Unsupported(_))
    ));
    let missing = r#"{"model_type":"qwen2","hidden_size":8,"num_attention_heads":2}"#;
    assert!(DecoderConfig::from_json(missing).is_err());
    assert_eq!(QuantKind::parse("Q4_0"), Some(QuantKind::Q4_0));
    assert_eq!(QuantKind::parse("q8_0"), Some(QuantKind::Q8_0));
    assert_eq!(QuantKind::parse("q4_1"), None);
}
