//! The Signaling actor: one WAMP session with the signaling router, kept
//! alive for as long as the node runs.
//!
//! WebRTC peers exchange SDP offers and answers through the router before a
//! direct link exists. The node registers a procedure named by its ID;
//! an offer is a CALL of the target's procedure with arguments
//! `[fromID, offerJSON]` whose single result is the answer JSON.
//!
//! The actor owns the session: it connects (TCP, TLS unless told
//! otherwise, WebSocket with the `wamp.2.json` subprotocol, HELLO/WELCOME),
//! registers its ID once asked to listen, and when the router goes away it
//! reconnects with a growing pause (and registers again). Offers made while
//! it is (re)connecting wait for the session, within their timeout; a call
//! that gets no answer in time is canceled (CANCEL) and fails with a
//! timeout. Incoming offers go to a bounded channel as [`Offer`]s, each
//! answered exactly once.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map, Value};
use slog::{debug, info, warn, Logger};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::stream::BoxConnection;
use crate::wamp::{code, uri, Message};

/// How to reach the signaling router, and who we are there.
#[derive(Clone)]
pub struct SignalSettings {
    /// `host:port` (the scheme follows `tls`), or a `ws://` / `wss://` URL.
    pub address: String,
    /// The realm to join.
    pub realm: String,
    /// Our ID: the procedure we register, and who our offers are from.
    pub id: String,
    /// TLS client settings; `None` for plain `ws://` (tests, local demos).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connecting and the HELLO/WELCOME exchange must finish within this.
    pub connect_timeout: Duration,
    /// Largest WebSocket message accepted.
    pub max_message_size: usize,
    /// First pause before reconnecting; it doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest pause before reconnecting.
    pub reconnect_max: Duration,
}

impl fmt::Debug for SignalSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalSettings")
            .field("address", &self.address)
            .field("realm", &self.realm)
            .field("id", &self.id)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl SignalSettings {
    /// The WebSocket URL to connect to.
    pub fn url(&self) -> String {
        if self.address.starts_with("ws://") || self.address.starts_with("wss://") {
            return self.address.clone();
        }
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.address)
    }
}

/// Why a signaling operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The router could not be reached or the WebSocket/TLS handshake failed.
    #[error("cannot reach the signaling server: {0}")]
    Connect(String),
    /// The router refused the session (unknown realm, ...).
    #[error("the signaling server refused the session: {reason}{}", detail(.message))]
    Aborted {
        /// The reason URI.
        reason: String,
        /// The router's message, if any.
        message: String,
    },
    /// Another session already registered our ID in this realm.
    #[error("the ID {0} is already registered on the signaling server")]
    AlreadyRegistered(String),
    /// Nobody registered the target ID.
    #[error("no peer {0} on the signaling server")]
    UnknownPeer(String),
    /// No answer in time; the call was canceled.
    #[error("no answer from {target} within {after:?}")]
    Timeout {
        /// The target of the offer.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// The target (or the router) answered with an error.
    #[error("the offer failed: {uri}{}", detail(.message))]
    Remote {
        /// The error URI, such as `io.babble.processing_offer`.
        uri: String,
        /// The first error argument, if any.
        message: String,
    },
    /// Not connected to the router right now (it reconnects by itself).
    #[error("not connected to the signaling server")]
    Disconnected,
    /// The signal was closed.
    #[error("signal closed")]
    Closed,
    /// The router broke the protocol.
    #[error("signaling protocol error: {0}")]
    Protocol(String),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}

/// An SDP offer from another peer, to be answered exactly once.
///
/// Dropping it unanswered answers the caller with
/// `io.babble.processing_offer`.
pub struct Offer {
    /// The offering peer's ID.
    pub from: String,
    /// The offer, as SDP JSON (`{"type":"offer","sdp":"..."}`).
    pub sdp: String,
    reply: Option<(mpsc::Sender<Message>, u64)>,
}

