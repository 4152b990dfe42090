//! The signaling router and client over real sockets: offers and answers,
//! realms, failures, reconnection, bad input, TLS.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use babble_net::logging;
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, SignalError, TlsFailure, Trust, WampSignal};
use common::net::eventually;
use common::signal::{answer_offers, client, router, router_config, self_signed, settings};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

const OFFER: &str = r#"{"type":"offer","sdp":"v=0 offer"}"#;
const ANSWER: &str = r#"{"type":"answer","sdp":"v=0 answer"}"#;

#[actix_rt::test]
async fn an_offer_gets_the_callees_answer() {
    let router = router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let callee = client(&addr, "main", "0XBOB", None);
    let caller = client(&addr, "main", "0XALICE", None);
    answer_offers(&callee, |from, sdp| {
        assert_eq!((from, sdp), ("0XALICE", OFFER));
        Ok(ANSWER.to_owned())
    });
    callee.listen().await.unwrap();
    assert_eq!(caller.offer("0XBOB", OFFER.into()).await.unwrap(), ANSWER);
    caller.close().await.unwrap();
    callee.close().await.unwrap();
    router.shutdown().await;
}

/// Go Babble's signaling test: an empty offer reaches the callee, which
/// fails to process it; the caller gets `io.babble.processing_offer`.
#[actix_rt::test]
async fn a_failing_callee_answers_with_processing_offer() {
    let router = router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let callee = client(&addr, "main", "callee", None);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    answer_offers(&callee, move |_, sdp| {
        seen_tx.send(sdp.to_owned()).unwrap();
        Err("cannot parse the offer".to_owned())
    });
    callee.listen().await.unwrap();
    let caller = client(&addr, "main", "caller", None);
    let err = caller.offer("callee", String::new()).await.unwrap_err();
    assert_eq!(
        seen.recv().await.unwrap(),
        "",
        "the call reached the callee"
    );
    assert!(
        matches!(&err, SignalError::Remote { uri, message } if uri == "io.babble.processing_offer" && message == "cannot parse the offer"),
        "{err}"
    );
}

#[actix_rt::test]
async fn an_offer_to_an_unknown_id_fails_with_a_clear_error() {
    let router = router(&["main"]).await;
    let caller = client(
        &format!("ws://{}", router.local_addr()),
        "main",
        "alice",
        None,
    );
    caller.listen().await.unwrap();
    let err = caller.offer("nobody", OFFER.into()).await.unwrap_err();
    assert_eq!(err, SignalError::UnknownPeer("nobody".into()));
    assert_eq!(err.to_string(), "no peer nobody on the signaling server");
}

