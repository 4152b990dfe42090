//! QUIC as a [`StreamLayer`]: one QUIC connection per peer, one
//! bidirectional stream per call, each side keyed to its node key
//! (docs/QUIC.md).
//!
//! * TLS 1.3 with ALPN `babble/1`; both sides present a self-signed
//!   certificate made per process, carrying the libp2p key extension
//!   ([`babble_net_core::quic`]) signed by the node's Babble key. The
//!   client sends the server name `babble`. 0-RTT is off.
//! * The dialler refuses a responder whose key is not the one configured
//!   for the address ([`HandshakeError::WrongKey`]); the listener refuses
//!   keys outside the peer set unless any key is accepted; every incoming
//!   [`Rpc`](crate::Rpc) carries the verified key in `peer_key`.
//! * On a stream the caller writes one Go request frame and finishes; the
//!   callee writes the Go reply and finishes. Every TCP limit and deadline
//!   of the Listener and the call applies per stream.
//! * Its endpoints and connections are driven on the I/O threads, a lane
//!   on each (module `lanes`): a connection's streams are served and its
//!   calls made on its lane's thread too
//!   ([`StreamLayer::take_where_driven`],
//!   [`StreamLayer::calls_where_driven`]): only decoded requests, replies
//!   and answers cross to the node's thread.
//!
//! The limits ([`QuicLimits`]) and what a node sees when each is hit are
//! in docs/QUIC.md.

mod accept;
mod dial;
mod handshake_rate;
mod lanes;
mod runtime;
mod socket;
mod stream;
mod tls;
mod windows;

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_core::identity::{NodeKey, PeerKey};
use babble_net_core::secure::{Acceptance, HandshakeError};
use babble_net_core::stream::{BoxConnection, Inbound, StreamLayer, TakeInbound};
use futures::future::BoxFuture;
use futures::FutureExt;
use quinn::{Endpoint, EndpointConfig, IdleTimeout, TransportConfig, VarInt};
use slog::Logger;
use tokio::sync::{mpsc, Mutex as AsyncMutex};
use tokio_util::sync::CancellationToken;

use crate::TransportError;

/// The limits of a QUIC layer (from [`crate::Config`], see
/// [`crate::limits::quic`]).
#[derive(Clone, Debug)]
pub struct QuicLimits {
    /// Streams (calls) a peer may have open at once on one connection
    /// (`quic-max-streams`); more wait in the peer's QUIC stack.
    pub max_streams: u32,
    /// Inbound connections at once (`quic-max-connections`).
    pub max_connections: usize,
    /// Inbound connections from one source address at once
    /// (`quic-max-connections-per-source`).
    pub max_connections_per_source: usize,
    /// Handshakes in progress beyond which a newcomer must prove its
    /// address with a Retry (`quic-max-handshakes`); beyond four times
    /// this, newcomers are refused.
    pub max_handshakes: usize,
    /// Time a handshake may take (`handshake-timeout`).
    pub handshake_timeout: Duration,
    /// A connection with no packet for this long is closed
    /// (`idle-timeout`).
    pub idle_timeout: Duration,
    /// Bytes an inbound connection may have in flight towards this node
    /// (QUIC flow control, all its streams together): at most
    /// `max_connections` times this is buffered for all of them (a quarter
    /// of `inbound-buffer-budget`).
    pub receive_window: u64,
    /// The same, for the replies of the peers this node dials.
    pub reply_window: u64,
    /// Bytes of replies an inbound connection may hold in QUIC's send
    /// buffer, beyond what the peer has acknowledged. Every such byte is
    /// part of a reply the Listener keeps charged to
    /// `outbound-buffer-budget` until the caller acknowledged all of it.
    pub send_window: u64,
    /// How many inbound connections at once, at most two per source
    /// address, get `large_receive_window` instead (another quarter of
    /// the inbound budget): lent once the connection has its place, given
    /// back when it closes.
    pub large_windows: usize,
    /// The receive window lent to up to `large_windows` connections.
    pub large_receive_window: u64,
    /// Bytes kept of a connection's packets before it is accepted (QUIC's
    /// incoming buffer, per connection).
    pub incoming_buffer: u64,
    /// Connections the endpoint may hold at once, open or closing (a
    /// closed connection keeps its state while it drains); beyond it, new
    /// handshakes are refused.
    pub connection_states: usize,
}

