//! What the merged Hugging Face directories and the PEFT adapter directories of every
//! model have in common: safetensors as transformers expects them, JSON files, the base's
//! tokenizer files, and `adapter_config.json`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::loader::Tuning;
use super::params::NamedVar;
use super::ZooError;

/// Writes safetensors with `{"format": "pt"}` metadata, which transformers expects.
pub(crate) fn save_safetensors(
    tensors: &HashMap<String, Tensor>,
    path: &Path,
) -> Result<(), ZooError> {
    let contiguous: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(k, v)| Ok((k.clone(), v.contiguous()?)))
        .collect::<Result<_, ZooError>>()?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(contiguous, Some(metadata), path)
        .map_err(|e| ZooError::Io(std::io::Error::other(e.to_string())))
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ZooError> {
    std::fs::write(path, serde_json::to_string_pretty(value)?)?;
    Ok(())
}

/// Copies those of `names` that `base_dir` has (tokenizer, template, generation files).
pub(crate) fn copy_present(
    base_dir: &Path,
    out_dir: &Path,
    names: &[&str],
) -> Result<(), ZooError> {
    for name in names {
        let src = base_dir.join(name);
        if src.exists() {
            std::fs::copy(&src, out_dir.join(name))?;
        }
    }
    Ok(())
}

/// What a PEFT adapter directory says beyond the LoRA numbers.
pub(crate) struct PeftAdapter<'a> {
    /// PEFT's `task_type`: `SEQ_CLS`, `CAUSAL_LM`.
    pub task_type: &'a str,
    pub base_model_id: &'a str,
    /// Modules trained in full beside the adapters (a classification head).
    pub modules_to_save: Option<&'a [String]>,
}

/// `adapter_config.json` + `adapter_model.safetensors` (the trainable tensors, already
/// named `base_model.model.…lora_A.weight`), as `peft.PeftModel.from_pretrained` reads them.
pub(crate) fn write_peft_adapter(
    tuning: &Tuning,
    vars: &[NamedVar],
    adapter: &PeftAdapter<'_>,
    out_dir: &Path,
) -> Result<(), ZooError> {
    let Tuning::Lora {
        rank,
        alpha,
        dropout,
        targets,
    } = tuning
    else {
        return Err(ZooError::Unsupported(
            "adapter export needs a LoRA model (this one is fully fine-tuned)".into(),
        ));
    };
    if !vars.iter().any(|nv| nv.name.contains(".lora_A.")) {
        return Err(ZooError::Unsupported(
            "the adapters were merged into the base".into(),
        ));
    }
    std::fs::create_dir_all(out_dir)?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": adapter.task_type,
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": dropout,
        "target_modules": targets,
        "base_model_name_or_path": adapter.base_model_id,
        "modules_to_save": adapter.modules_to_save,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "use_rslora": false,
        "use_dora": false,
    });
    write_json(&out_dir.join("adapter_config.json"), &config)?;
    save_safetensors(
        &super::params::snapshot(vars)?,
        &out_dir.join("adapter_model.safetensors"),
    )
}
