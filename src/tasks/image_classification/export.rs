//! An image-classification checkpoint as the user's artifact: the model in timm's layout
//! (`config.json` with the new `num_classes` and `label_names`, `model.safetensors` with
//! timm's names), which `timm.create_model(arch, pretrained=True,
//! pretrained_cfg_overlay=dict(file=…, num_classes=N))` loads. A two-layer head is named as
//! the recipe's `nn.Sequential` (`fc.0` / `fc.3` on a ResNet, `classifier.0` /
//! `classifier.3` on an EfficientNet) and recorded as `head_hidden`: timm has no such head,
//! so it loads after `model.classifier = nn.Sequential(…)` with `load_state_dict`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use serde_json::{json, Value};

use crate::artifacts::checkpoint::{self, CheckpointTask, TRAINABLE_FILE};
use crate::artifacts::{Checkpoint, ExportFormat};
use crate::train::TrainError;
use crate::zoo::export::write_json;
use crate::zoo::vision::{ImageClassifier, ImagePrep, VisionConfig};

/// The checkpoint rebuilt on its base model: the model, its classes and how its images are
/// prepared.
pub fn load_image_checkpoint(
    ckpt: &Checkpoint,
    device: &Device,
) -> Result<(ImageClassifier, Vec<String>, ImagePrep), TrainError> {
    let meta = &ckpt.meta;
    let CheckpointTask::ImageClassification { labels, spec, prep } = &meta.task else {
        return Err(TrainError::checkpoint(
            &ckpt.dir,
            format!(
                "a `{}` checkpoint is not an image classifier",
                meta.task.name()
            ),
        ));
    };
    let model = ImageClassifier::from_pretrained(&ckpt.base_dir, spec, device, meta.seed)?;
    model.load_state(&checkpoint::read_tensors(
        &ckpt.dir,
        TRAINABLE_FILE,
        device,
    )?)?;
    Ok((model, labels.clone(), prep.clone()))
}

pub(crate) fn export_image_checkpoint(
    ckpt: &Checkpoint,
    format: ExportFormat,
    out_dir: &Path,
) -> Result<(), TrainError> {
    if format == ExportFormat::Adapter {
        return Err(TrainError::checkpoint(
            &ckpt.dir,
            "an image classifier has no LoRA adapter; export it as a merged model (timm layout)",
        ));
    }
    let (model, labels, prep) = load_image_checkpoint(ckpt, &Device::Cpu)?;
    std::fs::create_dir_all(out_dir)?;
    let (_, mut config) = VisionConfig::read(&ckpt.base_dir)?;
    let head_hidden = match &ckpt.meta.task {
        CheckpointTask::ImageClassification { spec, .. } => spec.head_hidden,
        _ => 0,
    };
    if let Value::Object(map) = &mut config {
        map.insert("num_classes".into(), json!(labels.len()));
        map.insert("label_names".into(), json!(labels));
        if head_hidden > 0 {
            map.insert("head_hidden".into(), json!(head_hidden));
        }
        if let Some(Value::Object(cfg)) = map.get_mut("pretrained_cfg") {
            cfg.insert("num_classes".into(), json!(labels.len()));
            cfg.insert("input_size".into(), json!([3, prep.size, prep.size]));
        }
    }
    let tensors: HashMap<String, candle_core::Tensor> =
        model.named_tensors()?.into_iter().collect();
    write_json(&out_dir.join("config.json"), &config)?;
    candle_core::safetensors::save(&tensors, out_dir.join("model.safetensors"))?;
    Ok(())
}
