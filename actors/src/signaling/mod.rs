//! The Signaling actor: one WAMP session with the signaling router after
//! another, for as long as the node runs.
//!
//! WebRTC peers exchange SDP offers and answers through the router before a
//! direct link exists. The node registers a procedure named by its ID; an
//! offer is a CALL of the target's procedure with arguments
//! `[fromID, offerJSON]` whose single result is the answer JSON.
//!
//! The protocol is [`SignalClient`], a state machine with no socket; this
//! actor only drives it: it opens connections (`connect.rs`), feeds it what
//! arrives and the ticks of one timer, and carries out its actions (write,
//! ping, hand out an offer, reconnect after a pause). Incoming offers go to
//! a bounded channel as [`Offer`]s, each answered exactly once.

mod connect;

pub use babble_net_core::signaling::{client, signed, tls, wamp};

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::StreamExt;
use slog::{info, warn, Logger};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message as WsMessage;

pub use babble_net_core::signaling::{
    Offer, SignalClient, SignalError, SignalSettings, SignalStatus, TlsFailure,
};
use client::Action;

use wamp::Message;

/// Frames beyond our own calls and answers that may wait to be written
/// to the router: refusals of a burst of invocations (a router queues up
/// to its `max-invocations`, 64 by default, for one callee), pongs and
/// registrations. More mean the router is not reading, and the connection
/// is given up.
const WRITE_QUEUE_SLACK: usize = 96;

/// Frames that may wait to be written: every call and answer we may have
/// in flight, and the slack above, so that a burst of refused offers
/// never makes a node drop its own session.
fn write_queue(settings: &SignalSettings) -> usize {
    settings.max_calls + settings.max_offers + WRITE_QUEUE_SLACK
}

/// The open WebSocket to the router: where frames to write go.
struct OpenSocket {
    generation: u64,
    frames: mpsc::Sender<WsMessage>,
}

/// See the [module docs](self).
pub struct Signaling {
    client: SignalClient,
    settings: Arc<SignalSettings>,
    offers: mpsc::Sender<Offer>,
    connection: Option<OpenSocket>,
    /// Bumped on every connection attempt; events of older ones are ignored.
    generation: u64,
    reconnecting: Option<SpawnHandle>,
    timer: Option<(Instant, SpawnHandle)>,
    log: Logger,
}

impl Signaling {
    /// A Signaling actor delivering incoming offers to `offers`.
    pub fn new(settings: SignalSettings, offers: mpsc::Sender<Offer>, log: Logger) -> Self {
        let log = log.new(slog::o!("signal" => settings.url(), "id" => settings.id.clone()));
        Signaling {
            client: SignalClient::new(settings.clone(), Instant::now()),
            settings: Arc::new(settings),
            offers,
            connection: None,
            generation: 0,
            reconnecting: None,
            timer: None,
            log,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.reconnecting = None;
        self.generation += 1;
        let generation = self.generation;
        let settings = self.settings.clone();
        let opening = async move { connect::open(&settings).await };
        ctx.spawn(opening.into_actor(self).map(move |opened, act, ctx| {
            if act.client.is_closed() || generation != act.generation {
                return;
            }
            match opened {
                Ok(ws) => act.connected(ws, ctx),
                Err(error) => {
                    warn!(act.log, "cannot reach the signaling server"; "error" => %error);
                    act.client.connect_failed(error);
                }
            }
            act.drive(ctx);
        }));
    }

    fn connected(&mut self, ws: connect::WsStream, ctx: &mut Context<Self>) {
        let generation = self.generation;
        let (sink, source) = ws.split();
        let (frames, queued) = mpsc::channel(write_queue(&self.settings));
        let actor = ctx.address();
        actix_rt::spawn(connect::write_frames(
            sink,
            queued,
            self.settings.write_timeout,
            move |why| actor.do_send(ConnectionLost { generation, why }),
        ));
        // A last item marks the end of this connection's stream.
        let end = futures::stream::once(async { Err("the router closed the connection".into()) });
        let incoming = source
            .map(|frame| frame.map_err(|e| e.to_string()))
            .chain(end)
            .map(move |frame| Incoming { generation, frame });
        ctx.add_stream(incoming);
        self.connection = Some(OpenSocket { generation, frames });
        self.client.connected(Instant::now());
        crate::metrics::signal_connected(true);
    }

    /// Carries out the client's actions, then sets the timer for its next
    /// deadline.
    fn drive(&mut self, ctx: &mut Context<Self>) {
        while let Some(action) = self.client.poll_action() {
            match action {
                Action::Send(message) => self.write(WsMessage::Text(message.to_json().into())),
                Action::Ping => self.write(WsMessage::Ping(Vec::new().into())),
                Action::Offer {
                    session,
                    request,
                    from,
                    source,
                    sdp,
                    signed,
                    withdrawn,
                } => {
                    let (offer, answer) = Offer::placed(from, source, sdp, signed, withdrawn);
                    let actor = ctx.address();
                    // The answer (or the error of an offer dropped
                    // unanswered) goes back to the session it came on.
                    actix_rt::spawn(async move {
                        let result = answer
                            .await
                            .unwrap_or_else(|_| Err("the offer was dropped".into()));
                        actor.do_send(AnswerOffer {
                            session,
                            request,
                            result,
                        });
                    });
                    // A full or closed queue drops the offer, which answers it.
                    if self.offers.try_send(offer).is_err() {
                        warn!(self.log, "refusing an offer: nobody takes them fast enough");
                    }
                }
                Action::Reconnect { why, after } => {
                    if self.connection.take().is_some() {
                        warn!(self.log, "signaling session lost"; "why" => &why, "retry_in" => ?after);
                        crate::metrics::signal_connected(false);
                        crate::metrics::signal_reconnected();
                    }
                    // Frames still arriving on the old connection are stale.
                    self.generation += 1;
                    if self.reconnecting.is_none() {
                        self.reconnecting = Some(ctx.run_later(after, |act, ctx| act.connect(ctx)));
                    }
                }
            }
        }
        self.arm_timer(ctx);
    }

    fn write(&mut self, frame: WsMessage) {
        let Some(connection) = &self.connection else {
            return;
        };
        if connection.frames.try_send(frame).is_err() {
            let generation = connection.generation;
            self.lost(generation, "the router does not take our messages");
        }
    }

    fn lost(&mut self, generation: u64, why: &str) {
        if self.connection.as_ref().map(|c| c.generation) == Some(generation) {
            self.client.disconnected(why);
        }
    }

    fn arm_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(next) = self.client.next_deadline() else {
            return;
        };
        if let Some((at, handle)) = self.timer {
            if at <= next {
                return;
            }
            ctx.cancel_future(handle);
        }
        let wait = next.saturating_duration_since(Instant::now());
        let handle = ctx.run_later(wait, |act, ctx| {
            act.timer = None;
            act.client.tick(Instant::now());
            act.drive(ctx);
        });
        self.timer = Some((next, handle));
    }
}

