//! Floods a node with validly signed offers through `babble-signal` while
//! an honest peer keeps offering to it, and reports how the honest peer
//! fared.
//!
//! Everything runs in this process on loopback: a router, the node (`bob`,
//! with a key, so it takes signed offers only and remembers each against
//! replays), an honest peer (`alice`, offering every `--pace-ms` from
//! 127.0.0.1) and `--sessions` flooding sessions from 127.0.0.2, each
//! keeping `--in-flight` offers to bob in flight with new signed content
//! every time (bogus SDP: bob answers at the signaling level only).
//!
//! `--mode authenticated`: the router requires every session to prove its
//! key, and each flooding session signs with its own. `--mode anonymous`:
//! the router checks nothing, and every flooding offer is signed by a key
//! minted for it.
//!
//! Run it in release mode, `--secs 30` for the standard run. Prints one
//! JSON line: the flood's offers per second and how bob
//! answered them, alice's offers, errors and latency.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use babble_net::logging;
use babble_net::secure::NodeKey;
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, SignalSettings, WampSignal};
use clap::{Parser, ValueEnum};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Authenticated,
    Anonymous,
}

#[derive(Parser)]
#[command(about = "Floods a node with signed offers while an honest peer offers")]
struct Args {
    /// How long the flood lasts, in seconds.
    #[arg(long, default_value_t = 30)]
    secs: u64,
    /// Flooding sessions (from 127.0.0.2).
    #[arg(long, default_value_t = 8)]
    sessions: usize,
    /// Offers each flooding session keeps in flight.
    #[arg(long, default_value_t = 24)]
    in_flight: usize,
    /// Milliseconds between the honest peer's offers.
    #[arg(long, default_value_t = 100)]
    pace_ms: u64,
    /// Whether the router authenticates sessions (see the module docs).
    #[arg(long, value_enum, default_value_t = Mode::Authenticated)]
    mode: Mode,
}

const ANSWER: &str = r#"{"type":"answer","sdp":"v=0"}"#;

#[derive(Default)]
struct Flood {
    sent: AtomicU64,
    answered: AtomicU64,
    refused_replayed: AtomicU64,
    refused_other: AtomicU64,
}

fn main() {
    let args = Args::parse();
    actix_rt::System::new().block_on(run(args));
}

