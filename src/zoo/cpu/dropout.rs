//! Inverted dropout in one parallel pass, its mask a pure function of a per-call seed and
//! each element's index, so the backward regenerates the mask instead of keeping it.
//!
//! `candle_nn::ops::dropout` draws a uniform tensor from candle's RNG on one thread, then
//! compares, converts and multiplies: four passes and two tensors kept for the backward.

use std::cell::Cell;

use candle_core::{CpuStorage, CustomOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::zoo::fused::contiguous_f32;

/// Elements per parallel task: large enough that rayon's fork/join is noise.
const CHUNK: usize = 1 << 14;

thread_local! {
    /// The seed stream of this thread's masks, `(base, masks drawn since)`, once
    /// [`seed_dropout`] set one; before that every mask gets a fresh random seed.
    static SEEDS: Cell<Option<(u64, u64)>> = const { Cell::new(None) };
}

/// Makes every mask drawn on this thread from now on (dropout, attention dropout, LoRA
/// dropout) a function of `seed` and its place in the sequence of draws, as
/// `torch.manual_seed` does for the generator. The trainer seeds each micro-batch from the
/// job's seed, its step and its place in the step: two runs of a job draw the same masks,
/// and a run resumed from a checkpoint draws the masks the uninterrupted run drew.
pub fn seed_dropout(seed: u64) {
    SEEDS.with(|seeds| seeds.set(Some((seed, 0))));
}

/// Where this thread's seed stream stands (`None`: unseeded), so that a recomputed layer
/// (`zoo::recompute`) can draw the forward's masks again.
pub(crate) fn stream_position() -> Option<(u64, u64)> {
    SEEDS.with(Cell::get)
}

/// Puts this thread's seed stream back at a [`stream_position`].
pub(crate) fn set_stream_position(position: Option<(u64, u64)>) {
    SEEDS.with(|seeds| seeds.set(position));
}

/// Seeds this thread's stream from a random seed unless it is seeded already: masks drawn
/// unseeded could not be drawn again.
pub(crate) fn ensure_seeded() {
    if stream_position().is_none() {
        seed_dropout(rand::random());
    }
}

/// The next mask's seed on this thread (see [`seed_dropout`]).
pub(crate) fn next_seed() -> u64 {
    SEEDS.with(|seeds| match seeds.get() {
        Some((base, drawn)) => {
            seeds.set(Some((base, drawn + 1)));
            mix(base ^ mix(drawn))
        }
        None => rand::random(),
    })
}

/// `x · mask / (1 − p)` with each element dropped with probability `p` (0 ≤ p < 1).
pub fn dropout(x: &Tensor, p: f32) -> candle_core::Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} is not in [0, 1)");
    }
    x.contiguous()?.apply_op1(Dropout {
        p,
        seed: next_seed(),
    })
}

/// [`dropout`] on any device and dtype: the same seeded mask (built on the host, then
/// multiplied in with candle ops), so a layer recomputed for gradient checkpointing draws
/// its forward's masks again off the CPU too, and the generic path drops what the fused
/// one drops.
pub fn seeded_dropout_any_device(x: &Tensor, p: f32) -> candle_core::Result<Tensor> {
    dropout_with_seed(x, p, next_seed())
}

/// Inverted dropout of `x` with the mask of the call seeded `seed` ([`kept`]), on any
/// device: the mask is built on the host and multiplied in.
pub fn dropout_with_seed(x: &Tensor, p: f32, seed: u64) -> candle_core::Result<Tensor> {
    if !(0.0..1.0).contains(&p) {
        candle_core::bail!("dropout probability {p} is not in [0, 1)");
    }
    let scale = 1.0 / (1.0 - p);
    let n = x.elem_count();
    let mask: Vec<f32> = (0..n as u64)
        .into_par_iter()
        .map(|i| if kept(seed, i, p) { scale } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
    x.contiguous()?.mul(&mask)
}

#[derive(Clone, Copy)]
struct Dropout {
    p: f32,
    seed: u64,
}

/// SplitMix64's finaliser: a well-mixed 64-bit value for each counter.
pub(crate) fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A 32-bit integer hash with low bias (constants from Wellons' hash-prospector): shifts and 32-bit
/// multiplies only, which vector units have (a 64-bit multiply has no SSE2 or AVX2 form, so
/// SplitMix64 per element kept the mask loops scalar).
#[inline(always)]
fn hash32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21f0_aaad);
    x ^= x >> 15;
    x = x.wrapping_mul(0x735a_2d97);
    x ^ (x >> 15)
}