/// Who a QUIC node is and whom it expects.
#[derive(Clone, Debug)]
pub struct QuicKeys {
    /// This node's key (its certificate's extension is signed with it).
    pub key: NodeKey,
    /// The key each peer address must prove; the listener accepts only
    /// these keys unless `accept_any_key`. An address that is itself a
    /// key (`PubKeyHex`) needs no entry.
    pub peers: HashMap<String, PeerKey>,
    /// Accept callers with any key that proves itself.
    pub accept_any_key: bool,
}

/// How this node closes a QUIC connection (the application error code an
/// independent peer sees).
#[derive(Clone, Copy, Debug)]
enum Closed {
    /// The transport is closing.
    Closing = 0,
    /// The peer's certificate does not prove a node key.
    Certificate = 2,
    /// The peer proved a key outside this node's peer set.
    NotAPeer = 3,
    /// The responder proved another key than the one expected.
    WrongKey = 4,
    /// Evicted for a newcomer at a connection cap.
    Shed = 5,
}

impl Closed {
    fn close(self, connection: &quinn::Connection) {
        let reason: &[u8] = match self {
            Closed::Closing => b"closing",
            Closed::Certificate => b"certificate refused",
            Closed::NotAPeer => b"not a peer",
            Closed::WrongKey => b"not the expected key",
            Closed::Shed => b"shed for a newcomer",
        };
        connection.close(VarInt::from_u32(self as u32), reason);
    }

    /// What the peer closing with `code` says about this node's call,
    /// when it refused it.
    fn refusal(code: VarInt) -> Option<&'static str> {
        match code.into_inner() {
            2 => Some("its certificate was refused"),
            3 => Some("its key is not one of the peer's peers"),
            4 => Some("the peer expected another key at this node's address"),
            _ => None,
        }
    }
}

/// See the [module docs](self).
pub struct QuicStreamLayer {
    /// One per I/O thread (module `lanes`).
    lanes: Vec<lanes::Lane>,
    local: SocketAddr,
    advertise: String,
    dialer: Arc<dial::Dialer>,
    acceptor: Arc<accept::Acceptor>,
    /// Streams accepted, for the Listener, unless it takes them where
    /// they are driven.
    streams: AsyncMutex<mpsc::Receiver<Inbound>>,
    shutdown: CancellationToken,
    /// The I/O threads the lanes run on, kept while they do.
    io: Arc<IoArbiters>,
}

/// How long a closing endpoint waits for its peers to hear of it before
/// it lets its port go.
const CLOSE_LINGER: Duration = Duration::from_millis(200);

/// Streams accepted and not yet taken by the Listener.
const ACCEPTED_STREAMS: usize = 64;

