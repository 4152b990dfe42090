//! One client connection: handshakes, then messages in and out until either
//! side leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_core::identity::PeerKey;
use babble_net_core::places::{Activity, Places};
use babble_net_core::signaling::wamp::{uri, Message, SUBPROTOCOL};
use babble_net_core::stream::BoxConnection;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Map};
use slog::{debug, info, warn, Logger};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

use super::dealer::{Cause, Outbox};
use super::Shared;

/// What is queued for one session to write: frames and their total size.
struct Queue {
    frames: mpsc::UnboundedSender<String>,
    bytes: Arc<AtomicUsize>,
    /// Cancelled to drop the session at once (it stopped reading).
    kick: CancellationToken,
}

/// The receiving end of a session's [`Queue`].
struct QueueReader {
    frames: mpsc::UnboundedReceiver<String>,
    bytes: Arc<AtomicUsize>,
    kick: CancellationToken,
}

/// The outgoing queues of joined sessions, each bounded in bytes.
pub(super) struct Sessions {
    queues: Mutex<HashMap<u64, Queue>>,
    max_bytes: usize,
}

impl Sessions {
    pub(super) fn new(max_bytes: usize) -> Sessions {
        Sessions {
            queues: Mutex::default(),
            max_bytes,
        }
    }

    fn open(&self, session: u64) -> QueueReader {
        let (tx, rx) = mpsc::unbounded_channel();
        let (bytes, kick) = (Arc::new(AtomicUsize::new(0)), CancellationToken::new());
        let queue = Queue {
            frames: tx,
            bytes: bytes.clone(),
            kick: kick.clone(),
        };
        self.queues
            .lock()
            .expect("sessions lock")
            .insert(session, queue);
        QueueReader {
            frames: rx,
            bytes,
            kick,
        }
    }

    fn remove(&self, session: u64) {
        self.queues.lock().expect("sessions lock").remove(&session);
    }

    /// Queues every message for its session, within the session's byte
    /// budget. Beyond it, what happens depends on why the message is sent
    /// ([`Cause`]): a session that does not read the answers to its own
    /// requests is dropped; an invocation is refused (returned, for the
    /// dealer to fail the call) and the callee left alone; a notice is
    /// dropped.
    fn deliver(&self, outbox: Outbox, log: &Logger) -> Vec<u64> {
        let mut refused = Vec::new();
        let mut queues = self.queues.lock().expect("sessions lock");
        for (session, message, cause) in outbox {
            let Some(queue) = queues.get(&session) else {
                continue;
            };
            let text = message.to_json();
            let queued = queue.bytes.load(Ordering::Relaxed);
            if queued + text.len() <= self.max_bytes {
                queue.bytes.fetch_add(text.len(), Ordering::Relaxed);
                let _ = queue.frames.send(text);
                continue;
            }
            match cause {
                Cause::Own => {
                    warn!(log, "session not reading its answers, disconnecting it";
                        "session" => session, "queued_bytes" => queued);
                    queue.kick.cancel();
                    queues.remove(&session);
                }
                Cause::Invocation(invocation) => {
                    debug!(log, "callee busy, refusing a call"; "session" => session);
                    refused.push(invocation);
                }
                Cause::Advisory => {}
            }
        }
        refused
    }
}

/// Sends what the dealer produced; calls a full callee cannot take fail
/// for their callers.
pub(super) fn dispatch(shared: &Shared, outbox: Outbox) {
    let refused = shared.sessions.deliver(outbox, &shared.log);
    if refused.is_empty() {
        return;
    }
    let mut failed = Outbox::new();
    {
        let mut dealer = shared.dealer.lock().expect("dealer lock");
        for invocation in refused {
            failed.extend(dealer.refuse(invocation));
        }
    }
    // Only answers to callers' own calls: nothing more can be refused.
    shared.sessions.deliver(failed, &shared.log);
}

type Ws = WebSocketStream<BoxConnection>;

