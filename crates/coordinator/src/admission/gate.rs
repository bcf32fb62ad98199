//! A concurrency limit with a bounded priority queue: at most `limit` requests in flight, at most
//! `max_queue` waiting, served lowest priority level first and FIFO within a level. A full queue
//! makes room for a more urgent request by turning away its least urgent waiter; nobody waits
//! longer than the time they were given.
//!
//! Semaphores (tokio's, tower's) queue in FIFO order only and cannot evict, which is why this is
//! its own small type.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Why a request was not let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue is full of requests at least as urgent.
    QueueFull,
    /// No slot came free within the time the request could wait.
    TimedOut,
    /// A more urgent request took its place in a full queue.
    Displaced,
}

/// Where a waiter sits: its priority level, then its arrival.
type Ticket = (u32, u64);

#[derive(Debug)]
struct State {
    limit: usize,
    inflight: usize,
    /// Waiters by ticket; the sender says `true` (a slot was handed over) or `false` (displaced).
    waiting: BTreeMap<Ticket, oneshot::Sender<bool>>,
    next_arrival: u64,
}

#[derive(Debug)]
pub struct Gate {
    state: Mutex<State>,
    max_queue: usize,
}

impl Gate {
    pub fn new(limit: usize, max_queue: usize) -> Arc<Self> {
        Arc::new(Gate {
            state: Mutex::new(State {
                limit: limit.max(1),
                inflight: 0,
                waiting: BTreeMap::new(),
                next_arrival: 0,
            }),
            max_queue,
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this lock leaves counts that are still consistent (every change
        // is one statement), so a poisoned lock is used as is.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Requests in flight and waiting.
    pub fn load(&self) -> (usize, usize) {
        let s = self.state();
        (s.inflight, s.waiting.len())
    }

    pub fn limit(&self) -> usize {
        self.state().limit
    }

    /// Changes the limit (the adaptive limiter does); a higher limit lets waiters in at once.
    pub fn set_limit(self: &Arc<Self>, limit: usize) {
        let mut s = self.state();
        s.limit = limit.max(1);
        while s.inflight < s.limit {
            let Some((_, waiter)) = s.waiting.pop_first() else {
                break;
            };
            if waiter.send(true).is_ok() {
                s.inflight += 1;
            }
        }
    }

    /// A slot at priority `level` (lower first), waiting at most `max_wait` for one.
    pub async fn acquire(
        self: &Arc<Self>,
        level: u32,
        max_wait: Duration,
    ) -> Result<Permit, Refusal> {
        let (ticket, handed) = {
            let mut s = self.state();
            if s.inflight < s.limit && s.waiting.is_empty() {
                s.inflight += 1;
                return Ok(self.permit());
            }
            if max_wait.is_zero() || self.max_queue == 0 {
                return Err(Refusal::QueueFull);
            }
            if s.waiting.len() >= self.max_queue {
                match s.waiting.last_key_value() {
                    Some((&(worst, _), _)) if worst > level => {
                        let (_, displaced) = s.waiting.pop_last().expect("the queue is not empty");
                        let _ = displaced.send(false);
                    }
                    _ => return Err(Refusal::QueueFull),
                }
            }
            let ticket = (level, s.next_arrival);
            s.next_arrival += 1;
            let (tx, rx) = oneshot::channel();
            s.waiting.insert(ticket, tx);
            (ticket, rx)
        };
        // Whatever ends the wait (an answer, the time limit, or the caller dropping this
        // future), the ticket is settled under the lock; `Waiting` covers the drop.
        let mut wait = Waiting {
            gate: self,
            ticket,
            handed,
            settled: false,
        };
        let answered = tokio::time::timeout(max_wait, &mut wait.handed).await;
        wait.settled = true;
        match answered {
            Ok(Ok(true)) => Ok(self.permit()),
            Ok(Ok(false)) => Err(Refusal::Displaced),
            // Timed out (or, never in practice, the sender dropped unanswered).
            Ok(Err(_)) | Err(_) => {
                if self.state().waiting.remove(&ticket).is_some() {
                    return Err(Refusal::TimedOut);
                }
                // Answered between the timer and the lock: take what was sent.
                match wait.handed.try_recv() {
                    Ok(true) => Ok(self.permit()),
                    _ => Err(Refusal::Displaced),
                }
            }
        }
    }

    fn permit(self: &Arc<Self>) -> Permit {
        Permit {
            gate: Arc::clone(self),
        }
    }

    /// A slot is free: hand it to the most urgent waiter still waiting, or give it back.
    fn release(&self) {
        let mut s = self.state();
        if s.inflight <= s.limit {
            while let Some((_, waiter)) = s.waiting.pop_first() {
                if waiter.send(true).is_ok() {
                    return;
                }
            }
        }
        s.inflight -= 1;
    }
}

/// A slot in the gate, given back when dropped.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A request waiting in the queue. If its future is dropped mid-wait (the client went away), it
/// leaves the queue, or gives back the slot it was handed meanwhile.
struct Waiting<'a> {
    gate: &'a Arc<Gate>,
    ticket: Ticket,
    handed: oneshot::Receiver<bool>,
    settled: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if self.settled || self.gate.state().waiting.remove(&self.ticket).is_some() {
            return;
        }
        if let Ok(true) = self.handed.try_recv() {
            self.gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_go_to_the_most_urgent_waiter_first() {
        let gate = Gate::new(1, 10);
        let first = gate.acquire(5, Duration::ZERO).await.unwrap();
        let g = Arc::clone(&gate);
        let late = tokio::spawn(async move { g.acquire(9, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        let g = Arc::clone(&gate);
        let urgent = tokio::spawn(async move { g.acquire(1, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        assert_eq!(gate.load(), (1, 2));
        drop(first);
        let urgent = urgent.await.unwrap().unwrap();
        assert!(!late.is_finished());
        drop(urgent);
        let late = late.await.unwrap().unwrap();
        assert_eq!(gate.load(), (1, 0));
        drop(late);
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once_or_displaces_a_less_urgent_waiter() {
        let gate = Gate::new(1, 1);
        let _held = gate.acquire(5, Duration::ZERO).await.unwrap();
        assert_eq!(
            gate.acquire(5, Duration::ZERO).await.unwrap_err(),
            Refusal::QueueFull
        );
        let g = Arc::clone(&gate);
        let waiter = tokio::spawn(async move { g.acquire(5, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        assert_eq!(
            gate.acquire(7, Duration::from_secs(5)).await.unwrap_err(),
            Refusal::QueueFull
        );
        let g = Arc::clone(&gate);
        let urgent = tokio::spawn(async move { g.acquire(1, Duration::from_secs(5)).await });
        assert_eq!(waiter.await.unwrap().unwrap_err(), Refusal::Displaced);
        assert_eq!(gate.load(), (1, 1));
        drop(_held);
        drop(urgent.await.unwrap().unwrap());
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_give_up_on_time_and_abandoned_waits_leave_the_queue() {
        let gate = Gate::new(1, 10);
        let held = gate.acquire(5, Duration::ZERO).await.unwrap();
        let started = tokio::time::Instant::now();
        assert_eq!(
            gate.acquire(5, Duration::from_millis(30))
                .await
                .unwrap_err(),
            Refusal::TimedOut
        );
        assert_eq!(started.elapsed(), Duration::from_millis(30));
        let g = Arc::clone(&gate);
        let abandoned = tokio::spawn(async move { g.acquire(5, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        assert_eq!(gate.load(), (1, 1));
        abandoned.abort();
        let _ = abandoned.await;
        assert_eq!(gate.load(), (1, 0));
        drop(held);
        assert_eq!(gate.load(), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn raising_the_limit_lets_waiters_in_and_lowering_it_drains_first() {
        let gate = Gate::new(1, 10);
        let a = gate.acquire(5, Duration::ZERO).await.unwrap();
        let g = Arc::clone(&gate);
        let waiter = tokio::spawn(async move { g.acquire(5, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        gate.set_limit(2);
        let b = waiter.await.unwrap().unwrap();
        assert_eq!(gate.load(), (2, 0));
        gate.set_limit(1);
        let g = Arc::clone(&gate);
        let third = tokio::spawn(async move { g.acquire(5, Duration::from_secs(5)).await });
        tokio::task::yield_now().await;
        drop(a);
        // Still at the new limit of one: the waiter gets no slot yet.
        assert_eq!(gate.load(), (1, 1));
        drop(b);
        let c = third.await.unwrap().unwrap();
        assert_eq!(gate.load(), (1, 0));
        drop(c);
    }
}
