//! Tokenization and batching for encoder models.
//!
//! Real checkpoints bake padding and truncation into `tokenizer.json` (MiniLM-L6: Fixed(128)
//! padding, truncation 128). Left on, every sequence becomes 128 tokens and long texts lose
//! their final [SEP]; we disable both and pad per batch in [`collate`] instead.

use candle_core::{Device, Tensor};
use std::path::Path;

use super::ZooError;

pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    pad_id: u32,
}

impl TextTokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self, ZooError> {
        Self::from_file(&dir.join("tokenizer.json"))
    }

    pub fn from_file(path: &Path) -> Result<Self, ZooError> {
        let mut inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| ZooError::Tokenizer(format!("{}: {e}", path.display())))?;
        let pad_id = inner
            .get_padding()
            .map(|p| p.pad_id)
            .or_else(|| inner.token_to_id("[PAD]"))
            .or_else(|| inner.token_to_id("<pad>"))
            .unwrap_or(0);
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        Ok(Self { inner, pad_id })
    }

    /// Token ids with special tokens; longer sequences keep their first `max_len - 1`
    /// tokens and the final special token ([SEP]).
    pub fn encode(&self, text: &str, max_len: usize) -> Result<Vec<u32>, ZooError> {
        let encoding = self
            .inner
            .encode(text, true)
            .map_err(|e| ZooError::Tokenizer(e.to_string()))?;
        let mut ids = encoding.get_ids().to_vec();
        if ids.len() > max_len {
            match ids.last().copied() {
                Some(last) if max_len >= 2 => {
                    ids.truncate(max_len - 1);
                    ids.push(last);
                }
                _ => ids.truncate(max_len),
            }
        }
        Ok(ids)
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// A right-padded batch of token ids.
#[derive(Debug, Clone)]
pub struct EncodedBatch {
    /// `[B, T]` u32.
    pub input_ids: Tensor,
    /// `[B, T]` u32, 1 for real tokens, 0 for padding.
    pub attention_mask: Tensor,
    /// Real (non-padding) tokens in the batch.
    pub n_tokens: usize,
}

/// Pads every sequence to the longest one of this batch (dynamic padding).
pub fn collate(seqs: &[&[u32]], pad_id: u32, device: &Device) -> Result<EncodedBatch, ZooError> {
    let width = seqs.iter().map(|s| s.len()).max().unwrap_or(0);
    if seqs.is_empty() || width == 0 {
        return Err(ZooError::Unsupported(
            "cannot collate an empty batch".into(),
        ));
    }
    let mut ids = Vec::with_capacity(seqs.len() * width);
    let mut mask = Vec::with_capacity(seqs.len() * width);
    let mut n_tokens = 0;
    for seq in seqs {
        n_tokens += seq.len();
        ids.extend_from_slice(seq);
        mask.extend(std::iter::repeat_n(1u32, seq.len()));
        ids.extend(std::iter::repeat_n(pad_id, width - seq.len()));
        mask.extend(std::iter::repeat_n(0u32, width - seq.len()));
    }
    let shape = (seqs.len(), width);
    Ok(EncodedBatch {
        input_ids: Tensor::from_vec(ids, shape, device)?,
        attention_mask: Tensor::from_vec(mask, shape, device)?,
        n_tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collate_pads_to_longest_and_counts_real_tokens() {
        let a = [2u32, 10, 11, 3];
        let b = [2u32, 12, 3];
        let batch = collate(&[&a, &b], 0, &Device::Cpu).expect("collate");
        assert_eq!(batch.input_ids.dims(), &[2, 4]);
        assert_eq!(batch.n_tokens, 7);
        let ids: Vec<Vec<u32>> = batch.input_ids.to_vec2().expect("ids");
        assert_eq!(ids[1], vec![2, 12, 3, 0]);
        let mask: Vec<Vec<u32>> = batch.attention_mask.to_vec2().expect("mask");
        assert_eq!(mask, vec![vec![1, 1, 1, 1], vec![1, 1, 1, 0]]);
    }
}
