//! Choosing the next token: greedy argmax at temperature 0, otherwise a draw from the
//! temperature-scaled softmax restricted to the top-p nucleus, with one seeded `StdRng`
//! per choice so the same seed gives the same text. A request's `logit_bias` is added to
//! the logits the choice is drawn from; logprobs are the log-softmax of the raw logits
//! (before bias and temperature), as OpenAI reports them.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Temperatures below this are greedy: dividing by ~0 only overflows.
const GREEDY_BELOW: f32 = 1e-5;

pub(crate) struct Sampler {
    temperature: f32,
    top_p: f32,
    rng: StdRng,
    /// `(token id, bias)` pairs added to the logits before choosing (ids checked against
    /// the vocabulary by the engine; any out of range are skipped).
    bias: Vec<(u32, f32)>,
    /// The biased logits, reused from step to step.
    biased: Vec<f32>,
}

impl Sampler {
    pub(crate) fn new(temperature: f32, top_p: f32, seed: u64) -> Self {
        Self {
            temperature,
            top_p,
            rng: StdRng::seed_from_u64(seed),
            bias: Vec::new(),
            biased: Vec::new(),
        }
    }

    /// The same sampler, choosing from the logits plus `bias` (the biases of an id named
    /// twice add up).
    pub(crate) fn with_bias(mut self, bias: Vec<(u32, f32)>) -> Self {
        let mut merged: Vec<(u32, f32)> = Vec::with_capacity(bias.len());
        for (id, value) in bias {
            match merged.iter_mut().find(|(known, _)| *known == id) {
                Some((_, sum)) => *sum += value,
                None => merged.push((id, value)),
            }
        }
        self.bias = merged;
        self
    }

    /// The next token id for `logits` (one per vocabulary entry, not empty).
    pub(crate) fn sample(&mut self, logits: &[f32]) -> u32 {
        if self.bias.is_empty() {
            return self.choose(logits);
        }
        if self.temperature < GREEDY_BELOW {
            if let Some(token) = biased_argmax(logits, &self.bias) {
                return token;
            }
        }
        let mut biased = std::mem::take(&mut self.biased);
        biased.clear();
        biased.extend_from_slice(logits);
        for &(id, bias) in &self.bias {
            if let Some(logit) = biased.get_mut(id as usize) {
                *logit += bias;
            }
        }
        let token = self.choose(&biased);
        self.biased = biased;
        token
    }

    fn choose(&mut self, logits: &[f32]) -> u32 {
        if self.temperature < GREEDY_BELOW {
            return argmax(logits);
        }
        let probs = softmax(logits, self.temperature);
        let candidates: Vec<(usize, f64)> = if self.top_p >= 1.0 {
            probs.into_iter().enumerate().collect()
        } else {
            nucleus(probs, f64::from(self.top_p))
        };
        let total: f64 = candidates.iter().map(|(_, p)| p).sum();
        let mut target = self.rng.random::<f64>() * total;
        for &(id, p) in &candidates {
            if target < p {
                return id as u32;
            }
            target -= p;
        }
        // Rounding left `target` a hair above the sum: the last candidate it is.
        candidates.last().map_or(0, |&(id, _)| id as u32)
    }
}

/// Running maxima a pass over the logits keeps side by side (one AVX-512 register), so
/// that the pass vectorises: one row of a 49,152-token vocabulary per sequence and step.
const MAX_LANES: usize = 16;

/// The first index of the largest logit (NaN never wins; all NaN: the last index).
pub(crate) fn argmax(logits: &[f32]) -> u32 {
    let mut lanes = [f32::NEG_INFINITY; MAX_LANES];
    let chunks = logits.chunks_exact(MAX_LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            // `>` is false against NaN, on either side: NaN is never kept.
            if l > *lane {
                *lane = l;
            }
        }
    }
    let max = lanes
        .iter()
        .chain(rest)
        .fold(f32::NEG_INFINITY, |max, &l| if l > max { l } else { max });
    let first = logits
        .chunks(MAX_LANES)
        .position(|chunk| chunk.contains(&max))
        .and_then(|c| {
            let at = logits[c * MAX_LANES..].iter().position(|&l| l == max)?;
            Some(c * MAX_LANES + at)
        });
    first.unwrap_or(logits.len().saturating_sub(1)) as u32
}

