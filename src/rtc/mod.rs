//! WebRTC as a [`StreamLayer`]: every RPC travels over data channels, and
//! peers find each other through a [`Signal`].
//!
//! The transport's address is its signaling ID. Dialing a peer for the
//! first time creates one peer connection to it, sends the offer (with all
//! its ICE candidates) through the signal, applies the answer and waits
//! for a data channel to open; further dials to that peer open more data
//! channels on the same connection (one per pooled connection). A
//! connection whose ICE fails is closed and replaced by a fresh one on the
//! next dial. Offers from other peers are answered as they come, each on
//! its own task, so a bad offer never stops the next ones; the channels
//! their peers open are handed to the Listener like TCP connections.
//!
//! Bounds ([`RtcLimits`]): the signaling client hands out at most so many
//! offers at once, in total and per caller; other peers may hold at most
//! `max_peers` peer connections to us, offers being answered included. A
//! connection's source is the peer's address on it, as ICE verified it
//! (the candidates an SDP claims prove nothing), and until it connects the
//! offer's `from`; at the cap, the connection least recently used by a
//! reply, among the sources holding the most, is closed to make room,
//! channels or not, so IDs or keys minted behind one address share its
//! places. A connection that does not connect within the connect timeout
//! is closed. A peer whose offers are signed holds at most two: a new one
//! replaces the older once it connects, so an offer that never connects
//! (a replay, an impostor) cannot close a live one; an unsigned `from` is
//! only a claim and never touches that peer's connections. Each holds at
//! most `max_channels` open data channels (a new one closes the least
//! recently used); failed or closed peer
//! connections are closed and forgotten every `prune_interval`, whether or
//! not new offers arrive. A peer connection on which a channel open was
//! abandoned (its dial timed out) is replaced on the next dial. Every peer
//! connection is closed when the layer no longer holds it.

mod answer;
mod channel;
mod dial;
mod engine;
mod gate;
mod inbound;
mod read_ahead;
mod runtime;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_core::stream::{BoxConnection, Inbound, StreamLayer, TakeInbound};
use futures::future::BoxFuture;
use futures::FutureExt;
use slog::{o, warn, Logger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use answer::{answer_offers, Accepted, Answering};
pub use channel::{ChannelStream, CHUNK};
use dial::Dialer;
use engine::{Engine, PeerLink};
pub use engine::{IceOptions, IceServer};
use inbound::InboundLinks;

use crate::signal::Signal;
use crate::TransportError;

/// Channels accepted but not yet taken by the Listener.
const ACCEPT_QUEUE: usize = 64;

/// The bounds of a WebRTC layer, see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcLimits {
    /// The least time a dial gets, whatever the caller's RPC deadline:
    /// signaling, ICE and DTLS take longer than one RPC's I/O.
    pub connect_timeout: Duration,
    /// Peer connections other peers may hold to us; at the cap the least
    /// recently used among the sources holding the most makes room.
    pub max_peers: usize,
    /// Data channels one peer may have open on its peer connection to us;
    /// at the cap a new one closes the one least recently used by a reply.
    pub max_channels: usize,
    /// How often failed peer connections are closed and forgotten.
    pub prune_interval: Duration,
    /// The transport's I/O threads (`io-threads`): offers are answered,
    /// and the peer connections they make are driven, there rather than on
    /// the thread that started the layer (0: on that thread).
    pub io_threads: usize,
    /// Bytes taken from the stack ahead of their reader, on channels other
    /// peers opened (until the Listener reads them) and on channels this
    /// node opened (until its call reads the reply); at the cap the
    /// channel holding the most of the source holding the most is closed
    /// (a called peer's channels count as one source).
    pub read_ahead_budget: usize,
}

/// See the [module docs](self).
pub struct WebRtcStreamLayer {
    dialer: Arc<Dialer>,
    inbound: Arc<Mutex<InboundLinks>>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    /// The Listener's hand, when it takes channels where they are driven.
    take: Arc<OnceLock<TakeInbound>>,
    /// Peer connections are driven on I/O threads (`io-threads` > 0).
    driven_apart: bool,
}

