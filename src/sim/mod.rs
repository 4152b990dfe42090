//! A simulated network for [`InmemTransport`]s: links with delay, jitter,
//! loss and a bandwidth limit, and partitions set and healed at run time,
//! all drawn from one seed.
//!
//! Build the network, ask it for a transport per node, and run your nodes
//! on them as they would run on TCP; every node reaches every other by its
//! address, without [`InmemTransport::connect`]:
//!
//! ```
//! use std::time::Duration;
//! use babble_net::sim::{Link, SimNetwork};
//! use babble_net::{Config, Response, SyncRequest, SyncResponse, Transport};
//! use futures::StreamExt;
//!
//! # actix_rt::System::new().block_on(async {
//! let wan = Link::default().latency(Duration::from_millis(20)).loss(0.01);
//! let config = Config { timeout: Duration::from_millis(500), ..Config::default() };
//! let net = SimNetwork::new(42).with_link(wan).with_config(config);
//! let nodes = net.nodes(3); // at "node0", "node1", "node2"
//! for node in &nodes {
//!     let mut rpcs = node.consumer();
//!     actix_rt::spawn(async move {
//!         while let Some(rpc) = rpcs.next().await {
//!             rpc.respond(Ok(Response::Sync(SyncResponse::default())));
//!         }
//!     });
//! }
//! // Two trips of about 20 ms; a lost request or reply (1% each way)
//! // would fail the call with a timeout.
//! assert!(nodes[0].sync("node1", SyncRequest::default()).await.is_ok());
//!
//! // Node 2 cut off from the others, then back.
//! net.partition([vec!["node0", "node1"], vec!["node2"]]);
//! let cut = nodes[0].sync("node2", SyncRequest::default()).await;
//! assert!(cut.unwrap_err().is_timeout());
//! net.heal();
//! assert!(nodes[0].sync("node2", SyncRequest::default()).await.is_ok());
//! # });
//! ```
//!
//! What a node sees is what it would see on a real network: a lost
//! request or reply, or one sent across a partition, makes the call fail
//! with [`TransportError::Timeout`](crate::TransportError::Timeout) after
//! the call's timeout (a lost reply's request was still served, as on a
//! real network). To crash a node, close its transport (calls that reach
//! it are refused); to restart it, ask the network for a transport with
//! the same address.
//!
//! Replaying: each direction of each link draws from its own random
//! sequence, derived from the seed and the two addresses, in the order its
//! messages are sent. A run whose nodes send in the same order (one thread,
//! deterministic node code) meets the same losses and delays; with nodes on
//! several threads the order of sends, and so the draws, can vary.
//!
//! Cost: a message costs a timer when its link has a delay, a lock on its
//! link, and with a bandwidth limit an encoding to learn its size. Memory
//! grows with the links used (a few dozen bytes each), not with traffic.

mod link;
mod partition;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use slog::Logger;

pub use link::Link;
use link::{Fate, LinkState};
use partition::Partition;

use crate::inmem::{Network, Route};
use crate::{logging, Config, InmemTransport};

/// Link states are kept in this many independently locked shards, so that
/// nodes on different threads rarely wait for each other.
const SHARDS: usize = 64;

/// See the [module docs](self). Clones share the same network.
#[derive(Clone)]
pub struct SimNetwork {
    shared: Arc<Shared>,
    /// The configuration of the transports made from now on.
    config: Config,
    log: Logger,
}

/// Counts of the messages (requests and replies) a network has carried.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages that arrived.
    pub delivered: u64,
    /// Messages lost at random (the links' `loss`).
    pub lost: u64,
    /// Messages sent across a partition, or in flight when it was set.
    pub cut: u64,
}

/// What the transports of one network share.
pub(crate) struct Shared {
    seed: u64,
    default_link: RwLock<Link>,
    /// Links that differ from the default: from → to → link.
    links: RwLock<HashMap<String, HashMap<String, Link>>>,
    partition: RwLock<Partition>,
    /// Every node's transport, by address.
    nodes: RwLock<HashMap<String, Route>>,
    /// The state of each direction of each link used: from → to → state,
    /// sharded by `from`.
    states: Vec<Mutex<HashMap<String, HashMap<String, LinkState>>>>,
    delivered: AtomicU64,
    lost: AtomicU64,
    cut: AtomicU64,
}

impl SimNetwork {
    /// A network of perfect links whose random draws all come from `seed`.
    pub fn new(seed: u64) -> SimNetwork {
        SimNetwork {
            shared: Arc::new(Shared {
                seed,
                default_link: RwLock::new(Link::default()),
                links: RwLock::new(HashMap::new()),
                partition: RwLock::new(Partition::default()),
                nodes: RwLock::new(HashMap::new()),
                states: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                delivered: AtomicU64::new(0),
                lost: AtomicU64::new(0),
                cut: AtomicU64::new(0),
            }),
            config: Config::default(),
            log: logging::discard(),
        }
    }

    /// This network, making its transports with `config`'s timeouts and
    /// consumer buffer (the default configuration otherwise).
    pub fn with_config(self, config: Config) -> SimNetwork {
        SimNetwork { config, ..self }
    }

