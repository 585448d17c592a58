//! LoRA adapters as unmerged `zoo::decoder::ServedAdapter`s, served beside a base that
//! many fine-tunes share instead of as their own merged copies: from a LoRA `causal_lm`
//! checkpoint, or from a PEFT adapter directory (`adapter_config.json` +
//! `adapter_model.safetensors`, as peft and temper's adapter export write it).

use std::path::Path;

use candle_core::Device;

use crate::artifacts::checkpoint::{self, META_FILE, TRAINABLE_FILE};
use crate::artifacts::BaseLocation;
use crate::tasks::peft_config::PeftConfig;
use crate::train::TrainError;
use crate::zoo::decoder::adapter::ADAPTER_MODULES;
use crate::zoo::decoder::config::lora_targets;
use crate::zoo::decoder::{DecoderConfig, LoraScaling, ServedAdapter};

/// The base a checkpoint can be served over as an adapter: `Some` for a LoRA checkpoint
/// (not QLoRA: its base is the quantized one it trained against) whose adapters are all on
/// the layers' projections; `None` for full fine-tunes, QLoRA, plain model directories and
/// adapters elsewhere (`lm_head`), which are served merged.
pub fn adapter_base(dir: &Path) -> Result<Option<BaseLocation>, TrainError> {
    if !dir.join(META_FILE).exists() {
        return Ok(None);
    }
    let meta = checkpoint::read_meta(dir)?;
    let Ok(lm) = meta.lm_spec(dir) else {
        return Ok(None);
    };
    let Some(lora) = lm.lora.as_ref().filter(|l| l.rank > 0) else {
        return Ok(None);
    };
    let on_projections = lora_targets(lora).iter().all(|target| {
        ADAPTER_MODULES
            .iter()
            .any(|module| module == target || module.ends_with(&format!(".{target}")))
    });
    Ok((lm.quantize.is_none() && on_projections).then_some(meta.base_model))
}

/// The adapter in `dir` (a LoRA checkpoint, or else a PEFT directory), checked against its
/// base's `config`, on `device`.
pub fn load_adapter(
    dir: &Path,
    config: &DecoderConfig,
    device: &Device,
) -> Result<ServedAdapter, TrainError> {
    match dir.join(META_FILE).exists() {
        true => load_checkpoint_adapter(dir, config, device),
        false => load_peft_adapter(dir, config, device),
    }
}

/// The adapter of LoRA checkpoint `dir`, checked against its base's `config`, on `device`.
pub fn load_checkpoint_adapter(
    dir: &Path,
    config: &DecoderConfig,
    device: &Device,
) -> Result<ServedAdapter, TrainError> {
    let meta = checkpoint::read_meta(dir)?;
    let lora = meta
        .lm_spec(dir)?
        .lora
        .as_ref()
        .filter(|l| l.rank > 0)
        .ok_or_else(|| TrainError::checkpoint(dir, "this checkpoint has no LoRA adapter"))?;
    let tensors = checkpoint::read_tensors(dir, TRAINABLE_FILE, &Device::Cpu)?;
    let scaling = LoraScaling {
        alpha: lora.alpha,
        rslora: false,
    };
    ServedAdapter::from_peft(config, &tensors, scaling, device)
        .map_err(|e| TrainError::checkpoint(dir, e.to_string()))
}

use crate::artifacts::peft::{PEFT_CONFIG_FILE, PEFT_WEIGHTS_FILE};

/// The adapter of PEFT directory `dir`, checked against its base's `config`, on `device`.
pub fn load_peft_adapter(
    dir: &Path,
    config: &DecoderConfig,
    device: &Device,
) -> Result<ServedAdapter, TrainError> {
    let invalid = |message: String| TrainError::InvalidData(message);
    let peft = PeftConfig::read(dir, "CAUSAL_LM")?;
    if peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()) {
        return Err(invalid(format!(
            "{PEFT_CONFIG_FILE}: adapters with `modules_to_save` are not served over a shared base"
        )));
    }
    let path = dir.join(PEFT_WEIGHTS_FILE);
    let tensors = checkpoint::read_safetensors(&path, &Device::Cpu)
        .map_err(|e| invalid(format!("reading {PEFT_WEIGHTS_FILE}: {e}")))?;
    let scaling = LoraScaling {
        alpha: peft.lora_alpha,
        rslora: peft.use_rslora,
    };
    ServedAdapter::from_peft(config, &tensors, scaling, device)
        .map_err(|e| invalid(format!("{PEFT_WEIGHTS_FILE}: {e}")))
}