impl WebRtcStreamLayer {
    /// Registers `signal`'s ID and starts answering offers, within
    /// `limits`.
    ///
    /// Fails with [`TransportError::Connect`] when the signaling server
    /// cannot be reached (or refuses us) within the signal's connect
    /// timeout.
    pub async fn start(
        signal: Arc<dyn Signal>,
        ice: &IceOptions,
        limits: RtcLimits,
        log: Logger,
    ) -> Result<WebRtcStreamLayer, TransportError> {
        let log = log.new(o!("id" => signal.id()));
        let engine = Arc::new(Engine::new(ice));
        let offers = signal.consumer();
        signal
            .listen()
            .await
            .map_err(|err| TransportError::Connect {
                peer: "the signaling server".into(),
                // The SignalError stays inside, for callers that downcast.
                source: io::Error::other(err),
            })?;
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let shutdown = CancellationToken::new();
        // One budget for what channels receive ahead of their readers,
        // whoever opened them.
        let read_ahead = read_ahead::ReadAhead::new(limits.read_ahead_budget);
        let dialer = Arc::new(Dialer {
            id: signal.id(),
            connect_timeout: limits.connect_timeout,
            signal,
            engine: engine.clone(),
            read_ahead: read_ahead.clone(),
            outbound: Mutex::new(HashMap::new()),
            next_label: AtomicU64::new(0),
            shutdown: shutdown.clone(),
            log: log.clone(),
        });
        let inbound = InboundLinks::new(limits.max_peers, shutdown);
        let layer = WebRtcStreamLayer {
            dialer,
            inbound: Arc::new(Mutex::new(inbound)),
            accepted: tokio::sync::Mutex::new(accepted),
            take: Arc::default(),
            driven_apart: limits.io_threads > 0,
        };
        let answering = Answering {
            connect_timeout: limits.connect_timeout,
            engine,
            inbound: layer.inbound.clone(),
            accepted: accepted_tx,
            waiting: Arc::default(),
            max_channels: limits.max_channels,
            read_ahead,
            take: layer.take.clone(),
            log,
        };
        tokio::spawn(answer_offers(
            offers,
            Arc::new(answering),
            IoArbiters::shared(limits.io_threads),
            layer.dialer.shutdown.clone(),
        ));
        tokio::spawn(prune_links(
            layer.dialer.clone(),
            layer.inbound.clone(),
            limits.prune_interval,
        ));
        Ok(layer)
    }
}

/// Every `interval` until shut down, closes and forgets the failed peer
/// connections on both sides.
async fn prune_links(dialer: Arc<Dialer>, inbound: Arc<Mutex<InboundLinks>>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = dialer.shutdown.cancelled() => return,
        }
        inbound.lock().expect("inbound lock").prune();
        dialer.prune();
    }
}

impl Drop for WebRtcStreamLayer {
    /// A layer dropped without [`StreamLayer::close`] stops answering and
    /// closes its peer connections all the same.
    fn drop(&mut self) {
        if tokio::runtime::Handle::try_current().is_ok() {
            self.close();
        } else {
            self.dialer.shutdown.cancel();
        }
    }
}

impl WebRtcStreamLayer {
    /// Peer connections other peers hold to us now.
    pub fn inbound_peer_connections(&self) -> usize {
        self.inbound.lock().expect("inbound lock").count()
    }
}

impl StreamLayer for WebRtcStreamLayer {
    fn transport(&self) -> &'static str {
        "webrtc"
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        async move {
            let inbound = self.accept_inbound().await?;
            Ok((inbound.connection, inbound.remote))
        }
        .boxed()
    }

    /// With I/O threads, each answered peer connection is driven on the
    /// thread of its peer: its channels are served there too.
    fn take_where_driven(&self, take: TakeInbound) -> bool {
        self.driven_apart && self.take.set(take).is_ok()
    }

    fn accept_inbound(&self) -> BoxFuture<'_, io::Result<Inbound>> {
        let closed = || io::Error::new(io::ErrorKind::NotConnected, "the WebRTC layer is closed");
        async move {
            let mut accepted = self.accepted.lock().await;
            tokio::select! {
                next = accepted.recv() => match next {
                    Some((stream, from, address)) => Ok(Inbound {
                        connection: Box::new(stream),
                        remote: from,
                        address,
                        peer_key: None,
                    }),
                    None => Err(closed()),
                },
                _ = self.dialer.shutdown.cancelled() => Err(closed()),
            }
        }
        .boxed()
    }

    fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let dialer = self.dialer.clone();
        let target = address.to_owned();
        async move {
            if dialer.shutdown.is_cancelled() {
                return Err(io::Error::new(
                    io::ErrorKind::NotConnected,
                    "the WebRTC layer is closed",
                ));
            }
            let timeout = timeout.max(dialer.connect_timeout);
            let stream =
                tokio::time::timeout(timeout, dialer.dial_channel(target.clone(), timeout))
                    .await
                    .map_err(|_| {
                        // The usual cause: ICE found no path. Say so here, since
                        // the caller only sees a timeout.
                        warn!(dialer.log, "no open data channel within the timeout: \
                        ICE found no working path (check the STUN/TURN servers and \
                        the firewalls between the peers)";
                        "peer" => &target, "timeout" => ?timeout);
                        io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no open data channel within the timeout",
                        )
                    })??;
            Ok(Box::new(stream) as BoxConnection)
        }
        .boxed()
    }

    fn local_addr(&self) -> String {
        self.dialer.id.clone()
    }

    fn advertise_addr(&self) -> String {
        self.dialer.id.clone()
    }

    fn close(&self) {
        let dialer = &self.dialer;
        if dialer.shutdown.is_cancelled() {
            return;
        }
        dialer.shutdown.cancel();
        let signal = dialer.signal.clone();
        let mut links: Vec<PeerLink> = self.inbound.lock().expect("inbound lock").drain();
        let slots: Vec<_> = dialer
            .outbound
            .lock()
            .expect("outbound lock")
            .drain()
            .map(|(_, slot)| slot)
            .collect();
        tokio::spawn(async move {
            for slot in slots {
                if let Some(link) = slot.lock().await.take() {
                    links.push(link);
                }
            }
            for link in links {
                link.close().await;
            }
            let _ = signal.close().await;
        });
    }
}
