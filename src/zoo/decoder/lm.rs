//! `CausalLm`: the public face of the decoder for training (padded batches, autograd) and
//! its trainable-parameter bookkeeping.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use super::adapter::ADAPTER_MODULES;
use super::config::{lora_targets, DecoderConfig, DecoderSpec, QuantKind};
use super::host_cache::KvValues;
use super::kernels::{masked_softmax, CausalPrefix};
use super::model::{layer_linears, Decoder, Layer};
use crate::zoo::cpu::varlen_attention::{varlen_attention, AttentionSpec, Span};
use crate::zoo::fused::uses_fused_kernels;
use crate::zoo::linear::{Pass, TrainLinear};
use crate::zoo::loader::Tuning;
use crate::zoo::quantized_weight::QuantizedWeight;
use crate::zoo::recompute::{checkpointed, RecomputedGradients, Segment};
use crate::zoo::{EncodedBatch, NamedVar, ZooError};

pub struct CausalLm {
    pub(crate) decoder: Decoder,
    pub(crate) tuning: Tuning,
    pub(crate) vars: Vec<NamedVar>,
    /// Set by [`Self::enable_gradient_checkpointing`]: where the recomputed layers leave
    /// their parameters' gradients.
    checkpointing: Option<Arc<RecomputedGradients>>,
}

/// Where the real tokens of a right-padded `[B, T]` batch sit once packed as `[N, …]`.
struct Packing {
    /// Real length of each sequence.
    lens: Vec<usize>,
    /// Flat index `b·T + t` of each real token (None when nothing is padded).
    rows: Option<Tensor>,
    positions: Vec<usize>,
    t: usize,
    /// Each sequence's run of packed rows, for packed attention.
    spans: Arc<[Span]>,
}

impl Packing {
    fn new(attention_mask: &Tensor) -> Result<Self, ZooError> {
        let mask = attention_mask.to_dtype(DType::U32)?.to_vec2::<u32>()?;
        let t = mask.first().map_or(0, Vec::len);
        let (mut lens, mut rows, mut positions) = (Vec::new(), Vec::new(), Vec::new());
        for (b, row) in mask.iter().enumerate() {
            let len = row.iter().take_while(|&&m| m != 0).count();
            if len == 0 || row[len..].iter().any(|&m| m != 0) {
                return Err(ZooError::Unsupported(
                    "the decoder takes right-padded batches with at least one token per row".into(),
                ));
            }
            lens.push(len);
            rows.extend((0..len).map(|i| (b * t + i) as u32));
            positions.extend(0..len);
        }
        let n = rows.len();
        let rows = if n == mask.len() * t {
            None
        } else {
            Some(Tensor::from_vec(rows, n, attention_mask.device())?)
        };
        let spans = lens
            .iter()
            .scan(0, |start, &len| {
                let span = Span { start: *start, len };
                *start += len;
                Some(span)
            })
            .collect();
        Ok(Self {
            lens,
            rows,
            positions,
            t,
            spans,
        })
    }

    /// `[B·T, …]` → packed `[N, …]`.
    fn select(&self, x: &Tensor) -> Result<Tensor, ZooError> {
        match &self.rows {
            Some(rows) => Ok(x.index_select(rows, 0)?),
            None => Ok(x.clone()),
        }
    }

    /// Packed `[N, W]` → `[B, T, W]`, zeros at padding (differentiable).
    fn pad(&self, packed: &Tensor) -> Result<Tensor, ZooError> {
        let (b, width) = (self.lens.len(), packed.dim(1)?);
        let full = match &self.rows {
            Some(rows) => Tensor::zeros((b * self.t, width), packed.dtype(), packed.device())?
                .index_add(rows, packed, 0)?,
            None => packed.clone(),
        };
        Ok(full.reshape((b, self.t, width))?)
    }
}

impl CausalLm {
    pub fn from_pretrained(
        dir: &Path,
        spec: &DecoderSpec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        Self::from_pretrained_in(dir, spec, device, seed, DType::F32)
    }

