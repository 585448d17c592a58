//! The image classification job's estimate. Its model is small and loaded (and its images
//! decoded) before the check, so what is estimated is what training adds to them: the
//! trainable tensors' gradients and AdamW moments, and a step's activations as
//! `zoo::vision::memory` counts them per image from the backbone's layers.

use candle_core::Device;

use super::{available_bytes, device_name, gib, within_margin, MemoryEstimate};
use crate::train::{EventLevel, TrainError, TrainObserver};
use crate::zoo::vision::memory::UnitFootprint;
use crate::zoo::vision::ImageClassifier;

/// What an image job's step is made of, for its estimate.
#[derive(Debug, Clone, Copy)]
pub struct ImageStep<'a> {
    /// Every backbone unit's footprint per image, first to last, at the job's image size.
    pub footprint: &'a [UnitFootprint],
    /// How many of the last units train at most (the schedule's widest point).
    pub trained_units: usize,
    pub image_size: usize,
    /// Values of the tensors that may ever train (the optimizer holds them all from the
    /// first step).
    pub trainable_params: u64,
    /// How many images the leading frozen units hold at once: `None`, the whole batch;
    /// `Some(k)` where they run image by image on `k` threads (EfficientNet-Lite on the CPU
    /// kernels, BatchNorm folded into the convolutions).
    pub frozen_images_at_once: Option<usize>,
    /// On the composed ops (GPUs), whose footprint the walk counted.
    pub generic: bool,
}

/// What a step was measured to hold over what the walk counts, as `(numerator,
/// denominator)`, on the CPU kernels and on the composed ops: the walk counts the tensors
/// each op keeps but not the allocator's or the backward pass's other transients. Measured
/// with `examples/image_memory` on the real EfficientNet-Lite0 (peak RSS growth): 1.31–1.32×
/// on the CPU kernels (last 3 units at batch 32, the whole backbone at batch 16, 224 px) and
/// 1.55–1.61× on the composed ops (the same two at batch 16, 160 px).
const MEASURED_OVER_COUNTED: [(u64, u64); 2] = [(27, 20), (8, 5)];

/// Bytes training adds to the loaded model at `batch` images a step: the gradients and both
/// AdamW moments of the trainable tensors; the activations at the larger of the step's two
/// phases, the frozen units' forward (their widest layer's working set) and the trained
/// units' (what they keep for backward and their widest layer), each beside the batch's
/// pixels (prepared, then one tensor), times what was measured over what is counted
/// ([`MEASURED_OVER_COUNTED`]); on the CPU a checkpoint's copy of the moments.
/// `weights` and `loading` are 0: the model is already resident when this is asked.
pub fn estimate_image(step: &ImageStep<'_>, batch: usize, host: bool) -> MemoryEstimate {
    let n = step.footprint.len();
    let (frozen, trained) = step.footprint.split_at(n - step.trained_units.min(n));
    let batch = batch as u64;
    let saved: u64 = trained.iter().map(|u| u.saved).sum();
    let widest = |units: &[UnitFootprint]| units.iter().map(|u| u.working).max().unwrap_or(0);
    let frozen_images = step
        .frozen_images_at_once
        .map_or(batch, |k| batch.min(k as u64));
    let pixels = batch * 2 * 3 * (step.image_size * step.image_size) as u64;
    let frozen_phase = frozen_images * widest(frozen);
    let trained_phase = batch * (saved + widest(trained));
    let (times, over) = MEASURED_OVER_COUNTED[usize::from(step.generic)];
    MemoryEstimate {
        weights: 0,
        optimizer: 4 * 3 * step.trainable_params,
        activations: 4 * (pixels + frozen_phase.max(trained_phase)) * times / over,
        loading: 0,
        checkpoint: if host {
            4 * 2 * step.trainable_params
        } else {
            0
        },
    }
}

/// Fails an image job before its first step when what training adds, with a 15 % margin,
/// is over what `device` has free (see [`fit_image_job`]); an event gives the estimate
/// otherwise. `shape` is (batch size, the most units the schedule trains at once, image
/// size).
pub fn check_image_job(
    model: &ImageClassifier,
    shape: (usize, usize, usize),
    device: &Device,
    observer: &mut dyn TrainObserver,
) -> Result<(), TrainError> {
    let Some(available) = available_bytes(device) else {
        return Ok(());
    };
    let name = device_name(device);
    let run = ImageRun::on(device, &name);
    let total = fit_image_job(model, shape, run, available)?.total();
    observer.on_event(
        EventLevel::Info,
        format!(
            "Estimated training memory {} beyond the loaded model, of {} available on {name}",
            gib(total),
            gib(available),
        ),
    );
    Ok(())
}