/// The read buffer of each connection's WebSocket, in bytes.
pub(super) const READ_BUFFER: usize = 16 * 1024;

/// A connection's place under one of the router's caps (handshakes in
/// progress, or joined sessions); given back when dropped.
pub(super) struct Place {
    /// Its network address.
    pub(super) address: String,
    /// Cancelled when it is evicted for a newcomer.
    pub(super) kick: CancellationToken,
    /// Where it says when it last completed a message.
    pub(super) activity: Arc<Activity>,
    places: Arc<Mutex<Places>>,
    id: u64,
}

impl Place {
    /// A place among `places` for a connection from `address`, evicting
    /// another at a cap (`evicted` is called then); `None` only when there
    /// is no place at all.
    pub(super) fn admit(
        places: &Arc<Mutex<Places>>,
        address: &str,
        evicted: impl FnOnce(),
    ) -> Option<Place> {
        let admission = places.lock().expect("places lock").admit(
            address,
            std::time::Instant::now(),
            CancellationToken::new(),
        );
        let (id, kick, activity) = admission.slot?;
        if admission.shed.is_some() {
            evicted();
        }
        Some(Place {
            address: address.to_owned(),
            kick,
            activity,
            places: places.clone(),
            id,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.places.lock().expect("places lock").release(self.id);
    }
}

/// Serves one connection to its end; everything is logged, nothing
/// returned. The connection holds `handshake` until its handshake is
/// done, then a place among `sessions`.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake: Place,
    sessions: Arc<Mutex<Places>>,
) {
    let log = shared.log.new(slog::o!("remote" => remote.to_string()));
    let handshake_timeout = shared.config.handshake_timeout;
    let address = handshake.address.clone();
    let place = handshake;
    let handshake = async {
        let (mut ws, realm, details) = open(&shared, tcp, tls).await?;
        let authid = match shared.config.require_auth {
            true => Some(authenticate(&mut ws, &details, shared.config.write_timeout).await?),
            false => None,
        };
        Ok::<_, String>((ws, realm, authid))
    };
    let opened = tokio::select! {
        opened = tokio::time::timeout(handshake_timeout, handshake) => opened,
        _ = place.kick.cancelled() => {
            info!(log, "connection closed for a newcomer during its handshake");
            return;
        }
    };
    drop(place);
    let (mut ws, realm, authid) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            info!(log, "connection refused"; "why" => why);
            return;
        }
        Err(_) => {
            info!(log, "connection dropped: no handshake"; "within" => ?handshake_timeout);
            return;
        }
    };
    // Done with its handshake: it takes a joined session's place.
    let Some(place) = Place::admit(&sessions, &address, || {
        info!(log, "closed a session for a newcomer"; "address" => &address);
        metrics::counter!("babble_net_signal_sessions_evicted_total").increment(1);
    }) else {
        return;
    };
    let known_realm = shared.dealer.lock().expect("dealer lock").has_realm(&realm);
    if !known_realm {
        info!(log, "session refused: unknown realm"; "realm" => &realm);
        let why = format!("no realm {realm}");
        abort(
            &mut ws,
            uri::NO_SUCH_REALM,
            &why,
            shared.config.write_timeout,
        )
        .await;
        return;
    }
    let session = shared
        .dealer
        .lock()
        .expect("dealer lock")
        .join(&realm, authid, &place.address);
    let queue = shared.sessions.open(session);
    let log = log.new(slog::o!("session" => session, "realm" => realm.clone()));
    let welcome = Message::Welcome {
        session,
        details: welcome_details(authid),
    };
    if send(&mut ws, frame_of(&welcome), shared.config.write_timeout)
        .await
        .is_ok()
    {
        debug!(log, "session joined");
        let ended = run(&shared, session, ws, queue, &place, &log).await;
        debug!(log, "session ended"; "why" => ended);
    }
    shared.sessions.remove(session);
    let outbox = shared.dealer.lock().expect("dealer lock").leave(session);
    dispatch(&shared, outbox);
}

