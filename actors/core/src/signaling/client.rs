//! The signaling client as a state machine: WAMP messages and timer ticks
//! in, messages to send and offers to hand out as [`Action`]s; no socket,
//! no task, no clock of its own, so every case is tested in microseconds.
//!
//! It lives as long as the node: one WAMP session after another (the
//! driver reconnects when told to), registering our ID on each one while
//! the node listens. Everything it keeps is bounded: offers waiting for a
//! session, calls in flight, offers being answered (in total and per
//! caller). Every wait has a deadline checked by [`SignalClient::tick`]: a
//! call not answered in time is canceled and fails with a timeout; a
//! router from which nothing arrives for the keep-alive limit is given up
//! and the session reopened; a listener not registered within the connect
//! timeout is told why.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::answering::OffersAnswered;
use super::error::SignalError;
use super::replay::ReplayWindow;
use super::settings::SignalSettings;
use super::signed::{self, Sdp};
use super::wamp::{code, uri, Message, CALLER_ADDRESS};

/// Where the answer to an offer of ours goes.
pub type AnswerSender = oneshot::Sender<Result<String, SignalError>>;
/// Where the outcome of a listen request goes.
pub type ListenSender = oneshot::Sender<Result<(), SignalError>>;

/// What the driver must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Write this message on the current connection.
    Send(Message),
    /// Ping the router (a WebSocket ping): it proves the link is alive.
    Ping,
    /// Hand this offer to the node; answer it with
    /// [`SignalClient::answer`] and the same `session` and `request`.
    Offer {
        /// The session it arrived on.
        session: u64,
        /// Its INVOCATION request ID.
        request: u64,
        /// The offering peer's ID.
        from: String,
        /// What its place counts under: its network address as the router
        /// gave it, else `from`.
        source: String,
        /// The offer, as SDP JSON.
        sdp: String,
        /// Whether `from`'s key was checked to have signed it (the client
        /// has a key, so it takes signed offers only).
        signed: bool,
        /// Cancelled if the offer is withdrawn before it is answered (its
        /// place went to a newcomer, or the session ended): answering it
        /// is then wasted work.
        withdrawn: CancellationToken,
    },
    /// Drop the connection (if any) and open a new one after `after`.
    Reconnect {
        /// Why, for the log.
        why: String,
        /// The pause before the next attempt.
        after: Duration,
    },
}