impl fmt::Debug for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Offer")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Offer {
    /// Answers with an SDP answer (`Ok`, as SDP JSON) or an error message.
    pub fn answer(mut self, result: Result<String, String>) {
        let Some((writer, request)) = self.reply.take() else {
            return;
        };
        let message = match result {
            Ok(answer) => Message::Yield {
                request,
                options: Map::new(),
                args: vec![Value::String(answer)],
                kwargs: Map::new(),
            },
            Err(why) => processing_error(request, why),
        };
        // The session may be gone; then the caller learns it from the router.
        let _ = writer.try_send(message);
    }
}

impl Drop for Offer {
    fn drop(&mut self) {
        if let Some((writer, request)) = self.reply.take() {
            let _ = writer.try_send(processing_error(request, "the offer was dropped".into()));
        }
    }
}

fn processing_error(request: u64, why: String) -> Message {
    Message::Error {
        request_type: code::INVOCATION,
        request,
        details: Map::new(),
        error: uri::PROCESSING_OFFER.to_owned(),
        args: vec![Value::String(why)],
        kwargs: Map::new(),
    }
}

/// A call waiting for its RESULT.
struct PendingCall {
    target: String,
    timeout: Duration,
    reply: oneshot::Sender<Result<String, SignalError>>,
    timer: SpawnHandle,
}

/// An offer waiting for a session to be sent on.
struct QueuedOffer {
    key: u64,
    offer: SendOffer,
    deadline: tokio::time::Instant,
    reply: oneshot::Sender<Result<String, SignalError>>,
}

/// The live session.
struct Session {
    id: u64,
    writer: mpsc::Sender<Message>,
    next_request: u64,
}

/// See the [module docs](self).
pub struct Signaling {
    settings: Arc<SignalSettings>,
    offers: mpsc::Sender<Offer>,
    session: Option<Session>,
    /// Bumped on every connection attempt; events of older ones are ignored.
    generation: u64,
    /// Register our ID on every (re)connection.
    listening: bool,
    registration: Registration,
    listen_waiters: Vec<oneshot::Sender<Result<(), SignalError>>>,
    pending: HashMap<u64, PendingCall>,
    queued: Vec<QueuedOffer>,
    next_queued: u64,
    pause: Duration,
    last_error: Option<SignalError>,
    closed: bool,
    log: Logger,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    None,
    Requested(u64),
    Registered(u64),
}

impl Signaling {
    /// A Signaling actor delivering incoming offers to `offers`.
    pub fn new(settings: SignalSettings, offers: mpsc::Sender<Offer>, log: Logger) -> Self {
        let log = log.new(slog::o!("signal" => settings.url(), "id" => settings.id.clone()));
        let pause = settings.reconnect_min;
        Signaling {
            settings: Arc::new(settings),
            offers,
            session: None,
            generation: 0,
            listening: false,
            registration: Registration::None,
            listen_waiters: Vec::new(),
            pending: HashMap::new(),
            queued: Vec::new(),
            next_queued: 0,
            pause,
            last_error: None,
            closed: false,
            log,
        }
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let settings = self.settings.clone();
        let attempt = async move { open_session(&settings).await };
        ctx.spawn(attempt.into_actor(self).map(move |result, act, ctx| {
            if act.closed || generation != act.generation {
                return;
            }
            match result {
                Ok((session, stream)) => act.connected(session, stream, generation, ctx),
                Err(err) => {
                    warn!(act.log, "cannot open a signaling session"; "error" => %err, "retry_in" => ?act.pause);
                    act.last_error = Some(err.clone());
                    if let SignalError::Aborted { .. } = err {
                        // A refused session (unknown realm) will not get better
                        // by itself, but the router may be reconfigured.
                        act.fail_listeners(err);
                    }
                    act.reconnect_later(ctx);
                }
            }
        }));
    }

