//! The arbiters (threads) a transport's I/O and codec work runs on, so
//! that decoding a large frame never stalls the node's own arbiter.
//!
//! The transports of one actix system share one set: `count` arbiters,
//! started when the first transport asks and stopped when the last one is
//! dropped. Work is placed by key (a peer's connections on one arbiter,
//! different peers spread over all) or round robin. A count of zero keeps
//! everything on the caller's arbiter.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use actix_rt::{Arbiter, ArbiterHandle};

/// See the [module docs](self).
pub struct IoArbiters {
    arbiters: Vec<Arbiter>,
    handles: Vec<ArbiterHandle>,
    /// The arbiter of whoever created the set, used when `count` is 0.
    home: ArbiterHandle,
    next: AtomicUsize,
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
        });
        live.insert(key, Arc::downgrade(&set));
        set
    }

    /// The arbiter for work keyed by `key`: always the same one for a key.
    pub fn for_key(&self, key: &str) -> &ArbiterHandle {
        if self.handles.is_empty() {
            return &self.home;
        }
        let mut hasher = DefaultHasher::new();
        key.hash(&mut hasher);
        &self.handles[hasher.finish() as usize % self.handles.len()]
    }

    /// The next arbiter, round robin.
    pub fn next(&self) -> &ArbiterHandle {
        if self.handles.is_empty() {
            return &self.home;
        }
        let at = self.next.fetch_add(1, Ordering::Relaxed);
        &self.handles[at % self.handles.len()]
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

impl Drop for IoArbiters {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}
