//! Which member calls of one request share a frame (`infer_many`) to their worker.
//!
//! A frame answers when its slowest call does, so a member that usually takes much longer than
//! its neighbours on the same worker would hold their answers back (and, past the deadline,
//! make them late with it). Members share a frame only when their recent p95s are close: within
//! twice the fastest's, or a millisecond of it, whichever is more. A member with no p95 yet
//! goes alone: nothing says it is fast, and a member that is always late never gets one (only
//! answered calls are timed), so it could otherwise drag its neighbours past every deadline.

use std::time::Duration;

/// Absolute slack over the fastest member's p95 that a frame-mate may have: small members are
/// dominated by the round trip, and a millisecond is cheap next to a frame saved.
const FRAME_LATENCY_SLACK: Duration = Duration::from_millis(1);

/// Which of the members on one worker, by their recent p95 latency, may share its frame.
pub fn frame_mates(p95s: &[Option<Duration>]) -> Vec<bool> {
    let Some(fastest) = p95s.iter().flatten().min().copied() else {
        return vec![false; p95s.len()];
    };
    let limit = (fastest * 2).max(fastest + FRAME_LATENCY_SLACK);
    p95s.iter()
        .map(|p95| p95.is_some_and(|p95| p95 <= limit))
        .collect()
}

/// `members` (calls on one worker, with their p95s in the same order) split into those that
/// share the worker's frame and those that go alone.
pub fn split(members: Vec<usize>, p95s: &[Option<Duration>]) -> (Vec<usize>, Vec<usize>) {
    let mates = frame_mates(p95s);
    let (shared, alone): (Vec<_>, Vec<_>) =
        members.into_iter().zip(mates).partition(|(_, mate)| *mate);
    let indices = |pairs: Vec<(usize, bool)>| pairs.into_iter().map(|(i, _)| i).collect();
    (indices(shared), indices(alone))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(micros: u64) -> Option<Duration> {
        Some(Duration::from_micros(micros))
    }

    #[test]
    fn round_trip_dominated_members_share_and_a_slow_one_goes_alone() {
        // Three small models at about the round trip, one that runs for 20 ms.
        assert_eq!(
            frame_mates(&[us(300), us(650), us(20_000), us(1_200)]),
            [true, true, false, true]
        );
    }

    #[test]
    fn slow_members_share_when_they_are_alike() {
        assert_eq!(
            frame_mates(&[us(40_000), us(70_000), us(90_000)]),
            [true, true, false]
        );
    }

    #[test]
    fn members_without_a_p95_go_alone() {
        assert_eq!(frame_mates(&[None, None]), [false, false]);
        assert_eq!(
            frame_mates(&[None, us(5_000), us(5_500), us(30_000)]),
            [false, true, true, false]
        );
    }
}