impl QuicStreamLayer {
    /// Binds `bind_addr` (UDP) and starts accepting QUIC connections;
    /// `advertise` as for TCP ([`crate::stream::TcpStreamLayer::bind`]);
    /// `keys` say who this node is and whom it expects. The layer has a
    /// lane on each of the `io_threads` I/O threads shared by the
    /// transports of the actix system (one on this thread when 0): see
    /// docs/QUIC.md, "Threads". Must be called inside an actix system.
    pub fn bind(
        bind_addr: &str,
        advertise: Option<&str>,
        keys: QuicKeys,
        limits: QuicLimits,
        io_threads: usize,
        log: Logger,
    ) -> Result<QuicStreamLayer, TransportError> {
        let io = IoArbiters::shared(io_threads);
        let config_error = TransportError::Config;
        let identity = tls::Identity::new(&keys.key)?;
        let server = server_config(&identity, &limits, lanes::accepting_lanes(&io))?;
        let client = client_config(&identity, &limits)?;
        let node_key = keys.key.clone();
        let lane_config = lanes::LaneConfig {
            server,
            endpoint: &|| endpoint_config(&node_key),
            log: &log,
        };
        let (lanes, local) = lanes::bind(bind_addr, &io, lane_config)
            .map_err(|err| config_error(format!("cannot bind {bind_addr} (UDP): {err}")))?;
        let advertise = crate::tcp::advertised(local, advertise)?;
        let accept = match keys.accept_any_key {
            true => Acceptance::AnyKey,
            false => Acceptance::Only(Arc::new(
                keys.peers.values().copied().collect::<HashSet<_>>(),
            )),
        };
        let expected = keys.peers;
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::channel(ACCEPTED_STREAMS);
        let log = log.new(slog::o!("quic" => local.to_string()));
        let accepting: Vec<Endpoint> = (lanes.iter())
            .filter_map(|lane| lane.accepting.clone())
            .collect();
        let acceptor = Arc::new(accept::Acceptor::new(
            accepting,
            limits.clone(),
            accept,
            tx,
            shutdown.clone(),
            log.clone(),
        ));
        accept::start(&acceptor, &lanes, &io);
        let dialer = Arc::new(dial::Dialer::new(
            lanes.iter().map(|lane| lane.dialling.clone()).collect(),
            io.clone(),
            client,
            expected,
            log,
        ));
        Ok(QuicStreamLayer {
            lanes,
            local,
            advertise,
            dialer,
            acceptor,
            streams: AsyncMutex::new(rx),
            shutdown,
            io,
        })
    }

    /// Inbound QUIC connections held now (each carries any number of
    /// calls).
    pub fn inbound_connections(&self) -> usize {
        self.acceptor.connections()
    }

    /// The connections (open or closing) of each lane's accepting
    /// endpoint, one entry per lane that accepts (docs/QUIC.md,
    /// "Threads"): how the peers' connections are spread over the I/O
    /// threads. With one lane, its endpoint also holds the connections it
    /// dialled.
    pub fn connections_by_lane(&self) -> Vec<usize> {
        (self.lanes.iter())
            .filter_map(|lane| lane.accepting.as_ref())
            .map(Endpoint::open_connections)
            .collect()
    }

    /// Inbound QUIC connections lent large flow-control windows now (at
    /// most [`QuicLimits::large_windows`], at most two per source address).
    pub fn large_window_connections(&self) -> usize {
        self.acceptor.large_windows()
    }

    /// QUIC connections this node dialled and keeps open now.
    pub fn outbound_connections(&self) -> usize {
        self.dialer.open()
    }

    /// QUIC connections this node dialled so far (a new one replaces a
    /// connection that closed).
    pub fn connections_dialled(&self) -> u64 {
        self.dialer.dialled()
    }

    /// Inbound handshakes in progress now (at most four times
    /// [`QuicLimits::max_handshakes`], a quarter of that from one source
    /// address).
    pub fn handshakes_in_progress(&self) -> usize {
        self.acceptor.handshakes()
    }
}

/// The endpoint's keys for stateless resets and connection IDs, derived
/// from the node key: a node that restarted (crashed, or was killed)
/// recognises the connection IDs the old process handed out and makes the
/// resets it promised. A peer still holding a connection to the old
/// process then learns at its next packet that the connection is gone
/// (and sends its call again on a new one), not at the idle timeout.
fn endpoint_config(key: &NodeKey) -> EndpointConfig {
    let derive = |domain: &[u8]| {
        ring::digest::digest(
            &ring::digest::SHA256,
            &[domain, key.to_hex().as_bytes()].concat(),
        )
    };
    let reset = derive(b"babble/1 QUIC stateless reset key:");
    let reset = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let ids = derive(b"babble/1 QUIC connection ID key:");
    let ids = u64::from_le_bytes(ids.as_ref()[..8].try_into().expect("a digest has 32 bytes"));
    let mut config = EndpointConfig::new(Arc::new(reset));
    config.cid_generator(move || Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(ids)));
    config
}

