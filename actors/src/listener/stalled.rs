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
//! [`ROOM_WAIT_TOTAL`]. While it watches, it also takes what replies
//! that end give back (the budget's waiters are served before anyone
//! who asks later), so peers that read every reply but keep the budget
//! full with new ones (a WebRTC peer's stack reads whether or not its
//! application does) cannot keep it refused either.
//!
//! One reply at a time waits so (the others are refused at once, as
//! before), so at most one reply beyond the budget is held while room is
//! made. That place goes to a reply whose address has no charged reply in
//! progress (one that has is being served already), and a reply whose
//! address holds fewer of the Listener's places, or as many and which is
//! smaller, displaces the one waiting: a flood, which needs many
//! connections or large replies to fill the budget, does not keep it from
//! a peer it starves.
//!
//! The registry holds one entry per connection writing a charged reply,
//! so it is bounded by the Listener's `max-inbound`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::AsyncWrite;
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
    /// The reply waiting for room, if any.
    claimant: Mutex<Option<Claimant>>,
    next_claim: AtomicU64,
}

/// The reply waiting for room: its claim, its rank (see
/// [`StalledWriters::claim`]), and how it is told it lost the place.
struct Claimant {
    id: u64,
    rank: (usize, usize),
    displaced: CancellationToken,
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
            claimant: Mutex::new(None),
            next_claim: AtomicU64::new(0),
        })
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Registers a connection from `address` (closed by cancelling
    /// `kick`) whose reply, paid for by `charge`, is encoded and written, if
    /// that holds any of the budget (closing another writer makes no room);
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

    /// Whether a connection from `address` has a charged reply in
    /// progress.
    fn is_writing(&self, address: &str) -> bool {
        self.lock().values().any(|w| &*w.address == address)
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

    /// Makes `bytes` fit in `sending` for a reply to `address`, which
    /// holds `places` of the Listener, by closing stalled writers of other
    /// addresses or with what writers that end give back; whether it did.
    /// Only a reply to an address with no charged reply in progress waits
    /// so, one at a time: a claimant from an address holding fewer places,
    /// or as many and wanting fewer bytes, displaces the one waiting
    /// (refused then, as it would have been at once). Calls `closed` for
    /// each connection closed.
    pub(super) async fn make_room(
        &self,
        address: &str,
        places: usize,
        sending: &mut Reservation,
        bytes: usize,
        closed: impl FnMut(),
    ) -> bool {
        // An address already writing a charged reply is being served: its
        // next reply does not wait ahead of one that is not.
        if self.is_writing(address) {
            return false;
        }
        let Some(claim) = self.claim((places, bytes)) else {
            return false;
        };
        tokio::select! {
            biased;
            _ = claim.displaced.cancelled() => false,
            room = self.room(address, sending, bytes, closed) => room,
        }
    }

    /// Takes the claimant's place for a reply of `rank` (the places its
    /// address holds, then the bytes it wants), if the place is free or
    /// held by a reply of a higher rank. A flood needs many places, or
    /// large replies, to fill the budget: either ranks it behind a peer
    /// it starves.
    fn claim(&self, rank: (usize, usize)) -> Option<Claim<'_>> {
        let mut claimant = self.claimant.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(current) = claimant.as_ref() {
            if current.rank <= rank {
                return None;
            }
            current.displaced.cancel();
        }
        let id = self.next_claim.fetch_add(1, Ordering::Relaxed);
        let displaced = CancellationToken::new();
        *claimant = Some(Claimant {
            id,
            rank,
            displaced: displaced.clone(),
        });
        Some(Claim {
            id,
            displaced,
            registry: self,
        })
    }

    /// [`make_room`](Self::make_room)'s wait, once it holds the claim.
    async fn room(
        &self,
        address: &str,
        sending: &mut Reservation,
        bytes: usize,
        mut closed: impl FnMut(),
    ) -> bool {
        let until = tokio::time::Instant::now() + ROOM_WAIT_TOTAL;
        loop {
            let left = until.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            match self.stalest(address) {
                // Nobody to close: what writers that move give back as
                // their replies end is the only room there will be.
                None => return sending.grow(bytes, left).await.is_ok(),
                // A write that has not moved for a while yet (a flood
                // that just began, or readers that keep up): the wait
                // tells whether it moves, and meanwhile this reply takes
                // what replies ending give back, before their
                // connections' next replies can.
                Some(Stalest::In(wait)) => {
                    if sending.grow(bytes, wait.min(left)).await.is_ok() {
                        return true;
                    }
                }
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

/// The claimant's place, held while a reply waits for room; given up when
/// dropped, unless another claimant took it meanwhile.
struct Claim<'a> {
    id: u64,
    displaced: CancellationToken,
    registry: &'a StalledWriters,
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut claimant = (self.registry.claimant.lock()).unwrap_or_else(|e| e.into_inner());
        if claimant.as_ref().is_some_and(|c| c.id == self.id) {
            *claimant = None;
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

/// A connection's entry in [`StalledWriters`] while its reply, charged to
/// the outbound budget, is encoded and written.
pub(super) struct Writing {
    id: u64,
    progress: Arc<AtomicU64>,
    registry: Arc<StalledWriters>,
}

/// `stream`, noting in the registry each time bytes move (when
/// `writing` is registered). The write starts as having just moved: the
/// time its reply took to encode is not its reader's.
pub(super) fn watch<'a, S>(stream: &'a mut S, writing: Option<&'a Writing>) -> Watched<'a, S> {
    if let Some(writing) = writing {
        (writing.progress).store(writing.registry.now(), Ordering::Relaxed);
    }
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
                .make_room(&honest, 1, &mut sending, wanted, || closed += 1)
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
        // A reply to an address that is writing one already is refused at
        // once: its own stalled connection is not closed for it, nor
        // anyone else's.
        let started = tokio::time::Instant::now();
        assert!(
            !registry
                .make_room(&address, 1, &mut sending, wanted, || ())
                .await
        );
        assert!(started.elapsed() < ROOM_WAIT);
        assert!(!kick.is_cancelled() && !recent_kick.is_cancelled());
        // Its write ends while what it holds stays charged (say, the
        // reply's next frame being encoded): from another address, the
        // one writer left keeps moving, so after the whole wait, no room.
        drop(writing);
        let started = tokio::time::Instant::now();
        assert!(
            !registry
                .make_room("10.0.0.3", 1, &mut sending, wanted, || ())
                .await
        );
        assert!(started.elapsed() >= ROOM_WAIT_TOTAL);
        assert!(!kick.is_cancelled() && !recent_kick.is_cancelled());
        mover.abort();
        drop(share);
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
                .make_room("10.0.0.2", 1, &mut sending, FREE_BUFFER + 1024, || ())
                .await
        );
        owner.await.unwrap();
        // Closed once it had stalled for the threshold, not before.
        assert!(started.elapsed() >= Duration::from_millis(150));
    }

    #[tokio::test]
    async fn a_reply_takes_what_moving_writers_give_back_before_anyone_asking_later() {
        let outbound = budget(1 << 20);
        let registry = StalledWriters::new();
        // Writers that move and end, as replies read at once do; each
        // ended one is followed at once by another that asks without
        // waiting, as a flood's next reply does.
        let mut share = outbound.share();
        share.try_grow(FREE_BUFFER + (1 << 20)).unwrap();
        let kick = CancellationToken::new();
        let writing = registry.writing(&"10.0.0.1".into(), &kick, &share).unwrap();
        let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
        let flood = {
            let outbound = outbound.clone();
            tokio::spawn(async move {
                ended_rx.await.unwrap();
                drop(writing);
                drop(share);
                let mut next = outbound.share();
                next.try_grow(FREE_BUFFER + (512 << 10)).is_ok()
            })
        };
        let mut sending = outbound.share();
        let wanted = FREE_BUFFER + (768 << 10);
        assert!(sending.try_grow(wanted).is_err(), "the budget is full");
        let claim = registry.make_room("10.0.0.2", 1, &mut sending, wanted, || ());
        tokio::pin!(claim);
        // The claimant waits for room; the writer's reply ends meanwhile.
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut claim)
            .await
            .is_err());
        ended_tx.send(()).unwrap();
        assert!(claim.await, "the reply got what the ended one gave back");
        assert!(
            !flood.await.unwrap(),
            "the flood's next reply found the room already taken"
        );
        assert!(!kick.is_cancelled(), "a moving writer is never closed");
    }

    #[tokio::test]
    async fn one_reply_at_a_time_waits_for_room_fewer_places_or_bytes_first() {
        let registry = StalledWriters::new();
        let outbound = budget(1 << 20);
        // The budget is held, by nobody the registry knows of (say,
        // replies of an address being encoded): no room will come.
        let mut held = outbound.share();
        held.try_grow(FREE_BUFFER + (1 << 20)).unwrap();
        let wanted = FREE_BUFFER + 1024;
        // A reply to an address holding four places waits.
        let mut first_sending = outbound.share();
        let first = registry.make_room("10.0.0.1", 4, &mut first_sending, wanted, || ());
        tokio::pin!(first);
        assert!(tokio::time::timeout(Duration::from_millis(20), &mut first)
            .await
            .is_err());
        // A reply as large to an address holding as many places (or a
        // larger one, or one to an address holding more) is refused at
        // once, while the first waits.
        for (places, bytes) in [(4, wanted), (4, 2 * wanted), (5, FREE_BUFFER)] {
            let mut sending = outbound.share();
            let started = tokio::time::Instant::now();
            assert!(
                !registry
                    .make_room("10.0.0.2", places, &mut sending, bytes, || ())
                    .await
            );
            assert!(started.elapsed() < ROOM_WAIT);
        }
        // One to an address holding fewer places takes its place (as would
        // a smaller one to an address holding as many): the first is
        // refused at once, and the newcomer gets the room that comes.
        let second = {
            let registry = registry.clone();
            let mut sending = outbound.share();
            tokio::spawn(async move {
                registry
                    .make_room("10.0.0.3", 1, &mut sending, wanted, || ())
                    .await
            })
        };
        let started = tokio::time::Instant::now();
        assert!(!first.await, "the first claimant was displaced");
        assert!(started.elapsed() < ROOM_WAIT);
        drop(held);
        assert!(second.await.unwrap(), "the newcomer got the room");
    }

    #[test]
    fn a_claim_goes_to_fewer_places_then_fewer_bytes_and_stays_on_a_tie() {
        let registry = StalledWriters::new();
        let first = registry.claim((4, 100)).expect("the place is free");
        assert!(registry.claim((4, 100)).is_none(), "a tie stays");
        assert!(registry.claim((5, 1)).is_none(), "more places wait");
        let smaller = registry.claim((4, 50)).expect("fewer bytes go first");
        assert!(first.displaced.is_cancelled());
        let fewer = registry.claim((3, 1 << 20)).expect("fewer places go first");
        assert!(smaller.displaced.is_cancelled());
        // A displaced claim given up leaves the place to who holds it.
        drop((first, smaller));
        assert!(registry.claim((3, 1 << 20)).is_none());
        drop(fewer);
        assert!(registry.claim((9, 9)).is_some(), "given up: free again");
    }
}
