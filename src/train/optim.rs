//! Our own AdamW (torch semantics) with two parameter groups, savable state, global-norm
//! clipping and gradient accumulation.
//!
//! Why not candle-nn's `AdamW`: it cannot save its moments (a resumed job would silently
//! restart its optimizer), has a single weight-decay group, and spends ~10 tensor ops per
//! parameter per step. On CPU this one walks each parameter once over contiguous `f32`
//! slices (moments live in `Vec<f32>` here) and writes the result back with `Var::set`;
//! other devices use a tensor-op path with `f32` moments.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;

use super::gradients::RowWiseUpdate;
pub use super::gradients::{Grad, Gradients};
use crate::zoo::cpu::embedding::RowGradients;
use crate::zoo::params::take_gradient;

/// Below this many elements a tensor is updated on the calling thread: rayon's fork/join
/// costs more than it saves on biases and LayerNorm weights.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;
pub(super) const PARALLEL_CHUNK: usize = 1 << 14;
const STEP_KEY: &str = "__step__";

/// One trainable tensor as the optimizer sees it.
#[derive(Debug, Clone)]
pub struct OptimParam {
    pub name: String,
    pub var: Var,
    /// False for biases and norm weights (the no-decay group).
    pub weight_decay: bool,
    /// An embedding table's row-gradient sink (its gradient is not in the backward's store).
    pub row_grads: Option<Arc<RowGradients>>,
}

impl From<crate::zoo::NamedVar> for OptimParam {
    fn from(v: crate::zoo::NamedVar) -> Self {
        Self {
            name: v.name,
            var: v.var,
            weight_decay: v.weight_decay,
            row_grads: v.row_grads,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// AdamW's decoupled decay (`p ← p·(1 − lr·wd)`); `false` is `torch.optim.Adam`'s L2
    /// term, `wd·p` added to the gradient before the moments.
    pub decoupled: bool,
}

impl Default for AdamWConfig {
    /// torch.optim.AdamW / transformers' defaults except `weight_decay`, which
    /// `TrainingArguments` defaults to 0.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: true,
        }
    }
}

enum Moments {
    /// CPU + f32 parameter: the fused slice update.
    Host { m: Vec<f32>, v: Vec<f32> },
    /// Anything else: f32 tensors on the parameter's device.
    Device { m: Tensor, v: Tensor },
}

struct Slot {
    param: OptimParam,
    moments: Moments,
    /// This parameter's learning rate over the step's (`AdamW::scale_learning_rates`).
    lr_scale: f64,
    /// Steps this parameter took (it had a gradient): its bias correction, as torch keeps
    /// `state["step"]` per parameter. A backbone unit unfrozen mid-run starts at 0.
    steps: u64,
    /// For a table updated from gradient rows: which rows have non-zero moments, i.e. have
    /// had a gradient (see [`RowWiseUpdate`]); `None` until the first row update, and
    /// again after a state is loaded, then read off the moments.
    rows_with_moments: Option<Vec<bool>>,
}

pub struct AdamW {
    slots: Vec<Slot>,
    step: usize,
    config: AdamWConfig,
}

pub(super) struct StepScalars {
    lr: f32,
    decay_factor: f32,
    beta1: f32,
    beta2: f32,
    bias_m: f32,
    bias_v: f32,
    eps: f32,
    /// The gradient clipping factor (1 without clipping).
    grad_scale: f32,
}

impl StepScalars {
    /// θ ← θ(1 − lr·wd) − lr · m̂ / (√v̂ + ε), with m̂ = m/(1−β1ᵗ), v̂ = v/(1−β2ᵗ), on the
    /// gradient times the clipping factor.
    pub(super) fn update(&self, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
        adamw_update(self, p, g, m, v);
    }

    /// [`Self::update`] for a zero gradient on zero moments: the decoupled decay alone.
    pub(super) fn decay_only(&self, p: &mut [f32]) {
        if self.decay_factor != 1.0 {
            p.iter_mut().for_each(|p| *p *= self.decay_factor);
        }
    }
}

/// [`StepScalars::update`]'s loop, compiled for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn adamw_update(s: &StepScalars, p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32]) {
    for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
        let g = g * s.grad_scale;
        *m = s.beta1 * *m + (1.0 - s.beta1) * g;
        *v = s.beta2 * *v + (1.0 - s.beta2) * g * g;
        let m_hat = *m * s.bias_m;
        let v_hat = *v * s.bias_v;
        *p = *p * s.decay_factor - s.lr * (m_hat / (v_hat.sqrt() + s.eps));
    }
}

