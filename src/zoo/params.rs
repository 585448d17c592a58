//! Trainable parameters as every model exposes them: named `Var`s that the optimizer
//! updates in place, snapshotted into checkpoints and loaded back on resume.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::cpu::embedding::RowGradients;
use super::ZooError;

/// A trainable tensor with its checkpoint name.
#[derive(Debug, Clone)]
pub struct NamedVar {
    pub name: String,
    pub var: Var,
    /// False for biases and LayerNorm weights.
    pub weight_decay: bool,
    /// Where an embedding table's lookups leave its gradient as rows (see
    /// [`super::cpu::embedding`]); `None`: the gradient is the backward pass's tensor.
    pub row_grads: Option<Arc<RowGradients>>,
}

impl NamedVar {
    /// This var's gradient from a backward pass as a tensor: the store's, or the rows its
    /// embedding lookups left in [`Self::row_grads`] during that pass, written into zeros
    /// (taken from the sink: call it once per backward). The optimizer reads the rows
    /// without the dense tensor; this is for inspecting gradients.
    pub fn take_gradient(&self, store: &GradStore) -> Result<Option<Tensor>, ZooError> {
        if let Some(g) = store.get(self.var.as_tensor()) {
            return Ok(Some(g.clone()));
        }
        match &self.row_grads {
            Some(sink) => Ok(sink
                .drain()?
                .map(|rows| rows.to_dense(self.var.device()))
                .transpose()?),
            None => Ok(None),
        }
    }
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
