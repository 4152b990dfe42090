//! The listening side of QUIC: which handshakes are taken, which
//! connections stay, and their streams handed to the Listener.
//!
//! * Handshakes in progress are places too: at most four times
//!   `max_handshakes` at once, at most [`handshakes_per_source`] from one
//!   source address. While more than `max_handshakes` are in progress, a
//!   new one from an address that has not proved it receives packets is
//!   sent a stateless Retry (spoofed sources never get further), and an
//!   unproved address never takes another's place. A proved newcomer at a
//!   cap takes the place of the oldest handshake of the source holding the
//!   most (its own, at its source's cap), which is dropped: one address
//!   finishing no handshakes locks nobody else out.
//! * One source address may start [`handshakes_per_source`] handshakes
//!   at once and as many a second after that ([`super::handshake_rate`]):
//!   a closed connection drains for seconds, keeping its state, so a
//!   source evicting its own connections as fast as it can connect would
//!   otherwise pile them up. The connections open or closing are bounded
//!   too (`connection_states`); beyond it newcomers are refused.
//! * A handshake must finish within `handshake_timeout`; its certificate
//!   must prove a node key (see [`super::tls`]), one of the peer set
//!   unless any key is accepted.
//! * Connections are places under `max_connections`, at most
//!   `max_connections_per_source` per source address, with the rule of
//!   every other cap ([`babble_net_core::places`]): a newcomer evicts the
//!   least recently used connection of the source holding the most.
//! * A connection with its place may be lent large flow-control windows
//!   ([`super::windows`]), at most two per source at a time.
//! * Each stream a peer opens (at most `max_streams` at once per
//!   connection, QUIC's own flow control) reaches the Listener as an
//!   inbound connection carrying the verified key: taken in at once on
//!   its lane's thread, where the Listener's places and budgets apply to
//!   it, when the layer has I/O threads; else through a hand-off of
//!   [`ACCEPTED_STREAMS`](super::ACCEPTED_STREAMS), and while that is
//!   full no more streams are taken. A connection counts as
//!   used when one of its calls is answered, not when a stream opens, so
//!   opening streams keeps no place fresh.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_core::identity::PeerKey;
use babble_net_core::places::{Activity, Places};
use babble_net_core::secure::Acceptance;
use babble_net_core::source::source_address;
use babble_net_core::stream::{Inbound, TakeInbound};
use quinn::{Connection, Endpoint, Incoming, VarInt};
use slog::{debug, warn, Logger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::handshake_rate::{HandshakeRate, Verdict};
use super::lanes::Lane;
use super::stream::QuicStream;
use super::windows::LargeWindows;
use super::{tls, Closed, QuicLimits};

/// What the accepting side shares between its tasks (on every lane).
pub(super) struct Acceptor {
    /// Every lane's accepting endpoint.
    endpoints: Vec<Endpoint>,
    pub(super) limits: QuicLimits,
    pub(super) accept: Acceptance,
    /// Where streams go to the Listener, unless it takes them where they
    /// are driven (through `take`).
    pub(super) streams: mpsc::Sender<Inbound>,
    /// The Listener's hand, once it takes streams on the lanes' threads.
    pub(super) take: OnceLock<TakeInbound>,
    pub(super) shutdown: CancellationToken,
    pub(super) log: Logger,
    /// Handshakes in progress, as places.
    handshakes: Mutex<Places>,
    /// How fast each source starts handshakes.
    rate: Mutex<HandshakeRate>,
    places: Mutex<Places>,
    /// Large flow-control windows lent to a few sources.
    windows: Arc<LargeWindows>,
}

impl Acceptor {
    pub(super) fn new(
        endpoints: Vec<Endpoint>,
        limits: QuicLimits,
        accept: Acceptance,
        streams: mpsc::Sender<Inbound>,
        shutdown: CancellationToken,
        log: Logger,
    ) -> Acceptor {
        crate::metrics::quic_listener_started();
        let places = Places::new(limits.max_connections, limits.max_connections_per_source);
        let handshakes = Places::new(
            limits.max_handshakes.saturating_mul(4),
            handshakes_per_source(&limits),
        );
        let windows = LargeWindows::new(&limits);
        let rate = HandshakeRate::new(handshakes_per_source(&limits));
        Acceptor {
            endpoints,
            take: OnceLock::new(),
            limits,
            accept,
            streams,
            shutdown,
            log,
            handshakes: Mutex::new(handshakes),
            rate: Mutex::new(rate),
            places: Mutex::new(places),
            windows,
        }
    }

    /// Inbound connections lent large windows now.
    pub(super) fn large_windows(&self) -> usize {
        self.windows.lent()
    }

    /// Inbound connections held now.
    pub(super) fn connections(&self) -> usize {
        self.places.lock().expect("places lock").held()
    }

    /// Handshakes in progress now.
    pub(super) fn handshakes(&self) -> usize {
        self.handshakes.lock().expect("handshakes lock").held()
    }

    /// Connections the accepting endpoints hold, open or closing.
    fn open_connections(&self) -> usize {
        self.endpoints.iter().map(Endpoint::open_connections).sum()
    }
}

/// Starts each lane's accept loop on its thread: within the thread's
/// arbiter when the layer has I/O threads, so that streams can be handed
/// to the Listener there; else on this thread's runtime, handing streams
/// over through the layer's queue.
pub(super) fn start(acceptor: &Arc<Acceptor>, lanes: &[Lane], io: &IoArbiters) {
    for (at, lane) in lanes.iter().enumerate() {
        let Some(endpoint) = lane.accepting.clone() else {
            continue;
        };
        match io.arbiters().get(at) {
            Some(arbiter) => {
                arbiter.spawn(accept_loop(acceptor.clone(), endpoint, true));
            }
            None => lane
                .runtime
                .spawn(accept_loop(acceptor.clone(), endpoint, false)),
        }
    }
}

/// Handshakes one source address may have in progress at once: a quarter
/// of `max_handshakes` (16 by default), at least one.
pub fn handshakes_per_source(limits: &QuicLimits) -> usize {
    (limits.max_handshakes / 4).max(1)
}

/// Takes `endpoint`'s handshakes until it or the transport closes; runs
/// on its lane's thread, as does every task it starts. Run `local`ly
/// (within an arbiter's local set), a handshake's task is too, so that its
/// streams can be handed to the Listener there.
async fn accept_loop(acceptor: Arc<Acceptor>, endpoint: Endpoint, local: bool) {
    loop {
        let incoming = tokio::select! {
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => return,
            },
            _ = acceptor.shutdown.cancelled() => return,
        };
        // Closed connections drain in the endpoint, keeping their state:
        // when open and closing ones reach their bound, nobody starts.
        if acceptor.open_connections() >= acceptor.limits.connection_states {
            crate::metrics::quic_refused("states");
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        let source = source_address("", Some(remote));
        let kick = acceptor.shutdown.child_token();
        let admission = {
            let mut handshakes = acceptor.handshakes.lock().expect("handshakes lock");
            let validated = incoming.remote_address_validated();
            let busy = handshakes.held() >= acceptor.limits.max_handshakes;
            // An address not yet proved may be spoofed: it is sent a Retry
            // when handshakes are many, and never takes another's place.
            let verdict = match !validated && (busy || handshakes.would_shed(&source).is_some()) {
                true => Verdict::Validate,
                false => (acceptor.rate.lock().expect("rate lock")).check(
                    &source,
                    validated,
                    Instant::now(),
                ),
            };
            match verdict {
                Verdict::Start => handshakes.admit(&source, Instant::now(), kick),
                Verdict::Validate if incoming.may_retry() => {
                    drop(handshakes);
                    crate::metrics::quic_refused("retry");
                    let _ = incoming.retry();
                    continue;
                }
                Verdict::Validate | Verdict::Refuse => {
                    drop(handshakes);
                    crate::metrics::quic_refused("handshake_rate");
                    incoming.refuse();
                    continue;
                }
            }
        };
        let Some((id, kick, _)) = admission.slot else {
            crate::metrics::quic_refused("handshakes");
            incoming.refuse();
            continue;
        };
        if admission.shed.is_some() {
            crate::metrics::quic_refused("handshake_shed");
            debug!(acceptor.log, "dropped a QUIC handshake in progress for a newcomer";
                "source" => &source);
        }
        let handshaking = Handshaking {
            acceptor: acceptor.clone(),
            id,
        };
        let handshake = handshake(acceptor.clone(), incoming, handshaking, kick);
        match local {
            true => drop(tokio::task::spawn_local(handshake)),
            false => drop(tokio::spawn(handshake)),
        }
    }
}

/// A handshake's place, given back when dropped.
struct Handshaking {
    acceptor: Arc<Acceptor>,
    id: u64,
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        (self.acceptor.handshakes.lock())
            .expect("handshakes lock")
            .release(self.id);
    }
}