/// Which connections a transport configuration is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    /// Connections peers dial to this node: they carry requests in.
    Accepting,
    /// Connections this node dials: they carry replies in, and no peer
    /// opens streams on them.
    Dialling,
}

fn transport(limits: &QuicLimits, side: Side) -> Result<TransportConfig, TransportError> {
    let mut config = TransportConfig::default();
    let idle = IdleTimeout::try_from(limits.idle_timeout)
        .map_err(|_| TransportError::Config("idle-timeout is too long for QUIC".into()))?;
    config.max_idle_timeout(Some(idle));
    config.max_concurrent_uni_streams(VarInt::from_u32(0));
    let (streams, window) = match side {
        Side::Accepting => (limits.max_streams, limits.receive_window),
        Side::Dialling => (0, limits.reply_window),
    };
    // A stream may use as much as its connection may be lent: the
    // connection's window bounds all its streams together.
    let stream_window = match side {
        Side::Accepting => {
            config.send_window(limits.send_window);
            limits.large_receive_window.max(window)
        }
        Side::Dialling => window,
    };
    // The transport reads no datagrams: none is kept for it (quinn would
    // keep up to about a megabyte of them per connection).
    config.datagram_receive_buffer_size(None);
    config.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    let varint = |value: u64| VarInt::from_u64(value).unwrap_or(VarInt::MAX);
    config.stream_receive_window(varint(stream_window));
    config.receive_window(varint(window));
    Ok(config)
}

/// The configuration of each of `lanes` accepting endpoints. What they
/// keep of connections not accepted yet is small: each lane's accept loop
/// takes (or refuses) each at once, 0-RTT is off, and all lanes together
/// keep at most four times `max_handshakes` of them.
fn server_config(
    identity: &tls::Identity,
    limits: &QuicLimits,
    lanes: usize,
) -> Result<quinn::ServerConfig, TransportError> {
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(identity)?));
    server.transport_config(Arc::new(transport(limits, Side::Accepting)?));
    let incoming = (limits.max_handshakes.saturating_mul(4) / lanes.max(1)).max(1);
    server.max_incoming(incoming);
    server.incoming_buffer_size(limits.incoming_buffer);
    server.incoming_buffer_size_total(limits.incoming_buffer.saturating_mul(incoming as u64));
    Ok(server)
}

/// The dialling side's configuration.
fn client_config(
    identity: &tls::Identity,
    limits: &QuicLimits,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut client = quinn::ClientConfig::new(Arc::new(tls::client_crypto(identity)?));
    client.transport_config(Arc::new(transport(limits, Side::Dialling)?));
    Ok(client)
}

