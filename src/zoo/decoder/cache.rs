//! Inference with caller-owned KV caches: `forward_cached` advances several sequences at
//! once. Their new rows go through every linear layer together (one matmul per
//! projection for the whole batch); attention runs per sequence against its own cache:
//! on the CPU one fused call per layer over preallocated caches
//! (`zoo::cpu::cached_attention`), elsewhere candle ops per sequence over chunk-grown ones.
//! Nothing here needs autograd, so it works on detached tensors.

use candle_core::{DType, Tensor};

use super::adapter::ServedAdapter;
use super::host_cache::{HostLayer, HostLayers, HostRows, KvValues};
use super::kernels::{masked_softmax, CausalPrefix};
use super::lm::CausalLm;
use super::model::Qkv;
use crate::zoo::cpu::cached_attention::{cached_attention, HeadShape};
use crate::zoo::cpu::segmented_lora::{add_segmented_lora, RowRun};
use crate::zoo::fused::{generic_ops_only, uses_fused_kernels, with_cpu_values};
use crate::zoo::linear::Pass;
use crate::zoo::ZooError;

/// Tokens a device cache grows by. Each growth copies the cache once (so a sequence of
/// `t` tokens is copied `t / 256` times instead of once per token, which fragmented the
/// heap by gigabytes on long generations) and leaves at most 255 tokens of unused room.
pub const KV_CACHE_CHUNK_TOKENS: usize = 256;

/// Keys and values of one sequence.
#[derive(Debug, Clone)]
pub struct KvCache {
    store: KvStore,
    len: usize,
}

#[derive(Debug, Clone)]
enum KvStore {
    /// CPU (the fused kernels): per layer, keys and values `[kv_heads, capacity, d]`,
    /// allocated whole when the sequence starts (zeroed pages the OS maps as they are
    /// written), written in place, never copied.
    Host { layers: HostLayers, capacity: usize },
    /// Other devices: per layer `[1, kv_heads, room, d]`, grown in chunks (candle-nn's
    /// cache) and never beyond what it was created for.
    Device(Vec<candle_nn::kv_cache::KvCache>),
}

impl KvCache {
    /// Tokens cached so far (the position of the next token).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the cache lives in host memory for the CPU kernels.
    pub fn is_host(&self) -> bool {
        matches!(self.store, KvStore::Host { .. })
    }

    fn layer_count(&self) -> usize {
        match &self.store {
            KvStore::Host { layers, .. } => layers.len(),
            KvStore::Device(layers) => layers.len(),
        }
    }

    /// What a host cache keeps its keys and values as (`None`: a device cache).
    pub fn host_values(&self) -> Option<KvValues> {
        match &self.store {
            KvStore::Host { layers, .. } => Some(layers.values()),
            KvStore::Device(_) => None,
        }
    }

    /// Bytes allocated for keys and values (capacity, used or not).
    pub fn bytes(&self) -> usize {
        match &self.store {
            KvStore::Host { layers, .. } => layers.bytes(),
            KvStore::Device(layers) => layers
                .iter()
                .flat_map(|layer| [layer.k_cache().all_data(), layer.v_cache().all_data()])
                .flatten()
                .map(|t| t.elem_count() * t.dtype().size_in_bytes())
                .sum(),
        }
    }

