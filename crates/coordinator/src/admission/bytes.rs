//! A cap on the request bytes held at once (`--max-inflight-body-bytes`): the bodies being read
//! and the requests being served, both front doors together. Many large requests at once wait
//! for room (at most the queue wait) and are then refused with 429, so a burst of big bodies
//! cannot take the coordinator past its memory limit.

use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget is counted in KiB, so that one request of up to 4 TiB fits the semaphore's u32.
const UNIT: usize = 1024;

#[derive(Debug)]
pub struct ByteBudget {
    units: Arc<Semaphore>,
    capacity: u32,
}

/// Bytes reserved by one request, given back when dropped.
#[derive(Debug, Default)]
pub struct Reserved {
    /// One permit, grown by merging: no allocation per request.
    permit: Option<OwnedSemaphorePermit>,
    units: u32,
}

/// The budget stayed full for as long as the request could wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

impl ByteBudget {
    /// A budget of `bytes` (at least one unit).
    pub fn new(bytes: usize) -> Self {
        let capacity = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .max(1);
        ByteBudget {
            units: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
        }
    }

    /// Grows `reserved` to cover `bytes`, waiting at most `wait` for room. A request larger than
    /// the whole budget takes all of it (it is alone, but not refused for its size: the body
    /// limit decides that).
    pub async fn reserve(
        &self,
        reserved: &mut Reserved,
        bytes: usize,
        wait: Duration,
    ) -> Result<(), Full> {
        let wanted = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.capacity);
        if wanted <= reserved.units {
            return Ok(());
        }
        let more = wanted - reserved.units;
        let permit = match Arc::clone(&self.units).try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(_) if wait.is_zero() => return Err(Full),
            Err(_) => {
                let acquire = Arc::clone(&self.units).acquire_many_owned(more);
                match tokio::time::timeout(wait, acquire).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(Full),
                }
            }
        };
        match &mut reserved.permit {
            Some(held) => held.merge(permit),
            None => reserved.permit = Some(permit),
        }
        reserved.units = wanted;
        Ok(())
    }

    /// Bytes free now.
    pub fn available(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn requests_share_the_budget_and_wait_or_are_refused() {
        let budget = ByteBudget::new(10 * UNIT);
        let mut a = Reserved::default();
        budget
            .reserve(&mut a, 6 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        // Growing a reservation takes only the difference.
        budget
            .reserve(&mut a, 8 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(budget.available(), 2 * UNIT);
        let mut b = Reserved::default();
        assert_eq!(
            budget
                .reserve(&mut b, 3 * UNIT, Duration::from_millis(10))
                .await,
            Err(Full)
        );
        drop(a);
        budget
            .reserve(&mut b, 3 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        // Larger than the budget: takes all of it rather than never fitting.
        let mut huge = Reserved::default();
        drop(b);
        budget
            .reserve(&mut huge, 1 << 40, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(budget.available(), 0);
    }
}
