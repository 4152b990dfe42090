//! The Listener's byte budgets: one for the requests its connections are
//! reading and the decoded requests waiting for the node, one for the
//! replies they are encoding and writing.
//!
//! Each connection buffers its first 64 KiB outside each budget, so small
//! requests and replies never wait for one; beyond that, every byte is
//! charged before it is held and stays charged while it is held: a
//! buffer's capacity (not the bytes in it) before the buffer grows, a
//! decoded request until it is answered, a reply from the moment the node
//! hands it over until it is written. A charge is a value
//! ([`Reservation`]) that moves with what it pays for (into work handed
//! to an I/O thread, say), so it is given back when that is dropped,
//! wherever that happens.
//!
//! Reading waits for the inbound budget, within the request's deadline
//! (the bytes wait in the kernel meanwhile, not in memory). A reply is
//! already in memory when the node hands it over, so it never waits: it
//! is charged at once or dropped at once, and the caller told why.

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
    held: Arc<AtomicUsize>,
    /// What a connection that cannot get budget is told.
    exhausted: &'static str,
    /// The labels of the gauge of what is held: transport and budget.
    labels: (&'static str, &'static str),
    /// Shows the budget's size while any clone of it lives.
    _limit: Arc<LimitShown>,
}

/// The size of a budget on its gauge, taken back when the budget goes.
struct LimitShown {
    bytes: usize,
    labels: (&'static str, &'static str),
}

impl LimitShown {
    fn new(bytes: usize, labels: (&'static str, &'static str)) -> LimitShown {
        crate::metrics::budget_limit(labels.0, labels.1, bytes as f64);
        LimitShown { bytes, labels }
    }
}

impl Drop for LimitShown {
    fn drop(&mut self) {
        crate::metrics::budget_limit(self.labels.0, self.labels.1, -(self.bytes as f64));
    }
}

impl Budget {
    /// A budget of `bytes`, whose holdings `held` shows (and the gauge
    /// of the `labels`: transport and budget name).
    pub(super) fn new(
        bytes: usize,
        held: Arc<AtomicUsize>,
        exhausted: &'static str,
        labels: (&'static str, &'static str),
    ) -> Budget {
        Budget {
            units: Arc::new(Semaphore::new(unit_count(bytes))),
            held,
            exhausted,
            labels,
            _limit: Arc::new(LimitShown::new(bytes, labels)),
        }
    }

    /// Counts `units` more (or fewer) held.
    fn count(&self, units: isize) {
        let bytes = units * UNIT as isize;
        match bytes >= 0 {
            true => self.held.fetch_add(bytes as usize, Ordering::Relaxed),
            false => self.held.fetch_sub(bytes.unsigned_abs(), Ordering::Relaxed),
        };
        let (transport, budget) = self.labels;
        crate::metrics::budget_held(transport, budget, bytes as f64);
    }

    /// An empty share of this budget.
    pub(super) fn share(&self) -> Reservation {
        Reservation {
            permits: None,
            budget: self.clone(),
        }
    }
}

/// A share of a [`Budget`]; given back when dropped.
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

    /// Whether this share holds any of its budget.
    pub(super) fn holds_any(&self) -> bool {
        self.held() > 0
    }

    /// The error of a share that cannot grow.
    fn exhausted(&self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::TimedOut, self.budget.exhausted)
    }

    /// Makes sure `bytes` are covered, waiting at most `wait` for the
    /// budget (an error of kind `TimedOut` after that).
    pub(super) async fn grow(&mut self, bytes: usize, wait: Duration) -> std::io::Result<()> {
        let Some(more) = self.missing(bytes) else {
            return Ok(());
        };
        let permit = match self.budget.units.clone().try_acquire_many_owned(more) {
            Ok(permit) => permit,
            Err(_) => {
                let acquire = self.budget.units.clone().acquire_many_owned(more);
                tokio::time::timeout(wait, acquire)
                    .await
                    .map_err(|_| self.exhausted())?
                    .expect("a budget is never closed")
            }
        };
        self.add(permit);
        Ok(())
    }

    /// Makes sure `bytes` are covered if the budget has room now; an
    /// error (as [`grow`](Self::grow)'s) if it has not.
    pub(super) fn try_grow(&mut self, bytes: usize) -> std::io::Result<()> {
        let Some(more) = self.missing(bytes) else {
            return Ok(());
        };
        let permit = (self.budget.units.clone().try_acquire_many_owned(more))
            .map_err(|_| self.exhausted())?;
        self.add(permit);
        Ok(())
    }

    /// The units to add to cover `bytes`, if any.
    fn missing(&self, bytes: usize) -> Option<u32> {
        let needed = units(bytes);
        let held = self.held();
        (needed > held).then(|| u32::try_from(needed - held).unwrap_or(u32::MAX))
    }

    fn add(&mut self, permit: OwnedSemaphorePermit) {
        self.budget.count(permit.num_permits() as isize);
        match &mut self.permits {
            Some(permits) => permits.merge(permit),
            None => self.permits = Some(permit),
        }
    }

    /// Gives back what `bytes` do not need.
    pub(super) fn fit(&mut self, bytes: usize) {
        let needed = units(bytes);
        let held = self.held();
        if needed >= held {
            return;
        }
        self.budget.count(-((held - needed) as isize));
        if let Some(permits) = &mut self.permits {
            if needed == 0 {
                self.permits = None;
            } else {
                drop(permits.split(held - needed));
            }
        }
    }

    /// Moves everything this share holds into a new share (to travel with
    /// what it pays for); this one is left empty.
    pub(super) fn take(&mut self) -> Reservation {
        Reservation {
            permits: self.permits.take(),
            budget: self.budget.clone(),
        }
    }

    /// Adds what `other` holds to this share.
    pub(super) fn absorb(&mut self, mut other: Reservation) {
        if let Some(permit) = other.permits.take() {
            match &mut self.permits {
                Some(permits) => permits.merge(permit),
                None => self.permits = Some(permit),
            }
        }
    }
}