/// Where the connection to the router stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RouterState {
    /// No connection; the driver is (re)connecting.
    Down,
    /// Connected, HELLO sent, waiting for WELCOME until `deadline`.
    Joining { deadline: Instant },
    /// A session is open.
    Up { session: u64, next_request: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Registration {
    None,
    Requested(u64),
    Registered,
}

/// A CALL of ours waiting for its RESULT.
struct OutCall {
    target: String,
    timeout: Duration,
    deadline: Instant,
    reply: AnswerSender,
}

/// An offer of ours waiting for a session to be sent on.
struct QueuedOffer {
    target: String,
    sdp: String,
    timeout: Duration,
    deadline: Instant,
    reply: AnswerSender,
}

/// See the [module docs](self).
pub struct SignalClient {
    settings: SignalSettings,
    link: RouterState,
    listening: bool,
    registration: Registration,
    listeners: Vec<(Instant, ListenSender)>,
    calls: HashMap<u64, OutCall>,
    queued: VecDeque<QueuedOffer>,
    /// Offers handed to the node and not answered yet.
    answering: OffersAnswered,
    pause: Duration,
    last_heard: Instant,
    last_ping: Instant,
    last_error: Option<SignalError>,
    closed: bool,
    actions: VecDeque<Action>,
    /// Signatures of offers and answers seen lately (replays are refused).
    seen: ReplayWindow,
    /// The wall clock at `started`, in Unix milliseconds, for signed SDP.
    wall_at_start: u64,
    started: Instant,
}

impl SignalClient {
    /// A client with `settings`, not connected yet.
    pub fn new(settings: SignalSettings, now: Instant) -> SignalClient {
        let pause = settings.reconnect_min;
        let answering = OffersAnswered::new(settings.max_offers, settings.max_offers_per_caller);
        SignalClient {
            settings,
            link: RouterState::Down,
            listening: false,
            registration: Registration::None,
            listeners: Vec::new(),
            calls: HashMap::new(),
            queued: VecDeque::new(),
            answering,
            pause,
            last_heard: now,
            last_ping: now,
            last_error: None,
            closed: false,
            actions: VecDeque::new(),
            seen: ReplayWindow::default(),
            wall_at_start: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            started: now,
        }
    }

    /// The wall clock at `now`, in Unix milliseconds.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        self.wall_at_start + now.saturating_duration_since(self.started).as_millis() as u64
    }

    /// The next thing the driver must do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The router's session ID, while a session is open.
    pub fn session(&self) -> Option<u64> {
        match self.link {
            RouterState::Up { session, .. } => Some(session),
            _ => None,
        }
    }

    /// Whether our ID is registered on the current session.
    pub fn is_registered(&self) -> bool {
        self.registration == Registration::Registered
    }

    /// Why the last attempt to open a session failed, if it did.
    pub fn last_error(&self) -> Option<&SignalError> {
        self.last_error.as_ref()
    }

    /// Whether [`SignalClient::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The earliest time [`SignalClient::tick`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut next = self.listeners.iter().map(|(at, _)| *at).min();
        let mut consider = |at: Instant| next = Some(next.map_or(at, |n: Instant| n.min(at)));
        for call in self.calls.values() {
            consider(call.deadline);
        }
        for queued in &self.queued {
            consider(queued.deadline);
        }
        match self.link {
            RouterState::Down => {}
            RouterState::Joining { deadline } => consider(deadline),
            RouterState::Up { .. } => {
                let keepalive = self.settings.keepalive;
                consider((self.last_ping + keepalive).min(self.last_heard + keepalive * 3));
            }
        }
        next
    }

    /// The driver opened a connection: say HELLO.
    pub fn connected(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        self.link = RouterState::Joining {
            deadline: now + self.settings.connect_timeout,
        };
        self.last_heard = now;
        let mut details = hello_details();
        if self.settings.key.is_some() {
            details.insert("authmethods".into(), json!([uri::AUTH_METHOD]));
            details.insert("authid".into(), json!(self.settings.id));
        }
        self.actions.push_back(Action::Send(Message::Hello {
            realm: self.settings.realm.clone(),
            details,
        }));
    }

    /// The driver could not open a connection: try again later.
    pub fn connect_failed(&mut self, error: SignalError) {
        self.last_error = Some(error.clone());
        if matches!(error, SignalError::Aborted { .. }) {
            // A refused session (unknown realm) will not get better by
            // itself; listeners learn it now, while retries go on in case
            // the router is reconfigured.
            self.fail_listeners(&error);
        }
        self.reconnect(&error.to_string());
    }

    /// The connection broke (read error, closed, write timeout).
    pub fn disconnected(&mut self, why: &str) {
        if self.link != RouterState::Down {
            self.reconnect(why);
        }
    }

    /// Any frame arrived from the router (a pong included).
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = now;
    }

    /// Starts registering our ID, now and on every new session; `reply`
    /// learns once the router confirmed it, or why not by `deadline`.
    pub fn listen(&mut self, reply: ListenSender, deadline: Instant) {
        if self.closed {
            let _ = reply.send(Err(SignalError::Closed));
            return;
        }
        self.listening = true;
        if self.registration == Registration::Registered {
            let _ = reply.send(Ok(()));
            return;
        }
        self.listeners.push((deadline, reply));
        self.register();
    }

    /// Offers `sdp` to `target`; `reply` gets the answer or why not,
    /// within `timeout` (waiting for a session counts).
    pub fn offer(
        &mut self,
        target: String,
        sdp: String,
        timeout: Duration,
        reply: AnswerSender,
        now: Instant,
    ) {
        if self.closed {
            let _ = reply.send(Err(SignalError::Closed));
            return;
        }
        let queued = QueuedOffer {
            target,
            sdp,
            timeout,
            deadline: now + timeout,
            reply,
        };
        if matches!(self.link, RouterState::Up { .. }) {
            self.call(queued, now);
        } else if self.queued.len() < self.settings.max_queued_offers {
            self.queued.push_back(queued);
        } else {
            let _ = queued.reply.send(Err(SignalError::Disconnected));
        }
    }

    /// The node's answer to the offer `request` of `session`: the SDP
    /// answer, or why it could not answer. Answers to offers the router
    /// no longer waits for (an earlier session, interrupted) are dropped.
    pub fn answer(&mut self, session: u64, request: u64, result: Result<String, String>) {
        if self.session() != Some(session) {
            return;
        }
        let Some(caller) = self.answering.finish(request) else {
            return;
        };
        let message = match result {
            Ok(answer) => {
                let mut args = Vec::with_capacity(2);
                if let Some(key) = &self.settings.key {
                    let now_ms = self.wall_ms(Instant::now());
                    let id = &self.settings.id;
                    args.push(signed::sign(key, Sdp::Answer, id, &caller, &answer, now_ms));
                    // A peer we link with: its offers stay remembered.
                    self.seen.protect(&caller, now_ms);
                }
                args.insert(0, Value::String(answer));
                Message::Yield {
                    request,
                    options: Map::new(),
                    args,
                    kwargs: Map::new(),
                }
            }
            Err(why) => processing_error(request, why),
        };
        self.actions.push_back(Action::Send(message));
    }

    /// Leaves the router (GOODBYE); everything waiting fails with
    /// [`SignalError::Closed`].
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        if matches!(self.link, RouterState::Up { .. }) {
            self.actions.push_back(Action::Send(Message::Goodbye {
                details: Map::new(),
                reason: uri::CLOSE_NORMAL.into(),
            }));
        }
        self.link = RouterState::Down;
        for (_, call) in self.calls.drain() {
            let _ = call.reply.send(Err(SignalError::Closed));
        }
        for queued in self.queued.drain(..) {
            let _ = queued.reply.send(Err(SignalError::Closed));
        }
        self.fail_listeners(&SignalError::Closed);
    }

    /// Ends what is due at `now`: timed-out calls (CANCEL), offers that
    /// waited too long for a session, listeners not registered in time, a
    /// WELCOME that does not come, a router gone silent; pings when due.
    pub fn tick(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .calls
            .iter()
            .filter(|(_, call)| call.deadline <= now)
            .map(|(request, _)| *request)
            .collect();
        for request in due {
            let call = self.calls.remove(&request).expect("listed above");
            // Tell the router we gave up, so that it interrupts the callee.
            let options = [("mode".to_owned(), json!("killnowait"))]
                .into_iter()
                .collect();
            self.actions
                .push_back(Action::Send(Message::Cancel { request, options }));
            let _ = call.reply.send(Err(SignalError::Timeout {
                target: call.target,
                after: call.timeout,
            }));
        }
        let (expired, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.queued)
            .into_iter()
            .partition(|queued| queued.deadline <= now);
        self.queued = waiting;
        for queued in expired {
            let _ = queued.reply.send(Err(SignalError::Timeout {
                target: queued.target,
                after: queued.timeout,
            }));
        }
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.listeners)
            .into_iter()
            .partition(|(deadline, _)| *deadline <= now);
        self.listeners = waiting;
        for (_, reply) in late {
            let why = match &self.last_error {
                Some(error) => error.to_string(),
                None => "no session yet".to_owned(),
            };
            let _ = reply.send(Err(SignalError::Unreachable {
                address: self.settings.url(),
                after: self.settings.connect_timeout,
                why,
            }));
        }
        match self.link {
            RouterState::Joining { deadline } if deadline <= now => {
                let error = SignalError::Connect(format!(
                    "no WELCOME within {:?}",
                    self.settings.connect_timeout
                ));
                self.last_error = Some(error.clone());
                self.reconnect(&error.to_string());
            }
            RouterState::Up { .. } => {
                let limit = self.settings.keepalive * 3;
                if now.duration_since(self.last_heard) >= limit {
                    self.reconnect(&format!("nothing from the router for {limit:?}"));
                } else if now.duration_since(self.last_ping) >= self.settings.keepalive {
                    self.last_ping = now;
                    self.actions.push_back(Action::Ping);
                }
            }
            _ => {}
        }
    }

    /// A message from the router.
    pub fn received(&mut self, message: Message, now: Instant) {
        self.last_heard = now;
        if self.closed {
            return;
        }
        if let RouterState::Joining { .. } = self.link {
            return self.joining(message, now);
        }
        let RouterState::Up { session, .. } = self.link else {
            return;
        };
        match message {
            Message::Registered { request, .. }
                if self.registration == Registration::Requested(request) =>
            {
                self.registration = Registration::Registered;
                for (_, reply) in self.listeners.drain(..) {
                    let _ = reply.send(Ok(()));
                }
            }
            Message::Error {
                request_type: code::REGISTER,
                request,
                error,
                ..
            } if self.registration == Registration::Requested(request) => {
                self.registration = Registration::None;
                let error = if error == uri::PROCEDURE_ALREADY_EXISTS {
                    SignalError::AlreadyRegistered(self.settings.id.clone())
                } else {
                    SignalError::Remote {
                        uri: error,
                        message: String::new(),
                    }
                };
                self.fail_listeners(&error);
                // An earlier session of ours may hold the ID until the
                // router notices it is gone: a new session tries again.
                self.reconnect_after(&error.to_string(), self.settings.reconnect_max);
            }
            Message::Result { request, args, .. } => {
                if let Some(call) = self.calls.remove(&request) {
                    let answer = match args.first() {
                        Some(Value::String(answer)) => Ok(answer.clone()),
                        Some(other @ Value::Object(_)) => Ok(other.to_string()),
                        _ => Err(SignalError::Protocol("the answer carries no SDP".into())),
                    };
                    let answer = answer.and_then(|answer| {
                        self.check_signed(Sdp::Answer, &call.target, &answer, args.get(1), now)
                            .map_err(SignalError::Unauthenticated)?;
                        if self.settings.key.is_some() {
                            // A peer we link with: its answers stay remembered.
                            let now_ms = self.wall_ms(now);
                            self.seen.protect(&call.target, now_ms);
                        }
                        Ok(answer)
                    });
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
                if let Some(call) = self.calls.remove(&request) {
                    let message = args.first().map(text_of).unwrap_or_default();
                    let OutCall {
                        target,
                        timeout,
                        reply,
                        ..
                    } = call;
                    let _ = reply.send(Err(call_error(target, timeout, error, message)));
                }
            }
            Message::Invocation {
                request,
                args,
                details,
                ..
            } => self.invoked(session, request, args, &details, now),
            Message::Interrupt { request, .. } => {
                // The caller gave up: its answer would go nowhere.
                self.answering.finish(request);
            }
            Message::Goodbye { reason, .. } => {
                self.actions.push_back(Action::Send(Message::Goodbye {
                    details: Map::new(),
                    reason: uri::GOODBYE_AND_OUT.into(),
                }));
                self.reconnect(&format!("router said goodbye: {reason}"));
            }
            Message::Abort { reason, .. } => self.reconnect(&format!("router aborted: {reason}")),
            _ => {}
        }
    }

    /// The driver read something that is not a WAMP message.
    pub fn malformed(&mut self, why: &str) {
        if matches!(self.link, RouterState::Up { .. }) {
            self.actions.push_back(Action::Send(Message::Abort {
                details: Map::new(),
                reason: uri::PROTOCOL_VIOLATION.into(),
            }));
        }
        self.disconnected(&format!("protocol violation: {why}"));
    }

    fn joining(&mut self, message: Message, now: Instant) {
        match message {
            Message::Welcome { session, .. } => {
                self.link = RouterState::Up {
                    session,
                    next_request: 1,
                };
                self.last_error = None;
                self.pause = self.settings.reconnect_min;
                self.last_ping = now;
                self.registration = Registration::None;
                if self.listening {
                    self.register();
                }
                for queued in std::mem::take(&mut self.queued) {
                    self.call(queued, now);
                }
            }
            Message::Abort { reason, details } => {
                let message = details.get("message").map(text_of).unwrap_or_default();
                self.connect_failed(SignalError::Aborted { reason, message });
            }
            Message::Challenge { authmethod, extra } => {
                let challenge = extra
                    .get("challenge")
                    .and_then(Value::as_str)
                    .and_then(|hex| hex::decode(hex).ok());
                match (&self.settings.key, challenge) {
                    (Some(key), Some(challenge)) if authmethod == uri::AUTH_METHOD => {
                        let signature = hex::encode(key.sign(&challenge));
                        self.actions.push_back(Action::Send(Message::Authenticate {
                            signature,
                            extra: Map::new(),
                        }));
                    }
                    (None, _) => self.connect_failed(SignalError::Unauthenticated(
                        "the signaling server requires authentication: give the node its key"
                            .into(),
                    )),
                    _ => self.connect_failed(SignalError::Protocol(format!(
                        "a {authmethod} challenge this client cannot answer"
                    ))),
                }
            }
            other => {
                let error = SignalError::Protocol(format!("expected WELCOME, got {other:?}"));
                self.last_error = Some(error.clone());
                self.reconnect(&error.to_string());
            }
        }
    }

    fn next_request(&mut self) -> Option<u64> {
        match &mut self.link {
            RouterState::Up { next_request, .. } => {
                let request = *next_request;
                *next_request += 1;
                Some(request)
            }
            _ => None,
        }
    }

    fn register(&mut self) {
        if self.registration != Registration::None {
            return;
        }
        let Some(request) = self.next_request() else {
            return;
        };
        self.registration = Registration::Requested(request);
        self.actions.push_back(Action::Send(Message::Register {
            request,
            options: Map::new(),
            procedure: self.settings.id.clone(),
        }));
    }

    fn call(&mut self, offer: QueuedOffer, now: Instant) {
        if self.calls.len() >= self.settings.max_calls {
            let _ = offer.reply.send(Err(SignalError::Busy(
                "too many offers of ours in flight".into(),
            )));
            return;
        }
        let Some(request) = self.next_request() else {
            let _ = offer.reply.send(Err(SignalError::Disconnected));
            return;
        };
        let remaining = offer.deadline.saturating_duration_since(now);
        let mut args = Vec::with_capacity(3);
        args.push(Value::String(self.settings.id.clone()));
        // Anonymous mode sends exactly two arguments: a Go callee refuses
        // any other count.
        if let Some(key) = &self.settings.key {
            let id = &self.settings.id;
            let now_ms = self.wall_ms(now);
            args.push(Value::String(offer.sdp.clone()));
            args.push(signed::sign(
                key,
                Sdp::Offer,
                id,
                &offer.target,
                &offer.sdp,
                now_ms,
            ));
        } else {
            args.push(Value::String(offer.sdp));
        }
        self.actions.push_back(Action::Send(Message::Call {
            request,
            options: [("timeout".to_owned(), json!(remaining.as_millis() as u64))]
                .into_iter()
                .collect(),
            procedure: offer.target.clone(),
            args,
            kwargs: Map::new(),
        }));
        self.calls.insert(
            request,
            OutCall {
                target: offer.target,
                timeout: offer.timeout,
                deadline: offer.deadline,
                reply: offer.reply,
            },
        );
    }

    /// An offer from another peer, handed to the node unless it would go
    /// over the limits.
    fn invoked(
        &mut self,
        session: u64,
        request: u64,
        args: Vec<Value>,
        details: &Map<String, Value>,
        now: Instant,
    ) {
        let signature = args.get(2).cloned();
        let mut args = args.into_iter();
        let (Some(Value::String(from)), Some(sdp)) = (args.next(), args.next()) else {
            self.actions.push_back(Action::Send(Message::Error {
                request_type: code::INVOCATION,
                request,
                details: Map::new(),
                error: uri::INVALID_ARGUMENT.into(),
                args: vec![json!("expected [fromID, offerSDP]")],
                kwargs: Map::new(),
            }));
            return;
        };
        let sdp = text_of(&sdp);
        // The signature is checked first, the caps next, and only an offer
        // within them is remembered against replays: offers refused by a
        // cap cannot fill the replay window.
        let digest = match self.verify_signed(Sdp::Offer, &from, &sdp, signature.as_ref(), now) {
            Ok(digest) => digest,
            Err(why) => {
                self.actions
                    .push_back(Action::Send(processing_error(request, why)));
                return;
            }
        };
        if let Some(why) = self.answering.refusal(request, &from) {
            self.actions
                .push_back(Action::Send(processing_error(request, why.to_owned())));
            return;
        }
        // A replay is refused before it can take another offer's place.
        if let Err(why) = self.first_time(digest, &from, now) {
            self.actions
                .push_back(Action::Send(processing_error(request, why)));
            return;
        }
        let address = details.get(CALLER_ADDRESS).and_then(Value::as_str);
        let source = OffersAnswered::source(address, &from).to_owned();
        let admitted = match self
            .answering
            .admit(request, &from, &source, now.into_std())
        {
            Ok(admitted) => admitted,
            Err(why) => {
                self.actions
                    .push_back(Action::Send(processing_error(request, why.to_owned())));
                return;
            }
        };
        if let Some(displaced) = admitted.displaced {
            self.actions.push_back(Action::Send(processing_error(
                displaced,
                "withdrawn for an offer from an address with fewer offers being answered".into(),
            )));
        }
        self.actions.push_back(Action::Offer {
            session,
            request,
            from,
            source,
            sdp,
            signed: self.settings.key.is_some(),
            withdrawn: admitted.withdrawn,
        });
    }

    /// With a key, checks the signature of SDP that `signer` sent us, and
    /// that it was not seen before; without one, nothing to check.
    fn check_signed(
        &mut self,
        kind: Sdp,
        signer: &str,
        sdp: &str,
        argument: Option<&Value>,
        now: Instant,
    ) -> Result<(), String> {
        let digest = self.verify_signed(kind, signer, sdp, argument, now)?;
        self.first_time(digest, signer, now)
    }

    /// With a key, checks the signature of SDP that `signer` sent us and
    /// returns the digest of what was signed; without one, nothing to
    /// check (`None`).
    fn verify_signed(
        &self,
        kind: Sdp,
        signer: &str,
        sdp: &str,
        argument: Option<&Value>,
        now: Instant,
    ) -> Result<Option<signed::SignedDigest>, String> {
        if self.settings.key.is_none() {
            return Ok(None);
        }
        let now_ms = self.wall_ms(now);
        let max_age = self.settings.max_offer_age;
        let id = &self.settings.id;
        signed::verify(kind, signer, id, sdp, argument, now_ms, max_age).map(Some)
    }

    /// Remembers a verified offer or answer; an error if it was seen
    /// before.
    fn first_time(
        &mut self,
        digest: Option<signed::SignedDigest>,
        signer: &str,
        now: Instant,
    ) -> Result<(), String> {
        let Some(digest) = digest else {
            return Ok(());
        };
        let now_ms = self.wall_ms(now);
        match self
            .seen
            .first_time(digest, signer, now_ms, self.settings.max_offer_age)
        {
            true => Ok(()),
            false => Err("a replayed offer or answer".into()),
        }
    }

    fn fail_listeners(&mut self, error: &SignalError) {
        for (_, reply) in self.listeners.drain(..) {
            let _ = reply.send(Err(error.clone()));
        }
    }

    fn reconnect(&mut self, why: &str) {
        let after = self.pause;
        self.pause = (self.pause * 2).min(self.settings.reconnect_max);
        self.reconnect_after(why, after);
    }

    /// The session is over: calls in flight fail (the router forgot them),
    /// offers being answered are forgotten; queued offers wait on.
    fn reconnect_after(&mut self, why: &str, after: Duration) {
        self.link = RouterState::Down;
        self.registration = Registration::None;
        for (_, call) in self.calls.drain() {
            let _ = call.reply.send(Err(SignalError::Disconnected));
        }
        self.answering.clear();
        if !self.closed {
            self.actions.push_back(Action::Reconnect {
                why: why.to_owned(),
                after,
            });
        }
    }
}

