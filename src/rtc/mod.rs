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
//! `max_peers` peer connections to us, offers being answered included (two
//! per peer: a new one replaces the older; at the cap, the oldest one
//! carrying no data channel is closed to make room), each with at most
//! `max_channels` open data channels; failed or closed peer connections
//! are closed and forgotten every `prune_interval`, whether or not new
//! offers arrive. A peer connection on which a channel open was abandoned
//! (its dial timed out) is replaced on the next dial. Every peer
//! connection is closed when the layer no longer holds it.

mod channel;
mod engine;
mod gate;
mod runtime;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_actors::stream::{BoxConnection, StreamLayer};
use futures::future::BoxFuture;
use futures::FutureExt;
use slog::{debug, o, warn, Logger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use channel::{ChannelStream, CHUNK};
use engine::{Engine, PeerLink};
pub use engine::{IceOptions, IceServer};

use crate::signal::{Offer, Signal, SignalError};
use crate::{Config, NetworkTransport, TransportError};

/// Channels accepted but not yet taken by the Listener.
const ACCEPT_QUEUE: usize = 64;

/// The bounds of a WebRTC layer, see the [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcLimits {
    /// The least time a dial gets, whatever the caller's RPC deadline:
    /// signaling, ICE and DTLS take longer than one RPC's I/O.
    pub connect_timeout: Duration,
    /// Peer connections other peers may hold to us; at the cap the oldest
    /// one carrying no data channel makes room, else offers are refused.
    pub max_peers: usize,
    /// Data channels one peer may have open on its peer connection to us;
    /// more are closed as they open.
    pub max_channels: usize,
    /// How often failed peer connections are closed and forgotten.
    pub prune_interval: Duration,
    /// The transport's I/O threads (`io-threads`): offers are answered,
    /// and the peer connections they make are driven, there rather than on
    /// the thread that started the layer (0: on that thread).
    pub io_threads: usize,
}

impl RtcLimits {
    /// The limits of `config`: `join-timeout` to connect,
    /// `webrtc-max-peers`, `webrtc-max-channels`, `io-threads`.
    pub fn from_config(config: &Config) -> RtcLimits {
        RtcLimits {
            connect_timeout: config.join_timeout,
            max_peers: config.webrtc_max_peers,
            max_channels: config.webrtc_max_channels,
            prune_interval: Duration::from_secs(5),
            io_threads: config.io_threads,
        }
    }
}

/// Peer connections other peers opened to us, by peer ID: at most
/// [`PER_PEER`] each (a peer that re-offers after its connection failed
/// replaces the older one) and `max_peers` in all, counting the offers
/// being answered.
struct InboundLinks {
    by_peer: HashMap<String, Vec<PeerLink>>,
    count: usize,
    /// Offers being answered, each holding a place (see [`Place`]).
    answering: usize,
    max_peers: usize,
}

/// Peer connections one peer may hold to us: the live one and the one it
/// is replacing it with.
const PER_PEER: usize = 2;

/// A place held for the peer connection an offer is being answered with;
/// given back when dropped unless the connection is added.
struct Place(Arc<Mutex<InboundLinks>>);

impl Place {
    /// Holds a place for a new peer connection from `peer`, if there is
    /// one (after pruning dead ones, when full). A peer that already holds
    /// [`PER_PEER`] connections always gets one: its oldest goes.
    fn hold(inbound: &Arc<Mutex<InboundLinks>>, peer: &str) -> Option<Place> {
        let mut links = inbound.lock().expect("inbound lock");
        let replaces = links.by_peer.get(peer).is_some_and(|l| l.len() >= PER_PEER);
        if !replaces && links.count + links.answering >= links.max_peers {
            links.prune();
            if links.count + links.answering >= links.max_peers && !links.shed_idlest() {
                return None;
            }
        }
        links.answering += 1;
        Some(Place(inbound.clone()))
    }

