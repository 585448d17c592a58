//! The batch order, shared by every task.
//!
//! Each epoch visits the examples in a permutation drawn
//! from a `StdRng` seeded by `(seed, epoch)` alone, so a job resumed at (epoch, batch
//! index) sees exactly the batches an uninterrupted run would have seen. Order is random
//! (transformers `Trainer`'s recipe), not length-grouped; padding is per batch.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::TrainError;

/// Mixes the epoch into the seed so epochs differ but each is reproducible on its own.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The example indices of every batch of `epoch`, in training order.
pub fn epoch_batches(
    n_examples: usize,
    batch_size: usize,
    seed: u64,
    epoch: usize,
) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..n_examples).collect();
    order.shuffle(&mut StdRng::seed_from_u64(epoch_seed(seed, epoch)));
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// Batches in file order, for evaluation.
pub fn sequential_batches(n_examples: usize, batch_size: usize) -> Vec<Vec<usize>> {
    let order: Vec<usize> = (0..n_examples).collect();
    order
        .chunks(batch_size.max(1))
        .map(<[usize]>::to_vec)
        .collect()
}

/// The examples at `indices` (a batch), in that order.
pub fn pick<'a, T>(examples: &'a [T], indices: &[usize]) -> Result<Vec<&'a T>, TrainError> {
    indices
        .iter()
        .map(|&i| {
            examples
                .get(i)
                .ok_or_else(|| TrainError::InvalidData(format!("batch index {i} out of range")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_order_is_a_seeded_permutation() {
        let a = epoch_batches(10, 3, 7, 0);
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut flat: Vec<usize> = a.concat();
        flat.sort_unstable();
        assert_eq!(flat, (0..10).collect::<Vec<_>>());
        assert_eq!(
            a,
            epoch_batches(10, 3, 7, 0),
            "same (seed, epoch) → same order"
        );
        assert_ne!(a, epoch_batches(10, 3, 7, 1), "epochs differ");
        assert_ne!(a, epoch_batches(10, 3, 8, 0), "seeds differ");
    }

    #[test]
    fn sequential_batches_keep_file_order() {
        assert_eq!(
            sequential_batches(5, 2),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert!(sequential_batches(0, 2).is_empty());
    }
}
