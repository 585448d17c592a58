//! A GGUF file's layer projections as the blocks it stores them in (Q4_0, Q4_1, Q8_0, the
//! k-quants…), for serving a GGUF base in its own quantization rather than dequantized:
//! `<id>@gguf`. Llama's q/k rows are put back in transformers' order by moving whole rows
//! of blocks (each row is its own run of blocks), so nothing is requantized.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::GgmlDType;
use candle_core::Device;

use super::metadata::{GgufArch, Metadata};
use super::tensors::hf_name;
use crate::zoo::quantized_weight::QuantizedWeight;
use crate::zoo::ZooError;

/// The GGUF names of a layer's projections (llama.cpp's `blk.<i>.<name>.weight`).
const PROJECTIONS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// Every layer projection of the GGUF file at `path` that it stores in blocks, under its
/// transformers name (`model.layers.<i>.self_attn.q_proj.weight`…), on `device`.
/// Projections stored as floats are left out (they are served as the dequantized model has
/// them).
pub fn projection_blocks(
    path: &Path,
    device: &Device,
) -> Result<HashMap<String, QuantizedWeight>, ZooError> {
    let mut reader = BufReader::new(File::open(path)?);
    let content = Content::read(&mut reader)
        .map_err(|e| ZooError::Config(format!("{}: {e}", path.display())))?;
    let meta = Metadata::new(&content)?;
    let (heads, kv_heads) = meta.head_counts()?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut out = HashMap::new();
    for name in names {
        let Some(projection) = projection_of(name) else {
            continue;
        };
        let info = &content.tensor_infos[name];
        if matches!(
            info.ggml_dtype,
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16
        ) {
            continue;
        }
        let Some(hf) = hf_name(name) else {
            continue;
        };
        let blocks = content.tensor(&mut reader, name, &Device::Cpu)?;
        let rows = blocks.shape().dims2()?.0;
        let order = match (meta.arch, projection) {
            (GgufArch::Llama, "attn_q") => Some(unpermuted_order(rows, heads)?),
            (GgufArch::Llama, "attn_k") => Some(unpermuted_order(rows, kv_heads)?),
            _ => None,
        };
        out.insert(
            hf,
            QuantizedWeight::from_blocks(&blocks, order.as_deref(), device)?,
        );
    }
    Ok(out)
}

/// `blk.<i>.<projection>.weight` → the projection's name.
fn projection_of(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("blk.")?.strip_suffix(".weight")?;
    let (_, module) = rest.split_once('.')?;
    PROJECTIONS.into_iter().find(|p| *p == module)
}

/// Row `k` of transformers' q/k weight is row `order[k]` of llama.cpp's: what
/// `tensors::unpermute_rows` does, as row indices. Transformers keeps each head's rows as
/// two halves `[2, d/2]`; llama.cpp's converter interleaves them as `[d/2, 2]`.
pub(crate) fn unpermuted_order(rows: usize, n_head: usize) -> Result<Vec<usize>, ZooError> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(ZooError::Config(format!(
            "{rows} q/k rows do not split into {n_head} heads of even size"
        )));
    }
    let half = rows / n_head / 2;
    let mut order = Vec::with_capacity(rows);
    for head in 0..n_head {
        for pair in 0..2 {
            for i in 0..half {
                order.push(head * 2 * half + i * 2 + pair);
            }
        }
    }
    Ok(order)
}

#[cfg(test)]
#[path = "blocks_tests.rs"]
mod tests;
