//! A base encoder's weights read once and shared by every model built over them: how many
//! LoRA fine-tunes of one base are served from one copy of its weights. A model built with
//! [`EncoderModel::over_shared_base`] holds the base's tensors themselves (candle tensors
//! are reference-counted), plus only its own adapters and head.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::config::EncoderConfig;
use super::encoder_head::{EncoderHead, EncoderModel};
use super::loader::{safetensors_files, ParamBuilder, Tuning};
use super::ZooError;

/// The encoder's tensors of a base checkpoint, f32 on one device.
pub struct SharedEncoderBase {
    cfg: EncoderConfig,
    tensors: HashMap<String, Tensor>,
    bytes: usize,
}

/// Module prefixes of the encoder itself (and BERT's pooler, which a classifier may
/// reuse); anything else in a checkpoint (a masked-LM head, the `position_ids` buffer, …)
/// is not kept in memory.
const ENCODER_MODULES: [&str; 4] = ["embeddings.", "encoder.", "transformer.", "pooler."];

fn is_encoder_tensor(name: &str) -> bool {
    let relative = name
        .strip_prefix("bert.")
        .or_else(|| name.strip_prefix("distilbert."))
        .unwrap_or(name);
    ENCODER_MODULES.iter().any(|m| relative.starts_with(m)) && !name.ends_with("position_ids")
}

impl SharedEncoderBase {
    /// Reads the encoder's tensors of the base checkpoint in `dir` onto `device`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self, ZooError> {
        let (cfg, _) = EncoderConfig::from_dir(dir)?;
        let mut tensors = HashMap::new();
        for file in safetensors_files(dir)? {
            for (name, tensor) in candle_core::safetensors::load(&file, device)? {
                if is_encoder_tensor(&name) {
                    tensors.insert(name, tensor.to_dtype(DType::F32)?);
                }
            }
        }
        let bytes = tensors.values().map(|t| t.elem_count() * 4).sum();
        Ok(Self {
            cfg,
            tensors,
            bytes,
        })
    }

    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// Bytes of the shared tensors.
    pub fn parameter_bytes(&self) -> usize {
        self.bytes
    }

    /// Whether `tensor` is one of the shared tensors (the same storage, not a copy).
    #[cfg(test)]
    pub(crate) fn holds(&self, tensor: &Tensor) -> bool {
        self.tensors.values().any(|t| t.id() == tensor.id())
    }
}

impl<H: EncoderHead> EncoderModel<H> {
    /// The model `spec` describes over `base`'s tensors: the encoder's frozen weights are
    /// the base's own, its adapters (LoRA on the spec's targets) and head new, drawn from
    /// `seed` as [`Self::from_pretrained`] draws them; load the trained ones with
    /// [`Self::load_trainable`]. Refused for full fine-tuning, which trains the base's
    /// weights and so cannot share them.
    pub fn over_shared_base(
        base: &SharedEncoderBase,
        spec: &H::Spec,
        device: &Device,
        seed: u64,
    ) -> Result<Self, ZooError> {
        let tuning = Self::tuning(&base.cfg, spec);
        if matches!(tuning, Tuning::Full) {
            return Err(ZooError::Config(
                "only a LoRA model can be built over a shared base".into(),
            ));
        }
        let pb =
            ParamBuilder::over_tensors(base.tensors.clone(), base.cfg.arch, tuning, device, seed)?;
        Self::from_builder(&base.cfg, spec, pb)
    }
}

#[cfg(test)]
#[path = "shared_encoder_tests.rs"]
mod tests;
