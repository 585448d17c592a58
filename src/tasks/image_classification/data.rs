//! Images as the model sees them: decoded once, then per batch prepared by the model's
//! [`ImagePrep`], augmented when training. Augmentation draws from a generator seeded by
//! (seed, epoch, example), so a resumed run sees exactly the crops the interrupted one
//! would have.

use candle_core::{Device, Tensor};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::SeedableRng;
use rayon::prelude::*;

use crate::domain::dataset::images::LabeledImage;
use crate::train::TrainError;
use crate::zoo::cpu::dropout::mix;
use crate::zoo::vision::ImagePrep;

/// A decoded image and its class id.
pub struct Sample {
    pub image: RgbImage,
    pub label: usize,
}

/// Decodes every image once; `labels` is the job's class list (id = index).
pub fn decode_samples(
    images: &[LabeledImage],
    labels: &[String],
    prep: &ImagePrep,
) -> Result<Vec<Sample>, TrainError> {
    images
        .par_iter()
        .map(|item| {
            let label = labels.binary_search(&item.label).map_err(|_| {
                TrainError::InvalidData(format!("class `{}` is not in the label set", item.label))
            })?;
            let image = prep.decode(&item.bytes).map_err(|e| {
                TrainError::InvalidData(item.at.error(format_args!(": the image {e}.")).message)
            })?;
            Ok(Sample { image, label })
        })
        .collect()
}

/// The generator of one example's augmentation in one epoch.
pub fn augmentation_rng(seed: u64, epoch: usize, index: usize) -> StdRng {
    StdRng::seed_from_u64(mix(seed ^ mix(((epoch as u64) << 40) ^ index as u64)))
}

/// `[N, size, size, 3]` for `indices`, prepared in parallel: augmented with `augment` =
/// `Some((seed, epoch))`, the evaluation transform otherwise.
pub fn batch_tensor(
    samples: &[Sample],
    indices: &[usize],
    prep: &ImagePrep,
    augment: Option<(u64, usize)>,
    device: &Device,
) -> Result<Tensor, TrainError> {
    let pixels: Vec<Vec<f32>> = indices
        .par_iter()
        .map(|&i| match augment {
            Some((seed, epoch)) => {
                prep.train_pixels(&samples[i].image, &mut augmentation_rng(seed, epoch, i))
            }
            None => prep.eval_pixels(&samples[i].image),
        })
        .collect();
    let flat: Vec<f32> = pixels.concat();
    Ok(Tensor::from_vec(
        flat,
        (indices.len(), prep.size, prep.size, 3),
        device,
    )?)
}