async fn run(args: Args) {
    let router = Router::start(
        RouterConfig {
            listen: "127.0.0.1:0".into(),
            realms: vec!["main".into()],
            insecure: true,
            require_auth: args.mode == Mode::Authenticated,
            ..RouterConfig::default()
        },
        logging::discard(),
    )
    .await
    .expect("router");
    let addr = router.local_addr();
    let url = format!("ws://{addr}");
    let (alice, bob) = (NodeKey::generate(), NodeKey::generate());
    let bob_id = bob.public().to_string();
    let bob_signal = keyed(&url, &bob);
    let mut offers = bob_signal.consumer();
    actix_rt::spawn(async move {
        while let Some(offer) = offers.recv().await {
            offer.answer(Ok(ANSWER.into()));
        }
    });
    bob_signal.listen().await.expect("bob registers");
    let alice_signal = Arc::new(keyed(&url, &alice));

    let flood = Arc::new(Flood::default());
    let deadline = Instant::now() + Duration::from_secs(args.secs);
    for _ in 0..args.sessions {
        let (flood, bob_id) = (flood.clone(), bob_id.clone());
        let (mode, in_flight) = (args.mode, args.in_flight);
        actix_rt::spawn(async move {
            flood_session(addr, mode, &bob_id, in_flight, deadline, &flood).await;
        });
    }

    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut pace = tokio::time::interval(Duration::from_millis(args.pace_ms));
    let started = Instant::now();
    while Instant::now() < deadline {
        pace.tick().await;
        let sent = Instant::now();
        let sdp = format!(r#"{{"type":"offer","sdp":"honest {}"}}"#, latencies.len());
        match alice_signal.offer(&bob_id, sdp).await {
            Ok(answer) if answer == ANSWER => latencies.push(sent.elapsed()),
            Ok(other) => errors.push(format!("unexpected answer {other}")),
            Err(err) => errors.push(err.to_string()),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    let error_count = errors.len();
    errors.sort();
    errors.dedup();
    let report = serde_json::json!({
        "mode": match args.mode { Mode::Authenticated => "authenticated", Mode::Anonymous => "anonymous" },
        "secs": args.secs,
        "flood_sessions": args.sessions,
        "flood_in_flight": args.in_flight,
        "flood_offers_per_sec": (flood.sent.load(Ordering::Relaxed) as f64 / elapsed).round(),
        "flood_answered": flood.answered.load(Ordering::Relaxed),
        "flood_refused_replayed": flood.refused_replayed.load(Ordering::Relaxed),
        "flood_refused_other": flood.refused_other.load(Ordering::Relaxed),
        "honest_offers": latencies.len() + error_count,
        "honest_ok": latencies.len(),
        "honest_failed": error_count,
        "honest_errors": errors,
        "honest_p50_ms": at(0.5),
        "honest_p99_ms": at(0.99),
    });
    println!("{report}");
    let _ = alice_signal.close().await;
    let _ = bob_signal.close().await;
}

/// A keyed client of the router at `url`, named by its key.
fn keyed(url: &str, key: &NodeKey) -> WampSignal {
    let id = key.public().to_string();
    let settings = SignalSettings {
        key: Some(key.clone()),
        ..SignalSettings::new(url, "main", &id)
    };
    WampSignal::new(settings, Duration::from_secs(10), logging::discard())
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// One flooding session from 127.0.0.2: joined (and, authenticated, as
/// its own key), it keeps `in_flight` signed offers to `bob_id` in flight
/// until `deadline`.
async fn flood_session(
    router: SocketAddr,
    mode: Mode,
    bob_id: &str,
    in_flight: usize,
    deadline: Instant,
    flood: &Flood,
) {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind("127.0.0.2:0".parse().unwrap())
        .expect("bind 127.0.0.2");
    let tcp = socket.connect(router).await.expect("connect");
    let mut request = format!("ws://{router}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .expect("websocket");
    let own = NodeKey::generate();
    join(&mut ws, mode, &own).await;
    let mut request = 0u64;
    let mut waiting = 0usize;
    while Instant::now() < deadline {
        while waiting < in_flight {
            request += 1;
            let minted;
            let signer = match mode {
                Mode::Authenticated => &own,
                Mode::Anonymous => {
                    minted = NodeKey::generate();
                    &minted
                }
            };
            let from = signer.public().to_string();
            let sdp = format!(r#"{{"type":"offer","sdp":"flood {request}"}}"#);
            let now_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis() as u64;
            // What a node signs (see babble_net::signal's signed offers).
            let signed = serde_json::json!(["offer", from, bob_id, sdp, now_ms]).to_string();
            let sig = hex::encode(signer.sign(signed.as_bytes()));
            let call = serde_json::json!(
                [48, request, {}, bob_id, [from, sdp, {"ts": now_ms, "sig": sig}]]
            );
            if ws
                .send(WsMessage::Text(call.to_string().into()))
                .await
                .is_err()
            {
                return;
            }
            flood.sent.fetch_add(1, Ordering::Relaxed);
            waiting += 1;
        }
        let Some(Ok(WsMessage::Text(text))) = ws.next().await else {
            return;
        };
        if text.starts_with("[50,") {
            flood.answered.fetch_add(1, Ordering::Relaxed);
        } else if text.contains("replayed") {
            flood.refused_replayed.fetch_add(1, Ordering::Relaxed);
        } else {
            flood.refused_other.fetch_add(1, Ordering::Relaxed);
        }
        waiting -= 1;
    }
}

/// HELLO (and, authenticated, the key's answer to the challenge).
async fn join(ws: &mut Ws, mode: Mode, key: &NodeKey) {
    let mut hello = serde_json::json!([1, "main", {"roles": {"caller": {}}}]);
    if mode == Mode::Authenticated {
        hello[2]["authmethods"] = serde_json::json!(["babble-secp256k1"]);
        hello[2]["authid"] = key.public().to_string().into();
    }
    ws.send(WsMessage::Text(hello.to_string().into()))
        .await
        .expect("hello");
    let mut reply = next_json(ws).await;
    if reply[0] == 4 {
        let challenge = hex::decode(reply[2]["challenge"].as_str().unwrap_or_default())
            .expect("a hex challenge");
        let signature = hex::encode(key.sign(&challenge));
        let authenticate = serde_json::json!([5, signature, {}]);
        ws.send(WsMessage::Text(authenticate.to_string().into()))
            .await
            .expect("authenticate");
        reply = next_json(ws).await;
    }
    assert_eq!(reply[0], 2, "not welcomed: {reply}");
}

async fn next_json(ws: &mut Ws) -> serde_json::Value {
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Text(text))) => {
                return serde_json::from_str(&text).expect("JSON from the router")
            }
            Some(Ok(_)) => continue,
            other => panic!("the router closed the session: {other:?}"),
        }
    }
}
