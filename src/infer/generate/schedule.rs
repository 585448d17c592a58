//! What one step feeds through the model: every decoding sequence its one new token, and
//! the prompts still being read a share of the step's prefill budget, oldest first. A long
//! prompt (or many new ones at once) is read over several steps, so the sequences already
//! decoding keep producing a token every step instead of waiting for the whole prompt:
//! chunked prefill, as vLLM's and TGI's schedulers do it. Pure arithmetic, tested directly.

/// One running sequence as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    /// Still reading its prompt (nothing sampled yet).
    pub(crate) prefilling: bool,
    /// Tokens not yet through the model.
    pub(crate) tokens: usize,
}

/// Tokens each sequence feeds this step, in the order given (0: it sits this step out).
/// Decoding sequences feed all they have (one token); prompts share `prefill_budget`
/// tokens in order, the first of them at least one token even with a budget of 0, so
/// every step makes progress.
pub(crate) fn plan_step(sequences: &[Pending], prefill_budget: usize) -> Vec<usize> {
    let mut left = prefill_budget.max(1);
    sequences
        .iter()
        .map(|s| {
            if !s.prefilling {
                return s.tokens;
            }
            let take = s.tokens.min(left);
            left -= take;
            take
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decoding() -> Pending {
        Pending {
            prefilling: false,
            tokens: 1,
        }
    }

    fn prompt(tokens: usize) -> Pending {
        Pending {
            prefilling: true,
            tokens,
        }
    }

    #[test]
    fn decoding_sequences_always_step_and_prompts_share_the_budget_in_order() {
        let plan = plan_step(
            &[decoding(), prompt(300), decoding(), prompt(300), prompt(5)],
            512,
        );
        assert_eq!(plan, [1, 300, 1, 212, 0]);
    }

    #[test]
    fn a_prompt_within_the_budget_is_read_in_one_step() {
        assert_eq!(plan_step(&[prompt(64), prompt(64)], 512), [64, 64]);
        assert_eq!(plan_step(&[prompt(512)], 512), [512]);
    }

    #[test]
    fn a_long_prompt_is_read_over_several_steps() {
        let mut left = 1300;
        let mut steps = Vec::new();
        while left > 0 {
            let take = plan_step(&[decoding(), prompt(left)], 512)[1];
            steps.push(take);
            left -= take;
        }
        assert_eq!(steps, [512, 512, 276]);
    }

    #[test]
    fn a_zero_budget_still_moves_the_first_prompt() {
        assert_eq!(plan_step(&[decoding(), prompt(9), prompt(9)], 0), [1, 1, 0]);
        assert!(plan_step(&[], 512).is_empty());
    }
}