#[actix_rt::test]
async fn realms_are_isolated() {
    let router = router(&["blue", "green"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let blue = client(&addr, "blue", "peer", None);
    answer_offers(&blue, |_, _| Ok(ANSWER.into()));
    blue.listen().await.unwrap();
    // The same ID registers in the other realm...
    let green = client(&addr, "green", "peer", None);
    green.listen().await.unwrap();
    // ...and a green caller cannot reach a blue-only ID.
    let blue_only = client(&addr, "blue", "blue-only", None);
    blue_only.listen().await.unwrap();
    let green_caller = client(&addr, "green", "caller", None);
    green_caller.listen().await.unwrap();
    let err = green_caller
        .offer("blue-only", OFFER.into())
        .await
        .unwrap_err();
    assert_eq!(err, SignalError::UnknownPeer("blue-only".into()));
}

#[actix_rt::test]
async fn an_unknown_realm_is_refused() {
    let router = router(&["main"]).await;
    let lost = client(
        &format!("ws://{}", router.local_addr()),
        "elsewhere",
        "x",
        None,
    );
    let err = lost.listen().await.unwrap_err();
    assert!(
        matches!(&err, SignalError::Aborted { reason, .. } if reason == "wamp.error.no_such_realm"),
        "{err}"
    );
    lost.close().await.unwrap();
}

#[actix_rt::test]
async fn a_second_registration_of_the_same_id_is_refused() {
    let router = router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let first = client(&addr, "main", "twin", None);
    first.listen().await.unwrap();
    let second = client(&addr, "main", "twin", None);
    let err = second.listen().await.unwrap_err();
    assert_eq!(err, SignalError::AlreadyRegistered("twin".into()));
    second.close().await.unwrap();
}

#[actix_rt::test]
async fn a_callee_that_never_answers_times_out_and_is_interrupted() {
    let router = router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let callee = client(&addr, "main", "sloth", None);
    let mut offers = callee.consumer();
    callee.listen().await.unwrap();
    let caller = WampSignal::new(
        settings(&addr, "main", "caller", None),
        Duration::from_millis(300),
        logging::discard(),
    );
    let call = actix_rt::spawn(async move { caller.offer("sloth", OFFER.into()).await });
    let held = offers.recv().await.expect("the offer arrived");
    let err = call.await.unwrap().unwrap_err();
    assert!(
        matches!(err, SignalError::Timeout { after, .. } if after == Duration::from_millis(300)),
        "{err}"
    );
    // Answering late is harmless.
    held.answer(Ok(ANSWER.into()));
}

#[actix_rt::test]
async fn after_a_router_restart_the_client_reconnects_and_registers_again() {
    let router = router(&["main"]).await;
    let addr = router.local_addr();
    let callee = client(&format!("ws://{addr}"), "main", "phoenix", None);
    answer_offers(&callee, |_, _| Ok(ANSWER.into()));
    callee.listen().await.unwrap();
    let first_session = callee.status().await.unwrap().session;
    router.shutdown().await;

    let config = RouterConfig {
        listen: addr.to_string(),
        ..router_config(&["main"])
    };
    let restarted = Router::start(config, logging::discard()).await.unwrap();
    // The callee reconnects by itself and registers again.
    let started = std::time::Instant::now();
    loop {
        let status = callee.status().await.unwrap();
        if status.registered && status.session != first_session {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "not registered again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let caller = client(&format!("ws://{addr}"), "main", "caller", None);
    assert_eq!(caller.offer("phoenix", OFFER.into()).await.unwrap(), ANSWER);
    restarted.shutdown().await;
}

async fn raw_session(
    addr: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.headers()["Sec-WebSocket-Protocol"], "wamp.2.json");
    ws
}

async fn next_text(
    ws: &mut (impl futures::Stream<Item = Result<WsMessage, tokio_tungstenite::tungstenite::Error>>
              + Unpin),
) -> Option<String> {
    while let Some(Ok(frame)) = ws.next().await {
        if let WsMessage::Text(text) = frame {
            return Some(text.to_string());
        }
    }
    None
}

/// A WAMP ABORT's or ERROR's message code and its reason or error URI
/// (ABORT: `[3, Details, Reason]`; ERROR: `[8, Type, Request, Details,
/// Error, ...]`), read as JSON rather than searched as text.
fn wamp_reply(text: &str) -> (u64, String) {
    let message: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let code = message[0]
        .as_u64()
        .unwrap_or_else(|| panic!("no code: {text}"));
    let uri = match code {
        3 => &message[2],
        8 => &message[4],
        _ => panic!("neither ABORT nor ERROR: {text}"),
    };
    (code, uri.as_str().unwrap_or_default().to_owned())
}

#[actix_rt::test]
async fn malformed_messages_abort_that_session_only() {
    let router = router(&["main"]).await;
    let addr = router.local_addr().to_string();
    let healthy = client(&format!("ws://{addr}"), "main", "healthy", None);
    answer_offers(&healthy, |_, _| Ok(ANSWER.into()));
    healthy.listen().await.unwrap();
    let session = healthy.status().await.unwrap().session;
    assert!(session.is_some());

    for garbage in [
        "not json",
        "{}",
        "[]",
        "[1]",
        "[48,1,{},\"p\",\"args\"]",
        "[2,1,{}]",
        "[65,1,1]",
    ] {
        let mut ws = raw_session(&addr).await;
        ws.send(WsMessage::Text(
            r#"[1,"main",{"roles":{"caller":{}}}]"#.into(),
        ))
        .await
        .unwrap();
        let welcome = next_text(&mut ws).await.unwrap();
        assert!(welcome.starts_with("[2,"), "{welcome}");
        ws.send(WsMessage::Text(garbage.into())).await.unwrap();
        let abort = next_text(&mut ws).await.unwrap();
        assert!(
            wamp_reply(&abort) == (3, "wamp.error.protocol_violation".into()),
            "{garbage}: {abort}"
        );
        assert!(
            next_text(&mut ws).await.is_none(),
            "{garbage}: the session was closed"
        );
    }
    // A first message that is not HELLO.
    let mut ws = raw_session(&addr).await;
    ws.send(WsMessage::Text("[48,1,{},\"healthy\"]".into()))
        .await
        .unwrap();
    let abort = next_text(&mut ws).await.unwrap();
    assert_eq!(
        wamp_reply(&abort),
        (3, "wamp.error.protocol_violation".into()),
        "{abort}"
    );

    let caller = client(&format!("ws://{addr}"), "main", "caller", None);
    assert_eq!(caller.offer("healthy", OFFER.into()).await.unwrap(), ANSWER);
    eventually(Duration::from_secs(5), "aborted sessions are gone", || {
        router.session_count() == 2
    })
    .await;
    // The same session all along: a client that reconnected after an
    // abort would be registered too, under a new session.
    assert_eq!(healthy.status().await.unwrap().session, session);
}

#[actix_rt::test]
async fn a_wrong_subprotocol_is_refused() {
    let router = router(&["main"]).await;
    let mut request = format!("ws://{}/", router.local_addr())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.msgpack".parse().unwrap());
    let err = tokio_tungstenite::connect_async(request).await.unwrap_err();
    assert!(
        matches!(&err, tokio_tungstenite::tungstenite::Error::Http(response)
            if response.status() == 400),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn tls_works_with_the_right_certificate_and_refuses_a_wrong_one() {
    let (_dir, cert, key) = self_signed();
    let (_other_dir, other_cert, _) = self_signed();
    let config = RouterConfig {
        cert_file: Some(cert.clone()),
        key_file: Some(key),
        insecure: false,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("localhost:{}", router.local_addr().port());

    let callee = client(&addr, "main", "bob", Some(Trust::CaFile(cert.clone())));
    answer_offers(&callee, |_, _| Ok(ANSWER.into()));
    callee.listen().await.unwrap();
    let caller = client(&addr, "main", "alice", Some(Trust::CaFile(cert)));
    assert_eq!(caller.offer("bob", OFFER.into()).await.unwrap(), ANSWER);

    // A client trusting another certificate never gets a session, and says
    // why (it keeps retrying in case the server's certificate changes).
    let skeptic = client(&addr, "main", "eve", Some(Trust::CaFile(other_cert)));
    let error = first_session_error(&skeptic).await;
    assert!(
        matches!(&error, SignalError::Tls { host, failure: TlsFailure::Untrusted, .. } if host == "localhost"),
        "{error:?}"
    );

    let trusting = client(&addr, "main", "mallory", Some(Trust::SkipVerification));
    trusting.listen().await.unwrap();
}

#[actix_rt::test]
async fn the_router_refuses_plain_connections_when_serving_tls() {
    let (_dir, cert, key) = self_signed();
    let config = RouterConfig {
        cert_file: Some(cert),
        key_file: Some(key),
        insecure: false,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let plain = client(&format!("ws://{}", router.local_addr()), "main", "x", None);
    // The attempt fails (an event, not a quiet half second), and no
    // session came of it.
    let error = first_session_error(&plain).await;
    assert!(matches!(error, SignalError::Connect(_)), "{error:?}");
    assert_eq!(router.session_count(), 0);
}

#[actix_rt::test]
async fn the_router_needs_a_certificate_unless_insecure() {
    let config = RouterConfig {
        insecure: false,
        ..router_config(&["main"])
    };
    let err = Router::start(config, logging::discard())
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("--insecure"), "{err}");
}

/// A session joined to `main` from the loopback address `from`, with the
/// callee role.
async fn joined_from(from: &str, addr: std::net::SocketAddr) -> WebSocketStream<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let tcp = socket.connect(addr).await.unwrap();
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    ws.send(WsMessage::Text(
        r#"[1,"main",{"roles":{"caller":{},"callee":{}}}]"#.into(),
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("[2,"));
    ws
}

/// Waits until the router closes `ws` (a GOODBYE, a close, or the end);
/// fails the test if it is still open after `limit`, or sends anything
/// else first.
async fn closed_within(ws: &mut WebSocketStream<TcpStream>, limit: Duration) {
    match tokio::time::timeout(limit, next_text(ws)).await {
        Err(_) => panic!("still open after {limit:?}"),
        Ok(None) => {}
        Ok(Some(text)) => assert!(text.starts_with("[6,"), "{text} where a close was due"),
    }
}

/// Shows that the router still serves `ws`: it registers `procedure`
/// (request `request`) and the next message is REGISTERED. A session the
/// router closed (a GOODBYE first) fails the test.
async fn still_served(ws: &mut WebSocketStream<TcpStream>, request: u64, procedure: &str) {
    ws.send(WsMessage::Text(
        format!(r#"[64,{request},{{}},"{procedure}"]"#).into(),
    ))
    .await
    .unwrap_or_else(|e| panic!("{procedure}: the session is closed: {e}"));
    let next = tokio::time::timeout(Duration::from_secs(5), next_text(ws))
        .await
        .unwrap_or_else(|_| panic!("{procedure}: no answer within 5 s"));
    assert!(
        next.as_deref().is_some_and(|text| text.starts_with("[65,")),
        "{procedure}: {next:?} where REGISTERED was due"
    );
}

#[actix_rt::test]
async fn at_the_session_cap_a_newcomer_evicts_from_the_heaviest_address() {
    let config = RouterConfig {
        max_sessions: 4,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("ws://{}", router.local_addr());
    let honest = client(&addr, "main", "honest", None);
    answer_offers(&honest, |_, _| Ok(ANSWER.into()));
    honest.listen().await.unwrap();
    let session = honest.status().await.unwrap().session;
    let mut flood = Vec::new();
    for _ in 0..3 {
        flood.push(joined_from("127.0.0.2", router.local_addr()).await);
    }
    assert_eq!(router.session_count(), 4);
    // Every place is taken: a newcomer is still welcomed and registers,
    // and one of the flood's sessions made room, not the honest one.
    let newcomer = client(&addr, "main", "newcomer", None);
    tokio::time::timeout(Duration::from_secs(5), newcomer.listen())
        .await
        .expect("the newcomer gets a session")
        .unwrap();
    assert_eq!(
        newcomer.offer("honest", OFFER.into()).await.unwrap(),
        ANSWER
    );
    // Which place makes room is decided when the newcomer is admitted,
    // before its WELCOME: the flood's least recently used session, its
    // first, is closed; the flood's others are still served.
    closed_within(&mut flood[0], Duration::from_secs(5)).await;
    for (i, ws) in flood.iter_mut().enumerate().skip(1) {
        still_served(ws, i as u64, &format!("flood-{i}")).await;
    }
    assert_eq!(honest.status().await.unwrap().session, session);
    eventually(Duration::from_secs(5), "four sessions", || {
        router.session_count() == 4
    })
    .await;
}

#[actix_rt::test]
async fn a_router_full_of_sessions_from_many_addresses_still_welcomes_a_node() {
    // Each session takes two descriptors in this process: 1200 sessions
    // where the machine grants enough, fewer (and a smaller router) where
    // it does not; always an eighth more sessions than the router holds.
    let limit = rlimit::increase_nofile_limit(8192).unwrap() as usize;
    let sessions = 1200.min(limit.saturating_sub(200) / 2);
    let max_sessions = 1024.min(sessions - sessions / 8);
    let config = RouterConfig {
        max_sessions,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    // The sessions come from twenty addresses (at most 60 each, under the
    // per-address cap).
    let mut flood = Vec::new();
    for i in 0..sessions {
        let from = format!("127.0.1.{}", 1 + i % 20);
        flood.push(joined_from(&from, router.local_addr()).await);
    }
    assert_eq!(router.session_count(), max_sessions);
    // A node still joins and registers, and can be offered to.
    let addr = format!("ws://{}", router.local_addr());
    let node = client(&addr, "main", "node", None);
    answer_offers(&node, |_, _| Ok(ANSWER.into()));
    tokio::time::timeout(Duration::from_secs(10), node.listen())
        .await
        .expect("the node gets a session")
        .unwrap();
    let caller = client(&addr, "main", "caller", None);
    assert_eq!(caller.offer("node", OFFER.into()).await.unwrap(), ANSWER);
    drop(flood);
}

#[actix_rt::test]
async fn one_address_cannot_hold_more_than_its_sessions() {
    let config = RouterConfig {
        max_sessions_per_address: 2,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("ws://{}", router.local_addr());
    let other = client(&addr, "main", "other", None);
    other.listen().await.unwrap();
    let session = other.status().await.unwrap().session;
    let mut first = joined_from("127.0.0.2", router.local_addr()).await;
    let mut second = joined_from("127.0.0.2", router.local_addr()).await;
    // Used later than the first: the first is the one that makes room.
    second
        .send(WsMessage::Text(r#"[64,1,{},"second"]"#.into()))
        .await
        .unwrap();
    assert!(next_text(&mut second).await.unwrap().starts_with("[65,"));
    // Once the third is welcomed, the place it took is decided: the
    // first's, which is closed; the second and the third are served.
    let mut third = joined_from("127.0.0.2", router.local_addr()).await;
    closed_within(&mut first, Duration::from_secs(5)).await;
    still_served(&mut second, 2, "second-again").await;
    still_served(&mut third, 1, "third").await;
    assert_eq!(other.status().await.unwrap().session, session);
}

#[actix_rt::test]
async fn a_client_bound_to_an_address_is_that_address_at_the_router() {
    // One session per address: a second client from 127.0.0.1 would take
    // the first one's place.
    let config = RouterConfig {
        max_sessions_per_address: 1,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("ws://{}", router.local_addr());
    let first = client(&addr, "main", "first", None);
    first.listen().await.unwrap();
    let session = first.status().await.unwrap().session;
    let bound = WampSignal::new(
        babble_net::signal::SignalSettings {
            bind_ip: Some("127.0.0.2".parse().unwrap()),
            ..settings(&addr, "main", "bound", None)
        },
        Duration::from_secs(5),
        logging::discard(),
    );
    answer_offers(&bound, |_, _| Ok(ANSWER.into()));
    bound.listen().await.unwrap();
    // The bound client took its own address's place: the first kept its
    // session, and reaches the bound one through the router.
    assert_eq!(first.offer("bound", OFFER.into()).await.unwrap(), ANSWER);
    assert_eq!(first.status().await.unwrap().session, session);
}

#[actix_rt::test]
async fn a_session_that_registers_nothing_is_closed() {
    let config = RouterConfig {
        register_timeout: Duration::from_millis(300),
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("ws://{}", router.local_addr());
    let node = client(&addr, "main", "node", None);
    node.listen().await.unwrap();
    let session = node.status().await.unwrap().session;
    let mut idle = joined_from("127.0.0.2", router.local_addr()).await;
    // Closed once the deadline passes (the router's own timer).
    closed_within(&mut idle, Duration::from_secs(10)).await;
    assert_eq!(node.status().await.unwrap().session, session);
    assert_eq!(router.session_count(), 1);
}

#[actix_rt::test]
async fn a_silent_session_is_closed_after_the_idle_timeout() {
    let config = RouterConfig {
        idle_timeout: Duration::from_millis(300),
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let mut ws = raw_session(&router.local_addr().to_string()).await;
    ws.send(WsMessage::Text(
        r#"[1,"main",{"roles":{"callee":{}}}]"#.into(),
    ))
    .await
    .unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("[2,"));
    assert_eq!(router.session_count(), 1);
    // Not reading means not answering the router's pings.
    eventually(
        Duration::from_secs(5),
        "the silent session was dropped",
        || router.session_count() == 0,
    )
    .await;
}

/// The shell command README.md gives for a self-signed certificate, with
/// its continuation lines joined, exactly as a user would paste it.
fn readme_certificate_command() -> String {
    let readme = include_str!("../README.md");
    let start = readme
        .find("openssl req -x509")
        .expect("README.md shows an openssl command");
    let mut command = String::new();
    for line in readme[start..].lines() {
        match line.strip_suffix('\\') {
            Some(continued) => command.push_str(continued),
            None => {
                command.push_str(line);
                break;
            }
        }
    }
    command
}

/// Runs `command` with `sh` in `dir`; panics with its output on failure.
fn run_in(dir: &std::path::Path, command: &str) {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .output()
        .expect("sh runs");
    assert!(
        output.status.success(),
        "{command}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn tls_router(dir: &std::path::Path) -> Router {
    let config = RouterConfig {
        cert_file: Some(dir.join("cert.pem")),
        key_file: Some(dir.join("key.pem")),
        insecure: false,
        ..router_config(&["main"])
    };
    Router::start(config, logging::discard()).await.unwrap()
}

#[actix_rt::test]
async fn the_readme_self_signed_certificate_is_trusted_from_the_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    run_in(dir.path(), &readme_certificate_command());
    let router = tls_router(dir.path()).await;
    let cert = dir.path().join("cert.pem");
    let port = router.local_addr().port();
    // The certificate says CA:TRUE; presented as the server's own, it is
    // accepted by name and by IP address, both in its subjectAltName.
    let callee = client(
        &format!("localhost:{port}"),
        "main",
        "bob",
        Some(Trust::CaFile(cert.clone())),
    );
    answer_offers(&callee, |_, _| Ok(ANSWER.into()));
    tokio::time::timeout(Duration::from_secs(5), callee.listen())
        .await
        .expect("a session within 5 s")
        .unwrap();
    let caller = client(
        &format!("127.0.0.1:{port}"),
        "main",
        "alice",
        Some(Trust::CaFile(cert)),
    );
    assert_eq!(caller.offer("bob", OFFER.into()).await.unwrap(), ANSWER);
}

/// Waits for the first error `signal` reports while it has no session.
async fn first_session_error(signal: &WampSignal) -> SignalError {
    let started = std::time::Instant::now();
    loop {
        let status = signal.status().await.unwrap();
        assert_eq!(status.session, None);
        if let Some(error) = status.last_error {
            return error;
        }
        assert!(started.elapsed() < Duration::from_secs(5), "no error");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[actix_rt::test]
async fn a_pinned_certificate_must_still_name_the_server() {
    let dir = tempfile::tempdir().unwrap();
    run_in(
        dir.path(),
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout key.pem -out cert.pem -days 365 -subj /CN=elsewhere \
         -addext subjectAltName=DNS:elsewhere.example",
    );
    let router = tls_router(dir.path()).await;
    let signal = client(
        &format!("localhost:{}", router.local_addr().port()),
        "main",
        "bob",
        Some(Trust::CaFile(dir.path().join("cert.pem"))),
    );
    let error = first_session_error(&signal).await;
    assert!(
        matches!(
            error,
            SignalError::Tls {
                failure: TlsFailure::NotValidForName,
                ..
            }
        ),
        "{error:?}"
    );
}

#[actix_rt::test]
async fn an_expired_pinned_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("key.pem"), key.serialize_pem()).unwrap();
    let router = tls_router(dir.path()).await;
    let signal = client(
        &format!("localhost:{}", router.local_addr().port()),
        "main",
        "bob",
        Some(Trust::CaFile(dir.path().join("cert.pem"))),
    );
    let error = first_session_error(&signal).await;
    assert!(
        matches!(
            error,
            SignalError::Tls {
                failure: TlsFailure::Expired,
                ..
            }
        ),
        "{error:?}"
    );
}

/// A raw session joined to the realm `main` of the router at `addr`.
async fn joined_raw_session(
    addr: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut ws = raw_session(addr).await;
    ws.send(WsMessage::Text(
        r#"[1,"main",{"roles":{"caller":{},"callee":{}}}]"#.into(),
    ))
    .await
    .unwrap();
    let welcome = next_text(&mut ws).await.unwrap();
    assert!(welcome.starts_with("[2,"), "{welcome}");
    ws
}

/// Sends `count` CALLs of `procedure` with request IDs from `first`, then
/// collects the error URIs of the answers to them, in any order.
async fn call_errors<S>(
    ws: &mut WebSocketStream<S>,
    procedure: &str,
    first: u64,
    count: u64,
    wanted: usize,
) -> Vec<String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for request in first..first + count {
        let call = format!(r#"[48,{request},{{}},"{procedure}",["flood","{{}}"]]"#);
        ws.send(WsMessage::Text(call.into())).await.unwrap();
    }
    let mut errors = Vec::new();
    while errors.len() < wanted {
        let text = tokio::time::timeout(Duration::from_secs(5), next_text(ws))
            .await
            .expect("answers within 5 s")
            .expect("the session stays open");
        let message: serde_json::Value = serde_json::from_str(&text).unwrap();
        if message[0] == 8 {
            errors.push(message[4].as_str().unwrap().to_owned());
        }
    }
    errors
}

#[actix_rt::test]
async fn flooding_a_peer_with_calls_fails_the_calls_not_the_peer() {
    let config = RouterConfig {
        max_calls: 3,
        max_invocations: 4,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = router.local_addr().to_string();
    // The victim takes offers but answers none of the flood.
    let victim = client(&format!("ws://{addr}"), "main", "victim", None);
    let mut offers = victim.consumer();
    victim.listen().await.unwrap();
    let session = victim.status().await.unwrap().session;
    assert!(session.is_some());
    let (held_tx, mut held) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        while let Some(offer) = offers.recv().await {
            if offer.from == "flood" {
                let _ = held_tx.send(offer);
            } else {
                offer.answer(Ok(ANSWER.into()));
            }
        }
    });

    // One attacker (from 127.0.0.2): three calls fit its own cap, two
    // more are refused.
    let mut first = joined_from("127.0.0.2", router.local_addr()).await;
    let errors = call_errors(&mut first, "victim", 1, 5, 2).await;
    assert_eq!(errors, vec!["io.babble.too_many_calls"; 2]);
    // Another: one more call reaches the victim (four are waiting for its
    // answer, its cap), the rest are refused as busy.
    let mut second = joined_from("127.0.0.2", router.local_addr()).await;
    let errors = call_errors(&mut second, "victim", 1, 3, 2).await;
    assert_eq!(errors, vec!["io.babble.callee_busy"; 2]);
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(held.recv().await.unwrap());
    }

    // The victim is still in its first session, registered: nobody can
    // take its ID.
    let status = victim.status().await.unwrap();
    assert!(status.registered, "{status:?}");
    assert_eq!(status.session, session, "the victim's session was replaced");
    let thief = client(&format!("ws://{addr}"), "main", "victim", None);
    let stolen = thief.listen().await.unwrap_err();
    assert_eq!(stolen, SignalError::AlreadyRegistered("victim".into()));
    thief.close().await.unwrap();

    // While the flood still holds the victim's whole queue, an honest
    // caller from another address gets through: the flood's oldest call
    // gives up its place and fails as busy.
    let honest = client(&format!("ws://{addr}"), "main", "honest", None);
    assert_eq!(honest.offer("victim", OFFER.into()).await.unwrap(), ANSWER);
    let errors = call_errors(&mut first, "victim", 100, 0, 1).await;
    assert_eq!(errors, vec!["io.babble.callee_busy"]);
    assert_eq!(victim.status().await.unwrap().session, session);
    drop(kept);
}

#[actix_rt::test]
async fn a_session_that_stops_reading_is_closed_after_the_write_timeout() {
    let config = RouterConfig {
        write_timeout: Duration::from_millis(300),
        max_message_size: 64 * 1024,
        max_queued_bytes: 256 * 1024,
        max_calls: 150,
        max_invocations: 150,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = router.local_addr().to_string();

    // The sleeper registers, then never reads again, through a socket with
    // a small receive buffer.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(router.local_addr()).await.unwrap();
    let mut request = format!("ws://{addr}/").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    let (mut sleeper, _) = tokio_tungstenite::client_async(request, tcp).await.unwrap();
    sleeper
        .send(WsMessage::Text(
            r#"[1,"main",{"roles":{"callee":{}}}]"#.into(),
        ))
        .await
        .unwrap();
    assert!(next_text(&mut sleeper).await.unwrap().starts_with("[2,"));
    sleeper
        .send(WsMessage::Text(r#"[64,1,{},"sleeper"]"#.into()))
        .await
        .unwrap();
    assert!(next_text(&mut sleeper).await.unwrap().starts_with("[65,"));
    assert_eq!(router.session_count(), 1);

    // Large calls fill its socket, then its queue: the calls that do not
    // fit fail as busy, and once the router has waited on the full socket
    // for the write timeout it closes the session. Calls go on until that
    // happens (whatever the kernel buffers hold, and however the router's
    // tasks interleave with ours), while another task reads the caller's
    // answers so that the caller's own socket never fills.
    let (mut calls, mut answers) = joined_raw_session(&addr).await.split();
    let ended = Arc::new(AtomicU64::new(0));
    let reader = {
        let ended = ended.clone();
        actix_rt::spawn(async move {
            while let Some(text) = next_text(&mut answers).await {
                if text.starts_with("[8,48,") {
                    ended.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let big = "x".repeat(60 * 1024);
    let mut sent = 0u64;
    while router.session_count() == 2 {
        // Thousands of calls of 60 KiB: far beyond any socket buffer and
        // queue, so only a router that never closes the session gets here.
        assert!(sent < 5000, "still open after {sent} calls of 60 KiB");
        sent += 1;
        let call = format!(r#"[48,{sent},{{}},"sleeper",["big","{big}"]]"#);
        calls.send(WsMessage::Text(call.into())).await.unwrap();
        // Paces the load; the outcome does not depend on it.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // Every call ended for the caller (busy, or canceled when the sleeper
    // left), and its name is free again.
    eventually(Duration::from_secs(5), "every call ends", || {
        ended.load(Ordering::Relaxed) == sent
    })
    .await;
    reader.abort();
    let successor = client(&format!("ws://{addr}"), "main", "sleeper", None);
    successor.listen().await.unwrap();
    drop(sleeper);
}

#[actix_rt::test]
async fn reusing_a_call_request_id_aborts_the_session() {
    let router = router(&["main"]).await;
    let addr = router.local_addr().to_string();
    let callee = client(&format!("ws://{addr}"), "main", "slow", None);
    let _offers = victim_offers(&callee);
    callee.listen().await.unwrap();
    let session = callee.status().await.unwrap().session;
    assert!(session.is_some());
    let mut ws = joined_raw_session(&addr).await;
    for _ in 0..2 {
        ws.send(WsMessage::Text(r#"[48,7,{},"slow",["x","{}"]]"#.into()))
            .await
            .unwrap();
    }
    let abort = next_text(&mut ws).await.unwrap();
    assert_eq!(
        wamp_reply(&abort),
        (3, "wamp.error.protocol_violation".into()),
        "{abort}"
    );
    assert!(abort.contains("already in use"), "{abort}");
    // Only the offender's session ended: the callee's is the same one.
    let status = callee.status().await.unwrap();
    assert!(status.registered, "{status:?}");
    assert_eq!(status.session, session);
}

/// Takes the offers made to `signal` and keeps them unanswered.
fn victim_offers(
    signal: &WampSignal,
) -> tokio::sync::mpsc::UnboundedReceiver<babble_net::signal::Offer> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut offers = signal.consumer();
    actix_rt::spawn(async move {
        while let Some(offer) = offers.recv().await {
            let _ = tx.send(offer);
        }
    });
    rx
}

/// Answers a WebSocket upgrade with the WAMP subprotocol.
#[allow(clippy::result_large_err)]
fn wamp_subprotocol(
    _: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut response: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    response
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "wamp.2.json".parse().unwrap());
    Ok(response)
}

#[actix_rt::test]
async fn a_router_gone_silent_is_detected_and_the_client_registers_again() {
    // A fake router: welcomes and registers every session, then reads
    // nothing more (so it answers no ping) until the client gives up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (registered_tx, mut registered) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        let mut session = 0u64;
        while let Ok((tcp, _)) = listener.accept().await {
            session += 1;
            let registered_tx = registered_tx.clone();
            actix_rt::spawn(async move {
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, wamp_subprotocol)
                    .await
                    .unwrap();
                let _hello = next_text(&mut ws).await.unwrap();
                ws.send(WsMessage::Text(format!("[2,{session},{{}}]").into()))
                    .await
                    .unwrap();
                let register = next_text(&mut ws).await.unwrap();
                let request: serde_json::Value = serde_json::from_str(&register).unwrap();
                ws.send(WsMessage::Text(format!("[65,{},99]", request[1]).into()))
                    .await
                    .unwrap();
                let _ = registered_tx.send(session);
                // Silent from now on, but the connection stays open.
                std::future::pending::<()>().await;
            });
        }
    });
    let mut settings = common::signal::settings(&format!("ws://{addr}"), "main", "me", None);
    settings.keepalive = Duration::from_millis(100);
    let signal = WampSignal::new(settings, Duration::from_secs(1), logging::discard());
    signal.listen().await.unwrap();
    assert_eq!(registered.recv().await, Some(1));
    // Three keep-alive periods without a byte: a new session, registered.
    let second = tokio::time::timeout(Duration::from_secs(5), registered.recv())
        .await
        .expect("the client reconnected");
    assert_eq!(second, Some(2));
}

#[actix_rt::test]
async fn listening_fails_with_a_clear_error_when_the_router_is_unreachable() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings =
        common::signal::settings(&format!("ws://127.0.0.1:{port}"), "main", "me", None);
    let connect_timeout = Duration::from_millis(500);
    settings.connect_timeout = connect_timeout;
    let signal = WampSignal::new(settings, Duration::from_secs(1), logging::discard());
    let started = std::time::Instant::now();
    let error = signal.listen().await.unwrap_err();
    // Given up at the connect timeout, not later (six of them is a margin
    // only a missed deadline uses), saying the last attempt was refused.
    let took = started.elapsed();
    assert!(took < connect_timeout * 6, "failed after {took:?}");
    assert!(
        matches!(&error, SignalError::Unreachable { after, why, .. }
            if *after == connect_timeout && why.contains("refused")),
        "{error:?}"
    );
}

mod authenticated {
    use super::*;
    use babble_net::secure::NodeKey;

    async fn auth_router() -> Router {
        let config = RouterConfig {
            require_auth: true,
            ..router_config(&["main"])
        };
        Router::start(config, logging::discard()).await.unwrap()
    }

    /// A client authenticating as `key` (its ID is its key).
    fn keyed_client(addr: &str, key: &NodeKey) -> WampSignal {
        let settings = babble_net::signal::SignalSettings {
            key: Some(key.clone()),
            ..common::signal::settings(addr, "main", &key.public().to_string(), None)
        };
        WampSignal::new(settings, Duration::from_secs(5), logging::discard())
    }

    /// A raw session that says HELLO as `claimed` and answers the challenge
    /// with `signer`'s signature; returns the session and the router's
    /// answer to AUTHENTICATE.
    async fn raw_authenticated(
        addr: &str,
        claimed: &NodeKey,
        signer: &NodeKey,
    ) -> (
        tokio_tungstenite::WebSocketStream<
            tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
        >,
        String,
    ) {
        let mut ws = raw_session(addr).await;
        let hello = serde_json::json!([1, "main", {
            "roles": {"caller": {}, "callee": {}},
            "authmethods": ["babble-secp256k1"],
            "authid": claimed.public().to_string(),
        }]);
        ws.send(WsMessage::Text(hello.to_string().into()))
            .await
            .unwrap();
        let challenge: serde_json::Value =
            serde_json::from_str(&next_text(&mut ws).await.unwrap()).unwrap();
        assert_eq!(challenge[0], 4, "{challenge}");
        assert_eq!(challenge[1], "babble-secp256k1");
        let bytes = hex::decode(challenge[2]["challenge"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), 32);
        let signature = hex::encode(signer.sign(&bytes));
        let authenticate = serde_json::json!([5, signature, {}]);
        ws.send(WsMessage::Text(authenticate.to_string().into()))
            .await
            .unwrap();
        let answer = next_text(&mut ws).await.unwrap();
        (ws, answer)
    }

    #[actix_rt::test]
    async fn a_node_proves_its_key_and_registers_only_its_own_id() {
        let router = auth_router().await;
        let addr = router.local_addr().to_string();
        let key = NodeKey::generate();
        let (mut ws, welcome) = raw_authenticated(&addr, &key, &key).await;
        assert!(welcome.starts_with("[2,"), "{welcome}");
        assert!(welcome.contains(&key.public().to_string()), "{welcome}");
        // Someone else's ID: not authorized; its own: registered.
        let other = NodeKey::generate().public().to_string();
        ws.send(WsMessage::Text(format!(r#"[64,1,{{}},"{other}"]"#).into()))
            .await
            .unwrap();
        let refused = next_text(&mut ws).await.unwrap();
        assert_eq!(
            wamp_reply(&refused),
            (8, "wamp.error.not_authorized".into()),
            "{refused}"
        );
        let own = key.public().to_string();
        ws.send(WsMessage::Text(format!(r#"[64,2,{{}},"{own}"]"#).into()))
            .await
            .unwrap();
        assert!(next_text(&mut ws).await.unwrap().starts_with("[65,2,"));
    }

    #[actix_rt::test]
    async fn anonymous_sessions_and_wrong_signatures_are_refused() {
        let router = auth_router().await;
        let addr = router.local_addr().to_string();
        let mut anonymous = raw_session(&addr).await;
        anonymous
            .send(WsMessage::Text(
                r#"[1,"main",{"roles":{"caller":{}}}]"#.into(),
            ))
            .await
            .unwrap();
        let abort = next_text(&mut anonymous).await.unwrap();
        assert!(
            wamp_reply(&abort) == (3, "wamp.error.not_authorized".into()),
            "{abort}"
        );
        // Claims one key, signs with another.
        let (claimed, signer) = (NodeKey::generate(), NodeKey::generate());
        let (_, answer) = raw_authenticated(&addr, &claimed, &signer).await;
        assert!(
            wamp_reply(&answer) == (3, "wamp.error.authentication_failed".into()),
            "{answer}"
        );
        // A client without a key says why it cannot get in.
        let keyless = client(&format!("ws://{addr}"), "main", "x", None);
        let error = first_session_error(&keyless).await;
        assert!(
            matches!(&error, SignalError::Aborted { reason, .. } if reason == "wamp.error.not_authorized"),
            "{error:?}"
        );
        assert_eq!(router.session_count(), 0);
    }

    #[actix_rt::test]
    async fn a_router_with_authentication_refuses_a_call_in_another_keys_name() {
        let router = auth_router().await;
        let addr = format!("ws://{}", router.local_addr());
        let (alice, bob, mallory) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let bob_signal = keyed_client(&addr, &bob);
        let offers = Arc::new(AtomicU64::new(0));
        {
            let offers = offers.clone();
            answer_offers(&bob_signal, move |_, _| {
                offers.fetch_add(1, Ordering::Relaxed);
                Ok(ANSWER.into())
            });
        }
        bob_signal.listen().await.unwrap();
        let (mut ws, welcome) =
            raw_authenticated(&router.local_addr().to_string(), &mallory, &mallory).await;
        assert!(welcome.starts_with("[2,"));
        let (alice_id, bob_id) = (alice.public().to_string(), bob.public().to_string());
        let call = serde_json::json!([48, 1, {}, bob_id, [alice_id, OFFER]]);
        ws.send(WsMessage::Text(call.to_string().into()))
            .await
            .unwrap();
        let answer = next_text(&mut ws).await.unwrap();
        assert_eq!(
            wamp_reply(&answer),
            (8, "wamp.error.not_authorized".into()),
            "{answer}"
        );
        // In its own name it reaches bob (who checks the signature).
        let own = serde_json::json!([48, 2, {}, bob_id, [mallory.public().to_string(), OFFER]]);
        ws.send(WsMessage::Text(own.to_string().into()))
            .await
            .unwrap();
        let answer = next_text(&mut ws).await.unwrap();
        assert_eq!(
            wamp_reply(&answer),
            (8, "io.babble.processing_offer".into()),
            "{answer}"
        );
        assert_eq!(offers.load(Ordering::Relaxed), 0, "bob saw no offer");
    }

    #[actix_rt::test]
    async fn a_flood_of_offers_signed_by_minted_keys_cannot_fill_the_replay_window() {
        let router = router(&["main"]).await;
        let addr = format!("ws://{}", router.local_addr());
        let (alice, bob) = (NodeKey::generate(), NodeKey::generate());
        let bob_signal = keyed_client(&addr, &bob);
        answer_offers(&bob_signal, |_, _| Ok(ANSWER.into()));
        bob_signal.listen().await.unwrap();
        let bob_id = bob.public().to_string();
        // More validly signed offers than the window holds, each from a key
        // made for it, 32 in flight at a time.
        let mut ws = joined_raw_session(&router.local_addr().to_string()).await;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        // Every offer whose signature is checked is remembered, whether the
        // node answers it or drops it for want of room in its offer queue
        // (16, where a loaded machine may lag behind 32 in flight); the
        // flood goes on until more than the window has been remembered.
        let mut request = 0u64;
        let mut remembered = 0u64;
        while remembered < 8300 {
            for _ in 0..32 {
                request += 1;
                let minted = NodeKey::generate();
                let from = minted.public().to_string();
                let bytes = serde_json::json!(["offer", from, bob_id, OFFER, now_ms]).to_string();
                let sig = serde_json::json!({"ts": now_ms, "sig": hex::encode(minted.sign(bytes.as_bytes()))});
                let call = serde_json::json!([48, request, {}, bob_id, [from, OFFER, sig]]);
                ws.send(WsMessage::Text(call.to_string().into()))
                    .await
                    .unwrap();
            }
            for _ in 0..32 {
                let text = next_text(&mut ws).await.unwrap();
                let answered = text.starts_with("[50,");
                let dropped = !answered
                    && wamp_reply(&text) == (8, "io.babble.processing_offer".into())
                    && text.contains("the offer was dropped");
                assert!(answered || dropped, "{text}");
                remembered += 1;
            }
        }
        // An honest peer's offer is still taken as new.
        let alice_signal = keyed_client(&addr, &alice);
        assert_eq!(
            alice_signal.offer(&bob_id, OFFER.into()).await.unwrap(),
            ANSWER
        );
    }

    #[actix_rt::test]
    async fn signed_offers_get_signed_answers_and_replays_are_refused() {
        // A router that relays anything (no authentication), so that what
        // is checked here is the nodes' own verification: a node trusts no
        // router with its peers' identities.
        let router = router(&["main"]).await;
        let addr = format!("ws://{}", router.local_addr());
        let (alice, bob, mallory) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let bob_signal = keyed_client(&addr, &bob);
        answer_offers(&bob_signal, |_, _| Ok(ANSWER.into()));
        bob_signal.listen().await.unwrap();
        let alice_signal = keyed_client(&addr, &alice);
        let bob_id = bob.public().to_string();
        assert_eq!(
            alice_signal.offer(&bob_id, OFFER.into()).await.unwrap(),
            ANSWER
        );

        // Mallory calls bob with offers claiming to be from alice.
        let mut ws = joined_raw_session(&router.local_addr().to_string()).await;
        let alice_id = alice.public().to_string();
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let signed = |key: &NodeKey, ts: u64| {
            let bytes = serde_json::json!(["offer", alice_id, bob_id, OFFER, ts]).to_string();
            serde_json::json!({"ts": ts, "sig": hex::encode(key.sign(bytes.as_bytes()))})
        };
        let genuine = signed(&alice, now_ms);
        let cases = [
            ("unsigned", serde_json::json!([alice_id, OFFER])),
            (
                "forged",
                serde_json::json!([alice_id, OFFER, signed(&mallory, now_ms)]),
            ),
            (
                "stale",
                serde_json::json!([alice_id, OFFER, signed(&alice, now_ms - 3_600_000)]),
            ),
            (
                "captured",
                serde_json::json!([alice_id, OFFER, genuine.clone()]),
            ),
            ("replayed", serde_json::json!([alice_id, OFFER, genuine])),
        ];
        for (request, (case, args)) in cases.iter().enumerate() {
            let call = serde_json::json!([48, request + 1, {}, bob_id, args]);
            ws.send(WsMessage::Text(call.to_string().into()))
                .await
                .unwrap();
            let answer = next_text(&mut ws).await.unwrap();
            if *case == "captured" {
                // A genuine signed offer is answered once (whoever sends
                // it, the DTLS fingerprint inside binds it to alice).
                assert!(answer.starts_with("[50,"), "{case}: {answer}");
            } else {
                assert!(
                    wamp_reply(&answer) == (8, "io.babble.processing_offer".into()),
                    "{case}: {answer}"
                );
            }
        }
    }
}

#[actix_rt::test]
async fn connections_that_never_finish_their_handshake_never_take_a_sessions_place() {
    let config = RouterConfig {
        max_sessions: 4,
        max_handshakes: 8,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let mut honest = joined_from("127.0.0.1", router.local_addr()).await;
    still_served(&mut honest, 1, "honest").await;
    // Sixteen addresses each open a connection and say nothing: each is a
    // newcomer with one place, as the honest session is, and older.
    let mut silent = Vec::new();
    for i in 0..16 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(format!("127.0.2.{}:0", i + 1).parse().unwrap())
            .unwrap();
        silent.push(socket.connect(router.local_addr()).await.unwrap());
    }
    // The router accepts in order: once a later newcomer has its WELCOME,
    // every silent connection was admitted (and every eviction decided).
    let mut newcomer = joined_from("127.0.3.1", router.local_addr()).await;
    still_served(&mut newcomer, 1, "newcomer").await;
    // They took handshakes' places only: the honest session is still
    // served.
    still_served(&mut honest, 2, "honest.again").await;
}

#[actix_rt::test]
async fn an_invocation_tells_the_callee_its_callers_address() {
    let router = router(&["main"]).await;
    let mut callee = joined_from("127.0.0.2", router.local_addr()).await;
    still_served(&mut callee, 1, "callee").await;
    let mut caller = joined_from("127.0.0.3", router.local_addr()).await;
    caller
        .send(WsMessage::Text(
            r#"[48,1,{},"callee",["made-up","{}"]]"#.into(),
        ))
        .await
        .unwrap();
    let text = next_text(&mut callee).await.expect("an INVOCATION");
    let message: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(message[0], 68, "{text}");
    // The address the router saw, whatever ID the caller claims.
    assert_eq!(
        message[3][babble_net::signal::CALLER_ADDRESS],
        "127.0.0.3",
        "{text}"
    );
}