    /// [`Self::from_pretrained`] with the projections' matmuls in `compute` (bf16: mixed
    /// precision, see `Decoder::load`).
    pub fn from_pretrained_in(
        dir: &Path,
        spec: &DecoderSpec,
        device: &Device,
        seed: u64,
        compute: DType,
    ) -> Result<Self, ZooError> {
        let (cfg, _) = DecoderConfig::from_dir(dir)?;
        let tuning = match &spec.lora {
            Some(l) if l.rank > 0 => Tuning::Lora {
                rank: l.rank,
                alpha: l.alpha,
                dropout: l.dropout,
                targets: lora_targets(l),
            },
            _ if spec.quantize.is_some() => {
                return Err(ZooError::Config(
                    "quantization (QLoRA) needs LoRA: set lora_rank > 0".into(),
                ))
            }
            _ => Tuning::Full,
        };
        let modes = (&tuning, spec.quantize);
        let (decoder, vars) = Decoder::load(dir, &cfg, modes, device, seed, compute)?;
        Ok(Self {
            decoder,
            tuning,
            vars,
            checkpointing: None,
        })
    }

    /// Gradient checkpointing: training passes keep each layer's input and output only,
    /// and recompute the layer in backward (see `zoo::recompute`). After each backward the
    /// trainer moves their gradients into the store ([`Self::drain_recomputed_gradients`]).
    pub fn enable_gradient_checkpointing(&mut self) {
        self.checkpointing = Some(Arc::default());
    }

    /// Moves the gradients recomputed layers left during a backward into its `store`
    /// (nothing without checkpointing).
    pub fn drain_recomputed_gradients(&self, store: &mut GradStore) -> candle_core::Result<()> {
        match &self.checkpointing {
            Some(sink) => sink.drain_into(store),
            None => Ok(()),
        }
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.decoder.cfg
    }

    pub fn device(&self) -> &Device {
        &self.decoder.device
    }

    /// Training/eval forward of a right-padded batch: hidden states after the final norm,
    /// `[B, T, H]` f32 (zeros at padding positions). `train` enables LoRA dropout.
    pub fn hidden_states(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        self.hidden_states_in(batch, Pass::training(train))
    }

