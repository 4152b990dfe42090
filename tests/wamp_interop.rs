//! Interoperability with WAMP implementations babble-net did not write:
//! the autobahn client (Python) against our router, and our client against
//! the crossbar router. Needs `scripts/interop-setup.sh`; skipped (with a
//! message) when its tools are missing, unless BABBLE_NET_REQUIRE_INTEROP=1.

mod common;

use std::process::Stdio;
use std::time::Duration;

use babble_net::signal::{Signal, SignalError};
use common::interop::venv_tool;
use common::signal::{answer_offers, client, router};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const OFFER: &str = r#"{"type":"offer","sdp":"rust offer"}"#;

/// The next progress line of the autobahn peer (its log lines, which start
/// with a timestamp, are skipped).
async fn next_line(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> String {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the autobahn peer answers in time")
            .unwrap()
            .expect("the autobahn peer is still running");
        if !line.starts_with(|c: char| c.is_ascii_digit()) {
            return line;
        }
    }
}

#[actix_rt::test]
async fn autobahn_talks_to_our_router_and_our_client() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let router = router(&["main"]).await;
    let url = format!("ws://{}/", router.local_addr());
    let rust = client(&url, "main", "rust.peer", None);
    answer_offers(&rust, |from, sdp| {
        Ok(format!(
            r#"{{"type":"answer","sdp":"rust answer to {from} for {sdp}"}}"#
        ))
    });
    rust.listen().await.unwrap();

    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/interop/autobahn_peer.py"
    );
    let mut peer = Command::new(python)
        .args([script, &url, "main"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(peer.stdout.take().unwrap()).lines();
    assert_eq!(next_line(&mut lines).await, "READY");
    // autobahn called our client through our router.
    let answer = next_line(&mut lines).await;
    assert!(
        answer.starts_with("ANSWER ") && answer.contains("rust answer to py.peer"),
        "{answer}"
    );
    assert_eq!(
        next_line(&mut lines).await,
        "ERROR wamp.error.no_such_procedure"
    );

    // Our client calls autobahn through our router.
    let answer = rust.offer("py.peer", OFFER.into()).await.unwrap();
    assert_eq!(
        answer,
        r#"{"type": "answer", "sdp": "py answer to rust.peer"}"#
    );
    let err = rust.offer("py.peer", String::new()).await.unwrap_err();
    assert!(
        matches!(&err, SignalError::Remote { uri, message } if uri == "io.babble.processing_offer" && message == "empty offer from rust.peer"),
        "{err}"
    );

    peer.stdin
        .take()
        .unwrap()
        .write_all(b"done\n")
        .await
        .unwrap();
    assert_eq!(next_line(&mut lines).await, "BYE");
    assert!(peer.wait().await.unwrap().success());
    router.shutdown().await;
}

#[actix_rt::test]
async fn our_client_works_through_crossbar() {
    let Some(crossbar) = venv_tool("crossbar") else {
        return;
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let template = include_str!("interop/crossbar-config.json");
    std::fs::create_dir_all(dir.path().join(".crossbar")).unwrap();
    std::fs::write(
        dir.path().join(".crossbar/config.json"),
        template.replace("PORT", &port.to_string()),
    )
    .unwrap();
    let mut router = Command::new(crossbar)
        .args(["start", "--cbdir"])
        .arg(dir.path().join(".crossbar"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Crossbar takes a few seconds to start: wait for its port.
    let started = std::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "crossbar did not start"
        );
        assert!(router.try_wait().unwrap().is_none(), "crossbar exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("ws://127.0.0.1:{port}/");
    let callee = client(&url, "main", "bob", None);
    answer_offers(&callee, |from, sdp| {
        if sdp.is_empty() {
            Err("empty offer".into())
        } else {
            Ok(format!("answer for {from}"))
        }
    });
    callee.listen().await.unwrap();
    let caller = client(&url, "main", "alice", None);
    assert_eq!(
        caller.offer("bob", OFFER.into()).await.unwrap(),
        "answer for alice"
    );
    let err = caller.offer("bob", String::new()).await.unwrap_err();
    assert!(
        matches!(&err, SignalError::Remote { uri, .. } if uri == "io.babble.processing_offer"),
        "{err}"
    );
    let err = caller.offer("nobody", OFFER.into()).await.unwrap_err();
    assert_eq!(err, SignalError::UnknownPeer("nobody".into()));
    let twin = client(&url, "main", "bob", None);
    assert_eq!(
        twin.listen().await.unwrap_err(),
        SignalError::AlreadyRegistered("bob".into())
    );

    callee.close().await.unwrap();
    caller.close().await.unwrap();
    twin.close().await.unwrap();
    router.kill().await.unwrap();
}
