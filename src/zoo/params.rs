//! Trainable parameters as every model exposes them: named `Var`s that the optimizer
//! updates in place, snapshotted into checkpoints and loaded back on resume.

use std::collections::HashMap;

use candle_core::{Tensor, Var};

use super::ZooError;

/// A trainable tensor with its checkpoint name.
#[derive(Debug, Clone)]
pub struct NamedVar {
    pub name: String,
    pub var: Var,
    /// False for biases and LayerNorm weights.
    pub weight_decay: bool,
}

/// Copies of the trainable tensors: the optimizer keeps updating the vars in place, so a
/// checkpoint must not hold the vars themselves.
pub fn snapshot(vars: &[NamedVar]) -> Result<HashMap<String, Tensor>, ZooError> {
    vars.iter()
        .map(|nv| Ok((nv.name.clone(), nv.var.as_tensor().copy()?)))
        .collect()
}

/// Drops the LoRA adapter vars (`….lora_A.…`, `….lora_B.…`): what stays trainable once
/// every adapter has been merged into its base weight.
pub fn drop_adapters(vars: &mut Vec<NamedVar>) {
    vars.retain(|nv| !nv.name.contains(".lora_A.") && !nv.name.contains(".lora_B."));
}

/// Sets every var from `tensors` (a checkpoint), checking names and shapes; the values are
/// converted to the var's dtype and device.
pub fn load_into(vars: &[NamedVar], tensors: &HashMap<String, Tensor>) -> Result<(), ZooError> {
    for nv in vars {
        let t = tensors
            .get(&nv.name)
            .ok_or_else(|| ZooError::MissingTensor(nv.name.clone()))?;
        if t.dims() != nv.var.dims() {
            return Err(ZooError::Config(format!(
                "tensor `{}` has shape {:?}, the model expects {:?}",
                nv.name,
                t.dims(),
                nv.var.dims()
            )));
        }
        nv.var
            .set(&t.to_dtype(nv.var.dtype())?.to_device(nv.var.device())?)?;
    }
    Ok(())
}
