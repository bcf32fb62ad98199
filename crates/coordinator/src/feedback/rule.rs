//! The online weight-update rule: multiplicative weights (Hedge) with a floor. Pure functions;
//! docs/data.md states the same rule.
//!
//! Weights are kept at mean 1 (they sum to the member count `n`), so an online weight reads
//! like a static spec weight: 1.0 is an average member. For one feedback row, with each
//! answering member's loss `ℓ_i ∈ [0, 1]` (set `A`):
//!
//! 1. `w_i ← w_i · exp(−η·ℓ_i)` for `i ∈ A`;
//! 2. the members of `A` are rescaled to the total they had before step 1, so a member that did
//!    not answer the row neither gains nor loses;
//! 3. the weights are projected onto `{Σw = n, w_i ≥ floor}`: members below the floor are raised
//!    to it and the others scaled down to keep the sum, repeated until none is below. This
//!    terminates within `n` rounds because `floor < 1` (validated with the spec).
//!
//! Non-finite or out-of-range losses count as the worst loss, 1; a row whose update would leave
//! no finite positive mass changes nothing. So no input makes a weight NaN, zero or negative.

/// A member's loss for one row: `1 − p(true class)` for probabilities, 0/1 for labels; clamped
/// to `[0, 1]`, with anything non-finite counted as 1.
pub fn clamp_loss(loss: f64) -> f64 {
    if loss.is_finite() {
        loss.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// Equal weights of mean 1.
pub fn equal(n: usize) -> Vec<f64> {
    vec![1.0; n]
}

/// Scales `weights` to mean 1; weights that are not all finite and positive become equal.
pub fn normalise(weights: &mut [f64]) {
    let n = weights.len() as f64;
    let sum: f64 = weights.iter().sum();
    if weights.iter().any(|w| !w.is_finite() || *w <= 0.0) || !(sum.is_finite() && sum > 0.0) {
        weights.fill(1.0);
        return;
    }
    for w in weights.iter_mut() {
        *w *= n / sum;
    }
}

/// Projects mean-1 `weights` onto `{Σw = n, w_i ≥ floor}` (step 3 of the module header).
pub fn apply_floor(weights: &mut [f64], floor: f64) {
    let n = weights.len();
    let mut fixed = vec![false; n];
    for _ in 0..=n {
        let pinned = fixed.iter().filter(|f| **f).count();
        let free_sum: f64 = (0..n).filter(|&i| !fixed[i]).map(|i| weights[i]).sum();
        let budget = n as f64 - pinned as f64 * floor;
        if pinned == n || free_sum <= 0.0 {
            // Only possible with every member at the floor: they are then equal.
            weights.fill(1.0);
            return;
        }
        let scale = budget / free_sum;
        let mut newly_pinned = false;
        for i in 0..n {
            if fixed[i] {
                weights[i] = floor;
                continue;
            }
            weights[i] *= scale;
            if weights[i] < floor {
                weights[i] = floor;
                fixed[i] = true;
                newly_pinned = true;
            }
        }
        if !newly_pinned {
            return;
        }
    }
}

/// One feedback row's update of mean-1 `weights`; `losses[i]` is `None` for a member that did
/// not answer the row.
pub fn hedge_step(weights: &mut [f64], losses: &[Option<f64>], learning_rate: f64, floor: f64) {
    debug_assert_eq!(weights.len(), losses.len());
    let before: f64 = weights
        .iter()
        .zip(losses)
        .filter(|(_, l)| l.is_some())
        .map(|(w, _)| w)
        .sum();
    let mut updated = weights.to_vec();
    for (w, loss) in updated.iter_mut().zip(losses) {
        if let Some(loss) = loss {
            *w *= (-learning_rate * clamp_loss(*loss)).exp();
        }
    }
    let after: f64 = updated
        .iter()
        .zip(losses)
        .filter(|(_, l)| l.is_some())
        .map(|(w, _)| w)
        .sum();
    if !(before.is_finite() && before > 0.0 && after.is_finite() && after > 0.0) {
        return;
    }
    for (w, loss) in updated.iter_mut().zip(losses) {
        if loss.is_some() {
            *w *= before / after;
        }
    }
    normalise(&mut updated);
    apply_floor(&mut updated, floor);
    weights.copy_from_slice(&updated);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(w: &[f64]) -> f64 {
        w.iter().sum()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn a_worse_member_loses_weight_and_the_sum_stays_n() {
        let mut w = equal(3);
        hedge_step(&mut w, &[Some(0.0), Some(0.0), Some(1.0)], 0.5, 0.05);
        assert!(w[2] < w[0] && close(w[0], w[1]), "{w:?}");
        assert!(close(sum(&w), 3.0));
        // The ratio is exactly exp(−η·Δℓ) while no floor is touched.
        assert!(close(w[2] / w[0], (-0.5f64).exp()));
    }

    #[test]
    fn equal_losses_change_nothing() {
        let mut w = vec![0.5, 1.0, 1.5];
        hedge_step(&mut w, &[Some(0.3), Some(0.3), Some(0.3)], 1.0, 0.05);
        assert!(
            close(w[0], 0.5) && close(w[1], 1.0) && close(w[2], 1.5),
            "{w:?}"
        );
    }

    #[test]
    fn the_floor_holds_exactly_and_the_rest_share_the_remainder() {
        let mut w = equal(4);
        for _ in 0..10_000 {
            hedge_step(
                &mut w,
                &[Some(0.0), Some(0.1), Some(0.0), Some(1.0)],
                10.0,
                0.05,
            );
        }
        assert!(close(w[3], 0.05), "{w:?}");
        assert!(close(sum(&w), 4.0), "{w:?}");
        assert!(w.iter().all(|x| *x >= 0.05 && x.is_finite()));
        // Two members pinned at once: the others still sum to n − 2·floor.
        let mut w = vec![3.9, 0.05, 0.03, 0.02];
        apply_floor(&mut w, 0.1);
        assert!(
            close(w[1], 0.1) && close(w[2], 0.1) && close(w[3], 0.1),
            "{w:?}"
        );
        assert!(close(sum(&w), 4.0));
    }

    #[test]
    fn a_member_that_did_not_answer_keeps_its_weight() {
        let mut w = vec![1.0, 1.0, 1.0];
        hedge_step(&mut w, &[Some(0.0), Some(1.0), None], 1.0, 0.01);
        assert!(close(w[2], 1.0), "{w:?}");
        assert!(close(w[0] + w[1], 2.0));
        assert!(w[0] > w[1]);
    }

    #[test]
    fn extreme_losses_never_make_nan_or_zero() {
        let mut w = equal(3);
        let losses = [Some(f64::NAN), Some(f64::INFINITY), Some(-1e300)];
        for _ in 0..1000 {
            hedge_step(&mut w, &losses, 10.0, 0.01);
        }
        assert!(w.iter().all(|x| x.is_finite() && *x >= 0.01), "{w:?}");
        assert!(close(sum(&w), 3.0));
        // NaN and infinity count as the worst loss, a negative loss as none.
        assert!(w[2] > w[0] && close(w[0], w[1]), "{w:?}");
        // No member answered: nothing changes.
        let before = w.clone();
        hedge_step(&mut w, &[None, None, None], 10.0, 0.01);
        assert_eq!(w, before);
    }

    #[test]
    fn normalise_repairs_broken_weights() {
        let mut w = vec![f64::NAN, 1.0];
        normalise(&mut w);
        assert_eq!(w, vec![1.0, 1.0]);
        let mut w = vec![2.0, 6.0];
        normalise(&mut w);
        assert_eq!(w, vec![0.5, 1.5]);
    }
}