    /// Adds `link` in this place, or closes it if the layer is closed.
    fn fill(self, peer: String, link: PeerLink, shutdown: &CancellationToken) {
        let mut links = self.0.lock().expect("inbound lock");
        if shutdown.is_cancelled() {
            // Dropped, the link closes.
            return;
        }
        links.add(peer, link);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.0.lock().expect("inbound lock").answering -= 1;
    }
}

impl InboundLinks {
    fn add(&mut self, peer: String, link: PeerLink) {
        let links = self.by_peer.entry(peer).or_default();
        if links.len() >= PER_PEER {
            let oldest = links.remove(0);
            self.count -= 1;
            tokio::spawn(async move { oldest.close().await });
        }
        links.push(link);
        self.count += 1;
    }

    /// Closes and forgets the oldest peer connection on which the peer has
    /// no data channel open, if any: a peer at the cap still gets in while
    /// others only hold connections (their idle channels are closed after
    /// `idle-timeout`).
    fn shed_idlest(&mut self) -> bool {
        let idlest = self
            .by_peer
            .iter()
            .flat_map(|(peer, links)| {
                links
                    .iter()
                    .enumerate()
                    .map(move |(at, link)| (peer, at, link))
            })
            .filter(|(_, _, link)| link.is_idle())
            .min_by_key(|(_, _, link)| link.created())
            .map(|(peer, at, _)| (peer.clone(), at));
        let Some((peer, at)) = idlest else {
            return false;
        };
        let links = self.by_peer.get_mut(&peer).expect("found above");
        let shed = links.remove(at);
        if links.is_empty() {
            self.by_peer.remove(&peer);
        }
        self.count -= 1;
        tokio::spawn(async move { shed.close().await });
        true
    }

    /// Closes and forgets failed or closed peer connections.
    fn prune(&mut self) {
        let mut count = 0;
        self.by_peer.retain(|_, links| {
            links.retain(|link| {
                let usable = link.is_usable();
                if !usable {
                    let link = link.clone();
                    tokio::spawn(async move { link.close().await });
                }
                usable
            });
            count += links.len();
            !links.is_empty()
        });
        self.count = count;
    }

    fn drain(&mut self) -> Vec<PeerLink> {
        self.count = 0;
        self.by_peer.drain().flat_map(|(_, links)| links).collect()
    }
}

/// See the [module docs](self).
pub struct WebRtcStreamLayer {
    dialer: Arc<Dialer>,
    inbound: Arc<Mutex<InboundLinks>>,
    accepted: tokio::sync::Mutex<mpsc::Receiver<(ChannelStream, String)>>,
}

