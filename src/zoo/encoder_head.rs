//! `EncoderModel<H>`: our BERT-family encoder plus one task head, the shape of transformers'
//! `…ForSequenceClassification`, `…ForTokenClassification` and `…ForQuestionAnswering`.
//! Everything those three have in common lives here once: loading the base with LoRA or full
//! fine-tuning, the trainable-var plumbing, merging adapters, the merged tensor names, the
//! merged Hugging Face directory and the PEFT adapter directory. A task supplies only its
//! head ([`EncoderHead`]) and, in an `impl EncoderModel<ItsHead>` block beside the head, its
//! forward pass.
//!
//! Generic rather than a boxed head: each task's forward has its own inputs and outputs
//! (QA takes segment ids and returns start/end logits), so it cannot be one trait-object
//! method; with a type parameter it stays an ordinary inherent method, dispatch is static,
//! and the tasks' public names are plain type aliases (`SequenceClassifier`,
//! `TokenClassifier`, `QuestionAnsweringModel`).

use std::collections::HashMap;
use std::path::Path;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use rand::Rng;

use super::bert::{put_linear, Encoder, ParamBuilder, Tuning};
use super::config::{EncoderArch, EncoderConfig};
use super::export::{copy_present, save_safetensors, write_json, write_peft_adapter, PeftAdapter};
use super::linear::{Param, ServedAdapters, TrainLinear};
use super::params::{self, NamedVar};
use super::ZooError;
use crate::domain::hyperparams::LoraSettings;

/// Tokenizer files an exported directory carries over from the base model.
pub(crate) const TOKENIZER_FILES: [&str; 4] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
];

/// What a task adds on top of the encoder.
pub trait EncoderHead: Sized {
    /// What `from_pretrained` is told besides the base directory.
    type Spec;
    /// PEFT's `task_type` in `adapter_config.json` (`SEQ_CLS`, `TOKEN_CLS`, `QUESTION_ANS`).
    const PEFT_TASK_TYPE: &'static str;

    /// The spec's LoRA settings; `None` or rank 0 means full fine-tuning.
    fn lora(spec: &Self::Spec) -> Option<&LoraSettings>;

    /// Builds the head after the encoder from the same builder, so that new weights are
    /// drawn from the seeded RNG after the encoder's adapters (reproducible per seed).
    fn build(
        cfg: &EncoderConfig,
        spec: &Self::Spec,
        pb: &mut ParamBuilder,
    ) -> Result<Self, ZooError>;

    /// transformers' class name for `architectures` in `config.json`.
    fn architecture(arch: EncoderArch) -> &'static str;

