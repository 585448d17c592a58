//! GGUF tensors → Hugging Face tensors: llama.cpp names mapped to transformers' names,
//! blocks dequantized to f32, and llama.cpp's Q/K row permutation undone.
//!
//! `convert_hf_to_gguf.py` permutes the rows of every Llama `q_proj`/`k_proj` weight (and
//! bias) so that llama.cpp can apply rotary embeddings to interleaved pairs; transformers
//! rotates halves, so the rows must go back to HF order. Qwen2 GGUFs are not permuted.

use std::collections::HashMap;
use std::io::{Read, Seek};

use candle_core::quantized::gguf_file::Content;
use candle_core::{Device, Tensor};

use super::metadata::{GgufArch, Metadata};
use crate::zoo::ZooError;

/// The transformers name of a llama.cpp tensor, or None for one we do not know.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    let (stem, suffix) = gguf_name.rsplit_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let module = match stem {
        "token_embd" => "model.embed_tokens".to_string(),
        "output_norm" => "model.norm".to_string(),
        "output" => "lm_head".to_string(),
        _ => {
            let rest = stem.strip_prefix("blk.")?;
            let (layer, part) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let hf_part = match part {
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_part}")
        }
    };
    Some(format!("{module}.{suffix}"))
}

/// llama.cpp's permutation of q/k rows for `n_head` heads (what its converter applies):
/// rows `[h, 2, d/2]` → `[h, d/2, 2]`. Works on weights `[out, in]` and biases `[out]`.
pub fn permute_rows(t: &Tensor, n_head: usize) -> Result<Tensor, ZooError> {
    reorder_rows(t, n_head, true)
}

/// The inverse of [`permute_rows`]: back to transformers' row order.
pub fn unpermute_rows(t: &Tensor, n_head: usize) -> Result<Tensor, ZooError> {
    reorder_rows(t, n_head, false)
}

fn reorder_rows(t: &Tensor, n_head: usize, forward: bool) -> Result<Tensor, ZooError> {
    let shape = t.shape().clone();
    let out = t.dim(0)?;
    let cols = t.elem_count() / out.max(1);
    if n_head == 0 || out % (2 * n_head) != 0 {
        return Err(ZooError::Config(format!(
            "{out} q/k rows do not split into {n_head} heads of even size"
        )));
    }
    let half = out / n_head / 2;
    let (a, b) = if forward { (2, half) } else { (half, 2) };
    let reordered = t
        .reshape((n_head, a, b, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape(shape)?;
    Ok(reordered)
}

/// Every tensor of the file as f32 under its transformers name, and whether the output
/// head is tied to the embeddings (no `output.weight`).
pub fn hf_tensors<R: Read + Seek>(
    content: &Content,
    reader: &mut R,
    meta: &Metadata<'_>,
) -> Result<(HashMap<String, Tensor>, bool), ZooError> {
    let (heads, kv_heads) = meta.head_counts()?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = HashMap::with_capacity(names.len());
    for name in names {
        let hf =
            hf_name(name).ok_or_else(|| ZooError::Unsupported(format!("GGUF tensor `{name}`")))?;
        let qtensor = content.tensor(reader, name, &Device::Cpu)?;
        let mut tensor = qtensor.dequantize(&Device::Cpu)?;
        if meta.arch == GgufArch::Llama {
            if name.contains(".attn_q.") {
                tensor = unpermute_rows(&tensor, heads)?;
            } else if name.contains(".attn_k.") {
                tensor = unpermute_rows(&tensor, kv_heads)?;
            }
        }
        tensors.insert(hf, tensor);
    }
    if !tensors.contains_key("model.embed_tokens.weight") {
        return Err(ZooError::MissingTensor("token_embd.weight".into()));
    }
    let tied = !tensors.contains_key("lm_head.weight");
    Ok((tensors, tied))
}