/// Writes one frame, giving up after `timeout`: a peer that stops reading
/// must not hold the session's task.
async fn send(ws: &mut Ws, frame: WsMessage, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, ws.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(format!("write failed: {err}")),
        Err(_) => Err(format!("a write took longer than {timeout:?}")),
    }
}

/// TLS, WebSocket upgrade with the WAMP subprotocol, then HELLO. Returns the
/// stream and the realm asked for.
async fn open(
    shared: &Shared,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(Ws, String, Map<String, serde_json::Value>), String> {
    let stream: BoxConnection = match tls {
        Some(acceptor) => Box::new(
            acceptor
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?,
        ),
        None => Box::new(tcp),
    };
    // tungstenite allocates its read buffer up front, for every
    // connection (128 KiB by default): signaling messages are a few KiB,
    // and a larger one is still read whole, 16 KiB at a time.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .max_message_size(Some(shared.config.max_message_size))
        .max_frame_size(Some(shared.config.max_message_size));
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, choose_subprotocol, Some(config))
            .await
            .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
    loop {
        let frame = ws
            .next()
            .await
            .ok_or("closed before HELLO")?
            .map_err(|e| e.to_string())?;
        let WsMessage::Text(text) = frame else {
            if matches!(frame, WsMessage::Close(_)) {
                return Err("closed before HELLO".into());
            }
            continue;
        };
        return match Message::parse(&text) {
            Ok(Message::Hello { realm, details }) => Ok((ws, realm, details)),
            Ok(_) | Err(_) => {
                let details = [(
                    "message".to_owned(),
                    json!("the first message must be HELLO"),
                )]
                .into_iter()
                .collect();
                let _ = ws
                    .send(frame_of(&Message::Abort {
                        details,
                        reason: uri::PROTOCOL_VIOLATION.into(),
                    }))
                    .await;
                let _ = ws.close(None).await;
                Err("the first message was not a HELLO".into())
            }
        };
    }
}

/// Accepts clients offering `wamp.2.json` (or no subprotocol at all, as
/// some minimal clients do) and answers with it.
#[allow(clippy::result_large_err)]
fn choose_subprotocol(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    let offered: Vec<String> = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(',').map(|p| p.trim().to_owned()))
        .collect();
    if offered.is_empty() {
        return Ok(response);
    }
    if offered.iter().any(|p| p == SUBPROTOCOL) {
        response.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        return Ok(response);
    }
    let mut refusal = ErrorResponse::new(Some(format!(
        "only the {SUBPROTOCOL} subprotocol is supported"
    )));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    Err(refusal)
}

fn welcome_details(authid: Option<PeerKey>) -> Map<String, serde_json::Value> {
    let dealer = json!({ "features": { "call_canceling": true, "call_timeout": true } });
    let (id, role, method) = match authid {
        Some(key) => (key.to_string(), "node", uri::AUTH_METHOD),
        None => ("anonymous".to_owned(), "anonymous", "anonymous"),
    };
    [
        ("roles".to_owned(), json!({ "dealer": dealer })),
        (
            "agent".to_owned(),
            json!(concat!("babble-signal/", env!("CARGO_PKG_VERSION"))),
        ),
        ("authid".to_owned(), json!(id)),
        ("authrole".to_owned(), json!(role)),
        ("authmethod".to_owned(), json!(method)),
    ]
    .into_iter()
    .collect()
}