impl Actor for Signaling {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        crate::metrics::signal_client_started();
        self.connect(ctx);
    }
}

/// One WebSocket frame, or the end, of the connection with the given
/// generation.
struct Incoming {
    generation: u64,
    frame: Result<WsMessage, String>,
}

impl StreamHandler<Incoming> for Signaling {
    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        if incoming.generation != self.generation || self.connection.is_none() {
            return;
        }
        let now = Instant::now();
        self.client.heard(now);
        match incoming.frame {
            Ok(WsMessage::Text(text)) => match Message::parse(&text) {
                Ok(message) => {
                    let welcomed = self.client.session().is_none();
                    self.client.received(message, now);
                    if welcomed {
                        if let Some(session) = self.client.session() {
                            info!(self.log, "signaling session open"; "session" => session);
                        }
                    }
                }
                Err(err) => {
                    warn!(self.log, "malformed message from the router"; "error" => %err);
                    self.client.malformed(&err.to_string());
                }
            },
            Ok(WsMessage::Close(_)) => self.client.disconnected("closed by the router"),
            Ok(_) => {}
            Err(why) => self.client.disconnected(&why),
        }
        self.drive(ctx);
    }

    fn finished(&mut self, _: &mut Context<Self>) {
        // One connection's stream ended (its last item said so); the actor
        // lives on and reconnects.
    }
}

/// The writer of a connection gave up.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectionLost {
    generation: u64,
    why: String,
}

impl Handler<ConnectionLost> for Signaling {
    type Result = ();

    fn handle(&mut self, lost: ConnectionLost, ctx: &mut Context<Self>) {
        self.lost(lost.generation, &lost.why);
        self.drive(ctx);
    }
}

/// The node's answer to an [`Offer`].
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct AnswerOffer {
    session: u64,
    request: u64,
    result: Result<String, String>,
}

impl Handler<AnswerOffer> for Signaling {
    type Result = ();

    fn handle(&mut self, answer: AnswerOffer, ctx: &mut Context<Self>) {
        self.client
            .answer(answer.session, answer.request, answer.result);
        self.drive(ctx);
    }
}

/// Registers our ID now and after every reconnection; resolves once the
/// router has confirmed it, or with [`SignalError::Unreachable`] when no
/// session could be opened within the connect timeout.
#[derive(Message)]
#[rtype(result = "Result<(), SignalError>")]
pub struct Listen;

impl Handler<Listen> for Signaling {
    type Result = ResponseFuture<Result<(), SignalError>>;

    fn handle(&mut self, _: Listen, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, registered) = oneshot::channel();
        let deadline = Instant::now() + self.settings.connect_timeout;
        self.client.listen(reply, deadline);
        self.drive(ctx);
        Box::pin(async move { registered.await.unwrap_or(Err(SignalError::Closed)) })
    }
}

/// Offers `sdp` to `target` and waits for its answer.
#[derive(Message)]
#[rtype(result = "Result<String, SignalError>")]
pub struct SendOffer {
    /// The target's ID.
    pub target: String,
    /// Our offer, as SDP JSON.
    pub sdp: String,
    /// How long to wait for the answer, a session included.
    pub timeout: Duration,
}

impl Handler<SendOffer> for Signaling {
    type Result = ResponseFuture<Result<String, SignalError>>;

    fn handle(&mut self, offer: SendOffer, ctx: &mut Context<Self>) -> Self::Result {
        let (reply, answer) = oneshot::channel();
        let now = Instant::now();
        self.client
            .offer(offer.target, offer.sdp, offer.timeout, reply, now);
        self.drive(ctx);
        Box::pin(async move { answer.await.unwrap_or(Err(SignalError::Closed)) })
    }
}

/// Leaves the router (GOODBYE) and stops the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSignal;

impl Handler<CloseSignal> for Signaling {
    type Result = ();

    fn handle(&mut self, _: CloseSignal, ctx: &mut Context<Self>) {
        self.client.close();
        self.drive(ctx);
        // Dropping the connection lets its writer send the GOODBYE and
        // close the WebSocket.
        self.connection = None;
        ctx.stop();
    }
}

/// Whether a session is open and our ID registered.
#[derive(Message)]
#[rtype(result = "SignalStatus")]
pub struct GetStatus;

impl Handler<GetStatus> for Signaling {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SignalStatus {
            session: self.client.session(),
            registered: self.client.is_registered(),
            last_error: self.client.last_error().cloned(),
        })
    }
}
