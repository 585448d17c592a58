//! How images are prepared for a model, as timm's data config says (`pretrained_cfg`):
//! evaluation resizes the shorter side and center-crops; training takes torchvision's
//! `RandomResizedCrop` + horizontal flip. Pixels come out channels-last and normalised.

use image::imageops::{self, FilterType};
use image::RgbImage;
use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::PretrainedCfg;
use crate::domain::dataset::images::decode_image;

/// How images are prepared for one model: recorded in the checkpoint so serving prepares
/// them exactly as evaluation did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImagePrep {
    /// The square side the model sees.
    pub size: usize,
    /// Evaluation resizes the shorter side to this before the center crop
    /// (`floor(size / crop_pct)`, timm's eval transform).
    pub resize_to: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
    /// `bicubic` or `bilinear` (timm's names); anything else is bilinear.
    pub interpolation: String,
}

impl ImagePrep {
    /// From the model's data config, at `size` when the job asks for another side.
    pub fn new(cfg: &PretrainedCfg, size: Option<usize>) -> Self {
        let size = size.unwrap_or(cfg.input_size[1].max(cfg.input_size[2]));
        let crop_pct = if cfg.crop_pct > 0.0 {
            cfg.crop_pct
        } else {
            1.0
        };
        Self {
            size,
            resize_to: ((size as f32 / crop_pct).floor() as usize).max(size),
            mean: cfg.mean,
            std: cfg.std,
            interpolation: cfg.interpolation.clone(),
        }
    }

    fn filter(&self) -> FilterType {
        if self.interpolation == "bicubic" {
            FilterType::CatmullRom
        } else {
            FilterType::Triangle
        }
    }

    /// Evaluation: shorter side to `resize_to`, center crop `size`.
    pub fn eval_pixels(&self, image: &RgbImage) -> Vec<f32> {
        let resized = resize_shorter(image, self.resize_to, self.filter());
        let (w, h) = resized.dimensions();
        let size = self.size as u32;
        let (left, top) = (centre_offset(w, size), centre_offset(h, size));
        let crop = imageops::crop_imm(&resized, left, top, size.min(w), size.min(h)).to_image();
        self.normalise(&fit(&crop, size, self.filter()))
    }

    /// Training: torchvision's `RandomResizedCrop(size, scale=(0.08, 1), ratio=(3/4, 4/3))`
    /// and a horizontal flip with probability ½, drawn from `rng`.
    pub fn train_pixels(&self, image: &RgbImage, rng: &mut StdRng) -> Vec<f32> {
        let (w, h) = image.dimensions();
        let (left, top, cw, ch) = random_resized_crop(w, h, rng);
        let crop = imageops::crop_imm(image, left, top, cw, ch).to_image();
        let mut out = imageops::resize(&crop, self.size as u32, self.size as u32, self.filter());
        if rng.random_bool(0.5) {
            imageops::flip_horizontal_in_place(&mut out);
        }
        self.normalise(&out)
    }

    /// `[size, size, 3]` floats, `(pixel/255 − mean) / std` per channel.
    fn normalise(&self, image: &RgbImage) -> Vec<f32> {
        image
            .pixels()
            .flat_map(|p| (0..3).map(move |c| (p.0[c] as f32 / 255.0 - self.mean[c]) / self.std[c]))
            .collect()
    }

    /// A decoded image reduced to what preparation can use: its shorter side at most twice
    /// the evaluation resize, so a job's memory does not grow with the uploads' resolution.
    pub fn decode(&self, bytes: &[u8]) -> Result<RgbImage, String> {
        let image = decode_image(bytes)?.to_rgb8();
        let limit = (2 * self.resize_to) as u32;
        if image.width().min(image.height()) > limit {
            return Ok(resize_shorter(&image, limit as usize, FilterType::Triangle));
        }
        Ok(image)
    }
}

/// torchvision's `CenterCrop` offset, `int(round((size - crop) / 2))` with Python's
/// round-half-to-even: a 9-pixel margin starts the crop at 4, not 5.
fn centre_offset(size: u32, crop: u32) -> u32 {
    let margin = size.saturating_sub(crop);
    let half = margin / 2;
    if margin % 2 == 1 && half % 2 == 1 {
        half + 1
    } else {
        half
    }
}

fn resize_shorter(image: &RgbImage, shorter: usize, filter: FilterType) -> RgbImage {
    let (w, h) = image.dimensions();
    let shorter = shorter as u32;
    let (nw, nh) = if w <= h {
        (
            shorter,
            ((h as u64 * shorter as u64) / w.max(1) as u64).max(1) as u32,
        )
    } else {
        (
            ((w as u64 * shorter as u64) / h.max(1) as u64).max(1) as u32,
            shorter,
        )
    };
    if (nw, nh) == (w, h) {
        return image.clone();
    }
    imageops::resize(image, nw, nh, filter)
}

/// `image` at exactly `size × size` (a crop of a small image can be short of it).
fn fit(image: &RgbImage, size: u32, filter: FilterType) -> RgbImage {
    if image.dimensions() == (size, size) {
        image.clone()
    } else {
        imageops::resize(image, size, size, filter)
    }
}

/// torchvision's `RandomResizedCrop.get_params`: ten tries at an area in 8–100 % of the
/// image with a log-uniform aspect ratio in [3/4, 4/3], else the center crop at the
/// nearest allowed ratio. Returns `(left, top, width, height)`.
fn random_resized_crop(w: u32, h: u32, rng: &mut StdRng) -> (u32, u32, u32, u32) {
    let area = (w * h) as f64;
    let (log_lo, log_hi) = ((3f64 / 4.0).ln(), (4f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.random_range(0.08..=1.0);
        let ratio = rng.random_range(log_lo..=log_hi).exp();
        let cw = (target * ratio).sqrt().round() as u32;
        let ch = (target / ratio).sqrt().round() as u32;
        if cw > 0 && ch > 0 && cw <= w && ch <= h {
            let top = rng.random_range(0..=h - ch);
            let left = rng.random_range(0..=w - cw);
            return (left, top, cw, ch);
        }
    }
    let in_ratio = w as f64 / h as f64;
    let (cw, ch) = if in_ratio < 3.0 / 4.0 {
        (w, ((w as f64) / (3.0 / 4.0)).round() as u32)
    } else if in_ratio > 4.0 / 3.0 {
        (((h as f64) * (4.0 / 3.0)).round() as u32, h)
    } else {
        (w, h)
    };
    let (cw, ch) = (cw.clamp(1, w), ch.clamp(1, h));
    ((w - cw) / 2, (h - ch) / 2, cw, ch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn centre_crops_round_half_to_even_like_torchvision() {
        // Margins 9, 11, 10, 0: Python's round(4.5) = 4, round(5.5) = 6.
        assert_eq!(centre_offset(73, 64), 4);
        assert_eq!(centre_offset(75, 64), 6);
        assert_eq!(centre_offset(74, 64), 5);
        assert_eq!(centre_offset(64, 64), 0);
    }
}