/// The `babble-secp256k1` challenge: the session must offer the method,
/// name its key as `authid`, and sign 32 random bytes with it. Returns the
/// proven key; on failure the session has been sent ABORT and the reason
/// is returned for the log.
async fn authenticate(
    ws: &mut Ws,
    hello: &Map<String, serde_json::Value>,
    timeout: Duration,
) -> Result<PeerKey, String> {
    let offered = hello
        .get("authmethods")
        .and_then(|m| m.as_array())
        .is_some_and(|methods| methods.iter().any(|m| m == uri::AUTH_METHOD));
    if !offered {
        let why = "this router requires babble-secp256k1 authentication";
        abort(ws, uri::NOT_AUTHORIZED, why, timeout).await;
        return Err(why.into());
    }
    let claimed = hello.get("authid").and_then(|id| id.as_str()).unwrap_or("");
    let Ok(key) = PeerKey::parse(claimed) else {
        let why = "the authid is not a secp256k1 public key";
        abort(ws, uri::AUTHENTICATION_FAILED, why, timeout).await;
        return Err(why.into());
    };
    let challenge = babble_net_core::signaling::wamp::random_challenge();
    let extra = [("challenge".to_owned(), json!(hex::encode(challenge)))]
        .into_iter()
        .collect();
    let message = Message::Challenge {
        authmethod: uri::AUTH_METHOD.into(),
        extra,
    };
    send(ws, frame_of(&message), timeout).await?;
    let signature = loop {
        let frame = ws
            .next()
            .await
            .ok_or("closed before AUTHENTICATE")?
            .map_err(|e| e.to_string())?;
        match frame {
            WsMessage::Text(text) => break Message::parse(&text).ok(),
            WsMessage::Close(_) => return Err("closed before AUTHENTICATE".into()),
            _ => continue,
        }
    };
    let proven = match signature {
        Some(Message::Authenticate { signature, .. }) => {
            hex::decode(&signature).is_ok_and(|signature| key.verify(&challenge, &signature))
        }
        _ => false,
    };
    if !proven {
        let why = "the challenge was not signed by the authid's key";
        abort(ws, uri::AUTHENTICATION_FAILED, why, timeout).await;
        return Err(why.into());
    }
    Ok(key)
}

fn frame_of(message: &Message) -> WsMessage {
    WsMessage::Text(message.to_json().into())
}

