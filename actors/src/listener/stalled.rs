//! Replies nobody reads: the connections whose reply has stopped moving,
//! so that a reply the outbound budget has no room for can be given room
//! by closing one of them.
//!
//! A peer that asks for large replies and never reads them holds the
//! outbound budget until each write's deadline (`timeout` plus the reply's
//! size at `min-rate`): from many connections it would keep every other
//! peer's large replies refused. A write stalls when its peer stops
//! reading, while an honest reader, even a slow one, keeps bytes moving.
//! So a reply that finds the budget full closes the connection, from
//! another address, whose write has made no progress for longest (at
//! least [`STALLED`]; one that has not moved for less is watched until
//! it has, or moves), and waits briefly for the budget it gives back,
//! again while such connections remain, for at most
//! [`ROOM_WAIT_TOTAL`]. One reply at a
//! time waits so (the others are refused at once, as before): at most one
//! reply beyond the budget is held while room is made.
//!
//! The registry holds one entry per connection writing a charged reply,
//! so it is bounded by the Listener's `max-inbound`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::budget::Reservation;

/// How long a write must have moved no byte before its connection may be
/// closed for another peer's reply: far longer than an honest reader,
/// even one on a slow link, leaves its receive window full.
pub(super) const STALLED: Duration = Duration::from_millis(500);
/// How long a reply waits for what one closed connection gives back.
const ROOM_WAIT: Duration = Duration::from_millis(100);
/// How long a reply waits for room in all.
const ROOM_WAIT_TOTAL: Duration = Duration::from_secs(1);

/// The connections of a Listener writing a reply charged to its outbound
/// budget, and when each last moved a byte.
pub(super) struct StalledWriters {
    epoch: Instant,
    writers: Mutex<HashMap<u64, Writer>>,
    next: AtomicU64,
    /// One permit: the reply waiting for room, if any.
    claiming: Semaphore,
}

struct Writer {
    address: Arc<str>,
    kick: CancellationToken,
    progress: Arc<AtomicU64>,
}