    /// Appends `k`/`v` `[new, kv, d]` to device layer `i`; returns the full `[kv, len, d]`
    /// views.
    fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor), ZooError> {
        let KvStore::Device(layers) = &mut self.store else {
            return Err(ZooError::Unsupported(
                "a host cache on the device path".into(),
            ));
        };
        let (k, v) = (
            k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
            v.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
        );
        let (k, v) = layers[i].append(&k, &v)?;
        Ok((k.squeeze(0)?, v.squeeze(0)?))
    }

    /// Layer `i` of a host cache, for `rows` new tokens.
    fn host_rows(&mut self, i: usize, rows: usize) -> Result<HostRows<'_>, ZooError> {
        let offset = self.len;
        match &mut self.store {
            KvStore::Host { layers, capacity } => Ok(match layers {
                HostLayers::F32(layers) => HostRows::F32(layers[i].rows(rows, offset, *capacity)),
                HostLayers::Bf16(layers) => HostRows::Bf16(layers[i].rows(rows, offset, *capacity)),
            }),
            KvStore::Device(_) => Err(ZooError::Unsupported(
                "a device cache on the CPU kernels' path".into(),
            )),
        }
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

    /// A cache for a sequence of up to `max_tokens` tokens, never holding more than
    /// [`CausalLm::kv_cache_bytes`]`(max_tokens)`. On the CPU it is allocated whole for the
    /// fused kernels (pages mapped as tokens are written); elsewhere it holds
    /// `min(max_tokens, KV_CACHE_CHUNK_TOKENS)` tokens of room at first and grows by as much.
    pub fn new_cache_for(&self, max_tokens: usize) -> KvCache {
        let max_tokens = max_tokens.max(1);
        let layer_count = self.decoder.layers.len();
        let store = if self.host_caches() {
            let c = &self.decoder.cfg;
            let values = c.num_key_value_heads * max_tokens * c.head_dim;
            let layers = match self.decoder.kv_values {
                KvValues::F32 => HostLayers::F32(HostLayer::layers(layer_count, values)),
                KvValues::Bf16 => HostLayers::Bf16(HostLayer::layers(layer_count, values)),
            };
            KvStore::Host {
                layers,
                capacity: max_tokens,
            }
        } else {
            let chunk = max_tokens.min(KV_CACHE_CHUNK_TOKENS);
            KvStore::Device(
                (0..layer_count)
                    .map(|_| candle_nn::kv_cache::KvCache::new(2, chunk))
                    .collect(),
            )
        };
        KvCache { store, len: 0 }
    }

    /// Whether this model's caches live in host memory for the CPU kernels.
    fn host_caches(&self) -> bool {
        self.decoder.device.is_cpu() && !generic_ops_only()
    }

    /// Most bytes a cache made by `new_cache_for(tokens)` allocates once it holds
    /// `tokens` tokens (keys and values of every layer, f32 or as a host cache keeps them,
    /// room rounded up to a device cache's chunk; a host cache takes exactly `tokens`).
    pub fn kv_cache_bytes(&self, tokens: usize) -> usize {
        let c = &self.decoder.cfg;
        let value_bytes = match self.host_caches() {
            true => self.decoder.kv_values.bytes(),
            false => 4,
        };
        let per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * value_bytes;
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
        Ok(self.forward_cached_logits(chunks)?.to_vec2::<f32>()?)
    }

    /// [`Self::forward_cached`]'s logits as the `[chunks, V]` tensor the output layer wrote
    /// (a server reads them in place rather than copying them into a vector per row).
    pub fn forward_cached_logits(&self, chunks: &mut [SeqChunk<'_>]) -> Result<Tensor, ZooError> {
        let dec = &self.decoder;
        let c = &dec.cfg;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for chunk in chunks.iter() {
            let start = chunk.cache.len;
            if chunk.tokens.is_empty() {
                return Err(ZooError::Unsupported(
                    "a chunk needs at least one token".into(),
                ));
            }
            if chunk.cache.layer_count() != dec.layers.len() {
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
            return Ok(Tensor::zeros((0, c.vocab_size), DType::F32, &dec.device)?);
        }
        let host = chunks[0].cache.is_host();
        if chunks.iter().any(|chunk| chunk.cache.is_host() != host) {
            return Err(ZooError::Unsupported(
                "host and device caches in one batch".into(),
            ));
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
            let context = if host {
                self.host_attention(li, &qkv, chunks)?
            } else {
                self.device_attention(li, &qkv, chunks)?
            };
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
        Ok(self.lm_head(&last)?.detach())
    }

    /// Layer `li`'s attention over host caches: one fused call for the whole batch.
    fn host_attention(
        &self,
        li: usize,
        qkv: &Qkv,
        chunks: &mut [SeqChunk<'_>],
    ) -> Result<Tensor, ZooError> {
        let c = &self.decoder.cfg;
        let shape = HeadShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        };
        let n = qkv.q.dim(0)?;
        let f32_values = |t: &Tensor| -> Result<Tensor, ZooError> {
            Ok(t.to_dtype(DType::F32)?.flatten_from(1)?.contiguous()?)
        };
        let (q, k, v) = (
            f32_values(&qkv.q)?,
            f32_values(&qkv.k)?,
            f32_values(&qkv.v)?,
        );
        let rows = chunks
            .iter_mut()
            .map(|chunk| chunk.cache.host_rows(li, chunk.tokens.len()))
            .collect::<Result<Vec<_>, _>>()?;
        // Every cache of a batch is the same model's, so they keep the same values.
        let (mut f32_seqs, mut bf16_seqs) = (Vec::new(), Vec::new());
        for seq in rows {
            match seq {
                HostRows::F32(seq) => f32_seqs.push(seq),
                HostRows::Bf16(seq) => bf16_seqs.push(seq),
            }
        }
        if !f32_seqs.is_empty() && !bf16_seqs.is_empty() {
            return Err(ZooError::Unsupported(
                "f32 and bf16 caches in one batch".into(),
            ));
        }
        let context = with_cpu_values(&q, "cached attention", |q| {
            with_cpu_values(&k, "cached attention", |k| {
                with_cpu_values(&v, "cached attention", |v| match f32_seqs.is_empty() {
                    true => cached_attention(q, k, v, &mut bf16_seqs, shape),
                    false => cached_attention(q, k, v, &mut f32_seqs, shape),
                })
            })
        })?;
        Ok(Tensor::from_vec(
            context,
            (n, shape.heads * shape.head_dim),
            &self.decoder.device,
        )?)
    }

    /// Layer `li`'s attention over device caches, sequence by sequence in candle ops.
    fn device_attention(
        &self,
        li: usize,
        qkv: &Qkv,
        chunks: &mut [SeqChunk<'_>],
    ) -> Result<Tensor, ZooError> {
        let c = &self.decoder.cfg;
        let (heads, kv_heads, d) = (c.num_attention_heads, c.num_key_value_heads, c.head_dim);
        let group = heads / kv_heads;
        let mut contexts = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks.iter_mut() {
            let len = chunk.tokens.len();
            let offset = chunk.cache.len;
            let (k, v) =
                chunk
                    .cache
                    .append(li, &qkv.k.narrow(0, row, len)?, &qkv.v.narrow(0, row, len)?)?;
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
            let probs = masked_softmax(&scores, &mask)?.reshape((kv_heads, group * len, total))?;
            let context = probs
                .matmul(&v)?
                .reshape((heads, len, d))?
                .transpose(0, 1)?
                .reshape((len, heads * d))?;
            contexts.push(context);
            row += len;
        }
        Ok(Tensor::cat(&contexts, 0)?)
    }
}
