//! Parity with timm on the same weights: the committed fixtures
//! (`tests/fixtures/vision/<name>/`, written by `scripts/make_vision_fixture.py` from tiny
//! random timm models with non-trivial BatchNorm statistics) hold timm's logits in eval and
//! train mode and the running statistics after the train-mode forward. Plus gradient
//! coverage: exactly the trainable units and the head get gradients.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use candle_core::{Device, Tensor};

use super::*;
use crate::zoo::test_tensors::max_abs_diff;

const FIXTURES: [&str; 3] = ["resnet_basic", "resnet_bottleneck", "efficientnet_lite"];

fn fixture_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vision")
        .join(name)
}

struct Fixture {
    dir: PathBuf,
    tensors: std::collections::HashMap<String, Tensor>,
    weights: std::collections::HashMap<String, Tensor>,
    classifier: &'static str,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let dir = fixture_dir(name);
        let tensors =
            candle_core::safetensors::load(dir.join("fixture.safetensors"), &Device::Cpu).unwrap();
        let weights =
            candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let classifier = if name.starts_with("resnet") {
            "fc"
        } else {
            "classifier"
        };
        Self {
            dir,
            tensors,
            weights,
            classifier,
        }
    }

    fn input_nhwc(&self) -> Tensor {
        self.tensors["input"]
            .permute((0, 2, 3, 1))
            .unwrap()
            .contiguous()
            .unwrap()
    }

    /// timm's own head applied to our pooled features.
    fn logits(&self, features: &Tensor) -> Tensor {
        let w = &self.weights[&format!("{}.weight", self.classifier)];
        let b = &self.weights[&format!("{}.bias", self.classifier)];
        features
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(b)
            .unwrap()
    }

    fn model(&self, trainable_units: usize) -> ImageClassifier {
        let spec = ImageClassifierSpec {
            num_classes: 3,
            head_hidden: 0,
            head_dropout: 0.0,
            trainable_units,
        };
        ImageClassifier::from_pretrained(&self.dir, &spec, &Device::Cpu, 7).unwrap()
    }
}

#[test]
fn eval_mode_logits_match_timm() {
    for name in FIXTURES {
        let fixture = Fixture::load(name);
        let model = fixture.model(0);
        let features = model.features(&fixture.input_nhwc(), 0, false).unwrap();
        let diff = max_abs_diff(&features, &fixture.tensors["features"]);
        assert!(diff < 1e-4, "{name}: features differ by {diff}");
        let diff = max_abs_diff(&fixture.logits(&features), &fixture.tensors["logits"]);
        assert!(diff < 1e-4, "{name}: logits differ by {diff}");
    }
}

#[test]
fn train_mode_logits_and_running_statistics_match_timm() {
    for name in FIXTURES {
        let fixture = Fixture::load(name);
        let model = fixture.model(model_units(&fixture));
        let units = model.n_units();
        let features = model.features(&fixture.input_nhwc(), units, true).unwrap();
        let diff = max_abs_diff(&fixture.logits(&features), &fixture.tensors["train_logits"]);
        assert!(diff < 1e-4, "{name}: train-mode logits differ by {diff}");
        let buffers = model.buffers();
        for (stat, key) in [
            ("running_mean", "bn1_running_mean_after"),
            ("running_var", "bn1_running_var_after"),
        ] {
            let ours = buffers
                .iter()
                .find(|b| b.name == format!("bn1.{stat}"))
                .unwrap();
            let diff = max_abs_diff(ours.var.as_tensor(), &fixture.tensors[key]);
            assert!(
                diff < 1e-5,
                "{name}: bn1.{stat} after a train step differs by {diff}"
            );
        }
    }
}

fn model_units(fixture: &Fixture) -> usize {
    ImageClassifier::count_units(&fixture.dir).unwrap()
}

#[test]
fn unit_counts_follow_the_family_and_the_weights() {
    assert_eq!(model_units(&Fixture::load("resnet_basic")), 5);
    // Stem, the seven stages, the head convolution.
    assert_eq!(model_units(&Fixture::load("efficientnet_lite")), 9);
}

