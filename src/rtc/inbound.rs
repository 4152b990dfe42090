//! The places other peers' connections hold on this node: at most
//! `max_peers` peer connections, offers being answered included, under
//! the admission rule every cap of babble-net shares
//! ([`babble_net_core::places`]): at the cap, the place least recently
//! used by a reply, among the sources holding the most, makes room.
//!
//! A place is admitted under the offer's source (the caller's address as
//! the signaling router gave it, else its `from`) and moved to the peer's
//! address on the link once it connects (the remote side of the pair ICE
//! selected), so that IDs or keys made up behind one address share that
//! address's places. A connection that does not connect within the
//! connect timeout is closed. A peer whose offers are signed holds at
//! most [`PER_PEER`]: its oldest is closed once a newer one connects, so
//! an offer that never connects (a replay, an impostor without the peer's
//! DTLS key) cannot close a live one; an unsigned `from` is only a claim
//! and never touches another connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babble_net_core::places::{Activity, Places};
use babble_net_core::source::source_address;
use tokio_util::sync::CancellationToken;

use super::engine::PeerLink;

/// Peer connections one peer with signed offers may hold: the live one
/// and the one replacing it.
pub(super) const PER_PEER: usize = 2;

/// The inbound connections and their places; see the [module docs](self).
pub(super) struct InboundLinks {
    max_peers: usize,
    places: Places,
    /// The connections added, by place; a place admitted and not yet in
    /// here is an offer being answered.
    links: HashMap<u64, Held>,
    /// Cancelled when the layer closes: every place's token is its child.
    shutdown: CancellationToken,
}

/// A peer connection another peer opened to us.
struct Held {
    /// The offer's `from`.
    peer: String,
    /// Whether `from` signed the offer (else it is only a claim).
    signed: bool,
    link: PeerLink,
    /// Evicts the place (closing the connection).
    kick: CancellationToken,
}

/// A place held for the connection an offer is being answered with;
/// given back when dropped unless the connection is added.
pub(super) struct Place {
    inbound: Arc<Mutex<InboundLinks>>,
    id: u64,
    kick: CancellationToken,
    activity: Arc<Activity>,
    added: bool,
}

impl InboundLinks {
    /// Room for `max_peers` connections; `shutdown` closes them all.
    pub(super) fn new(max_peers: usize, shutdown: CancellationToken) -> InboundLinks {
        InboundLinks {
            max_peers,
            places: Places::new(max_peers, max_peers),
            links: HashMap::new(),
            shutdown,
        }
    }

    /// Connections added (offers being answered not counted).
    pub(super) fn count(&self) -> usize {
        self.links.len()
    }

    /// Closes and forgets failed or closed connections.
    pub(super) fn prune(&mut self) {
        let dead: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, held)| !held.link.is_usable())
            .map(|(id, _)| *id)
            .collect();
        for id in dead {
            self.forget(id);
        }
    }

    /// Every connection, forgotten (the layer is closing).
    pub(super) fn drain(&mut self) -> Vec<PeerLink> {
        let ids: Vec<u64> = self.links.keys().copied().collect();
        for id in &ids {
            self.places.release(*id);
        }
        self.links.drain().map(|(_, held)| held.link).collect()
    }

    /// Forgets place `id` and closes its connection (its watcher does, on
    /// the kick).
    fn forget(&mut self, id: u64) {
        self.places.release(id);
        if let Some(held) = self.links.remove(&id) {
            held.kick.cancel();
        }
    }

    /// The oldest connection `peer`'s signed offers hold, when they hold
    /// [`PER_PEER`] already.
    fn oldest_signed(&self, peer: &str) -> Option<u64> {
        let mut signed: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, held)| held.signed && held.peer == peer)
            .map(|(id, _)| *id)
            .collect();
        signed.sort_unstable();
        (signed.len() >= PER_PEER).then(|| signed[0])
    }
}

impl Place {
    /// Holds a place for a connection offered from `source` (pruning dead
    /// connections first when full; at the cap the rule of
    /// [`babble_net_core::places`] makes room). `None` only if the
    /// layer is closed.
    pub(super) fn hold(inbound: &Arc<Mutex<InboundLinks>>, source: &str) -> Option<Place> {
        let mut links = inbound.lock().expect("inbound lock");
        if links.shutdown.is_cancelled() {
            return None;
        }
        if links.places.held() >= links.max_peers {
            // A failed connection makes room without evicting anyone.
            links.prune();
        }
        let kick = links.shutdown.child_token();
        let (id, kick, activity) = links.places.admit(source, Instant::now(), kick).slot?;
        // The evicted place's connection, if any, closes on its kick.
        let evicted: Vec<u64> = links
            .links
            .iter()
            .filter(|(_, held)| held.kick.is_cancelled())
            .map(|(id, _)| *id)
            .collect();
        for id in evicted {
            links.forget(id);
        }
        Some(Place {
            inbound: inbound.clone(),
            id,
            kick,
            activity,
            added: false,
        })
    }

    /// Where the connection's replies say it was used: the cap evicts the
    /// least recently used.
    pub(super) fn activity(&self) -> Arc<Activity> {
        self.activity.clone()
    }

    /// Adds `link`, offered by `peer` (`signed` if its signature was
    /// checked), in this place; closes it instead if the place was
    /// evicted meanwhile or the layer closed. The connection is watched:
    /// closed when its place is evicted, or when it does not connect
    /// within `connect_timeout`; once connected, its place moves to the
    /// peer's address on it, and a signed peer's oldest connection beyond
    /// [`PER_PEER`] is closed.
    pub(super) fn fill(
        mut self,
        peer: String,
        signed: bool,
        link: PeerLink,
        connect_timeout: Duration,
    ) {
        let mut links = self.inbound.lock().expect("inbound lock");
        if self.kick.is_cancelled() {
            // Evicted while answering: dropped, the link closes.
            return;
        }
        let replaces = match signed {
            true => links.oldest_signed(&peer),
            false => None,
        };
        links.links.insert(
            self.id,
            Held {
                peer,
                signed,
                link: link.clone(),
                kick: self.kick.clone(),
            },
        );
        self.added = true;
        drop(links);
        let (inbound, id, kick) = (self.inbound.clone(), self.id, self.kick.clone());
        tokio::spawn(watch(inbound, id, kick, link, replaces, connect_timeout));
    }
}

/// Follows the connection in place `id` until its place goes (evicted,
/// pruned, replaced, or the layer closed), then closes it.
async fn watch(
    inbound: Arc<Mutex<InboundLinks>>,
    id: u64,
    kick: CancellationToken,
    link: PeerLink,
    replaces: Option<u64>,
    connect_timeout: Duration,
) {
    let connected = tokio::select! {
        connected = tokio::time::timeout(connect_timeout, link.connected()) => {
            connected.unwrap_or(false)
        }
        _ = kick.cancelled() => false,
    };
    if connected {
        link.learn_remote_address().await;
    }
    {
        let mut links = inbound.lock().expect("inbound lock");
        if !connected {
            links.forget(id);
        } else {
            // Known from the connection: its place counts there now.
            if let Some(address) = link.remote_address() {
                let source = source_address("", Some(address));
                links.places.move_to(id, &source);
            }
            if let Some(oldest) = replaces {
                links.forget(oldest);
            }
        }
    }
    kick.cancelled().await;
    link.close().await;
}

impl Drop for Place {
    fn drop(&mut self) {
        if !self.added {
            let mut links = self.inbound.lock().expect("inbound lock");
            links.places.release(self.id);
        }
    }
}