    /// This network, giving its transports `log` (no logging otherwise).
    pub fn with_log(self, log: Logger) -> SimNetwork {
        SimNetwork { log, ..self }
    }

    /// This network with every link (in each direction) like `link`.
    pub fn with_link(self, link: Link) -> SimNetwork {
        self.set_default_link(link);
        self
    }

    /// Makes every link not set with [`set_link`](Self::set_link) like
    /// `link`, from now on.
    pub fn set_default_link(&self, link: Link) {
        *write(&self.shared.default_link) = link;
    }

    /// Makes the link from `from` to `to` (that direction only) like
    /// `link`, from now on.
    pub fn set_link(&self, from: &str, to: &str, link: Link) {
        write(&self.shared.links)
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned(), link);
    }

    /// A transport for the node at `addr`, reaching every other node of
    /// the network by its address. A transport already at `addr` is
    /// replaced (a node restarting).
    pub fn node(&self, addr: impl Into<String>) -> InmemTransport {
        let addr = addr.into();
        let transport = InmemTransport::on_network(
            addr.clone(),
            &self.config,
            self.log.clone(),
            self.shared.clone(),
        );
        write(&self.shared.nodes).insert(addr, Route::to(&transport));
        transport
    }

    /// Transports for `count` nodes, at `node0`, `node1`, ...
    pub fn nodes(&self, count: usize) -> Vec<InmemTransport> {
        (0..count).map(|i| self.node(format!("node{i}"))).collect()
    }

    /// Splits the network: nodes in different groups no longer reach each
    /// other, and nodes named in no group form one more group together.
    /// Replaces any earlier partition. Messages in flight across the new
    /// cut are lost.
    pub fn partition<G, A>(&self, groups: impl IntoIterator<Item = G>)
    where
        G: IntoIterator<Item = A>,
        A: Into<String>,
    {
        *write(&self.shared.partition) = Partition::new(groups);
    }

    /// Ends any partition: every node reaches every other again.
    pub fn heal(&self) {
        *write(&self.shared.partition) = Partition::default();
    }

    /// Messages carried so far.
    pub fn stats(&self) -> SimStats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SimStats {
            delivered: get(&self.shared.delivered),
            lost: get(&self.shared.lost),
            cut: get(&self.shared.cut),
        }
    }
}

impl Network for Shared {
    fn route(&self, addr: &str) -> Option<Route> {
        read(&self.nodes).get(addr).cloned()
    }

    fn carry<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        size: &'a (dyn Fn() -> usize + Sync),
    ) -> futures::future::BoxFuture<'a, bool> {
        Box::pin(self.carry_message(from, to, size))
    }
}

impl Shared {
    /// See [`Network::carry`].
    async fn carry_message(&self, from: &str, to: &str, size: &(dyn Fn() -> usize + Sync)) -> bool {
        if read(&self.partition).separates(from, to) {
            self.cut.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let link = self.link(from, to);
        let bytes = if link.needs_size() { size() } else { 0 };
        let now = tokio::time::Instant::now();
        let fate = {
            let mut shard = self.states[shard_of(from)].lock().expect("link state lock");
            let state = match shard.get_mut(from).and_then(|tos| tos.get_mut(to)) {
                Some(state) => state,
                None => shard
                    .entry(from.to_owned())
                    .or_default()
                    .entry(to.to_owned())
                    .or_insert_with(|| LinkState::new(link_seed(self.seed, from, to))),
            };
            state.send(&link, bytes, now)
        };
        let arrives = match fate {
            Fate::Lost => {
                self.lost.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Fate::Arrives(at) => at,
        };
        if arrives > now {
            tokio::time::sleep_until(arrives).await;
            // A partition set while the message was on its way cuts it.
            if read(&self.partition).separates(from, to) {
                self.cut.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        }
        self.delivered.fetch_add(1, Ordering::Relaxed);
        true
    }

    fn link(&self, from: &str, to: &str) -> Link {
        if let Some(link) = read(&self.links).get(from).and_then(|tos| tos.get(to)) {
            return *link;
        }
        *read(&self.default_link)
    }
}

/// The seed of the link from `from` to `to`: FNV-1a over the network's
/// seed and both addresses, so that it is the same on every run and every
/// platform.
fn link_seed(seed: u64, from: &str, to: &str) -> u64 {
    let mut hash = fnv1a(0xcbf2_9ce4_8422_2325, &seed.to_le_bytes());
    hash = fnv1a(hash, from.as_bytes());
    // A separator, so that ("ab", "c") and ("a", "bc") differ.
    hash = fnv1a(hash, &[0xff]);
    fnv1a(hash, to.as_bytes())
}

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

fn shard_of(from: &str) -> usize {
    (fnv1a(0xcbf2_9ce4_8422_2325, from.as_bytes()) % SHARDS as u64) as usize
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_seeds_differ_by_direction_and_split() {
        assert_ne!(link_seed(1, "a", "b"), link_seed(1, "b", "a"));
        assert_ne!(link_seed(1, "ab", "c"), link_seed(1, "a", "bc"));
        assert_ne!(link_seed(1, "a", "b"), link_seed(2, "a", "b"));
        assert_eq!(link_seed(1, "a", "b"), link_seed(1, "a", "b"));
    }
}