#[test]
fn only_the_training_units_and_the_head_get_gradients() {
    for name in FIXTURES {
        let fixture = Fixture::load(name);
        let all = model_units(&fixture);
        // Two units may train; this forward trains one of them.
        let model = fixture.model(2);
        let logits = model.forward(&fixture.input_nhwc(), 1, true, 3).unwrap();
        let grads = logits.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let vars = model.trainable_vars();
        let units = match model.family {
            Family::ResNet => crate::zoo::vision::resnet::resnet_units(),
            Family::EfficientNetLite => {
                crate::zoo::vision::efficientnet::efficientnet_units(all - 2)
            }
        };
        let last_unit = &units[all - 1];
        let second_last = &units[all - 2];
        let mut trained = 0;
        for nv in &vars {
            let grad = grads.get(nv.var.as_tensor());
            let in_last = last_unit.iter().any(|p| nv.name.starts_with(p.as_str()));
            let in_second = second_last.iter().any(|p| nv.name.starts_with(p.as_str()));
            let head = nv.name.starts_with(fixture.classifier);
            if in_second {
                assert!(
                    grad.is_none(),
                    "{name}: `{}` is frozen in this epoch but got a gradient",
                    nv.name
                );
            } else {
                assert!(in_last || head, "{name}: `{}` should not be a var", nv.name);
                let norm = grad
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap();
                assert!(norm > 0.0, "{name}: `{}` got a zero gradient", nv.name);
                trained += 1;
            }
        }
        assert!(trained > 2, "{name}: {trained} tensors trained");
    }
}

/// timm's `state_dict()` of the real architectures with 10 classes (names and shapes,
/// `scripts/make_vision_fixture.py`): random weights under exactly those names load, run,
/// and come back out of `named_tensors` (what the download writes) as the same list, so
/// `timm.create_model(arch, num_classes=10)` takes the export strictly.
#[test]
fn real_architectures_load_from_timm_names_and_export_them_back() {
    let listing: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture_dir("timm_state_dicts.json")).unwrap())
            .unwrap();
    for (arch, units, features) in [
        ("resnet18", 5, 512),
        ("resnet50", 5, 2048),
        ("efficientnet_lite0", 9, 1280),
    ] {
        let entries = listing["models"][arch].as_array().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut tensors = std::collections::HashMap::new();
        let mut expected = Vec::new();
        for entry in entries {
            let name = entry[0].as_str().unwrap().to_string();
            let shape: Vec<usize> = entry[1]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            // Variances must be positive; everything else small and random.
            let t = if name.ends_with("running_var") {
                Tensor::ones(shape.as_slice(), candle_core::DType::F32, &Device::Cpu).unwrap()
            } else {
                (Tensor::randn(0f32, 1.0, shape.as_slice(), &Device::Cpu).unwrap() * 0.05).unwrap()
            };
            expected.push((name.clone(), shape));
            tensors.insert(name, t);
        }
        candle_core::safetensors::save(&tensors, dir.path().join("model.safetensors")).unwrap();
        let config = serde_json::json!({"architecture": arch, "num_classes": 10,
            "pretrained_cfg": {"input_size": [3, 64, 64]}});
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
        assert_eq!(
            ImageClassifier::count_units(dir.path()).unwrap(),
            units,
            "{arch}"
        );
        let spec = ImageClassifierSpec {
            num_classes: 10,
            head_hidden: 0,
            head_dropout: 0.0,
            trainable_units: 1,
        };
        let model = ImageClassifier::from_pretrained(dir.path(), &spec, &Device::Cpu, 1).unwrap();
        let images = Tensor::randn(0f32, 1.0, (2, 64, 64, 3), &Device::Cpu).unwrap();
        assert_eq!(
            model.features(&images, 0, false).unwrap().dims(),
            &[2, features],
            "{arch}"
        );
        assert_eq!(
            model.forward(&images, 1, true, 0).unwrap().dims(),
            &[2, 10],
            "{arch}"
        );
        let mut exported: Vec<(String, Vec<usize>)> = model
            .named_tensors()
            .unwrap()
            .into_iter()
            .map(|(name, t)| (name, t.dims().to_vec()))
            .collect();
        exported.sort();
        expected.sort();
        assert_eq!(exported, expected, "{arch}");
    }
}