    fn connected(
        &mut self,
        session: u64,
        stream: WsStream,
        generation: u64,
        ctx: &mut Context<Self>,
    ) {
        info!(self.log, "signaling session open"; "session" => session);
        self.last_error = None;
        self.pause = self.settings.reconnect_min;
        let (sink, source) = stream.split();
        let (writer, outgoing) = mpsc::channel(64);
        actix_rt::spawn(write_messages(sink, outgoing));
        let incoming = source.map(move |frame| Incoming {
            generation,
            frame: frame.map_err(|e| e.to_string()),
        });
        ctx.add_stream(incoming);
        self.session = Some(Session {
            id: session,
            writer,
            next_request: 1,
        });
        self.registration = Registration::None;
        if self.listening {
            self.register();
        }
        for queued in std::mem::take(&mut self.queued) {
            let remaining = queued
                .deadline
                .saturating_duration_since(tokio::time::Instant::now());
            self.call(queued.offer, remaining, queued.reply, ctx);
        }
    }

    fn reconnect_later(&mut self, ctx: &mut Context<Self>) {
        if self.closed {
            return;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(self.settings.reconnect_max);
        ctx.run_later(pause, |act, ctx| {
            if act.session.is_none() && !act.closed {
                act.connect(ctx)
            }
        });
    }

    fn disconnected(&mut self, why: &str, ctx: &mut Context<Self>) {
        if let Some(session) = self.session.take() {
            warn!(self.log, "signaling session lost"; "session" => session.id, "why" => why);
        }
        self.registration = Registration::None;
        for (_, call) in self.pending.drain() {
            ctx.cancel_future(call.timer);
            let _ = call.reply.send(Err(SignalError::Disconnected));
        }
        self.generation += 1;
        self.reconnect_later(ctx);
    }

    fn send(&mut self, message: Message) -> bool {
        match &self.session {
            Some(session) => session.writer.try_send(message).is_ok(),
            None => false,
        }
    }

    fn next_request(&mut self) -> Option<u64> {
        let session = self.session.as_mut()?;
        let request = session.next_request;
        session.next_request += 1;
        Some(request)
    }

    fn register(&mut self) {
        if self.registration != Registration::None {
            return;
        }
        let Some(request) = self.next_request() else {
            return;
        };
        let procedure = self.settings.id.clone();
        if self.send(Message::Register {
            request,
            options: Map::new(),
            procedure,
        }) {
            self.registration = Registration::Requested(request);
        }
    }

    fn fail_listeners(&mut self, error: SignalError) {
        for waiter in self.listen_waiters.drain(..) {
            let _ = waiter.send(Err(error.clone()));
        }
    }

    fn handle_message(&mut self, message: Message, ctx: &mut Context<Self>) {
        match message {
            Message::Registered {
                request,
                registration,
            } if self.registration == Registration::Requested(request) => {
                debug!(self.log, "registered"; "registration" => registration);
                self.registration = Registration::Registered(registration);
                for waiter in self.listen_waiters.drain(..) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Message::Error {
                request_type: code::REGISTER,
                request,
                error,
                ..
            } if self.registration == Registration::Requested(request) => {
                self.registration = Registration::None;
                let err = if error == uri::PROCEDURE_ALREADY_EXISTS {
                    SignalError::AlreadyRegistered(self.settings.id.clone())
                } else {
                    SignalError::Remote {
                        uri: error,
                        message: String::new(),
                    }
                };
                warn!(self.log, "cannot register our ID"; "error" => %err);
                self.fail_listeners(err);
                // An earlier session of ours may still hold the ID until the
                // router notices it is gone: try again later.
                ctx.run_later(self.settings.reconnect_max, |act, _| {
                    if act.listening && act.session.is_some() {
                        act.register()
                    }
                });
            }
            Message::Result { request, args, .. } => {
                if let Some(call) = self.pending.remove(&request) {
                    ctx.cancel_future(call.timer);
                    let answer = match args.into_iter().next() {
                        Some(Value::String(answer)) => Ok(answer),
                        Some(other @ Value::Object(_)) => Ok(other.to_string()),
                        _ => Err(SignalError::Protocol("the answer carries no SDP".into())),
                    };
                    let _ = call.reply.send(answer);
                }
            }
            Message::Error {
                request_type: code::CALL,
                request,
                error,
                args,
                ..
            } => {
                if let Some(call) = self.pending.remove(&request) {
                    ctx.cancel_future(call.timer);
                    let message = args.first().map(text_of).unwrap_or_default();
                    let err = match error.as_str() {
                        uri::NO_SUCH_PROCEDURE => SignalError::UnknownPeer(call.target),
                        uri::TIMEOUT | uri::CANCELED => SignalError::Timeout {
                            target: call.target,
                            after: call.timeout,
                        },
                        _ => SignalError::Remote {
                            uri: error,
                            message,
                        },
                    };
                    let _ = call.reply.send(Err(err));
                }
            }
            Message::Invocation { request, args, .. } => self.offered(request, args),
            Message::Interrupt { request, .. } => {
                debug!(self.log, "offer interrupted by the router"; "request" => request);
            }
            Message::Goodbye { reason, .. } => {
                self.send(Message::Goodbye {
                    details: Map::new(),
                    reason: uri::GOODBYE_AND_OUT.into(),
                });
                self.disconnected(&format!("router said goodbye: {reason}"), ctx);
            }
            Message::Abort { reason, .. } => {
                self.disconnected(&format!("router aborted: {reason}"), ctx)
            }
            other => debug!(self.log, "ignoring an unexpected message"; "message" => ?other),
        }
    }

    fn offered(&mut self, request: u64, args: Vec<Value>) {
        let Some(writer) = self.session.as_ref().map(|s| s.writer.clone()) else {
            return;
        };
        let mut args = args.into_iter();
        let (Some(Value::String(from)), Some(sdp)) = (args.next(), args.next()) else {
            let _ = writer.try_send(Message::Error {
                request_type: code::INVOCATION,
                request,
                details: Map::new(),
                error: uri::INVALID_ARGUMENT.into(),
                args: vec![json!("expected [fromID, offerSDP]")],
                kwargs: Map::new(),
            });
            return;
        };
        let offer = Offer {
            from,
            sdp: text_of(&sdp),
            reply: Some((writer, request)),
        };
        // A full or closed queue drops the offer, which answers it.
        if let Err(err) = self.offers.try_send(offer) {
            warn!(self.log, "refusing an offer: nobody takes them fast enough"; "error" => %err);
        }
    }
}

/// A string argument as is; anything else as its JSON text.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

impl Actor for Signaling {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.connect(ctx);
    }
}

/// One WebSocket frame of the session with the given generation.
struct Incoming {
    generation: u64,
    frame: Result<WsMessage, String>,
}

impl StreamHandler<Incoming> for Signaling {
    fn handle(&mut self, incoming: Incoming, ctx: &mut Context<Self>) {
        if incoming.generation != self.generation {
            return;
        }
        match incoming.frame {
            Ok(WsMessage::Text(text)) => match Message::parse(&text) {
                Ok(message) => self.handle_message(message, ctx),
                Err(err) => {
                    warn!(self.log, "malformed message from the router"; "error" => %err);
                    self.send(Message::Abort {
                        details: Map::new(),
                        reason: uri::PROTOCOL_VIOLATION.into(),
                    });
                    self.disconnected("protocol violation", ctx);
                }
            },
            Ok(WsMessage::Close(_)) => self.disconnected("closed by the router", ctx),
            Ok(_) => {}
            Err(err) => self.disconnected(&err, ctx),
        }
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        // One session's stream ended; the actor lives on and reconnects.
        if self.session.is_some() {
            self.disconnected("connection closed", ctx);
        }
    }
}

/// Registers our ID now and after every reconnection; resolves once the
/// router has confirmed it.
#[derive(Message)]
#[rtype(result = "Result<(), SignalError>")]
pub struct Listen;

impl Handler<Listen> for Signaling {
    type Result = ResponseFuture<Result<(), SignalError>>;

