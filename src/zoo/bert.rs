//! The differentiable BERT-family encoder (BERT, MiniLM, DistilBERT) and its loader.
//!
//! Only ops with a backward: LayerNorm from primitive ops in f32, composed
//! `candle_nn::ops::softmax`, explicit batched attention `[B, H, T, d]` with an additive
//! padding mask, `gelu_erf`, and `candle_nn::ops::dropout` in train mode only.

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use super::classifier::NamedVar;
use super::config::{EncoderArch, EncoderConfig, HiddenAct};
use super::linear::{LoraAdapter, Param, TrainLinear};
use super::ZooError;

/// Which tensors train: everything (full fine-tuning) or LoRA adapters on `targets`.
#[derive(Debug, Clone)]
pub enum Tuning {
    Full,
    Lora {
        rank: usize,
        alpha: f64,
        dropout: f64,
        /// PEFT module names, matched by suffix (`query` matches `….attention.self.query`).
        targets: Vec<String>,
    },
}

/// The safetensors files of a checkpoint directory: `model.safetensors`, or the shards
/// listed by `model.safetensors.index.json`.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ZooError> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    if !index_path.exists() {
        return Err(ZooError::Config(format!(
            "{} has neither model.safetensors nor model.safetensors.index.json",
            dir.display()
        )));
    }
    let index: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&index_path)?)?;
    let shards: BTreeSet<String> = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ZooError::Config("index.json has no weight_map".into()))?
        .values()
        .filter_map(|v| v.as_str().map(str::to_owned))
        .collect();
    Ok(shards.into_iter().map(|s| dir.join(s)).collect())
}

/// Builds model parameters from checkpoint tensors: frozen or trainable, named as
/// transformers' `*ForSequenceClassification` writes them, with LoRA where targeted.
pub struct ParamBuilder {
    vb: VarBuilder<'static>,
    /// Prefix inside the checkpoint (`bert.`, `distilbert.` or empty, as in MiniLM).
    ckpt_prefix: String,
    /// Prefix transformers' classification model uses (`bert.` / `distilbert.`).
    pub hf_prefix: &'static str,
    pub tuning: Tuning,
    pub rng: StdRng,
    pub vars: Vec<NamedVar>,
    pub device: Device,
}

impl ParamBuilder {
    pub fn new(
        dir: &Path,
        arch: EncoderArch,
        tuning: Tuning,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let files = safetensors_files(dir)?;
        // SAFETY: the checkpoint files are not modified while the model is loaded; the
        // tensors are copied out of the mapping as f32 by `get`.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&files, DType::F32, device)? };
        let hf_prefix = match arch {
            EncoderArch::Bert => "bert.",
            EncoderArch::DistilBert => "distilbert.",
        };
        let probe = "embeddings.word_embeddings.weight";
        let ckpt_prefix = if vb.contains_tensor(&format!("{hf_prefix}{probe}")) {
            hf_prefix.to_string()
        } else if vb.contains_tensor(probe) {
            String::new()
        } else {
            return Err(ZooError::MissingTensor(format!("{hf_prefix}{probe}")));
        };
        Ok(Self {
            vb,
            ckpt_prefix,
            hf_prefix,
            tuning,
            rng: StdRng::seed_from_u64(seed),
            vars: Vec::new(),
            device: device.clone(),
        })
    }

    /// The checkpoint's name for `name` (relative to the encoder), honouring old
    /// `gamma`/`beta` LayerNorm names; None when absent.
    fn resolve(&self, name: &str) -> Option<String> {
        let full = format!("{}{name}", self.ckpt_prefix);
        if self.vb.contains_tensor(&full) {
            return Some(full);
        }
        let legacy = if let Some(stem) = full.strip_suffix(".weight") {
            format!("{stem}.gamma")
        } else if let Some(stem) = full.strip_suffix(".bias") {
            format!("{stem}.beta")
        } else {
            return None;
        };
        self.vb.contains_tensor(&legacy).then_some(legacy)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.resolve(name).is_some()
    }

    fn load(&self, name: &str, shape: &[usize]) -> Result<Tensor, ZooError> {
        let resolved = self
            .resolve(name)
            .ok_or_else(|| ZooError::MissingTensor(format!("{}{name}", self.ckpt_prefix)))?;
        Ok(self.vb.get(shape, &resolved)?.contiguous()?)
    }

    pub fn is_full(&self) -> bool {
        matches!(self.tuning, Tuning::Full)
    }

