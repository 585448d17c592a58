//! Sums of per-part partial vectors computed in parallel, added in part order: the same
//! result every run. rayon's `fold` / `reduce` combine partial sums in an order set by work
//! stealing, so float sums, and with them a whole training run of one seed, could differ
//! between two runs (they did: an EfficientNet-Lite fine-tuned whole ended 0.25 or 0.53 in
//! train loss from the same seed).

use rayon::prelude::*;

/// `Σ_p partial(p)` element-wise over `parts` parts of `len` values each, the parts computed
/// in parallel and added in order `0, 1, …`.
pub(crate) fn ordered_sum<T>(
    parts: usize,
    len: usize,
    partial: impl Fn(usize) -> Vec<T> + Sync + Send,
) -> Vec<T>
where
    T: Copy + Default + std::ops::AddAssign + Send,
{
    let partials: Vec<Vec<T>> = (0..parts).into_par_iter().map(partial).collect();
    let mut out = vec![T::default(); len];
    for part in partials {
        out.iter_mut().zip(part).for_each(|(o, v)| *o += v);
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn parts_are_added_in_order_whatever_the_scheduling() {
        // Values whose f32 sum depends on the order: 1e8 swallows a lone 1.0.
        let values: Vec<f32> = (0..4096)
            .map(|i| match i % 3 {
                0 => 1e8,
                1 => 1.0,
                _ => -1e8,
            })
            .collect();
        let sum = |parts: usize| {
            let size = values.len().div_ceil(parts);
            ordered_sum(parts, 1, |p| {
                vec![values[p * size..((p + 1) * size).min(values.len())]
                    .iter()
                    .sum::<f32>()]
            })[0]
        };
        let sequential: f32 = (0..64)
            .map(|p| values[p * 64..(p + 1) * 64].iter().sum::<f32>())
            .sum();
        for _ in 0..20 {
            assert_eq!(sum(64).to_bits(), sequential.to_bits());
        }
    }
}