    fn handle(&mut self, _: Listen, _: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(async { Err(SignalError::Closed) });
        }
        self.listening = true;
        if let Registration::Registered(_) = self.registration {
            return Box::pin(async { Ok(()) });
        }
        let (tx, rx) = oneshot::channel();
        self.listen_waiters.push(tx);
        self.register();
        Box::pin(async move { rx.await.unwrap_or(Err(SignalError::Closed)) })
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
    /// How long to wait for the answer.
    pub timeout: Duration,
}

impl Handler<SendOffer> for Signaling {
    type Result = ResponseFuture<Result<String, SignalError>>;

    fn handle(&mut self, offer: SendOffer, ctx: &mut Context<Self>) -> Self::Result {
        if self.closed {
            return Box::pin(async { Err(SignalError::Closed) });
        }
        let (reply, answer) = oneshot::channel();
        if self.session.is_some() {
            let timeout = offer.timeout;
            self.call(offer, timeout, reply, ctx);
        } else {
            // Wait for the session, within the offer's own timeout.
            let key = self.next_queued;
            self.next_queued += 1;
            let deadline = tokio::time::Instant::now() + offer.timeout;
            ctx.run_later(offer.timeout, move |act, _| {
                if let Some(at) = act.queued.iter().position(|q| q.key == key) {
                    let queued = act.queued.swap_remove(at);
                    let err = SignalError::Timeout {
                        target: queued.offer.target,
                        after: queued.offer.timeout,
                    };
                    let _ = queued.reply.send(Err(err));
                }
            });
            self.queued.push(QueuedOffer {
                key,
                offer,
                deadline,
                reply,
            });
        }
        Box::pin(async move { answer.await.unwrap_or(Err(SignalError::Closed)) })
    }
}

impl Signaling {
    /// Sends the CALL of `offer` and arms its timeout (`remaining`).
    fn call(
        &mut self,
        offer: SendOffer,
        remaining: Duration,
        reply: oneshot::Sender<Result<String, SignalError>>,
        ctx: &mut Context<Self>,
    ) {
        let Some(request) = self.next_request() else {
            let _ = reply.send(Err(SignalError::Disconnected));
            return;
        };
        let call = Message::Call {
            request,
            options: [("timeout".to_owned(), json!(remaining.as_millis() as u64))]
                .into_iter()
                .collect(),
            procedure: offer.target.clone(),
            args: vec![
                Value::String(self.settings.id.clone()),
                Value::String(offer.sdp),
            ],
            kwargs: Map::new(),
        };
        if !self.send(call) {
            let _ = reply.send(Err(SignalError::Disconnected));
            return;
        }
        let timer = ctx.run_later(remaining, move |act, _| {
            if let Some(call) = act.pending.remove(&request) {
                // Tell the router we gave up, so that it interrupts the callee.
                let options = [("mode".to_owned(), json!("killnowait"))]
                    .into_iter()
                    .collect();
                act.send(Message::Cancel { request, options });
                let _ = call.reply.send(Err(SignalError::Timeout {
                    target: call.target,
                    after: call.timeout,
                }));
            }
        });
        self.pending.insert(
            request,
            PendingCall {
                target: offer.target,
                timeout: offer.timeout,
                reply,
                timer,
            },
        );
    }
}

/// Leaves the router (GOODBYE) and stops the actor.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseSignal;

impl Handler<CloseSignal> for Signaling {
    type Result = ();