impl StalledWriters {
    /// An empty registry.
    pub(super) fn new() -> Arc<StalledWriters> {
        // Times are counted from an hour back, so that a test can date a
        // write's last progress before the registry was made.
        let now = Instant::now();
        Arc::new(StalledWriters {
            epoch: now.checked_sub(Duration::from_secs(3600)).unwrap_or(now),
            writers: Mutex::new(HashMap::new()),
            next: AtomicU64::new(0),
            claiming: Semaphore::new(1),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a connection from `address` (closed by cancelling
    /// `kick`) starting to write a reply paid for by `charge`, if that
    /// holds any of the budget (closing another writer makes no room);
    /// it leaves the registry when the returned value is dropped.
    pub(super) fn writing(
        self: &Arc<Self>,
        address: &Arc<str>,
        kick: &CancellationToken,
        charge: &Reservation,
    ) -> Option<Writing> {
        if !charge.holds_any() {
            return None;
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(AtomicU64::new(self.now()));
        let writer = Writer {
            address: address.clone(),
            kick: kick.clone(),
            progress: progress.clone(),
        };
        self.lock().insert(id, writer);
        Some(Writing {
            id,
            progress,
            registry: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Writer>> {
        self.writers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The writer, not from `address`, that has moved no byte for longest:
    /// taken out of the registry if that is at least [`STALLED`], else how
    /// long until it would be.
    fn stalest(&self, address: &str) -> Option<Stalest> {
        let now = self.now();
        let stalled = STALLED.as_millis() as u64;
        let mut writers = self.lock();
        let (id, moved) = writers
            .iter()
            .filter(|(_, w)| &*w.address != address)
            .map(|(id, w)| (*id, w.progress.load(Ordering::Relaxed)))
            .min_by_key(|(_, moved)| *moved)?;
        let still = now.saturating_sub(moved);
        if still < stalled {
            return Some(Stalest::In(Duration::from_millis(stalled - still)));
        }
        writers.remove(&id).map(|w| Stalest::Stalled(w.kick))
    }

    /// Makes `bytes` fit in `sending` for a reply to `address` by closing
    /// stalled writers of other addresses; whether it did. Calls `closed`
    /// for each connection closed.
    pub(super) async fn make_room(
        &self,
        address: &str,
        sending: &mut Reservation,
        bytes: usize,
        mut closed: impl FnMut(),
    ) -> bool {
        let Ok(_claim) = self.claiming.try_acquire() else {
            return false;
        };
        let until = tokio::time::Instant::now() + ROOM_WAIT_TOTAL;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.stalest(address) {
                None => return false,
                // A write that has not moved for a while yet (a flood
                // that just began): the wait tells whether it moves.
                Some(Stalest::In(wait)) => tokio::time::sleep(wait.min(left)).await,
                Some(Stalest::Stalled(kick)) => {
                    kick.cancel();
                    closed();
                    if sending.grow(bytes, ROOM_WAIT.min(left)).await.is_ok() {
                        return true;
                    }
                }
            }
        }
    }
}

/// What [`StalledWriters::stalest`] found.
enum Stalest {
    /// A writer stalled, taken out of the registry: its connection's kick.
    Stalled(CancellationToken),
    /// The stalest writer will have stalled after this long, unless it
    /// moves meanwhile.
    In(Duration),
}

/// A connection's entry in [`StalledWriters`] while it writes a reply.
pub(super) struct Writing {
    id: u64,
    progress: Arc<AtomicU64>,
    registry: Arc<StalledWriters>,
}

/// `stream`, noting in the registry each time bytes move (when
/// `writing` is registered).
pub(super) fn watch<'a, S>(stream: &'a mut S, writing: Option<&'a Writing>) -> Watched<'a, S> {
    Watched { stream, writing }
}

impl Drop for Writing {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

/// A stream whose writes tell [`StalledWriters`] that bytes moved.
pub(super) struct Watched<'a, S> {
    stream: &'a mut S,
    writing: Option<&'a Writing>,
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<'_, S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut *self.stream).poll_write(cx, buf);
        if let (Poll::Ready(Ok(n)), Some(writing)) = (&polled, self.writing) {
            if *n > 0 {
                let now = writing.registry.now();
                writing.progress.store(now, Ordering::Relaxed);
            }
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::budget::{Budget, FREE_BUFFER};
    use std::sync::atomic::AtomicUsize;

    fn budget(bytes: usize) -> Budget {
        Budget::new(
            bytes,
            Arc::new(AtomicUsize::new(0)),
            "exhausted",
            ("test", "test"),
        )
    }

    fn stall(writing: &Writing, by: Duration) {
        let registry = &writing.registry;
        let then = registry.now().saturating_sub(by.as_millis() as u64);
        writing.progress.store(then, Ordering::Relaxed);
    }

    #[tokio::test]
    async fn a_full_budget_makes_room_by_closing_the_longest_stalled_writer_of_another_address() {
        let outbound = budget((1 << 20) + 1024);
        let registry = StalledWriters::new();
        let (flooder, other, honest): (Arc<str>, Arc<str>, Arc<str>) =
            ("10.0.0.1".into(), "10.0.0.2".into(), "10.0.0.3".into());
        // Two connections hold the budget with replies nobody reads; a
        // third holds a little of it and moves.
        let mut held = Vec::new();
        for (address, stalled_for) in [(&flooder, 2), (&other, 5)] {
            let kick = CancellationToken::new();
            let mut share = outbound.share();
            share.try_grow(FREE_BUFFER + (512 << 10)).unwrap();
            let writing = registry.writing(address, &kick, &share).unwrap();
            stall(&writing, Duration::from_secs(stalled_for));
            held.push((kick, share, writing));
        }
        let moving_kick = CancellationToken::new();
        let mut moving_share = outbound.share();
        moving_share.try_grow(FREE_BUFFER + 1024).unwrap();
        let _moving = registry
            .writing(&"10.0.0.4".into(), &moving_kick, &moving_share)
            .unwrap();

        let mut sending = outbound.share();
        let wanted = FREE_BUFFER + (256 << 10);
        assert!(sending.try_grow(wanted).is_err(), "the budget is full");
        // The longest stalled connection (5 s) is closed; its owner gives
        // its charge back when it sees the kick, as a connection does.
        let (kick, share, _writing) = held.pop().unwrap();
        let owner = tokio::spawn(async move {
            kick.cancelled().await;
            drop(share);
        });
        let mut closed = 0;
        assert!(
            registry
                .make_room(&honest, &mut sending, wanted, || closed += 1)
                .await
        );
        owner.await.unwrap();
        assert_eq!(closed, 1);
        assert!(
            !held[0].0.is_cancelled(),
            "one closed connection was enough"
        );
        assert!(
            !moving_kick.is_cancelled(),
            "a moving writer is never closed"
        );
    }

    #[tokio::test]
    async fn no_room_is_made_from_the_claimants_own_address_or_from_writers_that_move() {
        let outbound = budget((1 << 20) + 1024);
        let registry = StalledWriters::new();
        let address: Arc<str> = "10.0.0.1".into();
        let kick = CancellationToken::new();
        let mut share = outbound.share();
        share.try_grow(FREE_BUFFER + (1 << 20)).unwrap();
        let writing = registry.writing(&address, &kick, &share).unwrap();
        stall(&writing, Duration::from_secs(5));
        let recent_kick = CancellationToken::new();
        let mut recent_share = outbound.share();
        recent_share.try_grow(FREE_BUFFER + 1024).unwrap();
        let moving = registry
            .writing(&"10.0.0.2".into(), &recent_kick, &recent_share)
            .unwrap();
        // The other writer moves bytes all along, as a reader's does.
        let mover = {
            let (progress, registry) = (moving.progress.clone(), registry.clone());
            tokio::spawn(async move {
                loop {
                    progress.store(registry.now(), Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };

        let mut sending = outbound.share();
        let wanted = FREE_BUFFER + (256 << 10);
        // Its own stalled connection is not closed for a reply to the
        // same address, and the other writer keeps moving: after its
        // whole wait, no room.
        let started = tokio::time::Instant::now();
        assert!(
            !registry
                .make_room(&address, &mut sending, wanted, || ())
                .await
        );
        assert!(started.elapsed() >= ROOM_WAIT_TOTAL);
        assert!(!kick.is_cancelled() && !recent_kick.is_cancelled());
        mover.abort();
        // From another address, the stalled one is closed.
        let owner = tokio::spawn(async move {
            kick.cancelled().await;
            drop(share);
        });
        assert!(
            registry
                .make_room("10.0.0.3", &mut sending, wanted, || ())
                .await
        );
        owner.await.unwrap();
    }

    #[tokio::test]
    async fn a_write_stalled_for_less_than_the_threshold_is_watched_until_it_is() {
        let outbound = budget(1 << 20);
        let registry = StalledWriters::new();
        let kick = CancellationToken::new();
        let mut share = outbound.share();
        share.try_grow(FREE_BUFFER + (1 << 20)).unwrap();
        let writing = registry.writing(&"10.0.0.1".into(), &kick, &share).unwrap();
        // A flood that began a moment ago: not stalled long enough yet.
        stall(&writing, STALLED - Duration::from_millis(200));
        let owner = tokio::spawn(async move {
            kick.cancelled().await;
            drop(share);
        });
        let mut sending = outbound.share();
        let started = tokio::time::Instant::now();
        assert!(
            registry
                .make_room("10.0.0.2", &mut sending, FREE_BUFFER + 1024, || ())
                .await
        );
        owner.await.unwrap();
        // Closed once it had stalled for the threshold, not before.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn one_reply_at_a_time_waits_for_room() {
        let registry = StalledWriters::new();
        let outbound = budget(1 << 20);
        let _claim = registry.claiming.try_acquire().unwrap();
        let kick = CancellationToken::new();
        let mut share = outbound.share();
        share.try_grow(FREE_BUFFER + 1024).unwrap();
        let writing = registry.writing(&"10.0.0.1".into(), &kick, &share).unwrap();
        stall(&writing, Duration::from_secs(5));
        let mut sending = outbound.share();
        assert!(
            !registry
                .make_room("10.0.0.2", &mut sending, FREE_BUFFER + 1024, || ())
                .await
        );
        assert!(!kick.is_cancelled(), "nobody closed while another waits");
    }
}
