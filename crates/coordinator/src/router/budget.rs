//! A token bucket that caps extra calls (retries, hedges) at a fraction of recent traffic, so a
//! failing worker cannot set off a storm of duplicate work.

use std::sync::Mutex;

/// Each first attempt deposits `ratio` tokens, up to `burst`; each extra call spends one.
#[derive(Debug)]
pub struct Budget {
    ratio: f64,
    burst: f64,
    tokens: Mutex<f64>,
}

impl Budget {
    /// Starts full, so a cold coordinator can still retry its first failures.
    pub fn new(ratio: f64, burst: f64) -> Self {
        let ratio = if ratio.is_finite() {
            ratio.max(0.0)
        } else {
            0.0
        };
        let burst = if burst.is_finite() {
            burst.max(0.0)
        } else {
            0.0
        };
        Budget {
            ratio,
            burst,
            tokens: Mutex::new(if ratio > 0.0 { burst } else { 0.0 }),
        }
    }

    /// Records one first attempt.
    pub fn deposit(&self) {
        let mut tokens = self.tokens.lock().expect("budget lock");
        *tokens = (*tokens + self.ratio).min(self.burst);
    }

    /// Spends a token if one is there.
    pub fn try_spend(&self) -> bool {
        let mut tokens = self.tokens.lock().expect("budget lock");
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_with_the_burst_then_refills_at_the_ratio() {
        let budget = Budget::new(0.2, 3.0);
        assert!(budget.try_spend() && budget.try_spend() && budget.try_spend());
        assert!(!budget.try_spend(), "burst spent");
        for _ in 0..4 {
            budget.deposit();
        }
        assert!(!budget.try_spend(), "4 × 0.2 is less than one token");
        budget.deposit();
        assert!(budget.try_spend(), "5 × 0.2 is one token");
    }

    #[test]
    fn never_holds_more_than_the_burst() {
        let budget = Budget::new(1.0, 2.0);
        for _ in 0..100 {
            budget.deposit();
        }
        assert!(budget.try_spend() && budget.try_spend());
        assert!(!budget.try_spend());
    }

    #[test]
    fn a_zero_ratio_disables_extra_calls() {
        let budget = Budget::new(0.0, 10.0);
        budget.deposit();
        assert!(!budget.try_spend());
        let nonsense = Budget::new(f64::NAN, f64::INFINITY);
        assert!(!nonsense.try_spend());
    }
}