async fn handshake(
    acceptor: Arc<Acceptor>,
    incoming: Incoming,
    handshaking: Handshaking,
    kick: CancellationToken,
) {
    let remote = incoming.remote_address();
    let log = acceptor.log.new(slog::o!("peer" => remote.to_string()));
    let connecting = match incoming.accept() {
        Ok(connecting) => connecting,
        Err(err) => return debug!(log, "QUIC handshake failed"; "error" => %err),
    };
    let timeout = acceptor.limits.handshake_timeout;
    // Dropping `connecting` (evicted, or too slow) abandons the handshake.
    let connected = tokio::select! {
        biased;
        _ = kick.cancelled() => return debug!(log, "QUIC handshake dropped for a newcomer"),
        connected = tokio::time::timeout(timeout, connecting) => connected,
    };
    let connection = match connected {
        Ok(Ok(connection)) => connection,
        Ok(Err(err)) => {
            // A certificate refused by the checks fails here, in TLS.
            crate::metrics::quic_refused("handshake");
            return warn!(log, "QUIC handshake failed"; "error" => %err);
        }
        Err(_) => {
            crate::metrics::quic_refused("timeout");
            return debug!(log, "no QUIC handshake within the handshake timeout"; "timeout" => ?timeout);
        }
    };
    drop(handshaking);
    let key = match tls::peer_key(&connection) {
        Ok(key) => key,
        Err(err) => {
            crate::metrics::quic_refused("certificate");
            Closed::Certificate.close(&connection);
            return warn!(log, "refusing a QUIC peer"; "error" => %err);
        }
    };
    if let Acceptance::Only(keys) = &acceptor.accept {
        if !keys.contains(&key) {
            crate::metrics::quic_refused("not_a_peer");
            Closed::NotAPeer.close(&connection);
            return warn!(log, "refusing a QUIC peer: not one of this node's peers"; "key" => %key);
        }
    }
    let source = source_address("", Some(remote));
    let kick = acceptor.shutdown.child_token();
    let admission =
        acceptor
            .places
            .lock()
            .expect("places lock")
            .admit(&source, Instant::now(), kick);
    let Some((id, kick, activity)) = admission.slot else {
        Closed::Shed.close(&connection);
        return;
    };
    if let Some(reason) = admission.shed {
        crate::metrics::quic_shed(reason);
        debug!(log, "shed a QUIC connection for a newcomer"; "source" => &source);
    }
    let holder = super::windows::Holder {
        kick: kick.clone(),
        activity: activity.clone(),
    };
    let large = acceptor.windows.lend(&source, holder, Instant::now());
    if large.is_some() {
        let limits = &acceptor.limits;
        let window = VarInt::from_u64(limits.large_receive_window).unwrap_or(VarInt::MAX);
        connection.set_receive_window(window);
    }
    debug!(log, "QUIC connection accepted"; "key" => %key, "large_windows" => large.is_some());
    serve_streams(&acceptor, &connection, remote, key, &kick, &activity).await;
    drop(large);
    acceptor.places.lock().expect("places lock").release(id);
}