impl AdamW {
    pub fn new(params: Vec<OptimParam>, config: AdamWConfig) -> candle_core::Result<Self> {
        let slots = params
            .into_iter()
            .map(|param| {
                let moments = zero_moments(&param.var)?;
                Ok(Slot {
                    param,
                    moments,
                    lr_scale: 1.0,
                    steps: 0,
                    rows_with_moments: None,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            slots,
            step: 0,
            config,
        })
    }

    /// Gives each parameter `scale(name)` times the step's learning rate (a classification
    /// head made from scratch learning faster than the pretrained encoder under it).
    pub fn scale_learning_rates(&mut self, scale: impl Fn(&str) -> f64) {
        for slot in &mut self.slots {
            slot.lr_scale = scale(&slot.param.name);
        }
    }

    /// Optimizer steps taken so far (the `t` of the bias correction).
    pub fn step_count(&self) -> usize {
        self.step
    }

    /// Collects this optimizer's gradients out of a backward pass: the store's tensors, and
    /// the rows embedding tables' lookups left in their sinks during it (which this drains,
    /// so call it once after each backward).
    pub fn gradients(&self, store: &GradStore) -> candle_core::Result<Gradients> {
        let grads = self
            .slots
            .iter()
            .map(|s| take_gradient(&s.param.var, s.param.row_grads.as_ref(), store))
            .collect::<candle_core::Result<_>>()?;
        Ok(Gradients { grads, scale: 1.0 })
    }

    /// Adds a micro-batch's gradients into `acc` (gradient accumulation).
    pub fn accumulate(&self, acc: &mut Gradients, store: &GradStore) -> candle_core::Result<()> {
        for (slot, sum) in self.slots.iter().zip(acc.grads.iter_mut()) {
            if let Some(g) = take_gradient(&slot.param.var, slot.param.row_grads.as_ref(), store)? {
                *sum = Some(match sum.take() {
                    Some(prev) => prev.plus(&g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// One AdamW step at learning rate `lr`. Parameters without a gradient are untouched
    /// (torch skips `p.grad is None` too) but the step counter advances.
    pub fn step(&mut self, grads: &Gradients, lr: f64) -> candle_core::Result<()> {
        self.step += 1;
        let cfg = self.config;
        for (slot, grad) in self.slots.iter_mut().zip(&grads.grads) {
            let Some(grad) = grad else { continue };
            slot.steps += 1;
            let t = i32::try_from(slot.steps).unwrap_or(i32::MAX);
            let lr = lr * slot.lr_scale;
            let wd = if slot.param.weight_decay {
                cfg.weight_decay
            } else {
                0.0
            };
            let decay = if cfg.decoupled { wd } else { 0.0 };
            let scalars = |grad_scale: f32| StepScalars {
                lr: lr as f32,
                decay_factor: (1.0 - lr * decay) as f32,
                beta1: cfg.beta1 as f32,
                beta2: cfg.beta2 as f32,
                bias_m: (1.0 / (1.0 - cfg.beta1.powi(t))) as f32,
                bias_v: (1.0 / (1.0 - cfg.beta2.powi(t))) as f32,
                eps: cfg.eps as f32,
                grad_scale,
            };
            // An embedding table's rows go straight into the row-wise update; the dense
            // tensor is built only for the paths that need one.
            if let (Grad::Rows(rows), Moments::Host { m, v }) = (grad, &mut slot.moments) {
                if (cfg.decoupled || wd == 0.0) && slot.param.var.is_contiguous() {
                    let scalars = scalars(grads.scale as f32);
                    let live = slot
                        .rows_with_moments
                        .get_or_insert_with(|| rows_with_moments(m, v, rows.width));
                    let update = RowWiseUpdate {
                        scalars: &scalars,
                        rows,
                        moments: Mutex::new((m, v, live)),
                    };
                    slot.param.var.as_tensor().inplace_op1(&update)?;
                    continue;
                }
            }
            // The dense update moves every row's moments: what the row path knew is stale.
            slot.rows_with_moments = None;
            let dense = grad.to_dense(slot.param.var.device())?;
            let (grad, grad_scale) = if cfg.decoupled || wd == 0.0 {
                (dense, grads.scale as f32)
            } else {
                // Adam's L2 term joins the clipped gradient, so clip first.
                let coupled =
                    ((dense * grads.scale)? + (slot.param.var.as_tensor().detach() * wd)?)?;
                (coupled, 1.0)
            };
            let scalars = scalars(grad_scale);
            match &mut slot.moments {
                Moments::Host { m, v } => host_step(&slot.param.var, &grad, m, v, &scalars)?,
                Moments::Device { m, v } => device_step(&slot.param.var, &grad, m, v, &scalars)?,
            }
        }
        Ok(())
    }

    /// Step count and moments (`<name>.exp_avg`, `<name>.exp_avg_sq`) as tensors.
    pub fn state_tensors(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        out.insert(
            STEP_KEY.to_string(),
            Tensor::new(&[self.step as i64], &Device::Cpu)?,
        );
        for slot in &self.slots {
            let shape = slot.param.var.shape();
            let (m, v) = match &slot.moments {
                Moments::Host { m, v } => (
                    Tensor::from_slice(m, shape, &Device::Cpu)?,
                    Tensor::from_slice(v, shape, &Device::Cpu)?,
                ),
                Moments::Device { m, v } => (m.clone(), v.clone()),
            };
            out.insert(format!("{}.exp_avg", slot.param.name), m);
            out.insert(format!("{}.exp_avg_sq", slot.param.name), v);
            let steps = i64::try_from(slot.steps).unwrap_or(i64::MAX);
            out.insert(
                format!("{}.step", slot.param.name),
                Tensor::new(&[steps], &Device::Cpu)?,
            );
        }
        Ok(out)
    }

    pub fn save(&self, path: &Path) -> candle_core::Result<()> {
        candle_core::safetensors::save(&self.state_tensors()?, path)
    }

    /// Restores a state written by [`AdamW::save`]; every parameter must be present with
    /// the same shape, otherwise resuming would not be exact.
    pub fn load(&mut self, path: &Path) -> candle_core::Result<()> {
        let tensors = candle_core::safetensors::load(path, &Device::Cpu)?;
        self.load_state_tensors(&tensors)
    }

    pub fn load_state_tensors(
        &mut self,
        tensors: &HashMap<String, Tensor>,
    ) -> candle_core::Result<()> {
        let step = tensors
            .get(STEP_KEY)
            .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has no `{STEP_KEY}`")))?
            .to_dtype(DType::I64)?
            .flatten_all()?
            .to_vec1::<i64>()?;
        let step = step.first().copied().unwrap_or(0);
        let mut restored = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            let fetch = |suffix: &str| {
                let key = format!("{}.{suffix}", slot.param.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    candle_core::Error::Msg(format!("optimizer state lacks `{key}`"))
                })?;
                if t.shape() != slot.param.var.shape() {
                    return Err(candle_core::Error::Msg(format!(
                        "optimizer state `{key}` has shape {:?}, parameter has {:?}",
                        t.shape(),
                        slot.param.var.shape()
                    )));
                }
                t.to_dtype(DType::F32)
            };
            let (m, v) = (fetch("exp_avg")?, fetch("exp_avg_sq")?);
            // States written before per-parameter steps: every parameter took every step.
            let steps = match tensors.get(&format!("{}.step", slot.param.name)) {
                Some(t) => t.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?,
                None => vec![step],
            };
            let steps = steps.first().copied().unwrap_or(step).max(0) as u64;
            restored.push((
                steps,
                match slot.moments {
                    Moments::Host { .. } => Moments::Host {
                        m: m.flatten_all()?.to_vec1()?,
                        v: v.flatten_all()?.to_vec1()?,
                    },
                    Moments::Device { .. } => {
                        let device = slot.param.var.device();
                        Moments::Device {
                            m: m.to_device(device)?,
                            v: v.to_device(device)?,
                        }
                    }
                },
            ));
        }
        for (slot, (steps, moments)) in self.slots.iter_mut().zip(restored) {
            slot.moments = moments;
            slot.steps = steps;
            slot.rows_with_moments = None;
        }
        self.step = usize::try_from(step)
            .map_err(|_| candle_core::Error::Msg("negative optimizer step".into()))?;
        Ok(())
    }
}

/// Per row of width `width`: whether its first or second moment has a non-zero entry.
fn rows_with_moments(m: &[f32], v: &[f32], width: usize) -> Vec<bool> {
    m.chunks(width.max(1))
        .zip(v.chunks(width.max(1)))
        .map(|(m, v)| m.iter().chain(v).any(|&x| x != 0.0))
        .collect()
}

fn zero_moments(var: &Var) -> candle_core::Result<Moments> {
    if crate::zoo::fused::uses_fused_kernels(var.as_tensor()) {
        let n = var.elem_count();
        Ok(Moments::Host {
            m: vec![0.0; n],
            v: vec![0.0; n],
        })
    } else {
        let m = Tensor::zeros(var.shape(), DType::F32, var.device())?;
        Ok(Moments::Device {
            v: m.zeros_like()?,
            m,
        })
    }
}

fn host_step(
    var: &Var,
    grad: &Tensor,
    m: &mut [f32],
    v: &mut [f32],
    s: &StepScalars,
) -> candle_core::Result<()> {
    if var.as_tensor().is_contiguous() {
        let grad = grad.to_dtype(DType::F32)?.contiguous()?;
        let update = InPlaceUpdate {
            scalars: s,
            moments: Mutex::new((m, v)),
        };
        return var.as_tensor().inplace_op2(&grad, &update);
    }
    let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
    let g: Vec<f32> = grad.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if g.len() != p.len() {
        return Err(candle_core::Error::Msg(format!(
            "gradient has {} elements, parameter {}",
            g.len(),
            p.len()
        )));
    }
    if p.len() >= PARALLEL_MIN_ELEMS {
        p.par_chunks_mut(PARALLEL_CHUNK)
            .zip(g.par_chunks(PARALLEL_CHUNK))
            .zip(m.par_chunks_mut(PARALLEL_CHUNK))
            .zip(v.par_chunks_mut(PARALLEL_CHUNK))
            .for_each(|(((p, g), m), v)| s.update(p, g, m, v));
    } else {
        s.update(&mut p, &g, m, v);
    }
    var.set(&Tensor::from_vec(p, var.shape(), &Device::Cpu)?)
}

/// The fused update of a contiguous CPU f32 parameter, written straight into the
/// variable's storage: the parameter and its gradient are read where they are, where
/// copying both out and the result back in cost three passes over every parameter per
/// step (profiled on MiniLM-L6: most of the optimizer's time).
struct InPlaceUpdate<'a> {
    scalars: &'a StepScalars,
    /// The parameter's moments; the op's `&self` interface reaches them through the lock.
    moments: Mutex<(&'a mut [f32], &'a mut [f32])>,
}

impl InplaceOp2 for InPlaceUpdate<'_> {
    fn name(&self) -> &'static str {
        "adamw-update"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle_core::Result<()> {
        let CpuStorage::F32(param) = param else {
            candle_core::bail!("adamw: the in-place update takes f32 parameters");
        };
        let Some((start, end)) = param_layout.contiguous_offsets() else {
            candle_core::bail!("adamw: the in-place update takes contiguous parameters");
        };
        let p = &mut param[start..end];
        let g = crate::zoo::fused::contiguous_f32(grad, grad_layout)?;
        let mut moments = self
            .moments
            .lock()
            .map_err(|_| candle_core::Error::Msg("adamw: moments lock poisoned".into()))?;
        let (m, v) = &mut *moments;
        if g.len() != p.len() || m.len() != p.len() || v.len() != p.len() {
            candle_core::bail!(
                "adamw: parameter of {}, gradient of {}, moments of {}",
                p.len(),
                g.len(),
                m.len()
            );
        }
        let s = self.scalars;
        if p.len() >= PARALLEL_MIN_ELEMS {
            p.par_chunks_mut(PARALLEL_CHUNK)
                .zip(g.par_chunks(PARALLEL_CHUNK))
                .zip(m.par_chunks_mut(PARALLEL_CHUNK))
                .zip(v.par_chunks_mut(PARALLEL_CHUNK))
                .for_each(|(((p, g), m), v)| s.update(p, g, m, v));
        } else {
            s.update(p, g, m, v);
        }
        Ok(())
    }
}

fn device_step(
    var: &Var,
    grad: &Tensor,
    m: &mut Tensor,
    v: &mut Tensor,
    s: &StepScalars,
) -> candle_core::Result<()> {
    let g = (grad.to_dtype(DType::F32)? * f64::from(s.grad_scale))?;
    let (b1, b2) = (f64::from(s.beta1), f64::from(s.beta2));
    *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
    *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
    let m_hat = (&*m * f64::from(s.bias_m))?;
    let v_hat = (&*v * f64::from(s.bias_v))?;
    let update = (m_hat / (v_hat.sqrt()? + f64::from(s.eps))?)?;
    let theta = var.as_tensor().to_dtype(DType::F32)?;
    let next = ((theta * f64::from(s.decay_factor))? - (update * f64::from(s.lr))?)?;
    var.set(&next.to_dtype(var.dtype())?)
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
