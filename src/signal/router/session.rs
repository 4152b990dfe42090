//! One client connection: handshakes, then messages in and out until either
//! side leaves.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_actors::stream::BoxConnection;
use babble_net_actors::wamp::{uri, Message, SUBPROTOCOL};
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

use super::dealer::Outbox;
use super::Shared;

/// Messages queued for one session beyond which it counts as too slow.
const OUTGOING_QUEUE: usize = 256;

/// The outgoing queues of joined sessions.
#[derive(Default)]
pub(super) struct Sessions(Mutex<HashMap<u64, mpsc::Sender<Message>>>);

impl Sessions {
    fn insert(&self, session: u64, tx: mpsc::Sender<Message>) {
        self.0.lock().expect("sessions lock").insert(session, tx);
    }

    fn remove(&self, session: u64) {
        self.0.lock().expect("sessions lock").remove(&session);
    }

    /// Queues every message for its session. A session whose queue is full
    /// loses the message (its connection is then closed for being too slow
    /// when its queue drops).
    fn deliver(&self, outbox: Outbox, log: &Logger) {
        let mut sessions = self.0.lock().expect("sessions lock");
        for (session, message) in outbox {
            let Some(tx) = sessions.get(&session) else {
                continue;
            };
            if tx.try_send(message).is_err() {
                warn!(log, "session too slow, disconnecting it"; "session" => session);
                sessions.remove(&session);
            }
        }
    }
}

type Ws = WebSocketStream<BoxConnection>;

/// Serves one connection to its end; everything is logged, nothing returned.
pub(super) async fn serve(
    shared: Arc<Shared>,
    tcp: TcpStream,
    remote: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let log = shared.log.new(slog::o!("remote" => remote.to_string()));
    let handshake_timeout = shared.config.handshake_timeout;
    let opened = tokio::time::timeout(handshake_timeout, open(&shared, tcp, tls)).await;
    let (mut ws, realm) = match opened {
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
    let known_realm = shared.dealer.lock().expect("dealer lock").has_realm(&realm);
    if !known_realm {
        info!(log, "session refused: unknown realm"; "realm" => &realm);
        let details = [("message".to_owned(), json!(format!("no realm {realm}")))]
            .into_iter()
            .collect();
        let _ = ws
            .send(frame_of(&Message::Abort {
                details,
                reason: uri::NO_SUCH_REALM.into(),
            }))
            .await;
        let _ = ws.close(None).await;
        return;
    }
    let session = shared.dealer.lock().expect("dealer lock").join(&realm);
    let (tx, rx) = mpsc::channel(OUTGOING_QUEUE);
    shared.sessions.insert(session, tx);
    let log = log.new(slog::o!("session" => session, "realm" => realm.clone()));
    let welcome = Message::Welcome {
        session,
        details: welcome_details(),
    };
    if ws.send(frame_of(&welcome)).await.is_ok() {
        debug!(log, "session joined");
        let ended = run(&shared, session, ws, rx, &log).await;
        debug!(log, "session ended"; "why" => ended);
    }
    shared.sessions.remove(session);
    let outbox = shared.dealer.lock().expect("dealer lock").leave(session);
    shared.sessions.deliver(outbox, &log);
}

/// TLS, WebSocket upgrade with the WAMP subprotocol, then HELLO. Returns the
/// stream and the realm asked for.
async fn open(
    shared: &Shared,
    tcp: TcpStream,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Result<(Ws, String), String> {
    let stream: BoxConnection = match tls {
        Some(acceptor) => Box::new(
            acceptor
                .accept(tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?,
        ),
        None => Box::new(tcp),
    };
    let config = WebSocketConfig::default()
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
            Ok(Message::Hello { realm, .. }) => Ok((ws, realm)),
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

fn welcome_details() -> Map<String, serde_json::Value> {
    let dealer = json!({ "features": { "call_canceling": true, "call_timeout": true } });
    [
        ("roles".to_owned(), json!({ "dealer": dealer })),
        (
            "agent".to_owned(),
            json!(concat!("babble-signal/", env!("CARGO_PKG_VERSION"))),
        ),
        ("authid".to_owned(), json!("anonymous")),
        ("authrole".to_owned(), json!("anonymous")),
        ("authmethod".to_owned(), json!("anonymous")),
    ]
    .into_iter()
    .collect()
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
    mut outgoing: mpsc::Receiver<Message>,
    log: &Logger,
) -> String {
    let idle_timeout = shared.config.idle_timeout;
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
                        abort(&mut ws, "binary messages are not WAMP JSON").await;
                        return "protocol violation: binary message".into();
                    }
                    _ => continue,
                };
                let message = match Message::parse(&text) {
                    Ok(message) => message,
                    Err(err) => {
                        warn!(log, "aborting session: malformed message"; "error" => %err);
                        abort(&mut ws, &err.to_string()).await;
                        return "protocol violation".into();
                    }
                };
                if let Message::Goodbye { .. } = message {
                    let reply = Message::Goodbye { details: Map::new(), reason: uri::GOODBYE_AND_OUT.into() };
                    let _ = ws.send(frame_of(&reply)).await;
                    let _ = ws.close(None).await;
                    return "goodbye".into();
                }
                let call = match &message {
                    Message::Call { request, options, .. } => Some((*request, options.get("timeout").and_then(|t| t.as_u64()))),
                    _ => None,
                };
                let handled = shared.dealer.lock().expect("dealer lock").handle(session, message);
                match handled {
                    Ok(outbox) => shared.sessions.deliver(outbox, log),
                    Err(why) => {
                        warn!(log, "aborting session"; "why" => &why);
                        abort(&mut ws, &why).await;
                        return format!("protocol violation: {why}");
                    }
                }
                if let Some((request, asked)) = call {
                    arm_call_timeout(shared, session, request, asked);
                }
            }
            message = outgoing.recv() => {
                let Some(message) = message else {
                    return "too slow to take its messages".into();
                };
                if let Err(err) = ws.send(frame_of(&message)).await {
                    return format!("write failed: {err}");
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > idle_timeout {
                    let _ = ws.close(None).await;
                    return format!("silent for {idle_timeout:?}");
                }
                if ws.send(WsMessage::Ping(Vec::new().into())).await.is_err() {
                    return "ping failed".into();
                }
            }
            _ = shared.shutdown.cancelled() => {
                let goodbye = Message::Goodbye { details: Map::new(), reason: uri::SYSTEM_SHUTDOWN.into() };
                let _ = ws.send(frame_of(&goodbye)).await;
                let _ = ws.close(None).await;
                return "router shutting down".into();
            }
        }
    }
}

async fn abort(ws: &mut Ws, why: &str) {
    let details = [("message".to_owned(), json!(why))].into_iter().collect();
    let _ = ws
        .send(frame_of(&Message::Abort {
            details,
            reason: uri::PROTOCOL_VIOLATION.into(),
        }))
        .await;
    let _ = ws.close(None).await;
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
        timer_shared.sessions.deliver(outbox, &timer_shared.log);
    });
    dealer.set_timer(invocation, timer.abort_handle());
}
