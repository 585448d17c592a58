//! Inference with caller-owned KV caches: `forward_cached` advances several sequences at
//! once. Their new rows go through every linear layer together (one matmul per
//! projection for the whole batch); attention runs per sequence against its own cache.
//! Nothing here needs autograd, so it works on detached tensors.

use candle_core::Tensor;

use super::adapter::ServedAdapter;
use super::kernels::{masked_softmax, CausalPrefix};
use super::lm::CausalLm;
use crate::zoo::cpu::segmented_lora::{add_segmented_lora, RowRun};
use crate::zoo::fused::uses_fused_kernels;
use crate::zoo::linear::Pass;
use crate::zoo::ZooError;

/// Tokens a cache grows by. Each growth copies the cache once (so a sequence of `t`
/// tokens is copied `t / 256` times instead of once per token, which fragmented the heap
/// by gigabytes on long generations) and leaves at most 255 tokens of unused room.
pub const KV_CACHE_CHUNK_TOKENS: usize = 256;

/// Keys and values of one sequence, per layer `[1, n_kv_heads, capacity, head_dim]`,
/// grown in chunks (candle-nn's cache) and never beyond what it was created for.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<candle_nn::kv_cache::KvCache>,
    len: usize,
}

impl KvCache {
    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes allocated for keys and values (capacity, used or not).
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flat_map(|layer| [layer.k_cache().all_data(), layer.v_cache().all_data()])
            .flatten()
            .map(|t| t.elem_count() * t.dtype().size_in_bytes())
            .sum()
    }

    /// Appends `k`/`v` `[new, kv, d]` to layer `i`; returns the full `[kv, len, d]` views.
    fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor), ZooError> {
        let (k, v) = (
            k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
            v.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
        );
        let (k, v) = self.layers[i].append(&k, &v)?;
        Ok((k.squeeze(0)?, v.squeeze(0)?))
    }
}

/// New tokens of one sequence and the cache they extend.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
    /// The LoRA adapter this sequence is generated with; `None`: the base alone.
    pub adapter: Option<&'a ServedAdapter>,
}

/// Consecutive rows of a batch served with one adapter (or none).
struct AdapterRun<'a> {
    start: usize,
    len: usize,
    adapter: Option<&'a ServedAdapter>,
}

/// The runs of `chunks`' rows, neighbours with the same adapter joined.
fn adapter_runs<'a>(chunks: &[SeqChunk<'a>]) -> Vec<AdapterRun<'a>> {
    let mut runs: Vec<AdapterRun<'a>> = Vec::new();
    let mut row = 0;
    for chunk in chunks {
        let len = chunk.tokens.len();
        match runs.last_mut() {
            Some(last) if same_adapter(last.adapter, chunk.adapter) => last.len += len,
            _ => runs.push(AdapterRun {
                start: row,
                len,
                adapter: chunk.adapter,
            }),
        }
        row += len;
    }
    runs
}

fn same_adapter(a: Option<&ServedAdapter>, b: Option<&ServedAdapter>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => std::ptr::eq(a, b),
        (None, None) => true,
        _ => false,
    }
}