    fn handle(&mut self, _: CloseSignal, ctx: &mut Context<Self>) {
        self.closed = true;
        self.send(Message::Goodbye {
            details: Map::new(),
            reason: uri::CLOSE_NORMAL.into(),
        });
        self.session = None;
        for (_, call) in self.pending.drain() {
            let _ = call.reply.send(Err(SignalError::Closed));
        }
        for queued in self.queued.drain(..) {
            let _ = queued.reply.send(Err(SignalError::Closed));
        }
        self.fail_listeners(SignalError::Closed);
        ctx.stop();
    }
}

/// Whether a session is open and our ID registered.
#[derive(Message)]
#[rtype(result = "SignalStatus")]
pub struct GetStatus;

/// See [`GetStatus`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalStatus {
    /// The router's session ID, when connected.
    pub session: Option<u64>,
    /// Whether our ID is registered.
    pub registered: bool,
    /// Why the last attempt to open a session failed, if it did.
    pub last_error: Option<SignalError>,
}

impl Handler<GetStatus> for Signaling {
    type Result = MessageResult<GetStatus>;

    fn handle(&mut self, _: GetStatus, _: &mut Context<Self>) -> Self::Result {
        MessageResult(SignalStatus {
            session: self.session.as_ref().map(|s| s.id),
            registered: matches!(self.registration, Registration::Registered(_)),
            last_error: self.last_error.clone(),
        })
    }
}

