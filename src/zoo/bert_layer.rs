//! One encoder layer's forward (attention, then the feed-forward block, post-norm as BERT
//! and DistilBERT are), on packed rows; the encoder runs them, checkpointed or not.

use candle_core::Tensor;

use super::{dropout, masked_attention, Layer};
use crate::zoo::config::{EncoderArch, EncoderConfig, HiddenAct};
use crate::zoo::cpu::varlen_attention::{varlen_attention, AttentionSpec};
use crate::zoo::packing::Packing;
use crate::zoo::ZooError;

impl Layer {
    /// `l` for the rows `first_rows` of its output only (see `Encoder::forward_first_tokens`):
    /// one query per sequence against its keys, on the padded layout, which at one query
    /// row is a few thousand multiply-adds per head.
    pub(super) fn forward_first_rows(
        &self,
        cfg: &EncoderConfig,
        x: &Tensor,
        mask: &Tensor,
        first_rows: &Tensor,
        packing: &Packing,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let (b, _, _, t) = mask.dims4()?;
        let (h, heads, d) = (cfg.hidden_size, cfg.num_heads, cfg.head_dim());
        let attention_dropout = if train { cfg.attention_dropout } else { 0.0 };
        let first = x.index_select(first_rows, 0)?;
        let q = (self.q.forward(&first, train)? * (1.0 / (d as f64).sqrt()))?
            .reshape((b, heads, 1, d))?;
        let k = padded_heads(cfg, packing, &self.k.forward(x, train)?, (b, t))?;
        let v = padded_heads(cfg, packing, &self.v.forward(x, train)?, (b, t))?;
        let context = masked_attention(&q, &k, &v, mask, attention_dropout)?.reshape((b, h))?;
        self.tail(cfg, &context, &first, train)
    }

    pub(super) fn forward(
        &self,
        cfg: &EncoderConfig,
        x: &Tensor,
        mask: &Tensor,
        packing: &Packing,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let attention_dropout = if train { cfg.attention_dropout } else { 0.0 };
        let context = if crate::zoo::fused::uses_fused_kernels(x) {
            let (q, k, v) = (
                self.q.forward(x, train)?,
                self.k.forward(x, train)?,
                self.v.forward(x, train)?,
            );
            let spec =
                AttentionSpec::encoder(cfg.hidden_size, cfg.num_heads, attention_dropout as f32);
            varlen_attention(&q, &k, &v, &packing.spans, spec)?
        } else {
            self.padded_attention(cfg, x, mask, packing, attention_dropout, train)?
        };
        self.tail(cfg, &context, x, train)
    }

    /// Everything after attention: output projection, residual and norm, feed-forward,
    /// residual and norm.
    fn tail(
        &self,
        cfg: &EncoderConfig,
        context: &Tensor,
        x: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let mut attn = self.attn_out.forward(context, train)?;
        if cfg.arch == EncoderArch::Bert {
            attn = dropout(&attn, cfg.hidden_dropout, train)?;
        }
        let x = self.attn_ln.forward(&(attn + x)?)?;
        let inner = self.ffn_in.forward(&x, train)?;
        let inner = match cfg.hidden_act {
            HiddenAct::GeluErf => crate::zoo::fused::gelu_erf(&inner)?,
            HiddenAct::GeluTanh => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let out = dropout(
            &self.ffn_out.forward(&inner, train)?,
            cfg.hidden_dropout,
            train,
        )?;
        self.out_ln.forward(&(out + x)?)
    }

    /// Attention on the padded `[B, heads, T, d]` layout with an additive mask, for devices
    /// without the packed CPU kernel; returns the context as packed `[N, H]` rows.
    fn padded_attention(
        &self,
        cfg: &EncoderConfig,
        x: &Tensor,
        mask: &Tensor,
        packing: &Packing,
        attention_dropout: f64,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let (b, _, _, t) = mask.dims4()?;
        let h = cfg.hidden_size;
        let d = cfg.head_dim();
        let split = |y: Tensor| padded_heads(cfg, packing, &y, (b, t));
        let q = split((self.q.forward(x, train)? * (1.0 / (d as f64).sqrt()))?)?;
        let k = split(self.k.forward(x, train)?)?;
        let v = split(self.v.forward(x, train)?)?;
        let context = masked_attention(&q, &k, &v, mask, attention_dropout)?
            .transpose(1, 2)?
            .reshape((b * t, h))?;
        Ok(context.index_select(&packing.rows, 0)?)
    }
}

/// Packed `[N, H]` rows → `[B, heads, T, d]` on the padded layout, zeros at padding.
fn padded_heads(
    cfg: &EncoderConfig,
    packing: &Packing,
    packed: &Tensor,
    (b, t): (usize, usize),
) -> Result<Tensor, ZooError> {
    let (heads, d) = (cfg.num_heads, cfg.head_dim());
    Ok(packing
        .pad(packed, (b, t, cfg.hidden_size))?
        .reshape((b, t, heads, d))?
        .transpose(1, 2)?
        .contiguous()?)
}
