//! The matrix's attacks on the signaling router (`babble-signal`), made
//! of WebSocket connections from given source addresses, and its honest
//! peers: a node registered before the attack (`bob`) and a newcomer
//! (`alice`) who joins while it lasts and offers to `bob`.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::signal::{Signal, WampSignal};
use futures::{SinkExt, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::attacks::{Attack, Progress};

/// The router's limits in the matrix: small, so that an attack that got
/// past them would show at once.
pub const ROUTER_FILE: &str = r#"
listen = "127.0.0.1:0"
realms = ["main"]
insecure = true
max-sessions = 128
max-sessions-per-address = 64
max-handshakes = 64
max-message-size = 65536
max-queued-bytes = 131072
handshake-timeout = "2s"
write-timeout = "2s"
register-timeout = "10s"
call-timeout = "5s"
max-calls = 16
max-invocations = 16
"#;

/// Sessions and handshakes of [`ROUTER_FILE`].
pub const MAX_SESSIONS: u64 = 128;
pub const MAX_HANDSHAKES: u64 = 64;
/// Message and queue sizes of [`ROUTER_FILE`].
pub const MAX_MESSAGE: u64 = 64 << 10;
pub const MAX_QUEUED: u64 = 128 << 10;

/// The honest callee's ID, and what it answers.
pub const CALLEE: &str = "bob";
const ANSWER: &str = r#"{"type":"answer","sdp":"v=0 answer"}"#;
const OFFER: &str = r#"{"type":"offer","sdp":"v=0 offer"}"#;

type Ws = WebSocketStream<TcpStream>;

/// The honest callee, registered at the router `addr` (`ws://…`),
/// answering every offer.
pub async fn callee(addr: &str) -> WampSignal {
    let bob = client(addr, CALLEE);
    let mut offers = bob.consumer();
    actix_rt::spawn(async move {
        while let Some(offer) = offers.recv().await {
            offer.answer(Ok(ANSWER.to_owned()));
        }
    });
    bob.listen().await.expect("the honest callee registers");
    bob
}

/// A newcomer who joins while the attack lasts and offers to the callee
/// `calls` times; returns the offers answered.
pub async fn newcomer_offers(addr: &str, name: &str, calls: usize) -> usize {
    let alice = client(addr, name);
    let mut served = 0;
    for call in 0..calls {
        match alice.offer(CALLEE, OFFER.into()).await {
            Ok(answer) if answer == ANSWER => served += 1,
            Ok(other) => eprintln!("honest offer {call}: unexpected answer {other}"),
            Err(err) => eprintln!("honest offer {call} failed: {err}"),
        }
    }
    let _ = alice.close().await;
    served
}

/// A signaling client from 127.0.0.1, with deadlines long enough for a
/// test build on a loaded machine: the matrix asks whether it is served,
/// not how fast.
fn client(addr: &str, id: &str) -> WampSignal {
    let settings = babble_net::signal::SignalSettings {
        connect_timeout: Duration::from_secs(10),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..babble_net::signal::SignalSettings::new(addr, "main", id)
    };
    WampSignal::new(
        settings,
        Duration::from_secs(10),
        babble_net::logging::discard(),
    )
}

/// Runs `attack` against the router at `addr` from `sources` with
/// `connections` connections in all, until `until`. Returns at once.
pub fn start(
    attack: Attack,
    addr: SocketAddr,
    sources: &[String],
    connections: usize,
    until: Instant,
) -> Arc<Progress> {
    let progress = Arc::new(Progress::default());
    for n in 0..connections {
        let source = sources[n % sources.len()].clone();
        let progress = progress.clone();
        actix_rt::spawn(async move {
            let run = async {
                while Instant::now() < until {
                    let small = attack == Attack::UnreadReplies;
                    let Ok(tcp) = tcp_from(&source, addr, small).await else {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    };
                    progress.opened.fetch_add(1, Ordering::Relaxed);
                    let _ = one_connection(attack, tcp, addr, n, connections, &progress).await;
                }
            };
            let _ = tokio::time::timeout_at(until.into(), run).await;
        });
    }
    progress
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn tcp_from(source: &str, addr: SocketAddr, small_window: bool) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_window {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(format!("{source}:0").parse().map_err(io::Error::other)?)?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// What `attack` does on one connection `n` of `connections`, until the
/// router closes it.
async fn one_connection(
    attack: Attack,
    mut tcp: TcpStream,
    addr: SocketAddr,
    n: usize,
    connections: usize,
    progress: &Progress,
) -> io::Result<()> {
    match attack {
        Attack::HalfOpen if n.is_multiple_of(2) => until_closed_raw(&mut tcp).await,
        Attack::HalfOpen => {
            // The WebSocket upgrade, then no HELLO.
            let mut ws = upgrade(tcp, addr).await?;
            until_closed(&mut ws).await
        }
        Attack::Trickle if n.is_multiple_of(2) => {
            // The upgrade request itself, a byte every 50 ms.
            let request = format!(
                "GET / HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nX-Padding: {}",
                "a".repeat(4096)
            );
            trickle(&mut tcp, request.as_bytes()).await
        }
        Attack::Trickle => {
            // A joined session's next message: the header of a 60 KiB
            // text frame, then its bytes one at a time.
            let mut ws = joined(tcp, addr).await?;
            let tcp = ws.get_mut();
            let mut header = vec![0x81, 0xFE];
            header.extend_from_slice(&(60u16 << 10).to_be_bytes());
            header.extend_from_slice(&[1, 2, 3, 4]);
            tcp.write_all(&header).await?;
            trickle(tcp, &[b'x'; 60 << 10]).await
        }
        Attack::Garbage => {
            let mut ws = joined(tcp, addr).await?;
            let message = if n.is_multiple_of(2) {
                "this is not WAMP".to_owned()
            } else {
                // Over max-message-size.
                format!(r#"[48,1,{{}},"{CALLEE}",["x","{}"]]"#, "a".repeat(1 << 20))
            };
            ws.send(WsMessage::Text(message.into()))
                .await
                .map_err(io::Error::other)?;
            progress.sent.fetch_add(1, Ordering::Relaxed);
            until_closed(&mut ws).await
        }
        Attack::LargeRequests => {
            // Offers of 60 KiB to the honest callee, eight in flight.
            let mut ws = joined(tcp, addr).await?;
            let sdp = "v".repeat(60 << 10);
            calls(&mut ws, CALLEE, &format!("flood{n}"), &sdp, 8, progress).await
        }
        Attack::UnreadReplies => {
            // Registers a procedure it never answers, then calls the next
            // connection's with 60 KiB offers, never reading: what the
            // router sends it (invocations, errors) piles up unread.
            let mut ws = joined(tcp, addr).await?;
            register(&mut ws, 1, &format!("sink{n}")).await?;
            let next = format!("sink{}", (n + 1) % connections);
            let sdp = "v".repeat(60 << 10);
            for request in 2.. {
                let call = format!(r#"[48,{request},{{}},"{next}",["x","{sdp}"]]"#);
                ws.send(WsMessage::Text(call.into()))
                    .await
                    .map_err(io::Error::other)?;
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
        Attack::SmallFlood => {
            let mut ws = joined(tcp, addr).await?;
            calls(&mut ws, CALLEE, &format!("flood{n}"), "v=0", 1, progress).await
        }
        Attack::MintedIds => {
            // A session with four made-up IDs, each offering under its own
            // made-up `from`; then a new session, and so on.
            let mut ws = joined(tcp, addr).await?;
            let minted = progress.opened.load(Ordering::Relaxed);
            for k in 0..4 {
                register(&mut ws, k + 1, &format!("minted-{minted}-{k}")).await?;
            }
            for k in 0..4 {
                let from = format!("minted-{minted}-{k}");
                call_once(&mut ws, 10 + k, CALLEE, &from, OFFER).await?;
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }
    }
}

/// The WebSocket upgrade with the WAMP subprotocol.
async fn upgrade(tcp: TcpStream, addr: SocketAddr) -> io::Result<Ws> {
    let mut request = format!("ws://{addr}/")
        .into_client_request()
        .map_err(io::Error::other)?;
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    let (ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(io::Error::other)?;
    Ok(ws)
}

/// A session from the loopback address `source`, joined to the realm
/// `main` of the router at `addr`.
pub async fn joined_from(source: &str, addr: SocketAddr) -> io::Result<Ws> {
    let tcp = tcp_from(source, addr, false).await?;
    joined(tcp, addr).await
}

/// A session joined to the realm `main`.
async fn joined(tcp: TcpStream, addr: SocketAddr) -> io::Result<Ws> {
    let mut ws = upgrade(tcp, addr).await?;
    let hello = r#"[1,"main",{"roles":{"caller":{},"callee":{}}}]"#;
    send(&mut ws, hello).await?;
    match next_text(&mut ws).await? {
        welcome if welcome.starts_with("[2,") => Ok(ws),
        other => Err(io::Error::other(format!("not welcomed: {other}"))),
    }
}

/// Registers `procedure` and waits for REGISTERED.
async fn register(ws: &mut Ws, request: u64, procedure: &str) -> io::Result<()> {
    send(ws, &format!(r#"[64,{request},{{}},"{procedure}"]"#)).await?;
    match next_text(ws).await? {
        registered if registered.starts_with("[65,") => Ok(()),
        other => Err(io::Error::other(format!("not registered: {other}"))),
    }
}

/// Offers `sdp` to `procedure` as `from` with `in_flight` calls in
/// flight, each answer making room for the next, until the router closes
/// the session.
async fn calls(
    ws: &mut Ws,
    procedure: &str,
    from: &str,
    sdp: &str,
    in_flight: u64,
    progress: &Progress,
) -> io::Result<()> {
    let call = |request: u64| format!(r#"[48,{request},{{}},"{procedure}",["{from}","{sdp}"]]"#);
    for request in 1..=in_flight {
        send(ws, &call(request)).await?;
        progress.sent.fetch_add(1, Ordering::Relaxed);
    }
    for request in in_flight + 1.. {
        next_text(ws).await?;
        send(ws, &call(request)).await?;
        progress.sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

/// One offer, and its answer (or error).
pub async fn call_once(
    ws: &mut Ws,
    request: u64,
    procedure: &str,
    from: &str,
    sdp: &str,
) -> io::Result<()> {
    let sdp = serde_json::to_string(sdp).unwrap();
    send(
        ws,
        &format!(r#"[48,{request},{{}},"{procedure}",["{from}",{sdp}]]"#),
    )
    .await?;
    next_text(ws).await.map(drop)
}

async fn send(ws: &mut Ws, text: &str) -> io::Result<()> {
    ws.send(WsMessage::Text(text.to_owned().into()))
        .await
        .map_err(io::Error::other)
}

/// The next text message; an error once the session is closed.
async fn next_text(ws: &mut Ws) -> io::Result<String> {
    while let Some(frame) = ws.next().await {
        match frame.map_err(io::Error::other)? {
            WsMessage::Text(text) => return Ok(text.to_string()),
            WsMessage::Close(_) => break,
            _ => {}
        }
    }
    Err(io::ErrorKind::UnexpectedEof.into())
}

/// Sends `bytes` one at a time, 50 ms apart.
async fn trickle(tcp: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    for byte in bytes {
        tcp.write_all(&[*byte]).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Reads until the router closes the session.
async fn until_closed(ws: &mut Ws) -> io::Result<()> {
    while let Some(frame) = ws.next().await {
        frame.map_err(io::Error::other)?;
    }
    Ok(())
}

/// Reads until the router closes the connection.
async fn until_closed_raw(tcp: &mut TcpStream) -> io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut sink = [0u8; 1024];
    while tcp.read(&mut sink).await? > 0 {}
    Ok(())
}
