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

mod channel;
mod engine;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// See the [module docs](self).
pub struct WebRtcStreamLayer {
    dialer: Arc<Dialer>,
    inbound: Arc<Mutex<Vec<PeerLink>>>,
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
    /// Registers `signal`'s ID and starts answering offers.
    ///
    /// A first dial to a peer includes signaling, ICE and DTLS, which can
    /// take longer than one RPC's I/O deadline: dials get at least
    /// `connect_timeout`.
    pub async fn start(
        signal: Arc<dyn Signal>,
        ice: &IceOptions,
        connect_timeout: Duration,
        log: Logger,
    ) -> Result<WebRtcStreamLayer, TransportError> {
        let log = log.new(o!("id" => signal.id()));
        let engine = Arc::new(Engine::new(ice));
        let offers = signal.consumer();
        signal
            .listen()
            .await
            .map_err(|err| TransportError::Config(format!("cannot listen for offers: {err}")))?;
        let (accepted_tx, accepted) = mpsc::channel(ACCEPT_QUEUE);
        let dialer = Arc::new(Dialer {
            id: signal.id(),
            connect_timeout,
            signal,
            engine: engine.clone(),
            outbound: Mutex::new(HashMap::new()),
            next_label: AtomicU64::new(0),
            shutdown: CancellationToken::new(),
            log: log.clone(),
        });
        let layer = WebRtcStreamLayer {
            dialer,
            inbound: Arc::default(),
            accepted: tokio::sync::Mutex::new(accepted),
        };
        let shutdown = layer.dialer.shutdown.clone();
        tokio::spawn(answer_offers(
            offers,
            engine,
            layer.inbound.clone(),
            accepted_tx,
            shutdown,
            log,
        ));
        Ok(layer)
    }
}

impl Dialer {
    async fn dial_channel(&self, target: String) -> io::Result<ChannelStream> {
        let slot = self
            .outbound
            .lock()
            .expect("outbound lock")
            .entry(target.clone())
            .or_default()
            .clone();
        let label = format!("babble-{}", self.next_label.fetch_add(1, Ordering::Relaxed));
        // The lock is held until the channel is open: channels opened
        // concurrently on one connection can be given the same stream ID
        // by the WebRTC stack, and one of them then never opens.
        let mut link = slot.lock().await;
        if let Some(existing) = link.as_ref() {
            if existing.is_usable() {
                let pending = existing.open_channel(&label).await.map_err(other)?;
                return pending.opened().await.map_err(other);
            }
            debug!(self.log, "replacing a failed peer connection"; "peer" => &target);
            existing.close().await;
            *link = None;
        }
        let fresh = CloseUnlessKept(Some(self.engine.peer().await.map_err(other)?));
        let peer = fresh.0.clone().expect("just set");
        let pending = peer.open_channel(&label).await.map_err(other)?;
        let offer = peer.offer().await.map_err(other)?;
        let answer = self
            .signal
            .offer(&target, offer)
            .await
            .map_err(signal_error)?;
        peer.accept_answer(&answer).await.map_err(other)?;
        let opened = pending.opened().await.map_err(other)?;
        *link = Some(fresh.keep());
        Ok(opened)
    }
}

/// Closes a new peer connection that did not make it (failed or timed-out
/// dial), so none is ever leaked.
struct CloseUnlessKept(Option<PeerLink>);

impl CloseUnlessKept {
    fn keep(mut self) -> PeerLink {
        self.0.take().expect("kept once")
    }
}

impl Drop for CloseUnlessKept {
    fn drop(&mut self) {
        if let Some(link) = self.0.take() {
            tokio::spawn(async move { link.close().await });
        }
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

/// Answers every offer on its own task until shut down.
async fn answer_offers(
    mut offers: crate::signal::Offers,
    engine: Arc<Engine>,
    inbound: Arc<Mutex<Vec<PeerLink>>>,
    accepted: mpsc::Sender<(ChannelStream, String)>,
    shutdown: CancellationToken,
    log: Logger,
) {
    loop {
        let offer = tokio::select! {
            offer = offers.recv() => match offer {
                Some(offer) => offer,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let (engine, inbound, accepted, log) = (
            engine.clone(),
            inbound.clone(),
            accepted.clone(),
            log.clone(),
        );
        tokio::spawn(async move { answer_offer(offer, &engine, &inbound, accepted, &log).await });
    }
}

async fn answer_offer(
    offer: Offer,
    engine: &Engine,
    inbound: &Mutex<Vec<PeerLink>>,
    accepted: mpsc::Sender<(ChannelStream, String)>,
    log: &Logger,
) {
    let from = offer.from.clone();
    let link = match engine.peer().await {
        Ok(link) => CloseUnlessKept(Some(link)),
        Err(err) => return offer.answer(Err(format!("cannot create a peer connection: {err}"))),
    };
    let peer = link.0.clone().expect("just set");
    let remote = from.clone();
    let answered = peer
        .answer(&offer.sdp, move |stream| {
            let accepted = accepted.clone();
            let remote = remote.clone();
            tokio::spawn(async move {
                // A full queue waits: the Listener takes channels as it can.
                let _ = accepted.send((stream, remote)).await;
            });
        })
        .await;
    match answered {
        Ok(answer) => {
            debug!(log, "answered an offer"; "peer" => &from);
            offer.answer(Ok(answer));
            let mut links = inbound.lock().expect("inbound lock");
            links.retain(|link| {
                let usable = link.is_usable();
                if !usable {
                    let link = link.clone();
                    tokio::spawn(async move { link.close().await });
                }
                usable
            });
            links.push(link.keep());
        }
        Err(err) => {
            warn!(log, "refusing a bad offer"; "peer" => &from, "error" => %err);
            offer.answer(Err(err.to_string()));
        }
    }
}

impl StreamLayer for WebRtcStreamLayer {
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
        let mut links: Vec<PeerLink> = self
            .inbound
            .lock()
            .expect("inbound lock")
            .drain(..)
            .collect();
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
    /// are not used; dials get at least `join-timeout`, see
    /// [`WebRtcStreamLayer::start`]); `ice` the STUN/TURN servers.
    pub async fn webrtc(
        signal: Arc<dyn Signal>,
        ice: &IceOptions,
        config: &Config,
        log: Logger,
    ) -> Result<NetworkTransport, TransportError> {
        config.validate()?;
        let log = log.new(o!("transport" => "webrtc"));
        let layer = WebRtcStreamLayer::start(signal, ice, config.join_timeout, log.clone()).await?;
        Ok(NetworkTransport::new(Arc::new(layer), config, log))
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
