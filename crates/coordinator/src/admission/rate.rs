//! Token-bucket rate limits (GCRA, lock-free, from `governor`): per API key and per ensemble.

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::num::NonZeroU32;
use std::time::Duration;

/// Highest rate or burst a limit may name: beyond it the number is a typo, not a limit.
const MAX_RATE: f64 = 1_000_000.0;

/// A request rate, `rate` per second with bursts of up to `burst` requests.
#[derive(Debug)]
pub struct RateLimit {
    limiter: DefaultDirectRateLimiter,
    clock: DefaultClock,
    rate: f64,
    burst: u32,
}

impl RateLimit {
    /// `burst` defaults to one second's worth of requests (at least 1).
    pub fn new(rate: f64, burst: Option<u32>) -> Result<Self, String> {
        if !rate.is_finite() || rate <= 0.0 || rate > MAX_RATE {
            return Err(format!(
                "`rate_limit` is {rate}, but it must be a number of requests per second above 0 and at most {MAX_RATE}"
            ));
        }
        let burst = burst.unwrap_or(rate.ceil() as u32).max(1);
        if f64::from(burst) > MAX_RATE {
            return Err(format!(
                "`burst` is {burst}, but it must be between 1 and {MAX_RATE}"
            ));
        }
        let period = Duration::from_secs_f64(1.0 / rate);
        let quota = Quota::with_period(period)
            .ok_or_else(|| format!("`rate_limit` {rate} is too high"))?
            .allow_burst(NonZeroU32::new(burst).expect("burst is at least 1"));
        let clock = DefaultClock::default();
        Ok(RateLimit {
            limiter: RateLimiter::direct_with_clock(quota, clock.clone()),
            clock,
            rate,
            burst,
        })
    }

    /// Takes a token, or says how long until one is free.
    pub fn check(&self) -> Result<(), Duration> {
        self.limiter
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// The limit as configured, for comparing a reloaded spec with the running one.
    pub fn settings(&self) -> (f64, u32) {
        (self.rate, self.burst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_its_burst_then_says_when_to_retry() {
        let limit = RateLimit::new(2.0, Some(3)).unwrap();
        for _ in 0..3 {
            limit.check().unwrap();
        }
        let wait = limit.check().unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(limit.settings(), (2.0, 3));
    }

    #[test]
    fn absurd_limits_are_refused() {
        for rate in [0.0, -1.0, f64::NAN, f64::INFINITY, 2e6] {
            assert!(RateLimit::new(rate, None).is_err(), "{rate}");
        }
        assert!(RateLimit::new(1.0, Some(2_000_000)).is_err());
        assert_eq!(RateLimit::new(0.5, None).unwrap().settings(), (0.5, 1));
    }
}