type WsStream = WebSocketStream<BoxConnection>;

/// Connects, upgrades to WebSocket and joins the realm.
async fn open_session(settings: &SignalSettings) -> Result<(u64, WsStream), SignalError> {
    tokio::time::timeout(settings.connect_timeout, handshake(settings))
        .await
        .map_err(|_| {
            SignalError::Connect(format!("no session within {:?}", settings.connect_timeout))
        })?
}

async fn handshake(settings: &SignalSettings) -> Result<(u64, WsStream), SignalError> {
    let connect_error = |e: &dyn fmt::Display| SignalError::Connect(e.to_string());
    let url = settings.url();
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| connect_error(&e))?;
    request.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        crate::wamp::SUBPROTOCOL
            .parse()
            .expect("a valid header value"),
    );
    let host = request
        .uri()
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_owned();
    let port = request
        .uri()
        .port_u16()
        .unwrap_or(if url.starts_with("wss") { 443 } else { 80 });
    let tcp = TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| connect_error(&e))?;
    tcp.set_nodelay(true).map_err(|e| connect_error(&e))?;
    let stream: BoxConnection = if url.starts_with("wss://") {
        let tls = settings
            .tls
            .clone()
            .ok_or_else(|| SignalError::Connect("wss:// needs TLS settings".into()))?;
        let name =
            rustls::pki_types::ServerName::try_from(host.clone()).map_err(|e| connect_error(&e))?;
        let tls_stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| SignalError::Connect(format!("TLS handshake with {host} failed: {e}")))?;
        Box::new(tls_stream)
    } else {
        Box::new(tcp)
    };
    let config = WebSocketConfig::default()
        .max_message_size(Some(settings.max_message_size))
        .max_frame_size(Some(settings.max_message_size));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| connect_error(&e))?;
    let hello = Message::Hello {
        realm: settings.realm.clone(),
        details: hello_details(),
    };
    ws.send(WsMessage::Text(hello.to_json().into()))
        .await
        .map_err(|e| connect_error(&e))?;
    while let Some(frame) = ws.next().await {
        let text = match frame.map_err(|e| connect_error(&e))? {
            WsMessage::Text(text) => text,
            WsMessage::Close(_) => break,
            _ => continue,
        };
        match Message::parse(&text).map_err(|e| SignalError::Protocol(e.to_string()))? {
            Message::Welcome { session, .. } => return Ok((session, ws)),
            Message::Abort { reason, details } => {
                let message = details.get("message").map(text_of).unwrap_or_default();
                return Err(SignalError::Aborted { reason, message });
            }
            other => {
                return Err(SignalError::Protocol(format!(
                    "expected WELCOME, got {other:?}"
                )))
            }
        }
    }
    Err(SignalError::Connect(
        "the router closed the connection during the handshake".into(),
    ))
}

fn hello_details() -> Map<String, Value> {
    let features = json!({ "features": { "call_canceling": true, "call_timeout": true } });
    let roles = json!({ "caller": features, "callee": { "features": { "call_canceling": true } } });
    [
        ("roles".to_owned(), roles),
        (
            "agent".to_owned(),
            json!(concat!("babble-net/", env!("CARGO_PKG_VERSION"))),
        ),
    ]
    .into_iter()
    .collect()
}

async fn write_messages(
    mut sink: futures::stream::SplitSink<WsStream, WsMessage>,
    mut outgoing: mpsc::Receiver<Message>,
) {
    while let Some(message) = outgoing.recv().await {
        let goodbye = matches!(message, Message::Goodbye { .. } | Message::Abort { .. });
        if sink
            .send(WsMessage::Text(message.to_json().into()))
            .await
            .is_err()
        {
            return;
        }
        if goodbye {
            break;
        }
    }
    let _ = sink.close().await;
}