/// [`argmax`] of `logits` with `bias` added, without a biased copy of the row (a 49,152-token
/// row copied per sequence and step was most of greedy sampling's time): the raw argmax
/// against each biased token. `None` where the raw argmax is itself biased, since its
/// biased value may then lose to a token only a whole pass finds.
fn biased_argmax(logits: &[f32], bias: &[(u32, f32)]) -> Option<u32> {
    let raw = argmax(logits);
    if bias.iter().any(|&(id, _)| id == raw) {
        return None;
    }
    let mut best = (raw, *logits.get(raw as usize)?);
    for &(id, value) in bias {
        let Some(&logit) = logits.get(id as usize) else {
            continue;
        };
        let biased = logit + value;
        // As `argmax`: a larger value wins, the lower id among equals, NaN never.
        if biased > best.1 || (biased == best.1 && id < best.0) {
            best = (id, biased);
        }
    }
    Some(best.0)
}

/// Softmax of `logits / temperature` in f64.
fn softmax(logits: &[f32], temperature: f32) -> Vec<f64> {
    let t = f64::from(temperature);
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&l| {
            let e = ((f64::from(l) - f64::from(max)) / t).exp();
            if e.is_nan() {
                0.0
            } else {
                e
            }
        })
        .collect();
    let total: f64 = exps.iter().sum();
    exps.into_iter().map(|e| e / total).collect()
}

/// The smallest set of most probable tokens whose mass reaches `top_p` (at least one),
/// most probable first; ties keep the lower id first, like `argmax`.
fn nucleus(probs: Vec<f64>, top_p: f64) -> Vec<(usize, f64)> {
    let mut ranked: Vec<(usize, f64)> = probs.into_iter().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut mass = 0.0;
    let mut keep = 0;
    for &(_, p) in &ranked {
        keep += 1;
        mass += p;
        if mass >= top_p {
            break;
        }
    }
    ranked.truncate(keep.max(1));
    ranked
}

/// Log-softmax of the raw logits, in f64 for the normalizer.
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = f64::from(logits.iter().copied().fold(f32::NEG_INFINITY, f32::max));
    let log_total = logits
        .iter()
        .map(|&l| (f64::from(l) - max).exp())
        .sum::<f64>()
        .ln();
    logits
        .iter()
        .map(|&l| (f64::from(l) - max - log_total) as f32)
        .collect()
}

