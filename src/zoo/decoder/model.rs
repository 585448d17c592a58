//! The decoder's layers and their loading: embeddings, pre-norm blocks (RMSNorm →
//! grouped-query attention with rotary embeddings → RMSNorm → SwiGLU MLP), final norm and
//! `lm_head`. Every linear is a `TrainLinear`; HF tensor names throughout.
//!
//! Per-token work (norms, projections, MLP) runs on packed rows `[N, H]`, the real tokens
//! only; attention is the one place that sees sequences, so training and cached inference
//! share everything else.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::HashMap;
use std::path::Path;

use super::config::{DecoderConfig, QuantKind};
use super::host_cache::KvValues;
use super::kernels::{rms_norm, rope};
use super::swiglu::swiglu;
use crate::zoo::linear::{LoraAdapter, Param, Pass, TrainLinear};
use crate::zoo::loader::{safetensors_files, Tuning};
use crate::zoo::{NamedVar, ZooError};

/// What `Layer::qkv_with`/`finish_with` call on each projection's output:
/// `(projection index, its input, its output) → the output to use`.
pub(crate) type AdjustProjection<'a> =
    dyn Fn(usize, &Tensor, Tensor) -> Result<Tensor, ZooError> + 'a;

#[derive(Clone)]
pub(crate) struct Layer {
    pub input_norm: Param,
    pub q: TrainLinear,
    pub k: TrainLinear,
    pub v: TrainLinear,
    pub o: TrainLinear,
    pub post_norm: Param,
    pub gate: TrainLinear,
    pub up: TrainLinear,
    pub down: TrainLinear,
}

impl Layer {
    /// Normed input → projections → rotary, on packed rows `x [N, H]`.
    pub fn qkv(
        &self,
        c: &DecoderConfig,
        x: &Tensor,
        tables: &[Tensor; 4],
        pass: Pass,
    ) -> Result<Qkv, ZooError> {
        self.qkv_with(c, x, tables, pass, &|_, _, out| Ok(out))
    }

    /// [`Self::qkv`] with `adjust(projection, input, output)` applied to each projection's
    /// output (projection = index in [`layer_linears`]' order): serving adds per-row
    /// adapter updates there.
    pub fn qkv_with(
        &self,
        c: &DecoderConfig,
        x: &Tensor,
        tables: &[Tensor; 4],
        pass: Pass,
        adjust: &AdjustProjection<'_>,
    ) -> Result<Qkv, ZooError> {
        let l = self;
        let n = x.dim(0)?;
        let d = c.head_dim;
        let xn = rms_norm(x, &param_in(&l.input_norm, pass), c.rms_norm_eps)?;
        let [q, k, v] = TrainLinear::forward_together([&l.q, &l.k, &l.v], &xn, pass)?;
        let q = adjust(0, &xn, q)?.reshape((n, c.num_attention_heads, d))?;
        let k = adjust(1, &xn, k)?.reshape((n, c.num_key_value_heads, d))?;
        let v = adjust(2, &xn, v)?.reshape((n, c.num_key_value_heads, d))?;
        Ok(Qkv {
            q: rope(&q, &tables[0], &tables[1])?,
            k: rope(&k, &tables[2], &tables[3])?,
            v,
        })
    }

    /// Attention output projection, residual, then the SwiGLU MLP and its residual.
    pub fn finish(
        &self,
        c: &DecoderConfig,
        x: &Tensor,
        context: &Tensor,
        pass: Pass,
    ) -> Result<Tensor, ZooError> {
        self.finish_with(c, x, context, pass, &|_, _, out| Ok(out))
    }

    /// [`Self::finish`] with `adjust` applied to each projection's output, as in
    /// [`Self::qkv_with`].
    pub fn finish_with(
        &self,
        c: &DecoderConfig,
        x: &Tensor,
        context: &Tensor,
        pass: Pass,
        adjust: &AdjustProjection<'_>,
    ) -> Result<Tensor, ZooError> {
        let l = self;
        let project = |i: usize, lin: &TrainLinear, input: &Tensor| {
            adjust(i, input, lin.forward_pass(input, pass)?)
        };
        let x = (x + project(3, &l.o, context)?)?;
        let xn = rms_norm(&x, &param_in(&l.post_norm, pass), c.rms_norm_eps)?;
        let [gate, up] = TrainLinear::forward_together([&l.gate, &l.up], &xn, pass)?;
        let (gate, up) = (adjust(4, &xn, gate)?, adjust(5, &xn, up)?);
        let inner = swiglu(&gate, &up)?;
        Ok((x + project(6, &l.down, &inner)?)?)
    }

