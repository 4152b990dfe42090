//! The signaling router and client over real sockets: offers and answers,
//! realms, failures, reconnection, bad input, TLS.

mod common;

use std::time::Duration;

use babble_net::logging;
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, SignalError, Trust, WampSignal};
use common::net::eventually;
use common::signal::{answer_offers, client, router, router_config, self_signed, settings};
use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message as WsMessage;

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

#[actix_rt::test]
async fn malformed_messages_abort_that_session_only() {
    let router = router(&["main"]).await;
    let addr = router.local_addr().to_string();
    let healthy = client(&format!("ws://{addr}"), "main", "healthy", None);
    answer_offers(&healthy, |_, _| Ok(ANSWER.into()));
    healthy.listen().await.unwrap();

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
            abort.starts_with("[3,") && abort.contains("wamp.error.protocol_violation"),
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
    assert!(abort.contains("wamp.error.protocol_violation"), "{abort}");

    let caller = client(&format!("ws://{addr}"), "main", "caller", None);
    assert_eq!(caller.offer("healthy", OFFER.into()).await.unwrap(), ANSWER);
    eventually(Duration::from_secs(5), "aborted sessions are gone", || {
        router.session_count() == 2
    })
    .await;
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
    assert!(err.to_string().contains("400"), "{err}");
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
    let started = std::time::Instant::now();
    let error = loop {
        let status = skeptic.status().await.unwrap();
        assert_eq!(status.session, None);
        if let Some(error) = status.last_error {
            break error;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no error reported"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(
        error
            .to_string()
            .contains("TLS handshake with localhost failed"),
        "{error}"
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
    let result = tokio::time::timeout(Duration::from_millis(500), plain.listen()).await;
    assert!(result.is_err(), "a plain client never gets a session");
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

#[actix_rt::test]
async fn sessions_beyond_the_limit_are_refused() {
    let config = RouterConfig {
        max_sessions: 2,
        ..router_config(&["main"])
    };
    let router = Router::start(config, logging::discard()).await.unwrap();
    let addr = format!("ws://{}", router.local_addr());
    let a = client(&addr, "main", "a", None);
    let b = client(&addr, "main", "b", None);
    a.listen().await.unwrap();
    b.listen().await.unwrap();
    let c = client(&addr, "main", "c", None);
    let result = tokio::time::timeout(Duration::from_millis(500), c.listen()).await;
    assert!(result.is_err(), "the third session is not admitted");
    a.close().await.unwrap();
    c.listen().await.unwrap();
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
    let error = first_session_error(&signal).await.to_string();
    assert!(error.contains("not valid for name"), "{error}");
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
    let error = first_session_error(&signal).await.to_string();
    assert!(error.contains("Expired"), "{error}");
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
async fn call_errors(
    ws: &mut tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    procedure: &str,
    first: u64,
    count: u64,
    wanted: usize,
) -> Vec<String> {
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

    // One attacker: three calls fit its own cap, two more are refused.
    let mut first = joined_raw_session(&addr).await;
    let errors = call_errors(&mut first, "victim", 1, 5, 2).await;
    assert_eq!(errors, vec!["io.babble.too_many_calls"; 2]);
    // Another: one more call reaches the victim (four are waiting for its
    // answer, its cap), the rest are refused as busy.
    let mut second = joined_raw_session(&addr).await;
    let errors = call_errors(&mut second, "victim", 1, 3, 2).await;
    assert_eq!(errors, vec!["io.babble.callee_busy"; 2]);
    let mut kept = Vec::new();
    for _ in 0..4 {
        kept.push(held.recv().await.unwrap());
    }

    // The victim is still connected and registered: nobody can take its ID.
    let status = victim.status().await.unwrap();
    assert!(status.registered, "{status:?}");
    let thief = client(&format!("ws://{addr}"), "main", "victim", None);
    let stolen = thief.listen().await.unwrap_err();
    assert_eq!(stolen, SignalError::AlreadyRegistered("victim".into()));
    thief.close().await.unwrap();

    // Once the flood's calls end, honest offers get through again.
    drop(kept);
    let honest = client(&format!("ws://{addr}"), "main", "honest", None);
    assert_eq!(honest.offer("victim", OFFER.into()).await.unwrap(), ANSWER);
}

#[actix_rt::test]
async fn a_session_that_stops_reading_is_closed_after_the_write_timeout() {
    const CALLS: u64 = 150;
    let config = RouterConfig {
        write_timeout: Duration::from_millis(300),
        max_message_size: 64 * 1024,
        max_queued_bytes: 256 * 1024,
        max_calls: CALLS as usize,
        max_invocations: CALLS as usize,
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

    // Large calls (9 MB, more than the kernel buffers) fill its socket, then
    // its queue: the calls that do not fit fail as busy, and the router
    // stops waiting on the socket within the write timeout and closes the
    // session.
    let mut caller = joined_raw_session(&addr).await;
    let big = "x".repeat(60 * 1024);
    for request in 1..=CALLS {
        let call = format!(r#"[48,{request},{{}},"sleeper",["big","{big}"]]"#);
        caller.send(WsMessage::Text(call.into())).await.unwrap();
        // Let the router move the call on to the sleeper's socket before
        // the next one arrives, so the socket fills before the queue does.
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    }
    eventually(
        Duration::from_secs(5),
        "the session that stopped reading was closed",
        || router.session_count() == 1,
    )
    .await;
    // Its calls ended for the caller (busy, or canceled when it left), and
    // its name is free again.
    let mut ended = 0;
    while ended < CALLS {
        let text = tokio::time::timeout(Duration::from_secs(5), next_text(&mut caller))
            .await
            .expect("every call ends")
            .unwrap();
        if text.starts_with("[8,48,") {
            ended += 1;
        }
    }
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
    let mut ws = joined_raw_session(&addr).await;
    for _ in 0..2 {
        ws.send(WsMessage::Text(r#"[48,7,{},"slow",["x","{}"]]"#.into()))
            .await
            .unwrap();
    }
    let abort = next_text(&mut ws).await.unwrap();
    assert!(
        abort.starts_with("[3,") && abort.contains("already in use"),
        "{abort}"
    );
    assert!(callee.status().await.unwrap().registered);
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
    settings.connect_timeout = Duration::from_millis(500);
    let signal = WampSignal::new(settings, Duration::from_secs(1), logging::discard());
    let started = std::time::Instant::now();
    let error = signal.listen().await.unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(&error, SignalError::Unreachable { why, .. } if why.contains("refused")),
        "{error}"
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
        assert!(refused.contains("wamp.error.not_authorized"), "{refused}");
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
            abort.starts_with("[3,") && abort.contains("wamp.error.not_authorized"),
            "{abort}"
        );
        // Claims one key, signs with another.
        let (claimed, signer) = (NodeKey::generate(), NodeKey::generate());
        let (_, answer) = raw_authenticated(&addr, &claimed, &signer).await;
        assert!(
            answer.starts_with("[3,") && answer.contains("wamp.error.authentication_failed"),
            "{answer}"
        );
        // A client without a key says why it cannot get in.
        let keyless = client(&format!("ws://{addr}"), "main", "x", None);
        let error = first_session_error(&keyless).await;
        assert!(error.to_string().contains("not_authorized"), "{error}");
        assert_eq!(router.session_count(), 0);
    }

    #[actix_rt::test]
    async fn signed_offers_get_signed_answers_and_replays_are_refused() {
        let router = auth_router().await;
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

        // Mallory, authenticated as herself, calls bob with offers claiming
        // to be from alice.
        let (mut ws, welcome) =
            raw_authenticated(&router.local_addr().to_string(), &mallory, &mallory).await;
        assert!(welcome.starts_with("[2,"));
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
                    answer.starts_with("[8,48,") && answer.contains("io.babble.processing_offer"),
                    "{case}: {answer}"
                );
            }
        }
    }
}
