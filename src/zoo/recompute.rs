//! Gradient checkpointing: a layer whose activations are not kept for backward but
//! recomputed there, as `torch.utils.checkpoint` does for transformers'
//! `gradient_checkpointing_enable()`.
//!
//! [`checkpointed`] runs a segment (one decoder or encoder layer) on a detached copy of its
//! input, so none of its intermediate tensors outlive the forward, and attaches the result
//! to the input through one custom op. When the backward reaches that op, it runs the
//! segment again with a graph, back-propagates the incoming gradient through it, returns
//! the input's gradient to candle and leaves the gradients of the segment's parameters in a
//! [`RecomputedGradients`] sink: a custom op can only hand back gradients for its own
//! arguments. The trainer moves them into the backward's store
//! ([`RecomputedGradients::drain_into`]) before the optimizer reads it.
//!
//! Memory: the graph keeps each layer's input and output instead of every intermediate
//! (on SmolLM2 about 9h + 3kv + 3i floats per token and layer become 2h); the cost is a
//! second forward of every layer. Dropout masks are drawn again from the same seeds
//! (`cpu::dropout`'s seed stream is rewound to where the forward stood), so the recomputed
//! layer is the one the forward ran, and the gradients equal those without checkpointing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor, TensorId, Var};

use super::cpu::dropout;
use super::fused;
use super::precomputed::PrecomputedOutput;
use super::ZooError;

/// One layer's forward from its input; called once in the forward, once more in backward.
pub(crate) type Segment = Arc<dyn Fn(&Tensor) -> Result<Tensor, ZooError> + Send + Sync>;

/// Parameter gradients that recomputed segments produced during one backward pass.
#[derive(Debug, Default)]
pub struct RecomputedGradients {
    grads: Mutex<HashMap<TensorId, (Tensor, Tensor)>>,
}

impl RecomputedGradients {
    fn add(&self, param: &Tensor, grad: Tensor) -> candle_core::Result<()> {
        let mut grads = self.lock()?;
        let sum = match grads.remove(&param.id()) {
            Some((_, earlier)) => (earlier + grad)?,
            None => grad,
        };
        grads.insert(param.id(), (param.clone(), sum));
        Ok(())
    }

    fn lock(
        &self,
    ) -> candle_core::Result<std::sync::MutexGuard<'_, HashMap<TensorId, (Tensor, Tensor)>>> {
        self.grads
            .lock()
            .map_err(|_| candle_core::Error::Msg("recomputed gradients: poisoned".into()))
    }

    /// Moves every gradient left here into `store`, added to what the store already holds
    /// for the same parameter (a tensor used inside and outside checkpointed layers).
    pub fn drain_into(&self, store: &mut GradStore) -> candle_core::Result<()> {
        for (_, (param, grad)) in self.lock()?.drain() {
            let total = match store.remove(&param) {
                Some(other) => (other + grad)?,
                None => grad,
            };
            store.insert(&param, total);
        }
        Ok(())
    }

    /// Whether gradients are waiting to be drained (tests).
    pub fn is_empty(&self) -> bool {
        self.lock().map(|g| g.is_empty()).unwrap_or(true)
    }
}

/// `segment(x)`, keeping for backward only `x` and the result; `params` are the trainable
/// tensors the segment reads, whose gradients go to `sink`. Without a tracked `x` (an
/// evaluation, a frozen prefix) the segment simply runs.
pub(crate) fn checkpointed(
    x: &Tensor,
    segment: Segment,
    params: Vec<Tensor>,
    sink: &Arc<RecomputedGradients>,
) -> Result<Tensor, ZooError> {
    if !x.track_op() {
        return segment(x);
    }
    dropout::ensure_seeded();
    let replay = Replay {
        dropout: dropout::stream_position(),
        generic_ops: fused::generic_ops_only(),
    };
    // The graph this builds (the segment's parameters are vars) is dropped with it: only
    // the detached output is kept.
    let output = segment(&x.detach())?.detach();
    Ok(x.apply_op1(Recompute {
        segment,
        params,
        sink: Arc::clone(sink),
        replay,
        output: PrecomputedOutput::new(output, "recompute"),
    })?)
}

/// What the forward's random draws and kernel choice depended on, to run it again alike.
#[derive(Clone, Copy)]
struct Replay {
    dropout: Option<(u64, u64)>,
    generic_ops: bool,
}

struct Recompute {
    segment: Segment,
    params: Vec<Tensor>,
    sink: Arc<RecomputedGradients>,
    replay: Replay,
    /// Taken by the op's forward (which copies it into the graph's output).
    output: PrecomputedOutput,
}

impl Recompute {
    /// The segment run again on `x` with a graph, in the forward's dropout and kernel state.
    fn rerun(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let resume = dropout::stream_position();
        dropout::set_stream_position(self.replay.dropout);
        let run = || (self.segment)(x).map_err(|e| candle_core::Error::Msg(e.to_string()));
        let out = if self.replay.generic_ops {
            fused::with_generic_ops(run)
        } else {
            run()
        };
        dropout::set_stream_position(resume);
        out
    }
}

impl CustomOp1 for Recompute {
    fn name(&self) -> &'static str {
        "recompute"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        self.output.take_cpu()
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        self.output.take_cuda()
    }

    fn bwd(
        &self,
        arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        let input = Var::from_tensor(&arg.detach())?;
        let output = self.rerun(input.as_tensor())?;
        // d(Σ output ⊙ g)/dθ is the vector-Jacobian product the outer backward asks for.
        let surrogate = (output * grad_res.detach())?.sum_all()?;
        let grads = surrogate.backward()?;
        for param in &self.params {
            if let Some(g) = grads.get(param) {
                self.sink.add(param, g.detach())?;
            }
        }
        Ok(grads.get(input.as_tensor()).map(Tensor::detach))
    }
}

#[cfg(test)]
#[path = "recompute_tests.rs"]
mod tests;