    /// The trainable tensors the layer reads (norm weights, trainable bases and biases,
    /// adapters), whose gradients a recomputed layer hands on (`zoo::recompute`).
    pub fn trainable_tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for p in [&self.input_norm, &self.post_norm] {
            if p.is_trainable() {
                out.push(p.tensor().clone());
            }
        }
        for (_, lin) in layer_linears(self) {
            out.extend(lin.trainable_tensors());
        }
        out
    }
}

impl Layer {
    /// The 7 projections, in [`layer_linears`]' order, to change in place.
    pub fn linears_mut(&mut self) -> [&mut TrainLinear; 7] {
        [
            &mut self.q,
            &mut self.k,
            &mut self.v,
            &mut self.o,
            &mut self.gate,
            &mut self.up,
            &mut self.down,
        ]
    }
}

/// The 7 projections of a layer with their module names (relative to the layer).
pub(crate) fn layer_linears(l: &Layer) -> [(&'static str, &TrainLinear); 7] {
    [
        ("self_attn.q_proj", &l.q),
        ("self_attn.k_proj", &l.k),
        ("self_attn.v_proj", &l.v),
        ("self_attn.o_proj", &l.o),
        ("mlp.gate_proj", &l.gate),
        ("mlp.up_proj", &l.up),
        ("mlp.down_proj", &l.down),
    ]
}

pub(crate) struct Decoder {
    pub cfg: DecoderConfig,
    pub embed: Param,
    pub layers: Vec<Layer>,
    pub norm: Param,
    pub lm_head: TrainLinear,
    inv_freq: Vec<f32>,
    pub device: Device,
    /// What host KV caches keep (bf16 when the model is frozen for bf16 serving).
    pub kv_values: KvValues,
}

/// Rows after attention: `q/k/v` as `[N, heads, d]`, rotary already applied, q pre-scaled.
pub(crate) struct Qkv {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
}

impl Decoder {
    /// cos/sin `[N, d/2]` for each row's position, in f32 as transformers computes them;
    /// the query tables carry the 1/√d attention scale (rope is linear, so it folds in).
    pub fn rotary_tables(&self, positions: &[usize]) -> Result<[Tensor; 4], ZooError> {
        let half = self.inv_freq.len();
        let scale = 1.0 / (self.cfg.head_dim as f32).sqrt();
        let n = positions.len();
        let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
        for &p in positions {
            for &f in &self.inv_freq {
                let angle = p as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        let scaled = |v: &[f32]| v.iter().map(|x| x * scale).collect::<Vec<f32>>();
        let (q_cos, q_sin) = (scaled(&cos), scaled(&sin));
        let t = |v: Vec<f32>| Tensor::from_vec(v, (n, half), &self.device);
        Ok([t(q_cos)?, t(q_sin)?, t(cos)?, t(sin)?])
    }

    /// The rows of `ids`, in f32 (a bf16 frozen table's rows are cast).
    pub fn embed(&self, ids: &Tensor, pass: Pass) -> Result<Tensor, ZooError> {
        Ok(param_in(&self.embed, pass)
            .index_select(ids, 0)?
            .to_dtype(DType::F32)?)
    }

    pub fn final_norm(&self, x: &Tensor, pass: Pass) -> Result<Tensor, ZooError> {
        Ok(rms_norm(
            x,
            &param_in(&self.norm, pass),
            self.cfg.rms_norm_eps,
        )?)
    }

    /// Every tensor under its HF name, adapters folded in; `lm_head.weight` only when it
    /// differs from the embeddings (untied, or given its own adapter).
    pub fn merged_tensors(&self) -> Result<(HashMap<String, Tensor>, bool), ZooError> {
        let mut out = HashMap::new();
        out.insert(
            "model.embed_tokens.weight".to_string(),
            self.embed.tensor().to_dtype(DType::F32)?,
        );
        for (i, l) in self.layers.iter().enumerate() {
            let p = |m: &str| format!("model.layers.{i}.{m}");
            out.insert(p("input_layernorm.weight"), l.input_norm.tensor().clone());
            out.insert(
                p("post_attention_layernorm.weight"),
                l.post_norm.tensor().clone(),
            );
            for (module, lin) in layer_linears(l) {
                out.insert(p(&format!("{module}.weight")), lin.merged_weight()?);
                if let Some(b) = lin.bias() {
                    out.insert(p(&format!("{module}.bias")), b.tensor().clone());
                }
            }
        }
        out.insert("model.norm.weight".to_string(), self.norm.tensor().clone());
        let tied = self.cfg.tie_word_embeddings && self.lm_head.lora().is_none();
        if !tied {
            out.insert("lm_head.weight".to_string(), self.lm_head.merged_weight()?);
        }
        Ok((out, tied))
    }

    /// A copy of the current weights, adapters folded in, every tensor frozen (tied
    /// embeddings stay one tensor); matrices in their layer's matmul dtype (bf16 under mixed
    /// precision), norms as they are.
    pub fn frozen_copy(&self) -> Result<Self, ZooError> {
        let freeze = |p: &Param| -> Result<Param, ZooError> {
            Ok(Param::Frozen(p.tensor().detach().copy()?))
        };
        // Each matrix in its layer's matmul dtype, stored so (a bf16 policy's reference is
        // bf16 too, and computes exactly what the policy computes before its first step).
        let frozen_linear = |lin: &TrainLinear| -> Result<TrainLinear, ZooError> {
            let merged = lin.merged_weight()?.detach();
            let bias = lin.bias().map(freeze).transpose()?;
            Ok(match lin.compute_dtype() {
                Some(dtype) => {
                    let weight = Param::Frozen(merged.to_dtype(dtype)?.copy()?);
                    TrainLinear::new(weight, bias).with_compute_dtype(dtype)
                }
                None => TrainLinear::new(Param::Frozen(merged.copy()?), bias),
            })
        };
        let tied = self.cfg.tie_word_embeddings && self.lm_head.lora().is_none();
        // A tied table is the head's matrix too: stored in the head's matmul dtype.
        let embed = match self.lm_head.compute_dtype().filter(|_| tied) {
            Some(dtype) => Param::Frozen(self.embed.tensor().detach().to_dtype(dtype)?.copy()?),
            None => freeze(&self.embed)?,
        };
        let mut layers = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            layers.push(Layer {
                input_norm: freeze(&l.input_norm)?,
                q: frozen_linear(&l.q)?,
                k: frozen_linear(&l.k)?,
                v: frozen_linear(&l.v)?,
                o: frozen_linear(&l.o)?,
                post_norm: freeze(&l.post_norm)?,
                gate: frozen_linear(&l.gate)?,
                up: frozen_linear(&l.up)?,
                down: frozen_linear(&l.down)?,
            });
        }
        let mut cfg = self.cfg.clone();
        let lm_head = if tied {
            let head = TrainLinear::new(embed.clone(), None);
            match self.lm_head.compute_dtype() {
                Some(dtype) => head.with_compute_dtype(dtype),
                None => head,
            }
        } else {
            cfg.tie_word_embeddings = false;
            frozen_linear(&self.lm_head)?
        };
        Ok(Self {
            cfg,
            embed,
            layers,
            norm: freeze(&self.norm)?,
            lm_head,
            inv_freq: self.inv_freq.clone(),
            device: self.device.clone(),
            kv_values: self.kv_values,
        })
    }

    /// `compute`: the projections' matmul dtype (f32, or bf16 for mixed precision, where
    /// frozen matrices are stored in bf16 and trainable ones keep f32 masters); norms,
    /// attention, embeddings' sums and the residual stream stay f32.
    pub fn load(
        dir: &Path,
        cfg: &DecoderConfig,
        (tuning, quantize): (&Tuning, Option<QuantKind>),
        device: &Device,
        seed: u64,
        compute: DType,
    ) -> Result<(Self, Vec<NamedVar>), ZooError> {
        let files = safetensors_files(dir)?;
        // SAFETY: the checkpoint files are not modified while the model loads; `get`
        // copies each tensor out of the mapping as f32.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let mut b = Builder {
            vb,
            tuning,
            quantize,
            rng: StdRng::seed_from_u64(seed),
            vars: Vec::new(),
            device: device.clone(),
            compute,
        };
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let (q_out, kv_out) = (
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        );
        let embed = b.param("model.embed_tokens.weight", &[v, h], true)?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = |m: &str| format!("model.layers.{i}.{m}");
            let (qkv_bias, o_bias) = match cfg.arch {
                super::DecoderArch::Qwen2 => (true, false),
                super::DecoderArch::Llama => (cfg.attention_bias, cfg.attention_bias),
            };
            let i_sz = cfg.intermediate_size;
            layers.push(Layer {
                input_norm: b.param(&p("input_layernorm.weight"), &[h], false)?,
                q: b.linear(&p("self_attn.q_proj"), h, q_out, qkv_bias, true)?,
                k: b.linear(&p("self_attn.k_proj"), h, kv_out, qkv_bias, true)?,
                v: b.linear(&p("self_attn.v_proj"), h, kv_out, qkv_bias, true)?,
                o: b.linear(&p("self_attn.o_proj"), q_out, h, o_bias, true)?,
                post_norm: b.param(&p("post_attention_layernorm.weight"), &[h], false)?,
                gate: b.linear(&p("mlp.gate_proj"), h, i_sz, false, true)?,
                up: b.linear(&p("mlp.up_proj"), h, i_sz, false, true)?,
                down: b.linear(&p("mlp.down_proj"), i_sz, h, false, true)?,
            });
        }
        let norm = b.param("model.norm.weight", &[h], false)?;
        let lm_head = if cfg.tie_word_embeddings || !b.vb.contains_tensor("lm_head.weight") {
            // Tied: the same tensor (the same Var in full fine-tuning) as the embeddings.
            let head = TrainLinear::new(embed.clone(), None).with_compute_dtype(compute);
            b.with_lora("lm_head", head, h, v)?
        } else {
            b.linear("lm_head", h, v, false, false)?
        };
        let mut cfg = cfg.clone();
        cfg.tie_word_embeddings =
            cfg.tie_word_embeddings || !b.vb.contains_tensor("lm_head.weight");
        let decoder = Self {
            inv_freq: cfg.inv_freq(),
            kv_values: KvValues::F32,
            cfg,
            embed,
            layers,
            norm,
            lm_head,
            device: device.clone(),
        };
        Ok((decoder, b.vars))
    }
}

