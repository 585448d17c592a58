//! Serving an image classifier: image bytes → prepared pixels (the checkpoint's
//! evaluation transform) → batched logits → one prediction per image, the same
//! `label`/`score`/`scores` objects the text classifier returns.

use candle_core::{DType, Device, Tensor};

use super::export::load_image_checkpoint;
use crate::artifacts::Checkpoint;
use crate::tasks::sequence_classification::serve::{prediction, ClassPrediction};
use crate::tasks::serve::{ServeBackend, ServeError};
use crate::zoo::vision::{ImageClassifier, ImagePrep};

/// An image-classification checkpoint ready to serve.
pub struct ImageServing {
    model: ImageClassifier,
    labels: Vec<String>,
    prep: ImagePrep,
    device: Device,
    parameter_bytes: usize,
}

impl ImageServing {
    pub fn load(ckpt: &Checkpoint, device: &Device) -> Result<Self, ServeError> {
        let (mut model, labels, prep) = load_image_checkpoint(ckpt, device).map_err(|e| {
            ServeError::failed(format!("loading checkpoint `{}`: {e}", ckpt.dir.display()))
        })?;
        model.freeze_for_inference().map_err(ServeError::failed)?;
        let parameter_bytes = model
            .named_tensors()
            .map_err(ServeError::failed)?
            .iter()
            .map(|(_, t)| t.elem_count() * t.dtype().size_in_bytes())
            .sum();
        Ok(Self {
            model,
            labels,
            prep,
            device: device.clone(),
            parameter_bytes,
        })
    }

    fn logits(&self, pixels: &[&Vec<f32>]) -> Result<Vec<Vec<f32>>, ServeError> {
        let size = self.prep.size;
        let flat: Vec<f32> = pixels.iter().flat_map(|p| p.iter().copied()).collect();
        let images = Tensor::from_vec(flat, (pixels.len(), size, size, 3), &self.device)
            .map_err(ServeError::failed)?;
        self.model
            .forward(&images, 0, false, 0)
            .and_then(|l| Ok(l.to_dtype(DType::F32)?.to_vec2::<f32>()?))
            .map_err(ServeError::failed)
    }
}

impl ServeBackend for ImageServing {
    /// The image file's bytes (PNG, JPEG, WebP or BMP).
    type Input = Vec<u8>;
    /// Channels-last normalised pixels at the model's size.
    type Prepared = Vec<f32>;
    type Output = ClassPrediction;

    fn prepare(&self, bytes: &Vec<u8>) -> Result<Vec<f32>, ServeError> {
        let image = self
            .prep
            .decode(bytes)
            .map_err(|e| ServeError::invalid("input", format!("The image {e}.")))?;
        Ok(self.prep.eval_pixels(&image))
    }

    fn serve_round(
        &mut self,
        round: &[(&Vec<u8>, &Vec<f32>)],
        max_batch: usize,
    ) -> Vec<Result<ClassPrediction, ServeError>> {
        let _span = tracing::debug_span!("classify_images_round", images = round.len()).entered();
        let mut out = Vec::with_capacity(round.len());
        for chunk in round.chunks(max_batch.max(1)) {
            let pixels: Vec<&Vec<f32>> = chunk.iter().map(|(_, p)| *p).collect();
            match self.logits(&pixels) {
                Ok(rows) if rows.len() == chunk.len() => {
                    out.extend(rows.iter().map(|logits| prediction(&self.labels, logits)))
                }
                Ok(rows) => out.extend(chunk.iter().map(|_| {
                    Err(ServeError::failed(format!(
                        "backend returned {} rows for {} images",
                        rows.len(),
                        chunk.len()
                    )))
                })),
                Err(error) => {
                    tracing::error!(%error, "image forward pass failed");
                    out.extend(chunk.iter().map(|_| Err(error.clone())));
                }
            }
        }
        out
    }

    fn parameter_bytes(&self) -> usize {
        self.parameter_bytes
    }
}