    /// [`Self::hidden_states`] in the given pass; [`Pass::BaseOnly`] runs the frozen base
    /// with every adapter off and records no gradient (DPO's reference model under LoRA).
    pub fn hidden_states_in(&self, batch: &EncodedBatch, pass: Pass) -> Result<Tensor, ZooError> {
        let (_, t) = batch.input_ids.dims2()?;
        if t > self.decoder.cfg.max_position_embeddings {
            return Err(ZooError::Unsupported(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.decoder.cfg.max_position_embeddings
            )));
        }
        let packing = Arc::new(Packing::new(&batch.attention_mask)?);
        let ids = packing.select(&batch.input_ids.flatten_all()?)?;
        let tables = Arc::new(self.decoder.rotary_tables(&packing.positions)?);
        let mut x = self.decoder.embed(&ids, pass)?;
        let cfg = Arc::new(self.decoder.cfg.clone());
        for layer in &self.decoder.layers {
            x = match (&self.checkpointing, pass) {
                (Some(sink), Pass::Train) => {
                    let (cfg, l) = (Arc::clone(&cfg), layer.clone());
                    let (packing, tables) = (Arc::clone(&packing), Arc::clone(&tables));
                    let segment: Segment =
                        Arc::new(move |x| layer_forward(&cfg, &l, x, &packing, &tables, pass));
                    checkpointed(&x, segment, layer.trainable_tensors(), sink)?
                }
                _ => layer_forward(&cfg, layer, &x, &packing, &tables, pass)?,
            };
        }
        packing.pad(&self.decoder.final_norm(&x, pass)?)
    }

    /// `lm_head` on selected rows: `[N, H]` → `[N, V]` f32.
    pub fn lm_head(&self, hidden: &Tensor) -> Result<Tensor, ZooError> {
        self.decoder.lm_head.forward(hidden, false)
    }

    /// `lm_head` in the given pass (an adapter on `lm_head` is skipped by `BaseOnly`).
    pub fn lm_head_in(&self, hidden: &Tensor, pass: Pass) -> Result<Tensor, ZooError> {
        self.decoder.lm_head.forward_pass(hidden, pass)
    }

    /// Whether the base weights are frozen (LoRA / QLoRA), so that a [`Pass::BaseOnly`]
    /// pass is the model as it was loaded, however far the adapters have trained.
    pub fn base_is_frozen(&self) -> bool {
        matches!(self.tuning, Tuning::Lora { .. })
    }

    /// A frozen copy of the current weights, adapters folded in, with nothing trainable:
    /// DPO's reference model under full fine-tuning (taken before the first step). Tied
    /// embeddings stay one tensor.
    pub fn frozen_copy(&self) -> Result<Self, ZooError> {
        Ok(Self {
            decoder: self.decoder.frozen_copy()?,
            tuning: Tuning::Full,
            vars: Vec::new(),
            checkpointing: None,
        })
    }

    /// A frozen copy for serving with the projections in `compute`: [`Self::frozen_copy`]
    /// with an untied embedding table stored in `compute` too (a tied one already is), so
    /// under bf16 every matrix takes half the bytes, multiplied on the CPU by
    /// `cpu::bf16_product`.
    pub fn frozen_for_serving(&self, compute: DType) -> Result<Self, ZooError> {
        let mut copy = self.frozen_copy()?;
        if !copy.decoder.cfg.tie_word_embeddings {
            let table = copy.decoder.embed.tensor().to_dtype(compute)?;
            copy.decoder.embed = crate::zoo::linear::Param::Frozen(table);
        }
        if compute == DType::BF16 {
            // On the CPU the bf16 matrices go to `cpu::bf16_product` (elsewhere: unused).
            // Each projection's weight is repacked for the AMX tiles where the CPU has them;
            // a tied output layer shares the embedding's table and keeps its rows.
            for layer in &mut copy.decoder.layers {
                for linear in layer.linears_mut() {
                    linear.serve_bf16_on_cpu(true)?;
                }
            }
            let tied = copy.decoder.cfg.tie_word_embeddings;
            copy.decoder.lm_head.serve_bf16_on_cpu(!tied)?;
            // Keys and values rounded to bf16 as they are cached, as the bf16 serving of
            // transformers and llama.cpp (f16) keeps them: half the bytes each step reads.
            copy.decoder.kv_values = KvValues::Bf16;
        }
        Ok(copy)
    }

    /// [`Self::frozen_copy`] with every layer's projections stored as `kind` blocks and
    /// multiplied by candle's quantized matmul, or q8_0 by `cpu::q8_product` where the CPU
    /// has AVX512-VNNI (`--serve-dtype`); embeddings, norms and
    /// `lm_head` stay as they are, as llama.cpp's q8_0 / q4_0 files keep the output layer
    /// at higher precision. The activations stay f32.
    pub fn quantized_for_serving(&self, kind: QuantKind) -> Result<Self, ZooError> {
        let mut copy = self.frozen_copy()?;
        for l in &mut copy.decoder.layers {
            for lin in l.linears_mut() {
                let weight = lin.base_weight()?;
                *lin = TrainLinear::quantized(&weight, lin.bias().cloned(), kind)?;
                lin.serve_quantized_on_cpu()?;
            }
        }
        Ok(copy)
    }

    /// [`Self::frozen_copy`] with the layer projections `blocks` names (transformers names,
    /// `model.layers.<i>.self_attn.q_proj.weight`…) replaced by those blocks, as a GGUF file
    /// stores them; the others, embeddings, norms and `lm_head` stay as they are.
    pub fn with_projection_blocks(
        &self,
        mut blocks: HashMap<String, QuantizedWeight>,
    ) -> Result<Self, ZooError> {
        let mut copy = self.frozen_copy()?;
        for (i, l) in copy.decoder.layers.iter_mut().enumerate() {
            for (lin, module) in l.linears_mut().into_iter().zip(ADAPTER_MODULES) {
                let name = format!("model.layers.{i}.{module}.weight");
                if let Some(weight) = blocks.remove(&name) {
                    if weight.dims() != (lin.out_dim()?, lin.in_dim()?) {
                        return Err(ZooError::Config(format!(
                            "`{name}` is {:?} in the blocks, {:?} in the model",
                            weight.dims(),
                            (lin.out_dim()?, lin.in_dim()?)
                        )));
                    }
                    *lin = TrainLinear::from_quantized(weight, lin.bias().cloned());
                    lin.serve_quantized_on_cpu()?;
                }
            }
        }
        match blocks.keys().next() {
            Some(name) => Err(ZooError::Config(format!("`{name}` is no layer projection"))),
            None => Ok(copy),
        }
    }

    /// Full logits `[B, T, V]` (tests, parity).
    pub fn forward(&self, batch: &EncodedBatch, train: bool) -> Result<Tensor, ZooError> {
        let hidden = self.hidden_states(batch, train)?;
        let (b, t, h) = hidden.dims3()?;
        let logits = self.lm_head(&hidden.reshape((b * t, h))?)?;
        Ok(logits.reshape((b, t, ()))?)
    }

    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        self.vars.clone()
    }

    /// Snapshot copies of the trainable tensors (the optimizer updates vars in place).
    pub fn trainable_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        crate::zoo::params::snapshot(&self.vars)
    }

    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
        crate::zoo::params::load_into(&self.vars, tensors)
    }

    /// Folds every adapter into its base weight (serving); LoRA vars are dropped.
    pub fn merge_lora(&mut self) -> Result<(), ZooError> {
        for l in &mut self.decoder.layers {
            for lin in l.linears_mut() {
                lin.merge()?;
            }
        }
        self.decoder.lm_head.merge()?;
        crate::zoo::params::drop_adapters(&mut self.vars);
        Ok(())
    }

    /// Bytes of every parameter in its dtype (tied embeddings counted once).
    pub fn parameter_bytes(&self) -> usize {
        let d = &self.decoder;
        let size = |p: &crate::zoo::linear::Param| {
            p.tensor().elem_count() * p.tensor().dtype().size_in_bytes()
        };
        let mut bytes = size(&d.embed) + size(&d.norm);
        for l in &d.layers {
            bytes += size(&l.input_norm) + size(&l.post_norm);
            bytes += layer_linears(l)
                .iter()
                .map(|(_, lin)| lin.parameter_bytes())
                .sum::<usize>();
        }
        let head = d.lm_head.parameter_bytes();
        if d.cfg.tie_word_embeddings {
            bytes += head.saturating_sub(size(&d.embed));
        } else {
            bytes += head;
        }
        bytes
    }
}