/// The `k` most likely ids with their logprobs, most likely first (ties: lower id first).
pub(crate) fn top_k(logprobs: &[f32], k: usize) -> Vec<(u32, f32)> {
    let mut ranked: Vec<(u32, f32)> = logprobs
        .iter()
        .enumerate()
        .map(|(id, &lp)| (id as u32, lp))
        .collect();
    let by_rank = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let k = k.min(ranked.len());
    if k == 0 {
        return Vec::new();
    }
    if k < ranked.len() {
        ranked.select_nth_unstable_by(k - 1, by_rank);
        ranked.truncate(k);
    }
    ranked.sort_by(by_rank);
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_the_first_largest_logit() {
        let mut sampler = Sampler::new(0.0, 1.0, 1);
        assert_eq!(sampler.sample(&[0.5, 2.0, 2.0, -1.0]), 1);
        assert_eq!(argmax(&[f32::NAN, 1.0, 0.0]), 1);
        // Past the lanes: the first of equal maxima in a later chunk, a maximum in the
        // remainder, all -inf, all NaN.
        let mut row = vec![0.25f32; 100];
        row[37] = 3.0;
        row[70] = 3.0;
        row[5] = f32::NAN;
        assert_eq!(argmax(&row), 37);
        row[98] = 4.0;
        assert_eq!(argmax(&row), 98);
        assert_eq!(argmax(&[f32::NEG_INFINITY; 40]), 0);
        assert_eq!(argmax(&[f32::NAN; 20]), 19);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn log_softmax_matches_the_closed_form() {
        let lp = log_softmax(&[1.0, 2.0, 3.0]);
        let z = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        for (i, l) in [1.0f64, 2.0, 3.0].iter().enumerate() {
            assert!((f64::from(lp[i]) - (l - z)).abs() < 1e-6, "{lp:?}");
        }
    }

    #[test]
    fn top_k_is_sorted_and_bounded() {
        let lp = [-3.0, -0.5, -2.0, -0.5, -9.0];
        assert_eq!(top_k(&lp, 3), vec![(1, -0.5), (3, -0.5), (2, -2.0)]);
        assert_eq!(top_k(&lp, 9).len(), 5);
        assert!(top_k(&lp, 0).is_empty());
    }

    #[test]
    fn nucleus_keeps_the_smallest_prefix_reaching_top_p() {
        let kept = nucleus(vec![0.1, 0.5, 0.3, 0.1], 0.75);
        let ids: Vec<usize> = kept.iter().map(|&(id, _)| id).collect();
        assert_eq!(ids, [1, 2]);
        assert_eq!(nucleus(vec![0.1, 0.5, 0.4], 1e-9).len(), 1);
    }

    #[test]
    fn draws_follow_the_distribution_and_the_seed() {
        // p = softmax([0, ln 3]) = [0.25, 0.75]: 4000 draws land near 3000 on id 1.
        let logits = [0.0, 3f32.ln()];
        let mut sampler = Sampler::new(1.0, 1.0, 42);
        let ones = (0..4000).filter(|_| sampler.sample(&logits) == 1).count();
        assert!((2850..3150).contains(&ones), "{ones}");
        let draws = |seed| {
            let mut s = Sampler::new(1.0, 1.0, seed);
            (0..64).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }

    #[test]
    fn bias_moves_greedy_and_sampled_choices() {
        let logits = [0.0, 3.0, 1.0];
        let mut greedy = Sampler::new(0.0, 1.0, 1).with_bias(vec![(1, -100.0)]);
        assert_eq!(greedy.sample(&logits), 2);
        assert_eq!(greedy.sample(&logits), 2, "the bias holds on every step");
        let mut lifted = Sampler::new(0.0, 1.0, 1).with_bias(vec![(0, 3.5), (9, 50.0)]);
        assert_eq!(
            lifted.sample(&logits),
            0,
            "id 9 is beyond the logits and skipped"
        );
        // softmax([0, 3 - 100 + ln 3·…]): with id 1 pushed down by 100, a draw at T = 1
        // lands on 0 or 2 in the ratio 1 : e.
        let mut drawn = Sampler::new(1.0, 1.0, 5).with_bias(vec![(1, -100.0)]);
        let draws: Vec<u32> = (0..2000).map(|_| drawn.sample(&logits)).collect();
        assert!(!draws.contains(&1));
        let twos = draws.iter().filter(|&&id| id == 2).count();
        // e / (1 + e) = 0.731 of 2000 = 1462.
        assert!((1380..1540).contains(&twos), "{twos}");
    }

    #[test]
    fn greedy_bias_without_a_copy_chooses_as_the_biased_copy_does() {
        // The biased row itself, as the copy path builds it.
        let copied = |logits: &[f32], bias: &[(u32, f32)]| {
            let mut row = logits.to_vec();
            for &(id, value) in bias {
                if let Some(logit) = row.get_mut(id as usize) {
                    *logit += value;
                }
            }
            argmax(&row)
        };
        let mut rng = StdRng::seed_from_u64(11);
        let mut fast = 0;
        for case in 0..2000 {
            // Few distinct values, so equal logits (ties) are common.
            let logits: Vec<f32> = (0..40).map(|_| rng.random_range(0..6) as f32).collect();
            let bias: Vec<(u32, f32)> = (0..case % 4)
                .map(|_| (rng.random_range(0..44), rng.random_range(-3..4) as f32))
                .collect();
            let merged = Sampler::new(0.0, 1.0, 1).with_bias(bias.clone()).bias;
            let expected = copied(&logits, &bias);
            if let Some(token) = biased_argmax(&logits, &merged) {
                fast += 1;
                assert_eq!(token, expected, "{logits:?} {bias:?}");
            }
            let mut sampler = Sampler::new(0.0, 1.0, 1).with_bias(bias.clone());
            assert_eq!(sampler.sample(&logits), expected, "{logits:?} {bias:?}");
        }
        // Most rows never copy: their raw argmax is not biased.
        assert!(fast > 1500, "{fast}");
        // A biased raw argmax falls back to the copy: 5 + (-10) loses to 4.
        assert_eq!(biased_argmax(&[5.0, 4.0], &[(0, -10.0)]), None);
        let mut sampler = Sampler::new(0.0, 1.0, 1).with_bias(vec![(0, -10.0)]);
        assert_eq!(sampler.sample(&[5.0, 4.0]), 1);
        // An id named twice: its biases add up, as the copy path adds each.
        let mut twice = Sampler::new(0.0, 1.0, 1).with_bias(vec![(1, 1.5), (1, 1.5)]);
        assert_eq!(twice.sample(&[3.5, 1.0, 0.0]), 1);
    }

    #[test]
    fn low_temperature_sharpens() {
        // At T = 0.1 the 0.25/0.75 split becomes 3^10 : 1, so id 1 nearly always wins.
        let logits = [0.0, 3f32.ln()];
        let mut sampler = Sampler::new(0.1, 1.0, 3);
        let ones = (0..1000).filter(|_| sampler.sample(&logits) == 1).count();
        assert!(ones >= 995, "{ones}");
    }
}