impl StreamLayer for QuicStreamLayer {
    fn transport(&self) -> &'static str {
        "quic"
    }

    fn one_call_per_connection(&self) -> bool {
        true
    }

    fn calls_where_driven(&self) -> bool {
        // A connection to a peer address is dialled, and driven, on the
        // lane of that address (see `lanes`).
        !self.io.is_empty()
    }

    /// With I/O threads, each lane hands the streams of its connections
    /// to the Listener on its own thread.
    fn take_where_driven(&self, take: TakeInbound) -> bool {
        !self.io.is_empty() && self.acceptor.take.set(take).is_ok()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        async move {
            let inbound = self.accept_inbound().await?;
            Ok((inbound.connection, inbound.remote))
        }
        .boxed()
    }

    fn accept_inbound(&self) -> BoxFuture<'_, io::Result<Inbound>> {
        async move {
            let closed = || io::Error::new(io::ErrorKind::NotConnected, "the QUIC layer is closed");
            let mut streams = self.streams.lock().await;
            let next = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => None,
                next = streams.recv() => next,
            };
            if self.shutdown.is_cancelled() {
                // Whoever waits here when the layer closes drains the
                // hand-off: streams accepted but never taken hold their
                // connections, and so the socket.
                streams.close();
                while streams.try_recv().is_ok() {}
                return Err(closed());
            }
            next.ok_or_else(closed)
        }
        .boxed()
    }

    fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let dialer = self.dialer.clone();
        let address = address.to_owned();
        async move {
            let stream = dialer.open_stream(&address, timeout).await?;
            Ok(Box::new(stream) as BoxConnection)
        }
        .boxed()
    }

    fn local_addr(&self) -> String {
        self.local.to_string()
    }

    fn advertise_addr(&self) -> String {
        self.advertise.clone()
    }

    fn close(&self) {
        if self.shutdown.is_cancelled() {
            return;
        }
        self.shutdown.cancel();
        let endpoints: Vec<Endpoint> = (self.lanes.iter())
            .flat_map(|lane| lane.endpoints().cloned())
            .collect();
        for endpoint in &endpoints {
            endpoint.close(VarInt::from_u32(Closed::Closing as u32), b"closing");
        }
        self.dialer.forget_all();
        // Streams accepted but never taken hold their connections, and so
        // the socket. Whoever holds the lock (the Listener, waiting for the
        // next stream) drains them itself as it sees the shutdown.
        if let Ok(mut streams) = self.streams.try_lock() {
            streams.close();
            while streams.try_recv().is_ok() {}
        }
        // The port goes free, as TCP's does, even while clones of the
        // transport, or handles to its connections, live on: once the
        // peers were told (or after a moment), the sockets are closed.
        let sockets: Vec<_> = self.lanes.iter().flat_map(lanes::Lane::sockets).collect();
        self.lanes[0].runtime.spawn(async move {
            let idle = futures::future::join_all(endpoints.iter().map(Endpoint::wait_idle));
            let _ = tokio::time::timeout(CLOSE_LINGER, idle).await;
            for socket in sockets {
                socket.close();
            }
        });
    }
}

impl Drop for QuicStreamLayer {
    fn drop(&mut self) {
        self.close();
    }
}

/// A handshake error as the I/O error a dial fails with.
fn refused(error: HandshakeError) -> io::Error {
    error.into_io()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The buffers `limits::quic` works out are the ones quinn is given:
    /// datagrams off on both sides, the windows, and the incoming buffers.
    #[test]
    fn the_configured_buffers_reach_quinn() {
        let limits = crate::limits::quic(&crate::Config::default());
        let identity = tls::Identity::new(&NodeKey::generate()).unwrap();
        let server = format!("{:?}", server_config(&identity, &limits, 1).unwrap());
        let dialling = format!("{:?}", transport(&limits, Side::Dialling).unwrap());
        for expected in [
            "datagram_receive_buffer_size: None".to_owned(),
            format!("receive_window: {}", limits.receive_window),
            format!("stream_receive_window: {}", limits.large_receive_window),
            format!("send_window: {}", limits.send_window),
            format!("max_concurrent_bidi_streams: {}", limits.max_streams),
            format!("max_incoming: {}", 4 * limits.max_handshakes),
            format!("incoming_buffer_size: {}", limits.incoming_buffer),
            format!(
                "incoming_buffer_size_total: {}",
                limits.incoming_buffer * 4 * limits.max_handshakes as u64
            ),
        ] {
            assert!(server.contains(&expected), "{expected} not in {server}");
        }
        for expected in [
            "datagram_receive_buffer_size: None".to_owned(),
            format!("receive_window: {}", limits.reply_window),
            "max_concurrent_bidi_streams: 0".to_owned(),
        ] {
            assert!(dialling.contains(&expected), "{expected} not in {dialling}");
        }
    }
}