impl<'a> ImageRun<'a> {
    /// How a job runs on `device` (named `name`): the composed ops off the CPU, or where
    /// the CPU kernels are switched off.
    pub fn on(device: &Device, name: &'a str) -> ImageRun<'a> {
        ImageRun {
            device: name,
            host: device.is_cpu(),
            generic: !device.is_cpu() || crate::zoo::fused::generic_ops_only(),
        }
    }
}

/// What the estimate reads of the loaded model.
struct ModelFacts {
    /// Per backbone unit, at the job's image size.
    footprint: Vec<UnitFootprint>,
    trainable_params: u64,
    frozen_images_at_once: Option<usize>,
}

fn model_facts(
    model: &ImageClassifier,
    image_size: usize,
    run: ImageRun<'_>,
) -> Result<ModelFacts, TrainError> {
    Ok(ModelFacts {
        footprint: model.footprint(image_size, run.generic)?,
        trainable_params: model
            .trainable_vars()
            .iter()
            .map(|v| v.var.elem_count() as u64)
            .sum(),
        frozen_images_at_once: model
            .runs_frozen_prefix_per_image(run.generic)
            .then(rayon::current_num_threads),
    })
}

/// What training adds to the loaded model, part by part, at the job's `shape` (batch size,
/// the most units the schedule trains at once, image size), fitting or not: the job's plan.
pub fn image_job_estimate(
    model: &ImageClassifier,
    (batch_size, trained_units, image_size): (usize, usize, usize),
    run: ImageRun<'_>,
) -> Result<MemoryEstimate, TrainError> {
    let facts = model_facts(model, image_size, run)?;
    let step = ImageStep {
        footprint: &facts.footprint,
        trained_units,
        image_size,
        trainable_params: facts.trainable_params,
        frozen_images_at_once: facts.frozen_images_at_once,
        generic: run.generic,
    };
    Ok(estimate_image(&step, batch_size, run.host))
}

/// Where an image job runs, for its estimate.
#[derive(Debug, Clone, Copy)]
pub struct ImageRun<'a> {
    /// `cpu`, `cuda:0`: how the message names the device.
    pub device: &'a str,
    /// On the CPU, where a checkpoint's copy of the moments shares the memory.
    pub host: bool,
    /// On the composed ops (GPUs), which keep more for backward than the CPU kernels.
    pub generic: bool,
}

/// What training adds, part by part, when it fits in `available` with a 15 % margin; otherwise
/// [`TrainError::DoesNotFit`] with what would fit: a smaller batch, fewer unfrozen units,
/// smaller images (a multiple of 32).
pub fn fit_image_job(
    model: &ImageClassifier,
    (batch_size, trained_units, image_size): (usize, usize, usize),
    run: ImageRun<'_>,
    available: u64,
) -> Result<MemoryEstimate, TrainError> {
    let ModelFacts {
        footprint,
        trainable_params,
        frozen_images_at_once,
    } = model_facts(model, image_size, run)?;
    let step = |units: usize, size: usize, footprint| ImageStep {
        footprint,
        trained_units: units,
        image_size: size,
        trainable_params,
        frozen_images_at_once,
        generic: run.generic,
    };
    let need = |s: &ImageStep<'_>, batch: usize| estimate_image(s, batch, run.host).total();
    let fits = |s: &ImageStep<'_>, batch: usize| within_margin(need(s, batch), available);
    let asked = step(trained_units, image_size, &footprint[..]);
    let parts = estimate_image(&asked, batch_size, run.host);
    if within_margin(parts.total(), available) {
        return Ok(parts);
    }
    let mut ways = Vec::new();
    // BatchNorm on batch statistics needs two images.
    let least = if trained_units > 0 { 2 } else { 1 };
    if let Some(batch) = (least..batch_size).rev().find(|&b| fits(&asked, b)) {
        ways.push(format!(
            "`batch_size` {batch} (with `gradient_accumulation_steps` {} to keep the effective batch)",
            batch_size.div_ceil(batch)
        ));
    }
    if let Some(units) = (0..trained_units)
        .rev()
        .find(|&u| fits(&step(u, image_size, &footprint[..]), batch_size))
    {
        ways.push(match units {
            0 => "the backbone frozen (`freeze_backbone` true, no `unfreeze_schedule`)".into(),
            _ => format!("at most {units} backbone units unfrozen (`unfreeze_schedule`)"),
        });
    }
    let smaller = (1..image_size.div_ceil(32))
        .rev()
        .map(|k| 32 * k)
        .find(|&size| {
            let Ok(smaller_footprint) = model.footprint(size, run.generic) else {
                return false;
            };
            let at_size = ImageStep {
                footprint: &smaller_footprint,
                ..step(trained_units, size, &footprint[..])
            };
            fits(&at_size, batch_size)
        });
    if let Some(size) = smaller {
        ways.push(format!("`image_size` {size}"));
    }
    let advice = if ways.is_empty() {
        " A smaller model would.".to_string()
    } else {
        format!(" It would fit with {}.", ways.join(", or with "))
    };
    Err(TrainError::DoesNotFit(format!(
        "Training needs about {} on `{}` beyond the loaded model (gradients and optimizer \
         state {}, activations {} for {batch_size} images of {image_size}×{image_size} per \
         step) and a 15 % margin, but the device has {} available.{advice}",
        gib(parts.total()),
        run.device,
        gib(parts.optimizer),
        gib(parts.activations),
        gib(available),
    )))
}

#[cfg(test)]
#[path = "memory_image_tests.rs"]
mod tests;
