#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

use super::*;
use crate::zoo::vision::efficientnet::EfficientNetLite;
use crate::zoo::vision::layers::Weights;
use crate::zoo::vision::resnet::ResNet;
use crate::zoo::vision::Role;

fn fixture(name: &str) -> Weights {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vision");
    let tensors =
        candle_core::safetensors::load(dir.join(name).join("model.safetensors"), &Device::Cpu)
            .unwrap();
    Weights {
        tensors,
        trainable_prefixes: Vec::new(),
    }
}

#[test]
fn the_stem_counts_its_outputs_patches_and_the_generic_batch_norm() {
    let net = EfficientNetLite::load(&fixture("efficientnet_lite")).unwrap();
    let stem = |generic| {
        let mut walk = FootprintWalk::new(64, generic);
        net.footprint(&mut walk).unwrap();
        walk.finish()[0]
    };
    // conv_stem 3×3/2, 3 → 32 channels, 64 → 32 px, then ReLU6: out = 32·32·32, patches =
    // 9·32·32·3, input 64·64·3.
    let (out, patches, input) = (32_768, 27_648, 12_288);
    assert_eq!(
        stem(false),
        UnitFootprint {
            saved: 2 * out,
            working: input + out + 2 * patches,
        }
    );
    // The convolution's output, its patches, BatchNorm's 13 and ReLU6's 2; the input padded
    // to 66·66·3, gathered into 3 row blocks of 32·66·3 and 9 windows of 32·32·3.
    let (padded, gathered) = (66 * 66 * 3, 3 * 32 * 66 * 3 + 9 * 32 * 32 * 3);
    assert_eq!(
        stem(true),
        UnitFootprint {
            saved: out + patches + 13 * out + 2 * out + padded + gathered,
            working: input + out + 2 * patches,
        }
    );
}

#[test]
fn a_depthwise_convolution_keeps_its_weighted_views_on_the_generic_path() {
    let tensor = |dims: &[usize]| Tensor::ones(dims, DType::F32, &Device::Cpu).unwrap();
    let tensors: HashMap<String, Tensor> = [
        ("dw.weight", tensor(&[4, 1, 3, 3])),
        ("bn.weight", tensor(&[4])),
        ("bn.bias", tensor(&[4])),
        ("bn.running_mean", tensor(&[4])),
        ("bn.running_var", tensor(&[4])),
    ]
    .into_iter()
    .map(|(name, t)| (name.to_string(), t))
    .collect();
    let weights = Weights {
        tensors,
        trainable_prefixes: Vec::new(),
    };
    let layer = weights.conv_bn("dw", "bn", 1, true).unwrap();
    let walk_one = |generic| {
        let mut walk = FootprintWalk::new(8, generic);
        walk.set_shape((8, 8, 4));
        walk.begin_unit();
        walk.conv_bn(&layer, Activation::Relu6).unwrap();
        assert_eq!(walk.shape(), (8, 8, 4));
        walk.finish()[0]
    };
    let out = 8 * 8 * 4;
    // No patches: a depthwise convolution works on shifted views of its input.
    assert_eq!(walk_one(false).working, 2 * out);
    assert_eq!(walk_one(false).saved, 2 * out);
    // Stride 1: the windows are views of the 10·10·4 padded input, not copies.
    let padded = 10 * 10 * 4;
    assert_eq!(
        walk_one(true).saved,
        out + 2 * 9 * out + 13 * out + 2 * out + padded
    );
    assert_eq!(walk_one(true).working, 2 * out + 9 * out);
}

/// Each fixture's walk has one footprint per unit and ends at the shape `features` gives.
#[test]
fn the_walk_follows_each_backbone_to_its_features() {
    let image = Tensor::zeros((1, 64, 64, 3), DType::F32, &Device::Cpu).unwrap();
    let check = |units: usize, walk: FootprintWalk, features: Tensor| {
        let shape = walk.shape();
        let dims = features.dims().to_vec();
        assert_eq!((dims[1], dims[2], dims[3]), shape);
        let footprint = walk.finish();
        assert_eq!(footprint.len(), units);
        assert!(footprint.iter().all(|u| u.saved > 0 && u.working > 0));
    };
    for name in ["resnet_basic", "resnet_bottleneck"] {
        let net = ResNet::load(&fixture(name)).unwrap();
        let mut walk = FootprintWalk::new(64, false);
        net.footprint(&mut walk).unwrap();
        let features = net.features(&image, &[Role::Frozen; 5]).unwrap();
        check(5, walk, features);
    }
    let net = EfficientNetLite::load(&fixture("efficientnet_lite")).unwrap();
    let units = net.n_stages() + 2;
    let mut walk = FootprintWalk::new(64, false);
    net.footprint(&mut walk).unwrap();
    let features = net.features(&image, &vec![Role::Frozen; units]).unwrap();
    check(units, walk, features);
}