/// Units in a budget of `bytes`.
fn unit_count(bytes: usize) -> usize {
    (bytes / UNIT).min(Semaphore::MAX_PERMITS)
}

/// Budget units for `bytes`, beyond the free allowance.
fn units(bytes: usize) -> usize {
    bytes.saturating_sub(FREE_BUFFER).div_ceil(UNIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(bytes: usize) -> (Budget, Arc<AtomicUsize>) {
        let held = Arc::new(AtomicUsize::new(0));
        (
            Budget::new(bytes, held.clone(), "exhausted", ("test", "test")),
            held,
        )
    }

    #[tokio::test]
    async fn shares_wait_for_each_other_and_give_back_on_drop() {
        let (budget, held) = budget(FREE_BUFFER);
        let mut first = budget.share();
        // Small buffers are free.
        first.grow(FREE_BUFFER, Duration::ZERO).await.unwrap();
        assert_eq!(held.load(Ordering::Relaxed), 0);
        first.grow(2 * FREE_BUFFER, Duration::ZERO).await.unwrap();
        assert_eq!(held.load(Ordering::Relaxed), FREE_BUFFER);
        let mut second = budget.share();
        let waiting = second.grow(FREE_BUFFER + UNIT, Duration::from_secs(60));
        tokio::pin!(waiting);
        assert!(futures::poll!(waiting.as_mut()).is_pending());
        first.fit(FREE_BUFFER + UNIT);
        assert_eq!(held.load(Ordering::Relaxed), UNIT);
        drop(first);
        // The waiting share gets what the first gave back.
        waiting.await.unwrap();
        assert_eq!(held.load(Ordering::Relaxed), UNIT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_share_that_cannot_grow_in_time_gets_the_budget_error_after_its_wait() {
        let (budget, _) = budget(FREE_BUFFER);
        let mut holder = budget.share();
        holder.grow(2 * FREE_BUFFER, Duration::ZERO).await.unwrap();
        let mut late = budget.share();
        let started = tokio::time::Instant::now();
        let err = late
            .grow(FREE_BUFFER + UNIT, Duration::from_secs(3))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(err.to_string(), "exhausted");
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn try_grow_takes_what_is_free_now_or_nothing() {
        let (budget, held) = budget(8 * UNIT);
        let mut holder = budget.share();
        holder.try_grow(FREE_BUFFER + 6 * UNIT).unwrap();
        let mut other = budget.share();
        let err = other.try_grow(FREE_BUFFER + 3 * UNIT).unwrap_err();
        assert_eq!(err.to_string(), "exhausted");
        // A refusal takes nothing.
        assert_eq!(held.load(Ordering::Relaxed), 6 * UNIT);
        other.try_grow(FREE_BUFFER + 2 * UNIT).unwrap();
        assert_eq!(held.load(Ordering::Relaxed), 8 * UNIT);
    }

    #[test]
    fn a_taken_charge_is_given_back_where_it_is_dropped() {
        let (budget, held) = budget(8 * UNIT);
        let mut share = budget.share();
        share.try_grow(FREE_BUFFER + 8 * UNIT).unwrap();
        let travelling = share.take();
        // The share is empty; what it held travels.
        assert!(share.try_grow(FREE_BUFFER + UNIT).is_err());
        let job = std::thread::spawn(move || drop(travelling));
        job.join().unwrap();
        assert_eq!(held.load(Ordering::Relaxed), 0);
        share.try_grow(FREE_BUFFER + 8 * UNIT).unwrap();
        let mut back = share.take();
        back.fit(FREE_BUFFER + 2 * UNIT);
        share.absorb(back);
        assert_eq!(held.load(Ordering::Relaxed), 2 * UNIT);
    }
}
