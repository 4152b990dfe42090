//! The answering side of the WebRTC layer: every offer answered on its
//! own task, in a place held for it (see [`super::inbound`]), the data
//! channels its peer opens handed to the Listener.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_core::places::Places;
use babble_net_core::source::source_address;
use babble_net_core::stream::{Inbound, TakeInbound};
use slog::{debug, warn, Logger};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::channel::ChannelStream;
use super::engine::{self, Engine};
use super::inbound::{InboundLinks, Place};
use super::read_ahead::ReadAhead;
use crate::signal::Offer;

/// A data channel a peer opened: the stream, the offer's `from`, and the
/// peer's address on the link.
pub(super) type Accepted = (ChannelStream, String, Option<SocketAddr>);

/// Data channels opened and waiting for the Listener to take them, as
/// places: at most [`WAITING_CHANNELS`], a quarter of them from one source
/// (the peer's address on the link); a newcomer beyond it closes the
/// oldest waiting channel of the source with the most waiting.
pub(super) struct WaitingChannels {
    places: Arc<Mutex<Places>>,
}

/// Channels that may wait for the Listener at once.
pub(super) const WAITING_CHANNELS: usize = 64;

impl Default for WaitingChannels {
    fn default() -> Self {
        WaitingChannels {
            places: Arc::new(Mutex::new(Places::new(
                WAITING_CHANNELS,
                WAITING_CHANNELS / 4,
            ))),
        }
    }
}

impl WaitingChannels {
    /// A place for a channel from `source` to wait in.
    fn admit(&self, source: &str) -> Option<Waiting> {
        let admission = self.places.lock().expect("places lock").admit(
            source,
            std::time::Instant::now(),
            CancellationToken::new(),
        );
        let (id, kick, _) = admission.slot?;
        Some(Waiting {
            places: self.places.clone(),
            id,
            kick,
        })
    }
}

/// A waiting channel's place; given back when dropped.
struct Waiting {
    places: Arc<Mutex<Places>>,
    id: u64,
    kick: CancellationToken,
}

impl Waiting {
    async fn evicted(&self) {
        self.kick.cancelled().await
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.places.lock().expect("places lock").release(self.id);
    }
}

/// What answering an offer needs.
pub(super) struct Answering {
    /// How long making an answer may take (ICE gathering included).
    pub(super) connect_timeout: Duration,
    pub(super) engine: Arc<Engine>,
    pub(super) inbound: Arc<Mutex<InboundLinks>>,
    pub(super) accepted: mpsc::Sender<Accepted>,
    /// Where channels wait for the Listener.
    pub(super) waiting: Arc<WaitingChannels>,
    pub(super) max_channels: usize,
    /// What the pumps of answering channels hold for the Listener.
    pub(super) read_ahead: Arc<ReadAhead>,
    /// The Listener's hand, once it takes channels where they are driven
    /// (see [`StreamLayer::take_where_driven`]): then a channel is taken in
    /// on its peer connection's thread instead of waiting in `accepted`.
    ///
    /// [`StreamLayer::take_where_driven`]: babble_net_core::stream::StreamLayer::take_where_driven
    pub(super) take: Arc<OnceLock<TakeInbound>>,
    pub(super) log: Logger,
}

/// Answers every offer on its own task, on the I/O thread of its caller,
/// until shut down. The signal bounds how many offers are being answered
/// at once.
pub(super) async fn answer_offers(
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

/// Hands a channel to the Listener on this thread, the one that drives
/// its peer connection, within the thread's arbiter (the stack calls from
/// a task of its own, outside the arbiter's local set). A channel that
/// cannot be handed over is dropped, which closes it.
fn take_here(
    take: &TakeInbound,
    stream: ChannelStream,
    remote: String,
    address: Option<SocketAddr>,
    log: &Logger,
) {
    // Peer connections are driven on the layer's I/O arbiters, so there
    // is always one here while the layer runs; without it (the arbiter
    // has stopped: the node is closing) the channel closes as it drops.
    let Some(arbiter) = actix_rt::Arbiter::try_current() else {
        debug!(log, "closing a data channel: no arbiter to serve it on"; "peer" => &remote);
        return;
    };
    let inbound = Inbound {
        connection: Box::new(stream),
        remote,
        address,
        peer_key: None,
    };
    let take = take.clone();
    if !arbiter.spawn_fn(move || take(inbound)) {
        debug!(log, "closing a data channel: its arbiter has stopped");
    }
}

impl Answering {
    async fn answer(&self, offer: Offer) {
        let (from, signed) = (offer.from.clone(), offer.signed);
        let Some(place) = Place::hold(&self.inbound, &offer.source) else {
            return offer.answer(Err("the WebRTC layer is closed".into()));
        };
        // Dropped unless added below, the new connection closes.
        let peer = match self.engine.peer().await {
            Ok(link) => link,
            Err(err) => {
                return offer.answer(Err(format!("cannot create a peer connection: {err}")))
            }
        };
        let (accepted, remote) = (self.accepted.clone(), from.clone());
        let waiting = self.waiting.clone();
        let take = self.take.clone();
        let log = self.log.clone();
        let connect_timeout = self.connect_timeout;
        let activity = place.activity();
        let answering = peer.answer(
            &offer.sdp,
            self.max_channels,
            activity,
            &self.read_ahead,
            &offer.source,
            move |stream, address| {
                if let Some(take) = take.get() {
                    return take_here(take, stream, remote.clone(), address, &log);
                }
                // A full queue waits, within a deadline and in a place of
                // its own: the Listener takes channels as it can. A
                // channel given up on, or evicted for another's, is closed.
                let source =
                    address.map_or_else(|| remote.clone(), |a| source_address("", Some(a)));
                let Some(place) = waiting.admit(&source) else {
                    return;
                };
                let accepted = accepted.clone();
                let remote = remote.clone();
                tokio::spawn(async move {
                    let queued = accepted.send((stream, remote, address));
                    tokio::select! {
                        _ = tokio::time::timeout(connect_timeout, queued) => {}
                        _ = place.evicted() => {}
                    }
                });
            },
        );
        let answered = tokio::select! {
            answered = tokio::time::timeout(self.connect_timeout, answering) => answered,
            () = offer.withdrawn() => {
                // Its place went to a newcomer (or the session ended): the
                // peer connection closes as it drops.
                debug!(self.log, "an offer being answered was withdrawn"; "peer" => &from);
                return;
            }
        };
        let answered = answered.unwrap_or_else(|_| {
            Err(engine::Error::Other(
                "no answer within the connect timeout (ICE gathering did not finish)".into(),
            ))
        });
        match answered {
            Ok(answer) => {
                debug!(self.log, "answered an offer"; "peer" => &from);
                // Held before the answer leaves: once the peer has it, the
                // connection is counted.
                place.fill(from, signed, peer, self.connect_timeout);
                offer.answer(Ok(answer));
            }
            Err(err) => {
                warn!(self.log, "refusing a bad offer"; "peer" => &from, "error" => %err);
                offer.answer(Err(err.to_string()));
            }
        }
    }
}