    /// Registers a trainable tensor under its checkpoint name: the HF name for full
    /// fine-tuning, PEFT's `base_model.model.<hf name>` in LoRA mode.
    pub fn register(
        &mut self,
        hf_name: &str,
        tensor: &Tensor,
        decay: bool,
    ) -> Result<Var, ZooError> {
        let var = Var::from_tensor(tensor)?;
        let name = if self.is_full() {
            hf_name.to_string()
        } else {
            format!("base_model.model.{hf_name}")
        };
        self.vars.push(NamedVar {
            name,
            var: var.clone(),
            weight_decay: decay,
        });
        Ok(var)
    }

    /// An encoder tensor: trainable in full fine-tuning, frozen otherwise.
    pub fn param(&mut self, name: &str, shape: &[usize], decay: bool) -> Result<Param, ZooError> {
        let tensor = self.load(name, shape)?;
        if self.is_full() {
            let hf_name = format!("{}{name}", self.hf_prefix);
            Ok(Param::Trainable(self.register(&hf_name, &tensor, decay)?))
        } else {
            Ok(Param::Frozen(tensor))
        }
    }

    pub fn layer_norm(
        &mut self,
        module: &str,
        dim: usize,
        eps: f64,
    ) -> Result<LayerNormW, ZooError> {
        Ok(LayerNormW {
            weight: self.param(&format!("{module}.weight"), &[dim], false)?,
            bias: self.param(&format!("{module}.bias"), &[dim], false)?,
            eps,
        })
    }

    /// A checkpoint linear `module` (relative name), with LoRA when targeted.
    pub fn linear(
        &mut self,
        module: &str,
        in_dim: usize,
        out_dim: usize,
    ) -> Result<TrainLinear, ZooError> {
        let weight = self.param(&format!("{module}.weight"), &[out_dim, in_dim], true)?;
        let bias = self.param(&format!("{module}.bias"), &[out_dim], false)?;
        let linear = TrainLinear::new(weight, Some(bias));
        let Tuning::Lora {
            rank,
            alpha,
            dropout,
            targets,
        } = &self.tuning
        else {
            return Ok(linear);
        };
        let hf_module = format!("{}{module}", self.hf_prefix);
        if !targets
            .iter()
            .any(|t| hf_module == *t || hf_module.ends_with(&format!(".{t}")))
        {
            return Ok(linear);
        }
        let (rank, alpha, dropout) = (*rank, *alpha, *dropout);
        let adapter = LoraAdapter::new(
            in_dim,
            out_dim,
            rank,
            alpha,
            dropout,
            &mut self.rng,
            &self.device,
        )?;
        for (part, var) in [("lora_A", &adapter.a), ("lora_B", &adapter.b)] {
            self.vars.push(NamedVar {
                name: format!("base_model.model.{hf_module}.{part}.weight"),
                var: var.clone(),
                weight_decay: true,
            });
        }
        Ok(linear.with_lora(adapter))
    }
}

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
        let mean = x.mean_keepdim(D::Minus1)?;
        let centered = x.broadcast_sub(&mean)?;
        let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centered.broadcast_div(&(var + self.eps)?.sqrt()?)?;
        Ok(normed
            .broadcast_mul(self.weight.tensor())?
            .broadcast_add(self.bias.tensor())?)
    }
}

pub fn dropout(x: &Tensor, p: f64, train: bool) -> Result<Tensor, ZooError> {
    if train && p > 0.0 {
        Ok(candle_nn::ops::dropout(x, p as f32)?)
    } else {
        Ok(x.clone())
    }
}

/// Module names inside one layer, per architecture.
struct LayerNames {
    layer: &'static str,
    q: &'static str,
    k: &'static str,
    v: &'static str,
    attn_out: &'static str,
    attn_ln: &'static str,
    ffn_in: &'static str,
    ffn_out: &'static str,
    out_ln: &'static str,
}

const BERT_NAMES: LayerNames = LayerNames {
    layer: "encoder.layer",
    q: "attention.self.query",
    k: "attention.self.key",
    v: "attention.self.value",
    attn_out: "attention.output.dense",
    attn_ln: "attention.output.LayerNorm",
    ffn_in: "intermediate.dense",
    ffn_out: "output.dense",
    out_ln: "output.LayerNorm",
};

const DISTILBERT_NAMES: LayerNames = LayerNames {
    layer: "transformer.layer",
    q: "attention.q_lin",
    k: "attention.k_lin",
    v: "attention.v_lin",
    attn_out: "attention.out_lin",
    attn_ln: "sa_layer_norm",
    ffn_in: "ffn.lin1",
    ffn_out: "ffn.lin2",
    out_ln: "output_layer_norm",
};

fn names(arch: EncoderArch) -> &'static LayerNames {
    match arch {
        EncoderArch::Bert => &BERT_NAMES,
        EncoderArch::DistilBert => &DISTILBERT_NAMES,
    }
}

struct Layer {
    q: TrainLinear,
    k: TrainLinear,
    v: TrainLinear,
    attn_out: TrainLinear,
    attn_ln: LayerNormW,
    ffn_in: TrainLinear,
    ffn_out: TrainLinear,
    out_ln: LayerNormW,
}

