//! Max pool against candle's NCHW `max_pool2d` where candle has one (kernel = stride), and
//! against hand-worked values for ResNet's overlapping, padded 3×3/2 window.
#![allow(clippy::unwrap_used)]

use candle_core::{Device, Tensor, Var};

use super::*;

#[test]
fn overlapping_padded_max_pool_picks_each_windows_maximum_and_routes_its_gradient() {
    // One 4×4 single-channel image, values 0..16 row-major: with 3×3/2 padding 1 the
    // windows are rows/cols {0,1},{1,2,3} → maxima 5, 7, 13, 15.
    let x = Var::from_tensor(
        &Tensor::arange(0f32, 16f32, &Device::Cpu)
            .unwrap()
            .reshape((1, 4, 4, 1))
            .unwrap(),
    )
    .unwrap();
    let y = max_pool2d(x.as_tensor(), 3, 2, 1).unwrap();
    assert_eq!(y.dims(), &[1, 2, 2, 1]);
    assert_eq!(
        y.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        [5., 7., 13., 15.]
    );
    let weights = Tensor::new(&[1f32, 2., 3., 4.], &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 1))
        .unwrap();
    let grads = (y * weights)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let dx = grads
        .get(x.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let mut expected = [0f32; 16];
    (expected[5], expected[7], expected[13], expected[15]) = (1., 2., 3., 4.);
    assert_eq!(dx, expected);
}

#[test]
fn max_pool_matches_candle_where_the_windows_tile() {
    let x = Tensor::randn(0f32, 1., (2, 3, 8, 8), &Device::Cpu).unwrap();
    let reference = x.max_pool2d(2).unwrap();
    let ours = max_pool2d(&x.permute((0, 2, 3, 1)).unwrap(), 2, 2, 0).unwrap();
    let diff = (ours.permute((0, 3, 1, 2)).unwrap() - reference)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(diff, 0.0);
}

#[test]
fn global_average_pool_is_the_mean_over_positions() {
    let x = Tensor::arange(0f32, 8f32, &Device::Cpu)
        .unwrap()
        .reshape((1, 2, 2, 2))
        .unwrap();
    let pooled = global_avg_pool(&x).unwrap();
    // Channel 0 holds 0,2,4,6 and channel 1 holds 1,3,5,7.
    assert_eq!(pooled.to_vec2::<f32>().unwrap(), [[3., 4.]]);
}
