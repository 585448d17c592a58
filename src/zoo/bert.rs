//! The differentiable BERT-family encoder (BERT, MiniLM, DistilBERT) and its loader.
//!
//! Only ops with a backward: LayerNorm and `gelu_erf` (fused on CPU, composed elsewhere),
//! attention over the packed batch on CPU (`cpu/varlen_attention.rs`: one op that
//! recomputes its probabilities in the backward) or batched `[B, H, T, d]` with an additive
//! padding mask on other devices, and dropout in train mode only.

use candle_core::{DType, Tensor, D};
use std::collections::HashMap;
use std::sync::Arc;

use super::bert_names::names;
use super::config::{EncoderArch, EncoderConfig};
use super::cpu::embedding::{self, RowGradients};
use super::linear::{Param, ServedAdapters, TrainLinear};
pub use super::loader::{ParamBuilder, Tuning};
use super::packing::Packing;
use super::recompute::{checkpointed, RecomputedGradients, Segment};
use super::ZooError;

#[path = "bert_layer.rs"]
mod layer;

/// LayerNorm weights; the forward is composed from primitive ops (the fused one has no
/// backward).
#[derive(Debug, Clone)]
pub struct LayerNormW {
    pub weight: Param,
    pub bias: Param,
    pub eps: f64,
}

impl LayerNormW {
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        let x = x.to_dtype(DType::F32)?;
        if super::fused::fused_layer_norm_applies(&x) {
            return Ok(super::fused::layer_norm(
                &x,
                self.weight.tensor(),
                self.bias.tensor(),
                self.eps,
            )?);
        }
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(self.weight.tensor())?
            .broadcast_add(self.bias.tensor())?)
    }

    fn freeze(&mut self) {
        self.weight.freeze();
        self.bias.freeze();
    }
}

pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor, ZooError> {
    if train && p > 0.0 {
        if super::fused::uses_fused_kernels(x) {
            return Ok(super::cpu::dropout::dropout(x, p as f32)?);
        }
        Ok(super::cpu::dropout::seeded_dropout_any_device(x, p as f32)?)
    } else {
        Ok(x.clone())
    }
}

#[derive(Clone)]
pub(super) struct Layer {
    q: TrainLinear,
    k: TrainLinear,
    v: TrainLinear,
    attn_out: TrainLinear,
    attn_ln: LayerNormW,
    ffn_in: TrainLinear,
    ffn_out: TrainLinear,
    out_ln: LayerNormW,
}

impl Layer {
    /// The trainable tensors the layer reads, for a recomputed layer's gradients.
    fn trainable_tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for lin in [
            &self.q,
            &self.k,
            &self.v,
            &self.attn_out,
            &self.ffn_in,
            &self.ffn_out,
        ] {
            out.extend(lin.trainable_tensors());
        }
        for ln in [&self.attn_ln, &self.out_ln] {
            for p in [&ln.weight, &ln.bias] {
                if p.is_trainable() {
                    out.push(p.tensor().clone());
                }
            }
        }
        out
    }

    fn linears_mut(&mut self) -> [&mut TrainLinear; 6] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.attn_out,
            &mut self.ffn_in,
            &mut self.ffn_out,
        ]
    }
}

pub struct Encoder {
    pub cfg: EncoderConfig,
    word_emb: Param,
    /// Where the trained table's gradient goes as rows, on CPU (`cpu::embedding`).
    word_emb_grads: Option<Arc<RowGradients>>,
    pos_emb: Param,
    type_emb: Option<Param>,
    emb_ln: LayerNormW,
    layers: Vec<Layer>,
    /// Set by [`Self::enable_gradient_checkpointing`]: where recomputed layers leave their
    /// parameters' gradients.
    checkpointing: Option<Arc<RecomputedGradients>>,
}