/// `base_out` of projection `module` of layer `layer` plus, on each run's rows, its
/// adapter's update of `input`. The base's work stays one matmul for the whole batch.
fn add_adapter_updates(
    runs: &[AdapterRun<'_>],
    layer: usize,
    module: usize,
    input: &Tensor,
    base_out: Tensor,
) -> Result<Tensor, ZooError> {
    if runs.iter().all(|run| run.adapter.is_none()) {
        return Ok(base_out);
    }
    if uses_fused_kernels(&base_out) && uses_fused_kernels(input) {
        let cpu_runs: Vec<RowRun<'_>> = runs
            .iter()
            .filter_map(|run| {
                let (down_t, up_t) = run.adapter?.factors(layer, module)?;
                Some(RowRun {
                    start: run.start,
                    len: run.len,
                    down_t,
                    up_t,
                })
            })
            .collect();
        if cpu_runs.is_empty() {
            return Ok(base_out);
        }
        return Ok(add_segmented_lora(&base_out, input, &cpu_runs)?);
    }
    let mut pieces = Vec::with_capacity(runs.len());
    for run in runs {
        let base = base_out.narrow(0, run.start, run.len)?;
        let delta = match run.adapter {
            Some(adapter) => adapter.delta(layer, module, &input.narrow(0, run.start, run.len)?)?,
            None => None,
        };
        pieces.push(match delta {
            Some(delta) => (base + delta.to_dtype(base_out.dtype())?)?,
            None => base,
        });
    }
    match pieces.len() {
        1 => Ok(pieces.remove(0)),
        _ => Ok(Tensor::cat(&pieces, 0)?),
    }
}

impl CausalLm {
    /// A cache for a sequence of up to the model's whole context.
    pub fn new_cache(&self) -> KvCache {
        self.new_cache_for(self.decoder.cfg.max_position_embeddings)
    }

    /// A cache for a sequence of up to `max_tokens` tokens: it allocates
    /// `min(max_tokens, KV_CACHE_CHUNK_TOKENS)` tokens of room at first and grows by as
    /// much, so it never holds more than [`CausalLm::kv_cache_bytes`]`(max_tokens)`.
    pub fn new_cache_for(&self, max_tokens: usize) -> KvCache {
        let chunk = max_tokens.clamp(1, KV_CACHE_CHUNK_TOKENS);
        KvCache {
            layers: (0..self.decoder.layers.len())
                .map(|_| candle_nn::kv_cache::KvCache::new(2, chunk))
                .collect(),
            len: 0,
        }
    }

    /// Most bytes a cache made by `new_cache_for(tokens)` allocates once it holds
    /// `tokens` tokens (f32 keys and values of every layer, room rounded up to a chunk).
    pub fn kv_cache_bytes(&self, tokens: usize) -> usize {
        let c = &self.decoder.cfg;
        let per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4;
        let room = if tokens <= KV_CACHE_CHUNK_TOKENS {
            tokens
        } else {
            tokens.div_ceil(KV_CACHE_CHUNK_TOKENS) * KV_CACHE_CHUNK_TOKENS
        };
        per_token.saturating_mul(room)
    }

    /// Appends each chunk's tokens at positions `cache.len()..` and returns the logits
    /// (f32, length V) of each chunk's last token, each chunk with its own adapter.
    pub fn forward_cached(&self, chunks: &mut [SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ZooError> {
        let dec = &self.decoder;
        let c = &dec.cfg;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let group = heads / kv_heads;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for chunk in chunks.iter() {
            let start = chunk.cache.len;
            if chunk.tokens.is_empty() {
                return Err(ZooError::Unsupported(
                    "a chunk needs at least one token".into(),
                ));
            }
            if chunk.cache.layers.len() != dec.layers.len() {
                return Err(ZooError::Unsupported(
                    "the cache belongs to another model".into(),
                ));
            }
            let end = start + chunk.tokens.len();
            if end > c.max_position_embeddings {
                return Err(ZooError::Unsupported(format!(
                    "{end} tokens exceed the context of {} tokens",
                    c.max_position_embeddings
                )));
            }
            ids.extend_from_slice(chunk.tokens);
            positions.extend(start..end);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let n = ids.len();
        let runs = adapter_runs(chunks);
        let tables = dec.rotary_tables(&positions)?;
        let ids = Tensor::from_vec(ids, n, &dec.device)?;
        let mut x = dec.embed(&ids, Pass::Eval)?.detach();
        for (li, layer) in dec.layers.iter().enumerate() {
            let adjust = |module: usize, input: &Tensor, out: Tensor| {
                add_adapter_updates(&runs, li, module, input, out)
            };
            let qkv = layer.qkv_with(&dec.cfg, &x, &tables, Pass::Eval, &adjust)?;
            let mut contexts = Vec::with_capacity(chunks.len());
            let mut row = 0;
            for chunk in chunks.iter_mut() {
                let len = chunk.tokens.len();
                let offset = chunk.cache.len;
                let (k, v) = chunk.cache.append(
                    li,
                    &qkv.k.narrow(0, row, len)?,
                    &qkv.v.narrow(0, row, len)?,
                )?;
                let total = offset + len;
                // [len, h, d] → [kv, group·len, d] (query heads of a group are adjacent).
                let q = qkv
                    .q
                    .narrow(0, row, len)?
                    .transpose(0, 1)?
                    .contiguous()?
                    .reshape((kv_heads, group * len, d))?;
                let scores = q.matmul(&k.t()?)?.reshape((1, heads, len, total))?;
                let mask = CausalPrefix {
                    key_len: vec![total],
                    offset,
                };
                let probs =
                    masked_softmax(&scores, &mask)?.reshape((kv_heads, group * len, total))?;
                let context = probs
                    .matmul(&v)?
                    .reshape((heads, len, d))?
                    .transpose(0, 1)?
                    .reshape((len, heads * d))?;
                contexts.push(context);
                row += len;
            }
            let context = Tensor::cat(&contexts, 0)?;
            x = layer
                .finish_with(&dec.cfg, &x, &context, Pass::Eval, &adjust)?
                .detach();
        }
        let mut last_rows = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks.iter_mut() {
            row += chunk.tokens.len();
            last_rows.push((row - 1) as u32);
            chunk.cache.len += chunk.tokens.len();
        }
        let last_rows = Tensor::from_vec(last_rows, chunks.len(), &dec.device)?;
        let last = dec.final_norm(&x.index_select(&last_rows, 0)?, Pass::Eval)?;
        Ok(self.lm_head(&last)?.detach().to_vec2::<f32>()?)
    }
}
