//! Checkpoint loading: safetensors files (single or sharded), name prefixes (`bert.` or
//! none, as in MiniLM), old `gamma`/`beta` LayerNorm names, and the frozen/trainable/LoRA
//! decision for every parameter.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::bert::LayerNormW;
use super::config::EncoderArch;
use super::cpu::embedding::RowGradients;
use super::linear::{LoraAdapter, Param, TrainLinear};
use super::params::NamedVar;
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
    /// The linears' matmul dtype; bf16 (mixed precision) also stores frozen matrices in
    /// bf16. Trainable tensors and vectors stay f32.
    compute: DType,
}

impl ParamBuilder {
    /// Builds the linears to multiply in `compute` (see the field).
    pub fn with_compute_dtype(mut self, compute: DType) -> Self {
        self.compute = compute;
        self
    }

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
        Self::over(vb, arch, tuning, device, seed)
    }

    /// A builder whose frozen parameters are `tensors` themselves, not copies (f32, on
    /// `device`): models built from one map share its weights.
    pub fn over_tensors(
        tensors: std::collections::HashMap<String, Tensor>,
        arch: EncoderArch,
        tuning: Tuning,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let vb = VarBuilder::from_tensors(tensors, DType::F32, device);
        Self::over(vb, arch, tuning, device, seed)
    }

    fn over(
        vb: VarBuilder<'static>,
        arch: EncoderArch,
        tuning: Tuning,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
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
            compute: DType::F32,
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
            row_grads: None,
        });
        Ok(var)
    }

    /// An encoder tensor: trainable in full fine-tuning, frozen otherwise.
    pub fn param(&mut self, name: &str, shape: &[usize], decay: bool) -> Result<Param, ZooError> {
        let tensor = self.load(name, shape)?;
        if self.is_full() {
            let hf_name = format!("{}{name}", self.hf_prefix);
            Ok(Param::Trainable(self.register(&hf_name, &tensor, decay)?))
        } else if shape.len() == 2 {
            Ok(Param::Frozen(tensor.to_dtype(self.compute)?))
        } else {
            Ok(Param::Frozen(tensor))
        }
    }

    /// An embedding table: [`Self::param`], and where it is trained with the CPU kernels,
    /// the sink its lookups leave their gradient rows in (see `cpu::embedding`), which the
    /// optimizer drains.
    pub fn embedding_table(
        &mut self,
        name: &str,
        shape: &[usize],
    ) -> Result<(Param, Option<Arc<RowGradients>>), ZooError> {
        let param = self.param(name, shape, true)?;
        if !param.is_trainable() || !super::fused::uses_fused_kernels(param.tensor()) {
            return Ok((param, None));
        }
        let sink = Arc::new(RowGradients::default());
        if let Some(registered) = self.vars.last_mut() {
            registered.row_grads = Some(Arc::clone(&sink));
        }
        Ok((param, Some(sink)))
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
        let linear = TrainLinear::new(weight, Some(bias)).with_compute_dtype(self.compute);
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
        for (part, factor) in [("lora_A", &adapter.a), ("lora_B", &adapter.b)] {
            let Some(var) = factor.as_var() else {
                continue;
            };
            self.vars.push(NamedVar {
                name: format!("base_model.model.{hf_module}.{part}.weight"),
                var: var.clone(),
                weight_decay: true,
                row_grads: None,
            });
        }
        Ok(linear.with_lora(adapter))
    }
}