/// One decoder layer on packed rows `x [N, H]`: attention over each sequence's rows (packed
/// on the fused path, padded `[B, h, T, d]` on the generic one), then the MLP.
fn layer_forward(
    c: &DecoderConfig,
    l: &Layer,
    x: &Tensor,
    packing: &Packing,
    tables: &[Tensor; 4],
    pass: Pass,
) -> Result<Tensor, ZooError> {
    let (b, t, d) = (packing.lens.len(), packing.t, c.head_dim);
    let (heads, kv_heads) = (c.num_attention_heads, c.num_key_value_heads);
    let group = heads / kv_heads;
    let qkv = l.qkv(c, x, tables, pass)?;
    if uses_fused_kernels(x) {
        // Packed causal attention: no padding, no [B, h, T, d] copies. The queries
        // carry the 1/√d scale already (the rotary tables fold it in).
        let spec = AttentionSpec {
            heads,
            kv_heads,
            head_dim: d,
            scale: 1.0,
            causal: true,
            dropout: 0.0,
        };
        let n = x.dim(0)?;
        let context = varlen_attention(
            &qkv.q.reshape((n, heads * d))?,
            &qkv.k.reshape((n, kv_heads * d))?,
            &qkv.v.reshape((n, kv_heads * d))?,
            &packing.spans,
            spec,
        )?;
        return l.finish(c, x, &context, pass);
    }
    // [N, h, d] → [B, h, T, d]
    let to_batch = |y: &Tensor, h: usize| -> Result<Tensor, ZooError> {
        let padded = packing.pad(&y.reshape((y.dim(0)?, h * d))?)?;
        Ok(padded
            .reshape((b, t, h, d))?
            .transpose(1, 2)?
            .contiguous()?)
    };
    // Query heads of one key/value group are adjacent (transformers' repeat_kv), so
    // grouping them as [B, kv, group·T, d] shares K/V without copying them.
    let q = to_batch(&qkv.q, heads)?.reshape((b, kv_heads, group * t, d))?;
    let k = to_batch(&qkv.k, kv_heads)?;
    let v = to_batch(&qkv.v, kv_heads)?;
    let scores = q.matmul(&k.t()?)?.reshape((b, heads, t, t))?;
    let mask = CausalPrefix {
        key_len: packing.lens.clone(),
        offset: 0,
    };
    let probs = masked_softmax(&scores, &mask)?.reshape((b, kv_heads, group * t, t))?;
    let context = probs
        .matmul(&v)?
        .reshape((b, heads, t, d))?
        .transpose(1, 2)?
        .reshape((b * t, heads * d))?;
    let context = packing.select(&context)?;
    l.finish(c, x, &context, pass)
}