pub struct Encoder {
    pub cfg: EncoderConfig,
    word_emb: Param,
    pos_emb: Param,
    type_emb: Option<Param>,
    emb_ln: LayerNormW,
    layers: Vec<Layer>,
}

impl Encoder {
    pub fn load(cfg: &EncoderConfig, pb: &mut ParamBuilder) -> Result<Self, ZooError> {
        let h = cfg.hidden_size;
        let word_emb = pb.param(
            "embeddings.word_embeddings.weight",
            &[cfg.vocab_size, h],
            true,
        )?;
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
            pos_emb,
            type_emb,
            emb_ln,
            layers,
        })
    }

    /// `input_ids`, `attention_mask`: `[B, T]` u32 → last hidden state `[B, T, H]` f32.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let (b, t) = input_ids.dims2()?;
        let h = self.cfg.hidden_size;
        if t > self.cfg.max_position_embeddings {
            return Err(ZooError::Unsupported(format!(
                "sequence of {t} tokens exceeds max_position_embeddings {}",
                self.cfg.max_position_embeddings
            )));
        }
        let words = self
            .word_emb
            .tensor()
            .index_select(&input_ids.flatten_all()?, 0)?;
        let positions = self.pos_emb.tensor().narrow(0, 0, t)?;
        let mut x = words.reshape((b, t, h))?.broadcast_add(&positions)?;
        if let Some(types) = &self.type_emb {
            // token_type_ids are all zero for single-sentence classification.
            x = x.broadcast_add(&types.tensor().narrow(0, 0, 1)?)?;
        }
        let x = dropout(&self.emb_ln.forward(&x)?, self.cfg.hidden_dropout, train)?;
        // Additive mask [B, 1, 1, T]: 0 for real tokens, f32::MIN for padding (as transformers).
        let mask = attention_mask.to_dtype(DType::F32)?;
        let mask = ((mask.affine(-1.0, 1.0)?) * f32::MIN as f64)?.reshape((b, 1, 1, t))?;
        let mut x = x;
        for layer in &self.layers {
            x = self.layer_forward(layer, &x, &mask, train)?;
        }
        Ok(x)
    }

    fn layer_forward(
        &self,
        l: &Layer,
        x: &Tensor,
        mask: &Tensor,
        train: bool,
    ) -> Result<Tensor, ZooError> {
        let (b, t, h) = x.dims3()?;
        let heads = self.cfg.num_heads;
        let d = self.cfg.head_dim();
        let split = |y: Tensor| -> Result<Tensor, ZooError> {
            Ok(y.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?)
        };
        let q = split((l.q.forward(x, train)? * (1.0 / (d as f64).sqrt()))?)?;
        let k = split(l.k.forward(x, train)?)?;
        let v = split(l.v.forward(x, train)?)?;
        let scores = q.matmul(&k.t()?)?.broadcast_add(mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?;
        let probs = dropout(&probs, self.cfg.attention_dropout, train)?;
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let mut attn = l.attn_out.forward(&context, train)?;
        if self.cfg.arch == EncoderArch::Bert {
            attn = dropout(&attn, self.cfg.hidden_dropout, train)?;
        }
        let x = l.attn_ln.forward(&(attn + x)?)?;
        let inner = l.ffn_in.forward(&x, train)?;
        let inner = match self.cfg.hidden_act {
            HiddenAct::GeluErf => inner.gelu_erf()?,
            HiddenAct::GeluTanh => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        let out = dropout(
            &l.ffn_out.forward(&inner, train)?,
            self.cfg.hidden_dropout,
            train,
        )?;
        l.out_ln.forward(&(out + x)?)
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
            for lin in [
                &mut l.q,
                &mut l.k,
                &mut l.v,
                &mut l.attn_out,
                &mut l.ffn_in,
                &mut l.ffn_out,
            ] {
                lin.merge()?;
            }
        }
        Ok(())
    }

    pub fn parameter_bytes(&self) -> usize {
        let mut n = self.word_emb.tensor().elem_count() + self.pos_emb.tensor().elem_count();
        n += self
            .type_emb
            .as_ref()
            .map_or(0, |t| t.tensor().elem_count());
        let ln = |l: &LayerNormW| 2 * l.weight.tensor().elem_count();
        n += ln(&self.emb_ln);
        let mut bytes = n * 4;
        for l in &self.layers {
            bytes += (ln(&l.attn_ln) + ln(&l.out_ln)) * 4;
            for lin in [&l.q, &l.k, &l.v, &l.attn_out, &l.ffn_in, &l.ffn_out] {
                bytes += lin.parameter_bytes();
            }
        }
        bytes
    }
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
