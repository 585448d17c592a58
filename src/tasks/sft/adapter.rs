//! LoRA adapters as unmerged `zoo::decoder::ServedAdapter`s, served beside a base that
//! many fine-tunes share instead of as their own merged copies: from a LoRA `causal_lm`
//! checkpoint, or from a PEFT adapter directory (`adapter_config.json` +
//! `adapter_model.safetensors`, as peft and temper's adapter export write it).

use std::path::{Path, PathBuf};

use candle_core::Device;

use crate::train::checkpoint::{self, META_FILE, TRAINABLE_FILE};
use crate::train::TrainError;
use crate::zoo::decoder::adapter::ADAPTER_MODULES;
use crate::zoo::decoder::config::lora_targets;
use crate::zoo::decoder::{DecoderConfig, LoraScaling, ServedAdapter};

/// The base directory a checkpoint can be served over as an adapter: `Some` for a LoRA
/// checkpoint (not QLoRA: its base is the quantized one it trained against) whose
/// adapters are all on the layers' projections; `None` for full fine-tunes, QLoRA, plain
/// model directories and adapters elsewhere (`lm_head`), which are served merged.
pub fn adapter_base_dir(dir: &Path) -> Result<Option<PathBuf>, TrainError> {
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
    Ok((lm.quantize.is_none() && on_projections).then_some(meta.base_model_dir))
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

/// The PEFT adapter files.
pub const PEFT_CONFIG_FILE: &str = "adapter_config.json";
pub const PEFT_WEIGHTS_FILE: &str = "adapter_model.safetensors";

/// What temper reads of `adapter_config.json`; the options that change the math and that
/// temper does not implement are refused rather than ignored.
#[derive(Debug, serde::Deserialize)]
struct PeftConfig {
    peft_type: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    lora_alpha: f64,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The adapter of PEFT directory `dir`, checked against its base's `config`, on `device`.
pub fn load_peft_adapter(
    dir: &Path,
    config: &DecoderConfig,
    device: &Device,
) -> Result<ServedAdapter, TrainError> {
    let invalid = |message: String| TrainError::InvalidData(message);
    let text = std::fs::read(dir.join(PEFT_CONFIG_FILE)).map_err(|e| {
        invalid(format!(
            "reading {PEFT_CONFIG_FILE}: {}",
            checkpoint::plain_io_error(&e)
        ))
    })?;
    let peft: PeftConfig = serde_json::from_slice(&text)
        .map_err(|e| invalid(format!("{PEFT_CONFIG_FILE} is not a PEFT LoRA config: {e}")))?;
    let refused = [
        (
            peft.peft_type.as_deref().is_some_and(|t| t != "LORA"),
            "`peft_type` must be LORA",
        ),
        (peft.use_dora, "DoRA adapters (`use_dora`) are not served"),
        (
            peft.fan_in_fan_out,
            "`fan_in_fan_out` adapters (GPT-2 style Conv1D) are not served",
        ),
        (
            peft.bias.as_deref().is_some_and(|b| b != "none"),
            "adapters that train biases (`bias` other than \"none\") are not served",
        ),
        (
            peft.modules_to_save.as_ref().is_some_and(|m| !m.is_empty()),
            "adapters with `modules_to_save` are not served over a shared base",
        ),
        (
            peft.alpha_pattern.as_ref().is_some_and(|p| !p.is_empty()),
            "per-module `alpha_pattern` is not served",
        ),
        (
            peft.task_type.as_deref().is_some_and(|t| t != "CAUSAL_LM"),
            "`task_type` must be CAUSAL_LM",
        ),
    ];
    if let Some((_, why)) = refused.iter().find(|(refuse, _)| *refuse) {
        return Err(invalid(format!("{PEFT_CONFIG_FILE}: {why}")));
    }
    let tensors = candle_core::safetensors::load(dir.join(PEFT_WEIGHTS_FILE), &Device::Cpu)
        .map_err(|e| invalid(format!("reading {PEFT_WEIGHTS_FILE}: {e}")))?;
    let scaling = LoraScaling {
        alpha: peft.lora_alpha,
        rslora: peft.use_rslora,
    };
    ServedAdapter::from_peft(config, &tensors, scaling, device)
        .map_err(|e| invalid(format!("{PEFT_WEIGHTS_FILE}: {e}")))
}