    /// The head's linears under transformers' module names, for merged exports.
    fn named_linears(&self) -> Vec<(&'static str, &TrainLinear)>;

    /// The same linears, to freeze them for inference.
    fn linears_mut(&mut self) -> Vec<&mut TrainLinear>;

    /// Folds adapters on head linears into their weights. Only linears loaded from the
    /// checkpoint can carry adapters (new head linears train in full), so by default none.
    fn merge_lora(&mut self) -> Result<(), ZooError> {
        Ok(())
    }

    /// PEFT `modules_to_save`: the head modules trained in full in LoRA mode; by default
    /// every head linear.
    fn modules_to_save(&self) -> Vec<String> {
        let linears = self.named_linears();
        linears.iter().map(|(name, _)| name.to_string()).collect()
    }

    /// `config.json` entries after `architectures`; by default the label maps.
    fn config_entries(labels: &[String]) -> Vec<(&'static str, serde_json::Value)> {
        label_entries(labels)
    }
}

/// The encoder, a task head, and the vars training updates.
pub struct EncoderModel<H> {
    encoder: Encoder,
    head: H,
    tuning: Tuning,
    vars: Vec<NamedVar>,
}

/// The modules a LoRA run adapts: the ones named, or PEFT's default for BERT-family
/// encoders (its `query`/`value` mapping).
pub fn encoder_lora_targets(arch: EncoderArch, lora: &LoraSettings) -> Vec<String> {
    if !lora.target_modules.is_empty() {
        return lora.target_modules.clone();
    }
    let names: &[&str] = match arch {
        EncoderArch::Bert => &["query", "value"],
        EncoderArch::DistilBert => &["q_lin", "v_lin"],
    };
    names.iter().map(|s| s.to_string()).collect()
}

/// A new head linear: weight ~ N(0, std) from the seeded RNG, zero bias, always trainable.
pub(crate) fn new_head_linear(
    pb: &mut ParamBuilder,
    hf_module: &str,
    in_dim: usize,
    out_dim: usize,
    std: f64,
) -> Result<TrainLinear, ZooError> {
    let data: Vec<f32> = (0..in_dim * out_dim)
        .map(|_| {
            // Box-Muller: rand 0.9 has no normal distribution without rand_distr.
            let u1: f64 = pb.rng.random_range(f64::EPSILON..1.0);
            let u2: f64 = pb.rng.random();
            (std * (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
        })
        .collect();
    let weight = Tensor::from_vec(data, (out_dim, in_dim), &pb.device)?;
    let bias = Tensor::zeros(out_dim, candle_core::DType::F32, &pb.device)?;
    let w = pb.register(&format!("{hf_module}.weight"), &weight, true)?;
    let b = pb.register(&format!("{hf_module}.bias"), &bias, false)?;
    Ok(TrainLinear::new(
        Param::Trainable(w),
        Some(Param::Trainable(b)),
    ))
}

/// A classification head's label count must be positive.
pub(crate) fn check_num_labels(num_labels: usize) -> Result<(), ZooError> {
    if num_labels == 0 {
        return Err(ZooError::Config("num_labels must be > 0".into()));
    }
    Ok(())
}

/// `id2label`, `label2id` and `num_labels` for `labels` (label id = index).
pub(crate) fn label_entries(labels: &[String]) -> Vec<(&'static str, serde_json::Value)> {
    let id2label: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (i.to_string(), l.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .enumerate()
        .map(|(i, l)| (l.clone(), i.into()))
        .collect();
    vec![
        ("id2label", id2label.into()),
        ("label2id", label2id.into()),
        ("num_labels", labels.len().into()),
    ]
}

impl<H: EncoderHead> EncoderModel<H> {
    /// The base encoder from `base_dir` (LoRA adapters on its targets when the spec asks)
    /// with the head `H` builds.
    pub fn from_pretrained(
        base_dir: &Path,
        spec: &H::Spec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        Self::from_pretrained_in(base_dir, spec, device, seed, DType::F32)
    }

    /// [`Self::from_pretrained`] with the linears' matmuls in `compute` (bf16: mixed
    /// precision, frozen matrices stored in bf16; LayerNorm, attention and the head's loss
    /// stay f32).
    pub fn from_pretrained_in(
        base_dir: &Path,
        spec: &H::Spec,
        device: &Device,
        seed: u64,
        compute: DType,
    ) -> Result<Self, ZooError> {
        let (cfg, _) = EncoderConfig::from_dir(base_dir)?;
        let tuning = Self::tuning(&cfg, spec);
        let pb = ParamBuilder::new(base_dir, cfg.arch, tuning, device, seed)?
            .with_compute_dtype(compute);
        Self::from_builder(&cfg, spec, pb)
    }

    /// LoRA on the spec's targets when it asks for a rank, else full fine-tuning.
    pub(crate) fn tuning(cfg: &EncoderConfig, spec: &H::Spec) -> Tuning {
        match H::lora(spec) {
            Some(l) if l.rank > 0 => Tuning::Lora {
                rank: l.rank,
                alpha: l.alpha,
                dropout: l.dropout,
                targets: encoder_lora_targets(cfg.arch, l),
            },
            _ => Tuning::Full,
        }
    }

    /// The encoder, then the head, from `pb`'s tensors and seeded draws.
    pub(crate) fn from_builder(
        cfg: &EncoderConfig,
        spec: &H::Spec,
        mut pb: ParamBuilder,
    ) -> Result<Self, ZooError> {
        let encoder = Encoder::load(cfg, &mut pb)?;
        let head = H::build(cfg, spec, &mut pb)?;
        Ok(Self {
            encoder,
            head,
            tuning: pb.tuning,
            vars: pb.vars,
        })
    }

    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }

    /// Gradient checkpointing of the encoder's layers (see `Encoder`'s).
    pub fn enable_gradient_checkpointing(&mut self) {
        self.encoder.enable_gradient_checkpointing();
    }

    /// Moves the gradients recomputed layers left during a backward into its `store`
    /// (nothing without checkpointing).
    pub fn drain_recomputed_gradients(&self, store: &mut GradStore) -> candle_core::Result<()> {
        match self.encoder.recomputed_gradients() {
            Some(sink) => sink.drain_into(store),
            None => Ok(()),
        }
    }

    pub(crate) fn head(&self) -> &H {
        &self.head
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.encoder.cfg
    }

    pub fn trainable_vars(&self) -> Vec<NamedVar> {
        self.vars.clone()
    }

    /// Snapshot copies of the trainable tensors (the optimizer updates vars in place).
    pub fn trainable_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        params::snapshot(&self.vars)
    }

    pub fn load_trainable(&self, tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
        params::load_into(&self.vars, tensors)
    }

    /// Folds every adapter into its base weight; afterwards only the head is trainable.
    pub fn merge_lora(&mut self) -> Result<(), ZooError> {
        self.encoder.merge_lora()?;
        self.head.merge_lora()?;
        params::drop_adapters(&mut self.vars);
        Ok(())
    }

    /// The model for inference only: adapters merged, every parameter a plain tensor, so a
    /// forward pass records no graph and frees each intermediate as soon as it is used.
    /// Nothing is trainable afterwards.
    pub fn freeze_for_inference(&mut self) -> Result<(), ZooError> {
        self.freeze_as(ServedAdapters::Merged)
    }

    /// [`Self::freeze_for_inference`] with the adapters kept apart from the base weights,
    /// which stay untouched: how an adapter is served over a base other adapters share.
    pub fn freeze_unmerged_for_inference(&mut self) -> Result<(), ZooError> {
        self.freeze_as(ServedAdapters::Unmerged)
    }

    fn freeze_as(&mut self, adapters: ServedAdapters) -> Result<(), ZooError> {
        self.encoder.freeze(adapters)?;
        for linear in self.head.linears_mut() {
            linear.freeze_as(adapters)?;
        }
        self.vars.clear();
        Ok(())
    }

    /// Every tensor under the name transformers' model for this task uses, merged.
    pub fn merged_tensors(&self) -> Result<HashMap<String, Tensor>, ZooError> {
        let mut out = HashMap::new();
        self.encoder.merged_tensors(&mut out)?;
        let mut put = |name: String, t: &Tensor| {
            out.insert(name, t.clone());
        };
        for (module, linear) in self.head.named_linears() {
            put_linear(&mut put, module, linear)?;
        }
        Ok(out)
    }

    /// A merged Hugging Face directory: the base's `config.json` with the task's
    /// architecture and [`EncoderHead::config_entries`] for `labels`, the merged weights,
    /// the base's tokenizer files.
    pub(crate) fn write_merged_dir(
        &self,
        base_dir: &Path,
        labels: &[String],
        out_dir: &Path,
    ) -> Result<(), ZooError> {
        std::fs::create_dir_all(out_dir)?;
        let (_, raw) = EncoderConfig::from_dir(base_dir)?;
        let serde_json::Value::Object(mut config) = raw else {
            return Err(ZooError::Config("config.json is not an object".into()));
        };
        let architecture = H::architecture(self.encoder.cfg.arch);
        config.insert("architectures".into(), serde_json::json!([architecture]));
        for (key, value) in H::config_entries(labels) {
            config.insert(key.into(), value);
        }
        write_json(
            &out_dir.join("config.json"),
            &serde_json::Value::Object(config),
        )?;
        save_safetensors(&self.merged_tensors()?, &out_dir.join("model.safetensors"))?;
        copy_present(base_dir, out_dir, &TOKENIZER_FILES)
    }

    /// PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`) with
    /// the head's `task_type` and `modules_to_save`.
    pub fn export_adapter(&self, base_model_id: &str, out_dir: &Path) -> Result<(), ZooError> {
        let modules_to_save = self.head.modules_to_save();
        let adapter = PeftAdapter {
            task_type: H::PEFT_TASK_TYPE,
            base_model_id,
            modules_to_save: Some(&modules_to_save),
        };
        write_peft_adapter(&self.tuning, &self.vars, &adapter, out_dir)
    }

    pub fn parameter_bytes(&self) -> usize {
        self.encoder.parameter_bytes()
            + self
                .head
                .named_linears()
                .iter()
                .map(|(_, linear)| linear.parameter_bytes())
                .sum::<usize>()
    }
}