/// Hands the connection's streams to the Listener until it closes or is
/// evicted.
async fn serve_streams(
    acceptor: &Acceptor,
    connection: &Connection,
    remote: SocketAddr,
    key: PeerKey,
    kick: &CancellationToken,
    activity: &Arc<Activity>,
) {
    let name = remote.to_string();
    loop {
        let (send, recv) = tokio::select! {
            biased;
            _ = kick.cancelled() => return evicted(acceptor, connection),
            stream = connection.accept_bi() => match stream {
                Ok(stream) => stream,
                Err(_) => return,
            },
        };
        let inbound = Inbound {
            connection: Box::new(QuicStream::callee(send, recv, activity.clone())),
            remote: name.clone(),
            address: Some(remote),
            peer_key: Some(key),
        };
        if let Some(take) = acceptor.take.get() {
            take(inbound);
            continue;
        }
        tokio::select! {
            biased;
            _ = kick.cancelled() => return evicted(acceptor, connection),
            sent = acceptor.streams.send(inbound) => {
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes a connection whose place was taken: for a newcomer, or because
/// the node is closing.
fn evicted(acceptor: &Acceptor, connection: &Connection) {
    match acceptor.shutdown.is_cancelled() {
        true => Closed::Closing.close(connection),
        false => Closed::Shed.close(connection),
    }
}