/// The joined session: reads and dispatches messages, writes what the
/// dealer sends it, pings when idle. Returns why it ended.
async fn run(
    shared: &Arc<Shared>,
    session: u64,
    mut ws: Ws,
    mut queue: QueueReader,
    place: &Place,
    log: &Logger,
) -> String {
    let idle_timeout = shared.config.idle_timeout;
    let write_timeout = shared.config.write_timeout;
    // One timer for the session, not one per message.
    let register_by = tokio::time::sleep(shared.config.register_timeout);
    tokio::pin!(register_by);
    let mut registered = false;
    let mut last_heard = Instant::now();
    let mut ping = tokio::time::interval(idle_timeout / 3);
    ping.tick().await;
    loop {
        tokio::select! {
            frame = ws.next() => {
                let frame = match frame {
                    None => return "the client closed the connection".into(),
                    Some(Err(err)) => return format!("connection error: {err}"),
                    Some(Ok(frame)) => frame,
                };
                last_heard = Instant::now();
                let text = match frame {
                    WsMessage::Text(text) => text,
                    WsMessage::Close(_) => return "the client closed the session".into(),
                    WsMessage::Binary(_) => {
                        let why = "binary messages are not WAMP JSON";
                        abort(&mut ws, uri::PROTOCOL_VIOLATION, why, write_timeout).await;
                        return "protocol violation: binary message".into();
                    }
                    _ => continue,
                };
                let message = match Message::parse(&text) {
                    Ok(message) => message,
                    Err(err) => {
                        warn!(log, "aborting session: malformed message"; "error" => %err);
                        abort(&mut ws, uri::PROTOCOL_VIOLATION, &err.to_string(), write_timeout).await;
                        return "protocol violation".into();
                    }
                };
                if let Message::Goodbye { .. } = message {
                    let reply = Message::Goodbye { details: Map::new(), reason: uri::GOODBYE_AND_OUT.into() };
                    if send(&mut ws, frame_of(&reply), write_timeout).await.is_ok() {
                        close(&mut ws, write_timeout).await;
                    }
                    return "goodbye".into();
                }
                let call = match &message {
                    Message::Call { request, options, .. } => Some((*request, options.get("timeout").and_then(|t| t.as_u64()))),
                    _ => None,
                };
                let handled = shared.dealer.lock().expect("dealer lock").handle(session, message);
                match handled {
                    Ok(outbox) => {
                        // A message handled is the session's use of its
                        // place (pings are not).
                        place.activity.completed(std::time::Instant::now());
                        dispatch(shared, outbox);
                    }
                    Err(why) => {
                        warn!(log, "aborting session"; "why" => &why);
                        abort(&mut ws, uri::PROTOCOL_VIOLATION, &why, write_timeout).await;
                        return format!("protocol violation: {why}");
                    }
                }
                if let Some((request, asked)) = call {
                    arm_call_timeout(shared, session, request, asked);
                }
            }
            frame = queue.frames.recv() => {
                let Some(frame) = frame else {
                    return "the router dropped the session".into();
                };
                queue.bytes.fetch_sub(frame.len(), Ordering::Relaxed);
                if let Err(why) = send(&mut ws, WsMessage::Text(frame.into()), write_timeout).await {
                    return why;
                }
            }
            _ = queue.kick.cancelled() => {
                return "not reading its answers".into();
            }
            _ = place.kick.cancelled() => {
                let goodbye = Message::Goodbye { details: Map::new(), reason: uri::CLOSE_NORMAL.into() };
                if send(&mut ws, frame_of(&goodbye), write_timeout).await.is_ok() {
                    close(&mut ws, write_timeout).await;
                }
                return "closed for a newcomer".into();
            }
            _ = &mut register_by, if !registered => {
                registered = shared.dealer.lock().expect("dealer lock").has_registered(session);
                if !registered {
                    close(&mut ws, write_timeout).await;
                    return format!("registered nothing within {:?}", shared.config.register_timeout);
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    close(&mut ws, write_timeout).await;
                    return format!("silent for {idle_timeout:?}");
                }
                if let Err(why) = send(&mut ws, WsMessage::Ping(Vec::new().into()), write_timeout).await {
                    return why;
                }
            }
            _ = shared.shutdown.cancelled() => {
                let goodbye = Message::Goodbye { details: Map::new(), reason: uri::SYSTEM_SHUTDOWN.into() };
                if send(&mut ws, frame_of(&goodbye), write_timeout).await.is_ok() {
                    close(&mut ws, write_timeout).await;
                }
                return "router shutting down".into();
            }
        }
    }
}

/// Ends the session with ABORT (`reason`, and `why` as its message).
async fn abort(ws: &mut Ws, reason: &str, why: &str, timeout: Duration) {
    let details = [("message".to_owned(), json!(why))].into_iter().collect();
    let abort = Message::Abort {
        details,
        reason: reason.into(),
    };
    if send(ws, frame_of(&abort), timeout).await.is_ok() {
        close(ws, timeout).await;
    }
}

/// Closes the WebSocket, waiting at most `timeout` for the peer.
async fn close(ws: &mut Ws, timeout: Duration) {
    let _ = tokio::time::timeout(timeout, ws.close(None)).await;
}

/// Ends the call with `wamp.error.timeout` if its callee has not answered
/// by the caller's timeout (when given and shorter) or the router's.
fn arm_call_timeout(shared: &Arc<Shared>, session: u64, request: u64, asked_ms: Option<u64>) {
    let limit = shared.config.call_timeout;
    let timeout = asked_ms
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
        .map_or(limit, |t| t.min(limit));
    let mut dealer = shared.dealer.lock().expect("dealer lock");
    let Some(invocation) = dealer.invocation_of(session, request) else {
        return;
    };
    let timer_shared = shared.clone();
    let timer = tokio::spawn(async move {
        tokio::time::sleep(timeout).await;
        let outbox = timer_shared
            .dealer
            .lock()
            .expect("dealer lock")
            .expire(invocation);
        dispatch(&timer_shared, outbox);
    });
    dealer.set_timer(invocation, timer.abort_handle());
}
