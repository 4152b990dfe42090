//! The Listener's byte budgets: one for the requests its connections are
//! reading, one for the encoded replies they are writing.
//!
//! Each connection buffers its first 64 KiB outside the budgets, so small
//! requests and replies never wait for one; beyond that, a buffer's
//! capacity (not the bytes in it) is charged while the buffer is held. A
//! connection that cannot get budget within its deadline fails that
//! request or reply.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Bytes a connection may buffer outside each budget.
pub(super) const FREE_BUFFER: usize = 64 * 1024;
/// The budgets are counted in units of this many bytes.
const UNIT: usize = 1024;

/// A budget of bytes shared by a Listener's connections, and the gauge
/// that shows how much of it is held.
#[derive(Clone)]
pub(super) struct Budget {
    units: Arc<Semaphore>,
    /// When set, the bytes that may wait for the budget at once: a share
    /// that cannot get room here is refused at once rather than waiting
    /// (what waits for an encoded reply's budget is the reply, in memory).
    waiting_room: Option<Arc<Semaphore>>,
    held: Arc<AtomicUsize>,
    /// What a connection that cannot get budget is told.
    exhausted: &'static str,
}

impl Budget {
    /// A budget of `bytes`, whose holdings `held` shows.
    pub(super) fn new(bytes: usize, held: Arc<AtomicUsize>, exhausted: &'static str) -> Budget {
        Budget {
            units: Arc::new(Semaphore::new(unit_count(bytes))),
            waiting_room: None,
            held,
            exhausted,
        }
    }

    /// This budget, with at most as many bytes again waiting for it.
    pub(super) fn with_waiting_room(self) -> Budget {
        let room = self.units.available_permits();
        Budget {
            waiting_room: Some(Arc::new(Semaphore::new(room))),
            ..self
        }
    }

    /// An empty share of this budget.
    pub(super) fn share(&self) -> Reservation {
        Reservation {
            permits: None,
            budget: self.clone(),
        }
    }
}

/// A connection's share of a [`Budget`]; given back when dropped.
pub(super) struct Reservation {
    permits: Option<OwnedSemaphorePermit>,
    budget: Budget,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.fit(0);
    }
}

impl Reservation {
    fn held(&self) -> usize {
        self.permits.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Makes sure a buffer of `capacity` bytes is covered, waiting at most
    /// `wait` for the budget (an error of kind `TimedOut` after that).
    pub(super) async fn grow(&mut self, capacity: usize, wait: Duration) -> std::io::Result<()> {
        let needed = units(capacity);
        let held = self.held();
        if needed <= held {
            return Ok(());
        }
        let more = u32::try_from(needed - held).unwrap_or(u32::MAX);
        let exhausted = || std::io::Error::new(std::io::ErrorKind::TimedOut, self.budget.exhausted);
        let permit = match self.budget.units.clone().try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = match &self.budget.waiting_room {
                    Some(room) => Some(room.try_acquire_many(more).map_err(|_| exhausted())?),
                    None => None,
                };
                let acquire = self.budget.units.clone().acquire_many_owned(more);
                tokio::time::timeout(wait, acquire)
                    .await
                    .map_err(|_| exhausted())?
                    .expect("a budget is never closed")
            }
        };
        self.budget
            .held
            .fetch_add(permit.num_permits() * UNIT, Ordering::Relaxed);
        match &mut self.permits {
            Some(permits) => permits.merge(permit),
            None => self.permits = Some(permit),
        }
        Ok(())
    }

    /// Gives back what a buffer of `capacity` bytes does not need.
    pub(super) fn fit(&mut self, capacity: usize) {
        let needed = units(capacity);
        let held = self.held();
        if needed >= held {
            return;
        }
        self.budget
            .held
            .fetch_sub((held - needed) * UNIT, Ordering::Relaxed);
        if let Some(permits) = &mut self.permits {
            if needed == 0 {
                self.permits = None;
            } else {
                drop(permits.split(held - needed));
            }
        }
    }
}

/// Units in a budget of `bytes`.
fn unit_count(bytes: usize) -> usize {
    (bytes / UNIT).min(Semaphore::MAX_PERMITS)
}

/// Budget units for a buffer of `bytes`, beyond the free allowance.
fn units(bytes: usize) -> usize {
    bytes.saturating_sub(FREE_BUFFER).div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_wait_for_each_other_and_give_back_on_drop() {
        let held = Arc::new(AtomicUsize::new(0));
        let budget = Budget::new(FREE_BUFFER, held.clone(), "exhausted");
        let mut first = budget.share();
        // Small buffers are free.
        first.grow(FREE_BUFFER, Duration::ZERO).await.unwrap();
        assert_eq!(held.load(Ordering::Relaxed), 0);
        first.grow(2 * FREE_BUFFER, Duration::ZERO).await.unwrap();
        assert_eq!(held.load(Ordering::Relaxed), FREE_BUFFER);
        let mut second = budget.share();
        let err = second
            .grow(FREE_BUFFER + UNIT, Duration::from_millis(1))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "exhausted");
        first.fit(FREE_BUFFER + UNIT);
        assert_eq!(held.load(Ordering::Relaxed), UNIT);
        drop(first);
        assert_eq!(held.load(Ordering::Relaxed), 0);
        second
            .grow(FREE_BUFFER + UNIT, Duration::ZERO)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn with_a_waiting_room_only_that_much_waits_and_the_rest_is_refused_at_once() {
        let held = Arc::new(AtomicUsize::new(0));
        let budget = Budget::new(8 * UNIT, held, "exhausted").with_waiting_room();
        let mut holder = budget.share();
        holder
            .grow(FREE_BUFFER + 8 * UNIT, Duration::ZERO)
            .await
            .unwrap();
        // Six units wait (they fit in the room)...
        let mut waiter = budget.share();
        let waiting = waiter.grow(FREE_BUFFER + 6 * UNIT, Duration::from_secs(60));
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        // ... so three more cannot even wait.
        let mut refused = budget.share();
        let err = refused
            .grow(FREE_BUFFER + 3 * UNIT, Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "exhausted");
        drop(holder);
        waiting.await.unwrap();
    }
}