/// The error of a failed CALL, by its URI.
fn call_error(target: String, timeout: Duration, error: String, message: String) -> SignalError {
    match error.as_str() {
        uri::NO_SUCH_PROCEDURE => SignalError::UnknownPeer(target),
        uri::TIMEOUT | uri::CANCELED => SignalError::Timeout {
            target,
            after: timeout,
        },
        uri::CALLEE_BUSY | uri::TOO_MANY_CALLS => {
            SignalError::Busy(if message.is_empty() { error } else { message })
        }
        _ => SignalError::Remote {
            uri: error,
            message,
        },
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

/// A string argument as is; anything else as its JSON text.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> SignalSettings {
        SignalSettings {
            keepalive: Duration::from_secs(1),
            max_offers: 3,
            max_offers_per_caller: 2,
            max_queued_offers: 2,
            max_calls: 4,
            ..SignalSettings::new("ws://router", "main", "me")
        }
    }

    fn actions(client: &mut SignalClient) -> Vec<Action> {
        std::iter::from_fn(|| client.poll_action()).collect()
    }

    fn sent(client: &mut SignalClient) -> Vec<Message> {
        actions(client)
            .into_iter()
            .filter_map(|action| match action {
                Action::Send(message) => Some(message),
                _ => None,
            })
            .collect()
    }

    /// A client with a session open at `now`.
    fn joined(now: Instant) -> SignalClient {
        let mut client = SignalClient::new(settings(), now);
        client.connected(now);
        assert!(
            matches!(&sent(&mut client)[..], [Message::Hello { realm, .. }] if realm == "main")
        );
        client.received(
            Message::Welcome {
                session: 77,
                details: Map::new(),
            },
            now,
        );
        client
    }

    fn invocation(request: u64, from: &str) -> Message {
        Message::Invocation {
            request,
            registration: 1,
            details: Map::new(),
            args: vec![json!(from), json!("{\"type\":\"offer\"}")],
            kwargs: Map::new(),
        }
    }

    #[test]
    fn listening_registers_our_id_and_again_on_every_new_session() {
        let now = Instant::now();
        let mut client = joined(now);
        let (tx, mut rx) = oneshot::channel();
        client.listen(tx, now + Duration::from_secs(5));
        let [Message::Register {
            request, procedure, ..
        }] = &sent(&mut client)[..]
        else {
            panic!()
        };
        assert_eq!(procedure, "me");
        client.received(
            Message::Registered {
                request: *request,
                registration: 9,
            },
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), Ok(()));
        assert!(client.is_registered());

        client.disconnected("gone");
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Reconnect { .. }]
        ));
        assert!(!client.is_registered());
        client.connected(now);
        client.received(
            Message::Welcome {
                session: 78,
                details: Map::new(),
            },
            now,
        );
        assert!(matches!(
            &sent(&mut client)[..],
            [Message::Hello { .. }, Message::Register { .. }]
        ));
    }

    #[test]
    fn a_listener_not_registered_in_time_learns_why() {
        let now = Instant::now();
        let mut client = SignalClient::new(settings(), now);
        let (tx, mut rx) = oneshot::channel();
        client.listen(tx, now + Duration::from_secs(2));
        client.connect_failed(SignalError::Connect("connection refused".into()));
        client.tick(now + Duration::from_secs(1));
        assert!(rx.try_recv().is_err(), "still waiting");
        client.tick(now + Duration::from_secs(2));
        let error = rx.try_recv().unwrap().unwrap_err();
        assert!(
            matches!(&error, SignalError::Unreachable { why, .. } if why.contains("connection refused")),
            "{error}"
        );
    }

    #[test]
    fn an_offer_waits_for_a_session_within_its_timeout() {
        let now = Instant::now();
        let mut client = SignalClient::new(settings(), now);
        let (tx, mut rx) = oneshot::channel();
        client.offer("bob".into(), "sdp".into(), Duration::from_secs(3), tx, now);
        let (late_tx, mut late_rx) = oneshot::channel();
        client.offer(
            "carol".into(),
            "sdp".into(),
            Duration::from_secs(1),
            late_tx,
            now,
        );
        // A third does not fit in the queue.
        let (full_tx, mut full_rx) = oneshot::channel();
        client.offer(
            "dave".into(),
            "sdp".into(),
            Duration::from_secs(1),
            full_tx,
            now,
        );
        assert_eq!(full_rx.try_recv().unwrap(), Err(SignalError::Disconnected));
        client.tick(now + Duration::from_secs(1));
        assert!(matches!(
            late_rx.try_recv().unwrap(),
            Err(SignalError::Timeout { .. })
        ));
        client.connected(now + Duration::from_secs(2));
        client.received(
            Message::Welcome {
                session: 1,
                details: Map::new(),
            },
            now,
        );
        let [_, Message::Call {
            request,
            procedure,
            args,
            ..
        }] = &sent(&mut client)[..]
        else {
            panic!()
        };
        assert_eq!(
            (procedure.as_str(), args.clone()),
            ("bob", vec![json!("me"), json!("sdp")])
        );
        client.received(
            Message::Result {
                request: *request,
                details: Map::new(),
                args: vec![json!("answer")],
                kwargs: Map::new(),
            },
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), Ok("answer".to_owned()));
    }

    #[test]
    fn a_call_without_answer_is_canceled_and_times_out() {
        let now = Instant::now();
        let mut client = joined(now);
        let (tx, mut rx) = oneshot::channel();
        client.offer(
            "bob".into(),
            "sdp".into(),
            Duration::from_millis(500),
            tx,
            now,
        );
        sent(&mut client);
        assert_eq!(
            client.next_deadline(),
            Some(now + Duration::from_millis(500))
        );
        client.tick(now + Duration::from_millis(500));
        assert!(matches!(&sent(&mut client)[..], [Message::Cancel { .. }]));
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(SignalError::Timeout { .. })
        ));
    }

    #[test]
    fn call_errors_map_to_clear_signal_errors() {
        let now = Instant::now();
        let mut client = joined(now);
        for (uri, check) in [
            (
                uri::NO_SUCH_PROCEDURE,
                (|e: &SignalError| matches!(e, SignalError::UnknownPeer(p) if p == "bob"))
                    as fn(&SignalError) -> bool,
            ),
            (uri::CALLEE_BUSY, |e| matches!(e, SignalError::Busy(_))),
            (
                uri::PROCESSING_OFFER,
                |e| matches!(e, SignalError::Remote { message, .. } if message == "bad sdp"),
            ),
        ] {
            let (tx, mut rx) = oneshot::channel();
            client.offer("bob".into(), "sdp".into(), Duration::from_secs(5), tx, now);
            let [Message::Call { request, .. }] = &sent(&mut client)[..] else {
                panic!()
            };
            client.received(
                Message::Error {
                    request_type: code::CALL,
                    request: *request,
                    details: Map::new(),
                    error: uri.into(),
                    args: vec![json!("bad sdp")],
                    kwargs: Map::new(),
                },
                now,
            );
            let error = rx.try_recv().unwrap().unwrap_err();
            assert!(check(&error), "{uri}: {error}");
        }
    }

    /// The requests of the offers in `actions` handed to the node, and of
    /// those refused (or withdrawn) with `io.babble.processing_offer`.
    fn offered_and_refused(actions: &[Action]) -> (Vec<u64>, Vec<u64>) {
        let offered = actions
            .iter()
            .filter_map(|a| match a {
                Action::Offer { request, .. } => Some(*request),
                _ => None,
            })
            .collect();
        let refused = actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(Message::Error { request, error, .. })
                    if error == uri::PROCESSING_OFFER =>
                {
                    Some(*request)
                }
                _ => None,
            })
            .collect();
        (offered, refused)
    }

    #[test]
    fn offers_are_handed_out_within_the_limits_and_answered_once() {
        let now = Instant::now();
        let mut client = joined(now);
        client.received(invocation(10, "alice"), now);
        client.received(invocation(11, "alice"), now);
        client.received(invocation(12, "alice"), now);
        client.received(invocation(13, "bob"), now);
        client.received(invocation(14, "carol"), now);
        let handed = actions(&mut client);
        // Two per caller (12 refused), three in all: carol's offer takes
        // the place of the oldest offer of the caller with the most (10,
        // withdrawn and refused).
        let (offered, refused) = offered_and_refused(&handed);
        assert_eq!(offered, vec![10, 11, 13, 14]);
        assert_eq!(refused, vec![12, 10]);
        let withdrawn = |request: u64| {
            handed.iter().any(|a| {
                matches!(a, Action::Offer { request: r, withdrawn, .. }
                    if *r == request && withdrawn.is_cancelled())
            })
        };
        assert!(withdrawn(10) && !withdrawn(11) && !withdrawn(14));

        // A withdrawn offer's answer goes nowhere.
        client.answer(77, 10, Ok("late".into()));
        assert!(sent(&mut client).is_empty());
        client.answer(77, 11, Ok("answer".into()));
        assert!(matches!(
            &sent(&mut client)[..],
            [Message::Yield { request: 11, .. }]
        ));
        // Only once; and not for another session.
        client.answer(77, 11, Ok("again".into()));
        client.answer(76, 13, Ok("stale".into()));
        assert!(sent(&mut client).is_empty());
        // A slot is free again.
        client.received(invocation(15, "alice"), now);
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Offer { request: 15, .. }]
        ));
    }

    #[test]
    fn offers_count_by_the_address_the_router_gives_not_by_the_ids_they_claim() {
        let now = Instant::now();
        let mut client = joined(now);
        let from_address = |request: u64, from: &str, address: &str| {
            let Message::Invocation {
                registration,
                args,
                kwargs,
                ..
            } = invocation(request, from)
            else {
                unreachable!()
            };
            Message::Invocation {
                request,
                registration,
                details: [(CALLER_ADDRESS.to_owned(), json!(address))]
                    .into_iter()
                    .collect(),
                args,
                kwargs,
            }
        };
        // The honest peer's offer first, then made-up IDs behind one
        // address, more than there are places (three): each ID holds as
        // little as the honest one, but their address holds the most, so
        // the flood makes room among its own offers.
        client.received(from_address(20, "alice", "10.0.0.1"), now);
        for (request, id) in [(10, "m1"), (11, "m2"), (12, "m3"), (13, "m4")] {
            client.received(from_address(request, id, "10.0.0.9"), now);
        }
        let handed = actions(&mut client);
        let (offered, refused) = offered_and_refused(&handed);
        assert_eq!(offered, vec![20, 10, 11, 12, 13]);
        assert_eq!(refused, vec![10, 11]);
        let source = handed.iter().find_map(|a| match a {
            Action::Offer {
                request: 20,
                source,
                ..
            } => Some(source.clone()),
            _ => None,
        });
        assert_eq!(source.as_deref(), Some("10.0.0.1"));
        client.answer(77, 20, Ok("answer".into()));
        assert!(matches!(
            &sent(&mut client)[..],
            [Message::Yield { request: 20, .. }]
        ));
    }

    #[test]
    fn an_interrupted_offer_frees_its_slot_and_its_answer_is_dropped() {
        let now = Instant::now();
        let mut client = joined(now);
        client.received(invocation(10, "alice"), now);
        client.received(invocation(11, "alice"), now);
        actions(&mut client);
        client.received(
            Message::Interrupt {
                request: 10,
                options: Map::new(),
            },
            now,
        );
        client.answer(77, 10, Ok("late".into()));
        assert!(sent(&mut client).is_empty());
        client.received(invocation(12, "alice"), now);
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Offer { request: 12, .. }]
        ));
    }

    #[test]
    fn a_malformed_invocation_is_answered_with_an_error() {
        let now = Instant::now();
        let mut client = joined(now);
        client.received(
            Message::Invocation {
                request: 5,
                registration: 1,
                details: Map::new(),
                args: vec![json!(1)],
                kwargs: Map::new(),
            },
            now,
        );
        assert!(matches!(
            &sent(&mut client)[..],
            [Message::Error { error, .. }] if error == uri::INVALID_ARGUMENT
        ));
    }

    #[test]
    fn a_silent_router_is_pinged_then_given_up() {
        let now = Instant::now();
        let mut client = joined(now);
        let second = Duration::from_secs(1);
        client.tick(now + second);
        assert_eq!(actions(&mut client), vec![Action::Ping]);
        client.heard(now + second);
        client.tick(now + second * 2);
        assert_eq!(actions(&mut client), vec![Action::Ping]);
        // Nothing heard for three keep-alive periods: reconnect.
        client.tick(now + second * 4);
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Reconnect { why, .. }] if why.contains("nothing from the router")
        ));
        assert_eq!(client.session(), None);
    }

    #[test]
    fn a_welcome_that_does_not_come_is_a_connect_failure() {
        let now = Instant::now();
        let mut client = SignalClient::new(settings(), now);
        client.connected(now);
        sent(&mut client);
        client.tick(now + settings().connect_timeout);
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Reconnect { .. }]
        ));
        assert!(client.last_error().is_some());
    }

    #[test]
    fn reconnect_pauses_double_up_to_the_maximum() {
        let now = Instant::now();
        let mut client = SignalClient::new(settings(), now);
        let mut pauses = Vec::new();
        for _ in 0..12 {
            client.connect_failed(SignalError::Connect("refused".into()));
            if let Some(Action::Reconnect { after, .. }) = client.poll_action() {
                pauses.push(after);
            }
        }
        let max = settings().reconnect_max;
        assert_eq!(pauses[0], settings().reconnect_min);
        assert_eq!(pauses[1], settings().reconnect_min * 2);
        assert_eq!(*pauses.last().unwrap(), max);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn a_refused_registration_tells_the_listener_and_retries_on_a_new_session() {
        let now = Instant::now();
        let mut client = joined(now);
        let (tx, mut rx) = oneshot::channel();
        client.listen(tx, now + Duration::from_secs(5));
        let [Message::Register { request, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        client.received(
            Message::Error {
                request_type: code::REGISTER,
                request: *request,
                details: Map::new(),
                error: uri::PROCEDURE_ALREADY_EXISTS.into(),
                args: vec![],
                kwargs: Map::new(),
            },
            now,
        );
        assert_eq!(
            rx.try_recv().unwrap(),
            Err(SignalError::AlreadyRegistered("me".into()))
        );
        assert!(matches!(
            &actions(&mut client)[..],
            [Action::Reconnect { after, .. }] if *after == settings().reconnect_max
        ));
    }

    /// A client authenticating as `key`, with a session open.
    fn authenticated(key: &crate::identity::NodeKey, now: Instant) -> SignalClient {
        let settings = SignalSettings {
            key: Some(key.clone()),
            ..SignalSettings::new("ws://router", "main", key.public().to_string())
        };
        let mut client = SignalClient::new(settings, now);
        client.connected(now);
        let [Message::Hello { details, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        assert_eq!(details["authmethods"], json!([uri::AUTH_METHOD]));
        assert_eq!(details["authid"], json!(key.public().to_string()));
        client.received(
            Message::Challenge {
                authmethod: uri::AUTH_METHOD.into(),
                extra: [("challenge".to_owned(), json!(hex::encode([7u8; 32])))]
                    .into_iter()
                    .collect(),
            },
            now,
        );
        let [Message::Authenticate { signature, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        assert!(key
            .public()
            .verify(&[7u8; 32], &hex::decode(signature).unwrap()));
        client.received(
            Message::Welcome {
                session: 5,
                details: Map::new(),
            },
            now,
        );
        client
    }

    #[test]
    fn an_authenticated_client_signs_its_offers_and_checks_the_answers() {
        let now = Instant::now();
        let (me, bob) = (
            crate::identity::NodeKey::generate(),
            crate::identity::NodeKey::generate(),
        );
        let bob_id = bob.public().to_string();
        let mut client = authenticated(&me, now);
        let (tx, mut rx) = oneshot::channel();
        client.offer(
            bob_id.clone(),
            "offer-sdp".into(),
            Duration::from_secs(5),
            tx,
            now,
        );
        let [Message::Call { request, args, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        let my_id = me.public().to_string();
        let now_ms = client.wall_ms(now);
        signed::verify(
            Sdp::Offer,
            &my_id,
            &bob_id,
            "offer-sdp",
            args.get(2),
            now_ms,
            Duration::from_secs(1),
        )
        .unwrap();
        // An answer signed by someone else is refused.
        let forged = signed::sign(
            &crate::identity::NodeKey::generate(),
            Sdp::Answer,
            &bob_id,
            &my_id,
            "answer-sdp",
            now_ms,
        );
        client.received(
            Message::Result {
                request: *request,
                details: Map::new(),
                args: vec![json!("answer-sdp"), forged],
                kwargs: Map::new(),
            },
            now,
        );
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(SignalError::Unauthenticated(_))
        ));
        // Bob's own signature is accepted.
        let (tx, mut rx) = oneshot::channel();
        client.offer(
            bob_id.clone(),
            "offer-sdp".into(),
            Duration::from_secs(5),
            tx,
            now,
        );
        let [Message::Call { request, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        let signature = signed::sign(&bob, Sdp::Answer, &bob_id, &my_id, "answer-sdp", now_ms);
        client.received(
            Message::Result {
                request: *request,
                details: Map::new(),
                args: vec![json!("answer-sdp"), signature],
                kwargs: Map::new(),
            },
            now,
        );
        assert_eq!(rx.try_recv().unwrap(), Ok("answer-sdp".into()));
    }

    #[test]
    fn unsigned_forged_and_replayed_offers_are_refused() {
        let now = Instant::now();
        let (me, alice) = (
            crate::identity::NodeKey::generate(),
            crate::identity::NodeKey::generate(),
        );
        let (my_id, alice_id) = (me.public().to_string(), alice.public().to_string());
        let mut client = authenticated(&me, now);
        let now_ms = client.wall_ms(now);
        let invocation = |request, args: Vec<Value>| Message::Invocation {
            request,
            registration: 1,
            details: Map::new(),
            args,
            kwargs: Map::new(),
        };
        let signed_offer = signed::sign(&alice, Sdp::Offer, &alice_id, &my_id, "sdp", now_ms);
        let stale = signed::sign(
            &alice,
            Sdp::Offer,
            &alice_id,
            &my_id,
            "sdp",
            now_ms - 60_000,
        );
        let forged = signed::sign(&me, Sdp::Offer, &alice_id, &my_id, "sdp", now_ms);
        for (request, args) in [
            (1, vec![json!(alice_id), json!("sdp")]),
            (2, vec![json!(alice_id), json!("sdp"), forged]),
            (3, vec![json!(alice_id), json!("sdp"), stale]),
            (
                4,
                vec![json!(alice_id), json!("other sdp"), signed_offer.clone()],
            ),
        ] {
            client.received(invocation(request, args), now);
            assert!(
                matches!(&sent(&mut client)[..], [Message::Error { error, .. }] if error == uri::PROCESSING_OFFER),
                "offer {request} was not refused"
            );
        }
        client.received(
            invocation(5, vec![json!(alice_id), json!("sdp"), signed_offer.clone()]),
            now,
        );
        let [Action::Offer { request: 5, .. }] = &actions(&mut client)[..] else {
            panic!("the signed offer was not handed out")
        };
        // The same signed offer again: a replay.
        client.received(
            invocation(6, vec![json!(alice_id), json!("sdp"), signed_offer]),
            now,
        );
        assert!(matches!(&sent(&mut client)[..], [Message::Error { .. }]));
        // The answer to offer 5 is signed by us, for alice.
        client.answer(5, 5, Ok("answer".into()));
        let [Message::Yield { args, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        signed::verify(
            Sdp::Answer,
            &my_id,
            &alice_id,
            "answer",
            args.get(1),
            now_ms,
            Duration::from_secs(1),
        )
        .unwrap();
    }

    #[test]
    fn an_anonymous_client_sends_exactly_two_arguments() {
        let now = Instant::now();
        let mut client = joined(now);
        let (tx, _rx) = oneshot::channel();
        client.offer("bob".into(), "sdp".into(), Duration::from_secs(5), tx, now);
        let [Message::Call { args, .. }] = &sent(&mut client)[..] else {
            panic!()
        };
        assert_eq!(args.len(), 2);
    }

    #[test]
    fn close_says_goodbye_and_fails_everything_waiting() {
        let now = Instant::now();
        let mut client = joined(now);
        let (tx, mut rx) = oneshot::channel();
        client.offer("bob".into(), "sdp".into(), Duration::from_secs(5), tx, now);
        sent(&mut client);
        client.close();
        assert!(matches!(&sent(&mut client)[..], [Message::Goodbye { .. }]));
        assert_eq!(rx.try_recv().unwrap(), Err(SignalError::Closed));
        let (tx, mut rx) = oneshot::channel();
        client.offer("bob".into(), "sdp".into(), Duration::from_secs(5), tx, now);
        assert_eq!(rx.try_recv().unwrap(), Err(SignalError::Closed));
    }
}