impl Encoder {
    pub fn load(cfg: &EncoderConfig, pb: &mut ParamBuilder) -> Result<Self, ZooError> {
        let h = cfg.hidden_size;
        let (word_emb, word_emb_grads) =
            pb.embedding_table("embeddings.word_embeddings.weight", &[cfg.vocab_size, h])?;
        let pos_emb = pb.param(
            "embeddings.position_embeddings.weight",
            &[cfg.max_position_embeddings, h],
            true,
        )?;
        let type_emb = if cfg.type_vocab_size > 0 {
            let shape = [cfg.type_vocab_size, h];
            Some(pb.param("embeddings.token_type_embeddings.weight", &shape, true)?)
        } else {
            None
        };
        let emb_ln = pb.layer_norm("embeddings.LayerNorm", h, cfg.layer_norm_eps)?;
        let n = names(cfg.arch);
        let mut layers = Vec::with_capacity(cfg.num_layers);
        for i in 0..cfg.num_layers {
            let p = |m: &str| format!("{}.{i}.{m}", n.layer);
            let eps = cfg.layer_norm_eps;
            layers.push(Layer {
                q: pb.linear(&p(n.q), h, h)?,
                k: pb.linear(&p(n.k), h, h)?,
                v: pb.linear(&p(n.v), h, h)?,
                attn_out: pb.linear(&p(n.attn_out), h, h)?,
                attn_ln: pb.layer_norm(&p(n.attn_ln), h, eps)?,
                ffn_in: pb.linear(&p(n.ffn_in), h, cfg.intermediate_size)?,
                ffn_out: pb.linear(&p(n.ffn_out), cfg.intermediate_size, h)?,
                out_ln: pb.layer_norm(&p(n.out_ln), h, eps)?,
            });
        }
        Ok(Self {
            cfg: cfg.clone(),
            word_emb,
            word_emb_grads,
            pos_emb,
            type_emb,
            emb_ln,
            layers,
            checkpointing: None,
        })
    }

    /// Gradient checkpointing: training passes keep each layer's input and output only and
    /// recompute the layer in backward (`zoo::recompute`); the last layer of
    /// [`Self::forward_first_tokens`], which runs on the [CLS] rows alone, is kept as it is.
    pub fn enable_gradient_checkpointing(&mut self) {
        self.checkpointing = Some(Arc::default());
    }

    /// The sink of the recomputed layers' parameter gradients, with checkpointing on.
    pub fn recomputed_gradients(&self) -> Option<&Arc<RecomputedGradients>> {
        self.checkpointing.as_ref()
    }

