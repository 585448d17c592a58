//! Inference with caller-owned KV caches: `forward_cached` advances several sequences at
//! once. Their new rows go through every linear layer together (one matmul per
//! projection for the whole batch); attention runs per sequence against its own cache.
//! Nothing here needs autograd, so it works on detached tensors.

use candle_core::Tensor;

use super::kernels::{masked_softmax, CausalPrefix};
use super::lm::CausalLm;
use crate::zoo::ZooError;

/// Keys and values of one sequence, per layer `[1, n_kv_heads, len, head_dim]`.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
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

    /// Bytes held by the cached keys and values.
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .flatten()
            .map(|(k, v)| 4 * (k.elem_count() + v.elem_count()))
            .sum()
    }

    /// Appends `k`/`v` `[new, kv, d]` to layer `i`; returns the full `[kv, len, d]` tensors.
    fn append(&mut self, i: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor), ZooError> {
        let (k, v) = (
            k.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
            v.transpose(0, 1)?.unsqueeze(0)?.contiguous()?,
        );
        let entry = match self.layers[i].take() {
            Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
            None => (k, v),
        };
        let full = (entry.0.squeeze(0)?, entry.1.squeeze(0)?);
        self.layers[i] = Some(entry);
        Ok(full)
    }
}

/// New tokens of one sequence and the cache they extend.
pub struct SeqChunk<'a> {
    pub tokens: &'a [u32],
    pub cache: &'a mut KvCache,
}

impl CausalLm {
    pub fn new_cache(&self) -> KvCache {
        KvCache {
            layers: vec![None; self.decoder.layers.len()],
            len: 0,
        }
    }

    /// Appends each chunk's tokens at positions `cache.len()..` and returns the logits
    /// (f32, length V) of each chunk's last token.
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
        let tables = dec.rotary_tables(&positions)?;
        let ids = Tensor::from_vec(ids, n, &dec.device)?;
        let mut x = dec.embed(&ids)?.detach();
        for (li, layer) in dec.layers.iter().enumerate() {
            let qkv = dec.qkv(layer, &x, &tables, false)?;
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
            x = dec.finish_layer(layer, &x, &context, false)?.detach();
        }
        let mut last_rows = Vec::with_capacity(chunks.len());
        let mut row = 0;
        for chunk in chunks.iter_mut() {
            row += chunk.tokens.len();
            last_rows.push((row - 1) as u32);
            chunk.cache.len += chunk.tokens.len();
        }
        let last_rows = Tensor::from_vec(last_rows, chunks.len(), &dec.device)?;
        let last = dec.final_norm(&x.index_select(&last_rows, 0)?)?;
        Ok(self.lm_head(&last)?.detach().to_vec2::<f32>()?)
    }
}
