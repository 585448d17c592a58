//! A job's metrics events as one run. A job resumed from a checkpoint (after a crash, a
//! pause or a restart) runs again the steps its last run reported past that checkpoint, so
//! its events go back in step; what a curve shows is the latest run: each event drops the
//! earlier ones at its step or after it.

/// `items` (in the order they were written) with their steps, the latest run only; items
/// without a step are left out.
pub fn latest_run<T>(
    items: impl IntoIterator<Item = T>,
    step_of: impl Fn(&T) -> Option<i64>,
) -> Vec<(i64, T)> {
    let mut kept: Vec<(i64, T)> = Vec::new();
    for item in items {
        let Some(step) = step_of(&item) else {
            continue;
        };
        if let Some(first_stale) = kept.iter().position(|(kept_step, _)| *kept_step >= step) {
            kept.truncate(first_stale);
        }
        kept.push((step, item));
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_resumed_run_replaces_the_steps_it_ran_again() {
        // Steps 1–4, a crash, resumed from the checkpoint at 2: steps 3–5 again.
        let written = [
            (1, 'a'),
            (2, 'b'),
            (3, 'c'),
            (4, 'd'),
            (3, 'C'),
            (4, 'D'),
            (5, 'E'),
        ];
        let kept = latest_run(written, |(step, _)| Some(*step));
        let labels: Vec<char> = kept.iter().map(|(_, (_, label))| *label).collect();
        assert_eq!(labels, ['a', 'b', 'C', 'D', 'E']);
        let steps: Vec<i64> = kept.iter().map(|(step, _)| *step).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn items_without_a_step_are_left_out() {
        let kept = latest_run([Some(1), None, Some(2)], |step| *step);
        assert_eq!(kept, [(1, Some(1)), (2, Some(2))]);
    }
}