    /// `input_ids`, `attention_mask`: `[B, T]` u32 → last hidden state `[B, T, H]` f32
    /// (zeros at padding positions).
    ///
    /// Every per-token op (embeddings, projections, LayerNorm, feed-forward) runs on the
    /// real tokens only, packed as `[N, H]`; only attention sees the padded `[B, T]` layout.
    /// The result is the padded computation's, but with random batches of short texts a
    /// third or more of the rows are padding (44 % on the Rotten Tomatoes split).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        self.forward_with_token_types(input_ids, None, attention_mask, train)
    }

    /// [`Self::forward`] with BERT's segment ids (`token_type_ids`, `[B, T]` u32: 1 for a
    /// pair's second text, as question answering needs); `None` means all zero. Ignored by
    /// DistilBERT, which has no segment embeddings.
    pub fn forward_with_token_types(
        &self,
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let (b, t) = input_ids.dims2()?;
        let packing = Packing::new(attention_mask)?;
        let (x, _) = self.run_layers(
            &self.layers,
            input_ids,
            token_type_ids,
            attention_mask,
            &packing,
            train,
        )?;
        packing.pad(&x, (b, t, self.cfg.hidden_size))
    }

    /// The last hidden state at every sequence's position 0 (its [CLS]), `[B, H]`: all a
    /// sequence classifier reads, and what `forward(..).narrow(1, 0, 1)` gives. No other row
    /// of the last layer's output is read, so that layer projects keys and values from every
    /// token but runs its query, attention output, feed-forward and norms on the `B` first
    /// rows alone: for MiniLM on 27-token texts that drops 13 % of the matmul FLOPs of a
    /// forward and backward, and as much element-wise work.
    pub fn forward_first_tokens(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let packing = Packing::new(attention_mask)?;
        let (Some((last, before)), Some(first_rows)) =
            (self.layers.split_last(), packing.first_rows.as_ref())
        else {
            let (b, t) = input_ids.dims2()?;
            let (x, _) = self.run_layers(
                &self.layers,
                input_ids,
                None,
                attention_mask,
                &packing,
                train,
            )?;
            let hidden = packing.pad(&x, (b, t, self.cfg.hidden_size))?;
            return Ok(hidden.narrow(1, 0, 1)?.squeeze(1)?);
        };
        let (x, mask) =
            self.run_layers(before, input_ids, None, attention_mask, &packing, train)?;
        last.forward_first_rows(&self.cfg, &x, &mask, first_rows, &packing, train)
    }

    /// Embeddings, then `layers`, over the packed real tokens: `[N, H]`, and the additive
    /// padding mask `[B, 1, 1, T]` (0 for real tokens, f32::MIN for padding, as transformers).
    fn run_layers(
        &self,
        layers: &[Layer],
        input_ids: &Tensor,
        token_type_ids: Option<&Tensor>,
        attention_mask: &Tensor,
        packing: &Packing,
        train: bool,
    ) -> Result<(Tensor, Tensor), ZooError> {
        let (b, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            return Err(ZooError::Unsupported(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        let ids = input_ids.flatten_all()?.index_select(&packing.rows, 0)?;
        // Rows of a bf16 frozen table (mixed precision) are cast: the sums run in f32.
        let tokens = match &self.word_emb_grads {
            Some(sink) => embedding::lookup(self.word_emb.tensor(), &ids, sink)?,
            None => self.word_emb.tensor().index_select(&ids, 0)?,
        }
        .to_dtype(DType::F32)?;
        let positions = self.pos_emb.tensor().index_select(&packing.positions, 0)?;
        let mut x = tokens.add(&positions.to_dtype(DType::F32)?)?;
        match (&self.type_emb, token_type_ids) {
            (Some(types), Some(type_ids)) => {
                let packed = type_ids.flatten_all()?.index_select(&packing.rows, 0)?;
                x = x.add(
                    &types
                        .tensor()
                        .index_select(&packed, 0)?
                        .to_dtype(DType::F32)?,
                )?;
            }
            // token_type_ids are all zero for single-sentence classification.
            (Some(types), None) => {
                x = x.broadcast_add(&types.tensor().narrow(0, 0, 1)?.to_dtype(DType::F32)?)?
            }
            (None, _) => {}
        }
        let mut x = dropout(&self.emb_ln.forward(&x)?, self.cfg.hidden_dropout, train)?;
        let mask = attention_mask.to_dtype(DType::F32)?;
        let mask = ((mask.affine(-1.0, 1.0)?) * f32::MIN as f64)?.reshape((b, 1, 1, t))?;
        for layer in layers {
            x = match (&self.checkpointing, train) {
                (Some(sink), true) => {
                    let (cfg, l) = (self.cfg.clone(), layer.clone());
                    let (mask, packing) = (mask.clone(), packing.clone());
                    let segment: Segment =
                        Arc::new(move |x| l.forward(&cfg, x, &mask, &packing, true));
                    checkpointed(&x, segment, layer.trainable_tensors(), sink)?
                }
                _ => layer.forward(&self.cfg, &x, &mask, packing, train)?,
            };
        }
        Ok((x, mask))
    }

    /// Every tensor with the HF name transformers writes (`bert.`/`distilbert.` prefix),
    /// LoRA adapters folded in.
    pub fn merged_tensors(&self, out: &mut HashMap<String, Tensor>) -> Result<(), ZooError> {
        let prefix = match self.cfg.arch {
            EncoderArch::Bert => "bert.",
            EncoderArch::DistilBert => "distilbert.",
        };
        let mut put = |name: String, t: &Tensor| {
            out.insert(format!("{prefix}{name}"), t.clone());
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            self.word_emb.tensor(),
        );
        put(
            "embeddings.position_embeddings.weight".into(),
            self.pos_emb.tensor(),
        );
        if let Some(types) = &self.type_emb {
            put(
                "embeddings.token_type_embeddings.weight".into(),
                types.tensor(),
            );
        }
        put_ln(&mut put, "embeddings.LayerNorm", &self.emb_ln);
        let n = names(self.cfg.arch);
        for (i, l) in self.layers.iter().enumerate() {
            let p = |m: &str| format!("{}.{i}.{m}", n.layer);
            for (module, lin) in [
                (n.q, &l.q),
                (n.k, &l.k),
                (n.v, &l.v),
                (n.attn_out, &l.attn_out),
                (n.ffn_in, &l.ffn_in),
                (n.ffn_out, &l.ffn_out),
            ] {
                put_linear(&mut put, &p(module), lin)?;
            }
            put_ln(&mut put, &p(n.attn_ln), &l.attn_ln);
            put_ln(&mut put, &p(n.out_ln), &l.out_ln);
        }
        Ok(())
    }

    pub fn merge_lora(&mut self) -> Result<(), ZooError> {
        for l in &mut self.layers {
            for lin in l.linears_mut() {
                lin.merge()?;
            }
        }
        Ok(())
    }

    /// Freezes every parameter for inference (see [`Param::freeze`]), the adapters merged
    /// or kept apart as `adapters` says.
    pub fn freeze(&mut self, adapters: ServedAdapters) -> Result<(), ZooError> {
        self.word_emb_grads = None;
        // Under mixed precision the tables are stored in the linears' dtype too (a full
        // fine-tune's are f32 masters until now); lookups cast their rows to f32.
        let dtype = self.layers.first().and_then(|l| l.q.compute_dtype());
        for param in [&mut self.word_emb, &mut self.pos_emb]
            .into_iter()
            .chain(self.type_emb.as_mut())
        {
            param.freeze();
            if let Some(dtype) = dtype.filter(|d| *d != param.tensor().dtype()) {
                *param = Param::Frozen(param.tensor().to_dtype(dtype)?);
            }
        }
        self.emb_ln.freeze();
        for l in &mut self.layers {
            l.attn_ln.freeze();
            l.out_ln.freeze();
            for lin in l.linears_mut() {
                lin.freeze_as(adapters)?;
            }
        }
        Ok(())
    }

    pub fn parameter_bytes(&self) -> usize {
        let size = |p: &Param| p.tensor().elem_count() * p.tensor().dtype().size_in_bytes();
        let ln = |l: &LayerNormW| size(&l.weight) + size(&l.bias);
        let mut bytes = size(&self.word_emb) + size(&self.pos_emb) + ln(&self.emb_ln);
        bytes += self.type_emb.as_ref().map_or(0, size);
        for l in &self.layers {
            bytes += ln(&l.attn_ln) + ln(&l.out_ln);
            for lin in [&l.q, &l.k, &l.v, &l.attn_out, &l.ffn_in, &l.ffn_out] {
                bytes += lin.parameter_bytes();
            }
        }
        bytes
    }
}

/// `softmax(q·kᵀ + mask)·v` over `[B, heads, T_q, d]` queries and `[B, heads, T, d]` keys
/// and values (the additive `[B, 1, 1, T]` mask hides padding), with dropout on the
/// probabilities: `[B, heads, T_q, d]`.
fn masked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &Tensor,
    attention_dropout: f64,
) -> Result<Tensor, ZooError> {
    let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
    let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
    let probs = dropout(&probs, attention_dropout, attention_dropout > 0.0)?;
    Ok(probs.matmul(v)?)
}

pub fn put_linear(
    put: &mut impl FnMut(String, &Tensor),
    module: &str,
    lin: &TrainLinear,
) -> Result<(), ZooError> {
    put(format!("{module}.weight"), &lin.merged_weight()?);
    if let Some(b) = lin.bias() {
        put(format!("{module}.bias"), b.tensor());
    }
    Ok(())
}

fn put_ln(put: &mut impl FnMut(String, &Tensor), module: &str, ln: &LayerNormW) {
    put(format!("{module}.weight"), ln.weight.tensor());
    put(format!("{module}.bias"), ln.bias.tensor());
}