/// Whether element `index` of the call seeded `seed` is kept: the top 24 bits of a hash of
/// the index and the seed (each 32-bit half mixed in by its own round) as a uniform number
/// in [0, 1). Each round is a bijection, so one call's indices get distinct hashes.
#[inline(always)]
pub(crate) fn kept(seed: u64, index: u64, p: f32) -> bool {
    let first = hash32(index as u32 ^ seed as u32);
    let h = hash32(first ^ (index >> 32) as u32 ^ (seed >> 32) as u32);
    let uniform = (h >> 8) as i32 as f32 / (1u32 << 24) as f32;
    uniform >= p
}

/// `out = x · mask · scale` for the elements `first..` of the call seeded `seed`, compiled
/// for AVX2 as well (see `Cargo.toml`).
#[multiversion::multiversion(targets("x86_64+avx2"))]
fn masked_chunk(out: &mut [f32], x: &[f32], (seed, first, p): (u64, u64, f32), scale: f32) {
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = if kept(seed, first + i as u64, p) {
            v * scale
        } else {
            0.0
        };
    }
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let scale = 1.0 / (1.0 - self.p);
        let mut y = vec![0f32; x.len()];
        y.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(chunk, (out, inp))| {
                let first = (chunk * CHUNK) as u64;
                masked_chunk(out, inp, (self.seed, first, self.p), scale);
            });
        y
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "fused-dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let y = self.apply(contiguous_f32(s, l)?);
        Ok((CpuStorage::F32(y), l.shape().clone()))
    }

    fn bwd(&self, _: &Tensor, _: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        // The same mask and scale on the gradient: d(x·m·s)/dx = m·s.
        grad.contiguous()?.apply_op1_no_bwd(self).map(Some)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn drops_about_p_scales_the_rest_and_the_gradient_follows_the_same_mask() {
        let n = 100_000;
        let x = Var::from_tensor(&Tensor::ones(n, candle_core::DType::F32, &Device::Cpu).unwrap())
            .unwrap();
        let y = dropout(x.as_tensor(), 0.25).unwrap();
        let values = y.to_vec1::<f32>().unwrap();
        let dropped = values.iter().filter(|&&v| v == 0.0).count();
        let fraction = dropped as f64 / n as f64;
        assert!((fraction - 0.25).abs() < 0.01, "dropped {fraction}");
        let scale = 1.0 / 0.75;
        assert!(values.iter().all(|&v| v == 0.0 || (v - scale).abs() < 1e-6));
        // d(sum(y))/dx is the mask times the scale: exactly y here, since x = 1.
        let grads = y.sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, values);
    }

    #[test]
    fn a_seeded_thread_draws_the_same_masks_again_and_other_seeds_draw_others() {
        let x = Tensor::ones(4096, candle_core::DType::F32, &Device::Cpu).unwrap();
        let draw_two = |seed: u64| {
            seed_dropout(seed);
            let first = dropout(&x, 0.5).unwrap().to_vec1::<f32>().unwrap();
            let second = dropout(&x, 0.5).unwrap().to_vec1::<f32>().unwrap();
            (first, second)
        };
        let (a1, a2) = draw_two(7);
        let (b1, b2) = draw_two(7);
        assert_eq!((&a1, &a2), (&b1, &b2));
        // Successive draws under one seed, and draws under another seed, differ.
        let differing = |u: &[f32], v: &[f32]| u.iter().zip(v).filter(|(a, b)| a != b).count();
        assert!(differing(&a1, &a2) > 1000, "{}", differing(&a1, &a2));
        let (c1, _) = draw_two(8);
        assert!(differing(&a1, &c1) > 1000, "{}", differing(&a1, &c1));
    }

    #[test]
    fn a_probability_of_one_is_refused() {
        let x = Tensor::ones(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(dropout(&x, 1.0).is_err());
    }
}