/// What a dial needs; shared, because a dial outlives the call that
/// started it.
struct Dialer {
    id: String,
    /// The least time a dial gets, whatever the caller's RPC deadline.
    connect_timeout: Duration,
    signal: Arc<dyn Signal>,
    engine: Arc<Engine>,
    /// The peer connection to each peer we dial, behind a lock per peer so
    /// that concurrent dials share one connection.
    outbound: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<PeerLink>>>>>,
    next_label: AtomicU64,
    shutdown: CancellationToken,
    log: Logger,
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
                source: io::Error::other(err.to_string()),
            })?;
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let dialer = Arc::new(Dialer {
            id: signal.id(),
            connect_timeout: limits.connect_timeout,
            signal,
            engine: engine.clone(),
            outbound: Mutex::new(HashMap::new()),
            next_label: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            log: log.clone(),
        });
        let layer = WebRtcStreamLayer {
            dialer,
            inbound: Arc::new(Mutex::new(InboundLinks {
                by_peer: HashMap::new(),
                count: 0,
                answering: 0,
                max_peers: limits.max_peers,
            })),
            accepted: tokio::sync::Mutex::new(accepted),
        };
        let answering = Answering {
            connect_timeout: limits.connect_timeout,
            shutdown: layer.dialer.shutdown.clone(),
            engine,
            inbound: layer.inbound.clone(),
            accepted: accepted_tx,
            max_channels: limits.max_channels,
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

impl Dialer {
    /// Closes and forgets peer connections that failed, and the entries
    /// of peers with none (a dial in progress holds its entry's lock and
    /// is left alone).
    fn prune(&self) {
        self.outbound
            .lock()
            .expect("outbound lock")
            .retain(|_, slot| match slot.try_lock() {
                Ok(mut link) => match link.as_ref() {
                    Some(existing) if existing.is_usable() => true,
                    Some(_) => {
                        let dead = link.take().expect("checked above");
                        tokio::spawn(async move { dead.close().await });
                        false
                    }
                    None => false,
                },
                Err(_) => true,
            });
    }

    /// The slot of `target`'s peer connection, locked, and still the one
    /// in the map (pruning may drop an empty slot between lookup and lock;
    /// a link made in such a slot would be nobody's).
    async fn locked_slot(&self, target: &str) -> tokio::sync::OwnedMutexGuard<Option<PeerLink>> {
        loop {
            let slot = self
                .outbound
                .lock()
                .expect("outbound lock")
                .entry(target.to_owned())
                .or_default()
                .clone();
            let locked = slot.clone().lock_owned().await;
            let current = self.outbound.lock().expect("outbound lock");
            if current
                .get(target)
                .is_some_and(|in_map| Arc::ptr_eq(in_map, &slot))
            {
                return locked;
            }
        }
    }

    async fn dial_channel(&self, target: String) -> io::Result<ChannelStream> {
        let label = format!("babble-{}", self.next_label.fetch_add(1, Ordering::Relaxed));
        // The lock is held until the channel is open, so that concurrent
        // dials to one peer share one peer connection.
        let mut link = self.locked_slot(&target).await;
        if let Some(existing) = link.as_ref() {
            if existing.is_usable() {
                return existing.new_channel(&label).await.map_err(other);
            }
            debug!(self.log, "replacing a failed peer connection"; "peer" => &target);
            existing.close().await;
            *link = None;
        }
        // Dropped on any failure below, the new connection closes.
        let peer = self.engine.peer().await.map_err(other)?;
        let pending = peer.open_channel(&label).await.map_err(other)?;
        let offer = peer.offer().await.map_err(other)?;
        let answer = self
            .signal
            .offer(&target, offer)
            .await
            .map_err(signal_error)?;
        peer.accept_answer(&answer).await.map_err(other)?;
        let opened = pending.opened().await.map_err(other)?;
        *link = Some(peer);
        Ok(opened)
    }
}

fn other(error: engine::Error) -> io::Error {
    io::Error::other(error.to_string())
}

/// Signal failures as I/O errors the pool maps back to transport errors.
fn signal_error(error: SignalError) -> io::Error {
    let kind = match &error {
        SignalError::UnknownPeer(_) => io::ErrorKind::NotFound,
        SignalError::Timeout { .. } => io::ErrorKind::TimedOut,
        SignalError::Closed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::ConnectionRefused,
    };
    io::Error::new(kind, error.to_string())
}

/// What answering an offer needs.
struct Answering {
    /// How long making an answer may take (ICE gathering included).
    connect_timeout: Duration,
    shutdown: CancellationToken,
    engine: Arc<Engine>,
    inbound: Arc<Mutex<InboundLinks>>,
    accepted: mpsc::Sender<(ChannelStream, String)>,
    max_channels: usize,
    log: Logger,
}

/// Answers every offer on its own task, on the I/O thread of its caller,
/// until shut down. The signal bounds how many offers are being answered
/// at once.
async fn answer_offers(
    mut offers: crate::signal::Offers,
    answering: Arc<Answering>,
    io: Arc<IoArbiters>,
    shutdown: CancellationToken,
) {
    loop {
        let offer = tokio::select! {
            offer = offers.recv() => match offer {
                Some(offer) => offer,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let answering = answering.clone();
        let thread = io.for_key(&offer.from);
        thread.spawn(async move { answering.answer(offer).await });
    }
}

impl Answering {
    async fn answer(&self, offer: Offer) {
        let from = offer.from.clone();
        let Some(place) = Place::hold(&self.inbound, &from) else {
            warn!(self.log, "refusing an offer: too many peer connections"; "peer" => &from);
            return offer.answer(Err("too many peer connections".into()));
        };
        // Dropped unless added below, the new connection closes.
        let peer = match self.engine.peer().await {
            Ok(link) => link,
            Err(err) => {
                return offer.answer(Err(format!("cannot create a peer connection: {err}")))
            }
        };
        let (accepted, remote) = (self.accepted.clone(), from.clone());
        let connect_timeout = self.connect_timeout;
        let answering = peer.answer(&offer.sdp, self.max_channels, move |stream| {
            let accepted = accepted.clone();
            let remote = remote.clone();
            tokio::spawn(async move {
                // A full queue waits, within a deadline: the Listener takes
                // channels as it can. A channel given up on is closed.
                let _ =
                    tokio::time::timeout(connect_timeout, accepted.send((stream, remote))).await;
            });
        });
        let answered = tokio::time::timeout(self.connect_timeout, answering)
            .await
            .unwrap_or_else(|_| {
                Err(engine::Error::Other(
                    "no answer within the connect timeout (ICE gathering did not finish)".into(),
                ))
            });
        match answered {
            Ok(answer) => {
                debug!(self.log, "answered an offer"; "peer" => &from);
                offer.answer(Ok(answer));
                place.fill(from, peer, &self.shutdown);
            }
            Err(err) => {
                warn!(self.log, "refusing a bad offer"; "peer" => &from, "error" => %err);
                offer.answer(Err(err.to_string()));
            }
        }
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
        self.inbound.lock().expect("inbound lock").count
    }
}

impl StreamLayer for WebRtcStreamLayer {
    fn transport(&self) -> &'static str {
        "webrtc"
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        let closed = || io::Error::new(io::ErrorKind::NotConnected, "the WebRTC layer is closed");
        async move {
            let mut accepted = self.accepted.lock().await;
            tokio::select! {
                next = accepted.recv() => match next {
                    Some((stream, from)) => Ok((Box::new(stream) as BoxConnection, from)),
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
            let stream = tokio::time::timeout(timeout, dialer.dial_channel(target.clone()))
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

impl NetworkTransport {
    /// A WebRTC transport whose address is `signal`'s ID: registers it with
    /// the signaling server and answers offers from then on. `config` gives
    /// the pool size, timeouts and limits (its bind and advertise addresses
    /// are not used; dials get at least `join-timeout`; see
    /// [`RtcLimits::from_config`]); `ice` the STUN/TURN servers.
    ///
    /// Fails with [`TransportError::Connect`] when the signaling server
    /// cannot be reached within the signal's connect timeout.
    ///
    /// With `secure`, every data channel also carries the Noise channel of
    /// [`crate::secure`], keyed to `key-file`; a peer's address is its
    /// `PubKeyHex`, so the key to expect is the address itself.
    pub async fn webrtc(
        signal: Arc<dyn Signal>,
        ice: &IceOptions,
        config: &Config,
        log: Logger,
    ) -> Result<NetworkTransport, TransportError> {
        config.validate()?;
        let log = log.new(o!("transport" => "webrtc"));
        let limits = RtcLimits::from_config(config);
        let layer = WebRtcStreamLayer::start(signal, ice, limits, log.clone()).await?;
        let layer = crate::secure::wrap_if_secure(Arc::new(layer), config)?;
        Ok(NetworkTransport::new(layer, config, log))
    }
}

impl IceOptions {
    /// The ICE server of `config` (`ice-addr`, `ice-username`,
    /// `ice-password`), if any.
    pub fn from_config(config: &Config) -> IceOptions {
        let servers = config
            .ice_addr
            .iter()
            .map(|addr| IceServer {
                urls: vec![addr.clone()],
                username: config.ice_username.clone().unwrap_or_default(),
                credential: config.ice_password.clone().unwrap_or_default(),
            })
            .collect();
        IceOptions {
            servers,
            ..IceOptions::default()
        }
    }
}