/// A parameter's tensor as a pass uses it: detached in a [`Pass::BaseOnly`] pass, so a
/// trainable embedding or norm does not pull that pass into the gradient either.
fn param_in(param: &Param, pass: Pass) -> Tensor {
    match pass {
        Pass::BaseOnly => param.tensor().detach(),
        Pass::Train | Pass::Eval => param.tensor().clone(),
    }
}

/// Builds parameters from checkpoint tensors: trainable `Var`s (HF names) in full
/// fine-tuning, frozen tensors plus PEFT-named adapters in LoRA mode.
struct Builder<'a> {
    vb: VarBuilder<'static>,
    tuning: &'a Tuning,
    quantize: Option<QuantKind>,
    rng: StdRng,
    vars: Vec<NamedVar>,
    device: Device,
    /// See [`Decoder::load`].
    compute: DType,
}

impl Builder<'_> {
    fn full(&self) -> bool {
        matches!(self.tuning, Tuning::Full)
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, ZooError> {
        if !self.vb.contains_tensor(name) {
            return Err(ZooError::MissingTensor(name.to_string()));
        }
        Ok(self.vb.get(shape, name)?.contiguous()?)
    }

    fn param(&mut self, name: &str, shape: &[usize], decay: bool) -> Result<Param, ZooError> {
        let tensor = self.load(name, shape)?;
        if !self.full() {
            // Frozen matrices (embeddings, projections) in the matmul dtype; norms in f32.
            let dtype = if shape.len() == 2 {
                self.compute
            } else {
                DType::F32
            };
            return Ok(Param::Frozen(tensor.to_dtype(dtype)?));
        }
        let var = candle_core::Var::from_tensor(&tensor)?;
        self.vars.push(NamedVar {
            name: name.to_string(),
            var: var.clone(),
            weight_decay: decay,
            row_grads: None,
        });
        Ok(Param::Trainable(var))
    }

    /// A checkpoint linear; `quantizable` bases are quantized for QLoRA (not `lm_head`).
    fn linear(
        &mut self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        quantizable: bool,
    ) -> Result<TrainLinear, ZooError> {
        let bias = if bias {
            Some(self.param(&format!("{module}.bias"), &[out_dim], false)?)
        } else {
            None
        };
        let weight_name = format!("{module}.weight");
        let linear = match self.quantize.filter(|_| quantizable && !self.full()) {
            Some(kind) => {
                let weight = self.load(&weight_name, &[out_dim, in_dim])?;
                quantized_linear(&weight, bias, kind)?
            }
            None => TrainLinear::new(self.param(&weight_name, &[out_dim, in_dim], true)?, bias)
                .with_compute_dtype(self.compute),
        };
        self.with_lora(module, linear, in_dim, out_dim)
    }

    /// Adds an adapter when `module` matches a LoRA target (PEFT suffix matching).
    fn with_lora(
        &mut self,
        module: &str,
        linear: TrainLinear,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<TrainLinear, ZooError> {
        let Tuning::Lora {
            rank,
            alpha,
            dropout,
            targets,
        } = self.tuning
        else {
            return Ok(linear);
        };
        if !targets
            .iter()
            .any(|t| module == t || module.ends_with(&format!(".{t}")))
        {
            return Ok(linear);
        }
        let adapter = LoraAdapter::new(
            in_dim,
            out_dim,
            *rank,
            *alpha,
            *dropout,
            &mut self.rng,
            &self.device,
        )?;
        for (part, factor) in [("lora_A", &adapter.a), ("lora_B", &adapter.b)] {
            let Some(var) = factor.as_var() else {
                continue;
            };
            self.vars.push(NamedVar {
                name: format!("base_model.model.{module}.{part}.weight"),
                var: var.clone(),
                weight_decay: true,
                row_grads: None,
            });
        }
        Ok(linear.with_lora(adapter))
    }
}

/// A frozen quantized base (QLoRA).
fn quantized_linear(
    weight: &Tensor,
    bias: Option<Param>,
    kind: QuantKind,
) -> Result<TrainLinear, ZooError> {
    TrainLinear::quantized(weight, bias, kind)
}
