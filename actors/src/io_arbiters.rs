//! The arbiters (threads) a transport's I/O and codec work runs on, so
//! that decoding a large frame never stalls the node's own arbiter.
//!
//! The transports of one actix system share one set: `count` arbiters,
//! started when the first transport asks and stopped when the last one is
//! dropped. Work is placed by key (a peer's connections on one arbiter,
//! different peers spread over all) or round robin. A count of zero keeps
//! everything on the caller's arbiter.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use actix_rt::{Arbiter, ArbiterHandle};
use bytes::BytesMut;

/// Buffers up to this size grow in place in [`IoArbiters::grow`]: copying
/// them takes less than a millisecond.
const GROW_HERE: usize = 4 * 1024 * 1024;

/// Whether copying into a buffer of `capacity` bytes is worth a hand-off.
fn copy_is_large(capacity: usize) -> bool {
    capacity > 2 * GROW_HERE
}

/// See the [module docs](self).
pub struct IoArbiters {
    arbiters: Vec<Arbiter>,
    handles: Vec<ArbiterHandle>,
    /// The arbiter of whoever created the set, used when `count` is 0.
    home: ArbiterHandle,
    next: AtomicUsize,
    /// Randomly keyed hashing for [`IoArbiters::for_key`].
    placement: RandomState,
}

/// The live set of each actix system, by system ID and size.
type Registry = Mutex<HashMap<(usize, usize), Weak<IoArbiters>>>;

fn registry() -> &'static Registry {
    static REGISTRY: std::sync::OnceLock<Registry> = std::sync::OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl IoArbiters {
    /// The set of `count` arbiters of the current actix system, started if
    /// needed. Must be called inside an actix system.
    pub fn shared(count: usize) -> Arc<IoArbiters> {
        if count == 0 {
            // Nothing to share: work stays on this caller's own arbiter.
            return Arc::new(IoArbiters {
                arbiters: Vec::new(),
                handles: Vec::new(),
                home: Arbiter::current(),
                next: AtomicUsize::new(0),
                placement: RandomState::new(),
            });
        }
        let key = (actix_rt::System::current().id(), count);
        let mut live = registry().lock().expect("registry lock");
        live.retain(|_, set| set.strong_count() > 0);
        if let Some(set) = live.get(&key).and_then(Weak::upgrade) {
            return set;
        }
        let arbiters: Vec<Arbiter> = (0..count).map(|_| Arbiter::new()).collect();
        let set = Arc::new(IoArbiters {
            handles: arbiters.iter().map(Arbiter::handle).collect(),
            arbiters,
            home: Arbiter::current(),
            next: AtomicUsize::new(0),
            placement: RandomState::new(),
        });
        live.insert(key, Arc::downgrade(&set));
        set
    }

    /// The arbiter for work keyed by `key`: always the same one for a key.
    pub fn for_key(&self, key: &str) -> &ArbiterHandle {
        if self.handles.is_empty() {
            return &self.home;
        }
        &self.handles[self.index_for_key(key)]
    }

    /// The position in [`arbiters`](Self::arbiters) of the arbiter
    /// [`for_key`](Self::for_key) picks (0 when the set is empty), for
    /// work kept per arbiter.
    pub fn index_for_key(&self, key: &str) -> usize {
        // Keyed with this process's random keys: a peer cannot choose IDs
        // that land on the thread of a given honest peer.
        let hash = self.placement.hash_one(key);
        hash as usize % self.handles.len().max(1)
    }

    /// Every arbiter of the set, in a fixed order (none when work stays on
    /// the caller's arbiter).
    pub fn arbiters(&self) -> &[ArbiterHandle] {
        &self.handles
    }

    /// The next arbiter, round robin.
    pub fn next(&self) -> &ArbiterHandle {
        if self.handles.is_empty() {
            return &self.home;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[at % self.handles.len()]
    }

    /// Runs `work` and returns its result: on the caller's thread when it
    /// is not `large` (a hand-off costs more than small work) or the set is
    /// empty, else on the next arbiter of the set while the caller's thread
    /// is free for other tasks. For CPU work that would stall the caller's
    /// thread, such as parsing or encoding a large frame. Fails only when
    /// the arbiters have stopped (the transport is closing). If the caller
    /// stops waiting before the work starts, it never runs: it is dropped
    /// there, and whatever it captured with it.
    pub async fn run<T, F>(&self, large: bool, work: F) -> std::io::Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        if !large || self.handles.is_empty() {
            return Ok(work());
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let sent = self.next().spawn_fn(move || {
            // Work whose caller has gone (a connection evicted while its
            // reply waited here, say) is dropped unrun, with what it holds.
            if !tx.is_closed() {
                let _ = tx.send(work());
            }
        });
        match sent {
            true => rx.await.map_err(|_| stopped()),
            false => Err(stopped()),
        }
    }

    /// Makes room in `buf`, which holds part of a large frame, for at least
    /// as many bytes again (see [`grow_to`](Self::grow_to)).
    pub async fn grow(&self, buf: &mut BytesMut) -> std::io::Result<()> {
        self.grow_to(buf, Self::grown_capacity(buf.len())).await
    }

    /// The capacity [`grow`](Self::grow) gives a buffer holding `len`
    /// bytes: twice that, and at least 64 KiB more.
    pub fn grown_capacity(len: usize) -> usize {
        len.saturating_mul(2).max(len.saturating_add(64 * 1024))
    }

    /// Moves what `buf` holds into a buffer of exactly `capacity` bytes
    /// (at least its length), so that whoever pays for buffers knows the
    /// cost before it is made: both buffers exist during the copy. Beyond
    /// 4 MiB the copy (tens of milliseconds for a frame of tens of MB)
    /// runs on an I/O arbiter, so the caller's thread is free meanwhile
    /// (on the caller's thread when the set is empty). Fails, leaving
    /// `buf` empty, only when the arbiters have stopped (the transport is
    /// closing).
    pub async fn grow_to(&self, buf: &mut BytesMut, capacity: usize) -> std::io::Result<()> {
        let capacity = capacity.max(buf.len());
        let old = std::mem::take(buf);
        let copy = move || {
            let mut bigger = BytesMut::with_capacity(capacity);
            bigger.extend_from_slice(&old);
            bigger
        };
        // Below 4 MiB a copy is cheaper than a hand-off.
        *buf = self.run(copy_is_large(capacity), copy).await?;
        Ok(())
    }

    /// Arbiters in the set.
    pub fn len(&self) -> usize {
        self.handles.len()
    }

    /// Whether work stays on the caller's arbiter.
    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

/// The error of work handed to arbiters that have stopped.
fn stopped() -> std::io::Error {
    std::io::Error::other("the I/O threads stopped")
}

impl Drop for IoArbiters {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
