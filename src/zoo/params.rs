//! Trainable parameters as every model exposes them: named `Var`s that the optimizer
//! updates in place, snapshotted into checkpoints and loaded back on resume.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor, Var};

use super::cpu::embedding::{RowGradients, SparseRows};
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
    /// This var's gradient from a backward pass as a tensor ([`take_gradient`], the rows
    /// written into zeros). The optimizer reads the rows without the dense tensor; this is
    /// for inspecting gradients.
    pub fn take_gradient(&self, store: &GradStore) -> Result<Option<Tensor>, ZooError> {
        Ok(take_gradient(&self.var, self.row_grads.as_ref(), store)?
            .map(|g| g.to_dense(self.var.device()))
            .transpose()?)
    }
}

/// `var`'s gradient from one backward pass: the store's tensor or, for an embedding table,
/// the rows its lookups left in `row_grads` during that pass (taken from the sink: call it
/// once per backward).
pub fn take_gradient(
    var: &Var,
    row_grads: Option<&Arc<RowGradients>>,
    store: &GradStore,
) -> candle_core::Result<Option<Grad>> {
    if let Some(g) = store.get(var.as_tensor()) {
        return Ok(Some(Grad::Dense(g.detach())));
    }
    match row_grads {
        Some(sink) => Ok(sink.drain()?.map(Grad::Rows)),
        None => Ok(None),
    }
}

/// One parameter's gradient.
#[derive(Debug, Clone)]
pub enum Grad {
    Dense(Tensor),
    /// An embedding table's: the rows its lookups reached, zero elsewhere.
    Rows(SparseRows),
}

impl Grad {
    /// `self + other` (gradient accumulation).
    pub fn plus(self, other: &Grad) -> candle_core::Result<Grad> {
        Ok(match (self, other) {
            (Grad::Dense(a), Grad::Dense(b)) => Grad::Dense((a + b)?.detach()),
            (Grad::Rows(mut a), Grad::Rows(b)) => {
                a.merge(b)?;
                Grad::Rows(a)
            }
            (Grad::Dense(a), Grad::Rows(b)) => {
                let b = b.to_dense(a.device())?;
                Grad::Dense((a + b)?)
            }
            (Grad::Rows(a), Grad::Dense(b)) => Grad::Dense((a.to_dense(b.device())? + b)?),
        })
    }

    /// The gradient as a tensor on `device` (rows written into zeros).
    pub fn to_dense(&self, device: &Device) -> candle_core::Result<Tensor> {
        match self {
            Grad::Dense(t) => Ok(t.clone()),
            Grad::Rows(rows) => rows.to_dense(device),
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
