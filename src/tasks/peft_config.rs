//! What temper reads of a PEFT adapter's `adapter_config.json`, for the decoder adapters
//! (`sft::adapter`) and the classifier adapters (`sequence_classification::peft_adapter`)
//! registered from outside; the options that change the math and that temper does not
//! implement are refused rather than ignored.

use std::path::Path;

use crate::artifacts::peft::PEFT_CONFIG_FILE;
use crate::train::checkpoint;
use crate::train::TrainError;

#[derive(Debug, serde::Deserialize)]
pub(crate) struct PeftConfig {
    peft_type: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    pub(crate) lora_alpha: f64,
    #[serde(default)]
    pub(crate) use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    pub(crate) modules_to_save: Option<Vec<String>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub(crate) rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
}

impl PeftConfig {
    /// `adapter_config.json` of the PEFT directory `dir`, checked to be a plain LoRA of
    /// `task_type` (absent is taken as that).
    pub(crate) fn read(dir: &Path, task_type: &str) -> Result<Self, TrainError> {
        let invalid = |message: String| TrainError::InvalidData(message);
        let text = std::fs::read(dir.join(PEFT_CONFIG_FILE)).map_err(|e| {
            invalid(format!(
                "reading {PEFT_CONFIG_FILE}: {}",
                checkpoint::plain_io_error(&e)
            ))
        })?;
        let peft: PeftConfig = serde_json::from_slice(&text)
            .map_err(|e| invalid(format!("{PEFT_CONFIG_FILE} is not a PEFT LoRA config: {e}")))?;
        let wrong_task = format!("`task_type` must be {task_type}");
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
                peft.alpha_pattern.as_ref().is_some_and(|p| !p.is_empty()),
                "per-module `alpha_pattern` is not served",
            ),
            (
                peft.task_type.as_deref().is_some_and(|t| t != task_type),
                wrong_task.as_str(),
            ),
        ];
        if let Some((_, why)) = refused.iter().find(|(refuse, _)| *refuse) {
            return Err(invalid(format!("{PEFT_CONFIG_FILE}: {why}")));
        }
        Ok(peft)
    }
}
