//! The QUIC transport over real UDP sockets: the shared transport suite,
//! who may talk to whom, what a node sees when a peer breaks the rules,
//! and an independent QUIC implementation (Python's aioquic) on the
//! other end.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use babble_net::secure::{HandshakeError, NodeKey, PeerKey};
use babble_net::*;
use common::suite::{self, Pair};

/// A QUIC node's configuration: `base`, bound to a free loopback port,
/// keyed to `key` (written to a file in `dir`), with `peers`.
fn quic_config(
    base: &Config,
    dir: &std::path::Path,
    key: &NodeKey,
    peers: &[(String, PeerKey)],
) -> Config {
    let key_file = dir.join(format!("{}.key", key.public()));
    key.save(&key_file).unwrap();
    Config {
        bind_addr: "127.0.0.1:0".into(),
        quic: true,
        key_file: Some(key_file),
        peer_keys: peers
            .iter()
            .map(|(address, key)| (address.clone(), key.to_string()))
            .collect(),
        ..base.clone()
    }
}

/// A listening QUIC node.
fn quic_node(config: &Config) -> NetworkTransport {
    let node = NetworkTransport::quic(config, logging::discard()).unwrap();
    node.listen().unwrap();
    node
}

/// A loopback address with a UDP port free a moment ago.
fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// Two QUIC nodes, each expecting the other's key at its address.
async fn pair(config: Config) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (client_key, server_key) = (NodeKey::generate(), NodeKey::generate());
    let (client_addr, target) = (free_udp_addr(), free_udp_addr());
    let node = |key: &NodeKey, at: &String, peer: (&String, &NodeKey)| {
        let config = Config {
            bind_addr: at.clone(),
            ..quic_config(
                &config,
                dir.path(),
                key,
                &[(peer.0.clone(), peer.1.public())],
            )
        };
        quic_node(&config)
    };
    let server = node(&server_key, &target, (&client_addr, &client_key));
    let client = node(&client_key, &client_addr, (&target, &server_key));
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        target,
        client_addr,
    }
}

transport_suite!(pair);

/// `future`'s output, or a failure after 10 s: a test waits for events,
/// never for ever.
async fn within<T>(future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), future)
        .await
        .expect("the awaited event happened within 10 s")
}

#[actix_rt::test]
async fn a_node_refuses_a_responder_with_another_key_and_a_caller_outside_its_peers() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob, mallory) = (
        NodeKey::generate(),
        NodeKey::generate(),
        NodeKey::generate(),
    );
    // Mallory answers where Alice expects Bob.
    let mallory_node = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &mallory,
        &[("alice".into(), alice.public())],
    ));
    let mut mallory_rpcs = suite::hold(&mallory_node);
    let address = mallory_node.advertise_addr();
    let alice_node = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &alice,
        &[(address.clone(), bob.public())],
    ));
    let err = alice_node
        .sync(&address, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_handshake(), "{err}");
    assert!(
        matches!(&err, TransportError::Handshake { source: HandshakeError::WrongKey { expected, got }, .. }
            if *expected == bob.public() && *got == mallory.public()),
        "{err:?}"
    );

    // Bob serves only Alice; Mallory, expecting Bob's real key, is refused
    // after the handshake and Bob never sees a request.
    let bob_node = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &bob,
        &[("alice".into(), alice.public())],
    ));
    let mut bob_rpcs = suite::hold(&bob_node);
    let bob_addr = bob_node.advertise_addr();
    let outsider = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &NodeKey::generate(),
        &[(bob_addr.clone(), bob.public())],
    ));
    let err = outsider
        .sync(&bob_addr, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        !err.is_timeout(),
        "refused at once, not left to time out: {err}"
    );
    assert!(
        matches!(&err, TransportError::Handshake { source: HandshakeError::RefusedByPeer(why), .. }
            if why.contains("not one of the peer's peers")),
        "the outsider is told why: {err:?}"
    );
    assert!(bob_rpcs.try_recv().is_err());
    assert!(mallory_rpcs.try_recv().is_err());

    // Alice, who expects Bob's key at Bob's address, is served and her
    // key is the RPC's.
    let alice_to_bob = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &alice,
        &[(bob_addr.clone(), bob.public())],
    ));
    let call = actix_rt::spawn({
        let alice_to_bob = alice_to_bob.clone();
        let bob_addr = bob_addr.clone();
        async move { alice_to_bob.sync(&bob_addr, SyncRequest::default()).await }
    });
    let rpc = within(bob_rpcs.recv()).await.unwrap();
    assert_eq!(rpc.peer_key, Some(alice.public()));
    rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    call.await.unwrap().unwrap();
}

#[actix_rt::test]
async fn a_caller_that_gives_up_abandons_its_request_on_the_callee() {
    let pair = pair(Config::default()).await;
    let mut held = suite::hold(&*pair.server);
    let client = pair.client.clone();
    let target = pair.target.clone();
    let call = actix_rt::spawn(async move { client.sync(&target, SyncRequest::default()).await });
    let mut rpc = within(held.recv())
        .await
        .expect("the request reaches the node, not abandoned on the way");
    assert!(
        !rpc.is_abandoned(),
        "finishing the request is not a hang-up"
    );
    call.abort();
    tokio::time::timeout(Duration::from_secs(5), rpc.abandoned())
        .await
        .expect("the node sees the caller leave");
}

/// Runs a QUIC node of `config` on an actix system of its own, in a
/// thread, answering with the vectors, until told to crash: its runtime
/// goes first, so that no packet says goodbye, then the node.
fn node_in_own_system(
    config: Config,
) -> (std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (ready, is_ready) = std::sync::mpsc::channel();
    let thread = std::thread::spawn(move || {
        let system = actix_rt::System::new();
        let node = system.block_on(async move {
            // No I/O threads: QUIC runs on this system's own thread.
            let node = quic_node(&Config {
                io_threads: 0,
                ..config
            });
            suite::serve(&node, suite::vector_answer);
            ready.send(()).unwrap();
            actix_rt::task::spawn_blocking(move || stopped.recv())
                .await
                .unwrap()
                .ok();
            node
        });
        drop(system);
        drop(node);
    });
    is_ready.recv().unwrap();
    (stop, thread)
}

#[actix_rt::test]
async fn a_sync_to_a_peer_that_crashed_and_came_back_is_sent_again_but_not_a_join() {
    let dir = tempfile::tempdir().unwrap();
    let (client_key, server_key) = (NodeKey::generate(), NodeKey::generate());
    let (client_addr, target) = (free_udp_addr(), free_udp_addr());
    let server_config = Config {
        bind_addr: target.clone(),
        ..quic_config(
            &Config::default(),
            dir.path(),
            &server_key,
            &[(client_addr.clone(), client_key.public())],
        )
    };
    let client = quic_node(&Config {
        bind_addr: client_addr.clone(),
        ..quic_config(
            &Config::default(),
            dir.path(),
            &client_key,
            &[(target.clone(), server_key.public())],
        )
    });
    let (crash, thread) = node_in_own_system(server_config.clone());
    client.sync(&target, SyncRequest::default()).await.unwrap();
    crash.send(()).unwrap();
    thread.join().unwrap();
    // The same node, back at its address: the client's connection is to
    // the old process, whose successor resets it at the first packet. A
    // lost connection does not prove the Join was never processed: it
    // fails rather than being sent twice.
    let (crash, thread) = node_in_own_system(server_config.clone());
    let started = std::time::Instant::now();
    let err = client
        .join(&target, JoinRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Io { .. }) && !err.is_timeout(),
        "{err:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(1), "{err:?}");
    // The next call dials afresh.
    client.sync(&target, SyncRequest::default()).await.unwrap();
    crash.send(()).unwrap();
    thread.join().unwrap();
    // A Sync on a connection to the old process is sent again.
    let (_crash, _thread) = node_in_own_system(server_config);
    client.sync(&target, SyncRequest::default()).await.unwrap();
}

/// Runs the independent QUIC peer (aioquic) with `args`; its last line.
fn quic_peer(python: &std::path::Path, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/quic_peer.py");
    let output = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

/// The interop virtualenv's Python, when it has aioquic.
fn aioquic_python() -> Option<std::path::PathBuf> {
    let python = common::interop::venv_tool("python")?;
    let has_modules = std::process::Command::new(&python)
        .args(["-c", "import aioquic, cryptography, coincurve"])
        .status()
        .is_ok_and(|s| s.success());
    common::interop::available_or_skip(
        has_modules,
        "aioquic, cryptography and coincurve (run scripts/interop-setup.sh)",
    )
    .then_some(python)
}

#[actix_rt::test]
async fn an_independent_quic_implementation_calls_a_node_and_is_called_by_one() {
    let Some(python) = aioquic_python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (node_key, python_key) = (NodeKey::generate(), NodeKey::generate());
    // aioquic dials the node, which accepts only its key.
    let node = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &node_key,
        &[("python".into(), python_key.public())],
    ));
    let mut rpcs = suite::hold(&node);
    let node_addr = node.advertise_addr();
    let run = |args: Vec<String>| {
        let python = python.clone();
        actix_rt::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            quic_peer(&python, &args)
        })
    };
    let call_args = |extra: &[&str]| {
        let mut args: Vec<String> = vec![
            "call".into(),
            "--connect".into(),
            node_addr.clone(),
            "--key".into(),
            python_key.to_hex(),
            "--expect".into(),
            node_key.public().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let caller = run(call_args(&[]));
    let rpc = within(rpcs.recv()).await.unwrap();
    assert_eq!(rpc.peer_key, Some(python_key.public()));
    let babble_net::Command::Sync(request) = &rpc.command else {
        panic!("{:?}", rpc.command)
    };
    assert_eq!(request.from_id, 42);
    rpc.respond(Ok(Response::Sync(SyncResponse {
        from_id: 43,
        ..SyncResponse::default()
    })));
    assert_eq!(caller.await.unwrap(), "OK FromID 43");

    // Certificates that prove nothing are refused in TLS (CRYPTO_ERROR
    // with the handshake_failure alert, 0x100 + 40, saying what is wrong
    // with the certificate); a certificate proving another key is
    // accepted by TLS, then the connection is closed by the node's
    // application code 3. The node never takes a request from them.
    let outsider = NodeKey::generate();
    let outsider_hex = outsider.to_hex();
    let tls_refusal = "REFUSED transport code=0x128 reason=";
    let bad_signature = format!(
        "the identity signature of {} is not valid",
        python_key.public()
    );
    for (extra, refusal, problem) in [
        (vec!["--forge"], tls_refusal, bad_signature.as_str()),
        (
            vec!["--no-extension"],
            tls_refusal,
            "no libp2p key extension (1.3.6.1.4.1.53594.1.1)",
        ),
        (
            vec!["--other-key", outsider_hex.as_str()],
            "REFUSED application code=0x3 reason=",
            "not a peer",
        ),
    ] {
        let last = run(call_args(&extra)).await.unwrap();
        assert!(
            last.starts_with(refusal) && last.ends_with(problem),
            "{extra:?}: {last}, not {refusal}...{problem}"
        );
    }
    assert!(rpcs.try_recv().is_err());

    // The node dials aioquic, expecting its key, once it listens.
    let python_addr = free_udp_addr();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/quic_peer.py");
    let mut server = std::process::Command::new(&python)
        .args([
            script,
            "serve",
            "--listen",
            &python_addr,
            "--key",
            &python_key.to_hex(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(server.stdout.take().unwrap()));
    let (lines, first) = actix_rt::task::spawn_blocking(move || {
        let first = lines.next();
        (lines, first)
    })
    .await
    .unwrap();
    let first = first.expect("the script prints a line").unwrap();
    assert!(first.starts_with("listening"), "{first}");
    let caller = quic_node(&quic_config(
        &Config::default(),
        dir.path(),
        &node_key,
        &[(python_addr.clone(), python_key.public())],
    ));
    let request = SyncRequest {
        from_id: 7,
        ..Default::default()
    };
    let answer = caller.sync(&python_addr, request).await.unwrap();
    assert_eq!(answer.from_id, 8);
    let last = actix_rt::task::spawn_blocking(move || {
        let last = lines.map_while(Result::ok).last();
        let _ = server.wait();
        last
    })
    .await
    .unwrap();
    assert_eq!(last, Some(format!("OK caller {}", node_key.public())));
}

#[actix_rt::test]
async fn close_lets_the_port_go_while_the_transport_is_still_held() {
    let pair = pair(Config::default()).await;
    pair.client
        .sync(&pair.target, SyncRequest::default())
        .await
        .ok();
    let addr = pair.target.clone();
    pair.server.close().await.unwrap();
    // Another socket can take the address, as after TCP's close.
    let started = std::time::Instant::now();
    while std::net::UdpSocket::bind(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{addr} is still bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(pair);
}

/// A QUIC endpoint that dials `target` (expecting `key` there) and hands
/// out raw streams: a peer that may break the protocol at will.
fn raw_peer(target: &str, key: PeerKey, me: &NodeKey) -> babble_net::quic::QuicStreamLayer {
    raw_peer_from("127.0.0.1", target, key, me)
}

/// [`raw_peer`], sending from `ip`.
fn raw_peer_from(
    ip: &str,
    target: &str,
    key: PeerKey,
    me: &NodeKey,
) -> babble_net::quic::QuicStreamLayer {
    let keys = babble_net::quic::QuicKeys {
        key: me.clone(),
        peers: [(target.to_owned(), key)].into_iter().collect(),
        accept_any_key: false,
    };
    babble_net::quic::QuicStreamLayer::bind(
        &format!("{ip}:0"),
        None,
        keys,
        limits::quic(&Config::default()),
        1,
        logging::discard(),
    )
    .unwrap()
}

/// A bare QUIC layer keyed to `key` that accepts any key: streams as the
/// Listener would get them.
fn open_layer(key: &NodeKey) -> babble_net::quic::QuicStreamLayer {
    open_layer_on(key, 1)
}

/// The same, on `io_threads` I/O threads.
fn open_layer_on(key: &NodeKey, io_threads: usize) -> babble_net::quic::QuicStreamLayer {
    babble_net::quic::QuicStreamLayer::bind(
        "127.0.0.1:0",
        None,
        babble_net::quic::QuicKeys {
            key: key.clone(),
            peers: Default::default(),
            accept_any_key: true,
        },
        limits::quic(&Config::default()),
        io_threads,
        logging::discard(),
    )
    .unwrap()
}

/// A node that accepts any key, with `config`; and its key.
fn open_node(config: Config) -> (NetworkTransport, NodeKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = NodeKey::generate();
    let node = quic_node(&Config {
        accept_any_key: true,
        ..quic_config(&config, dir.path(), &key, &[])
    });
    (node, key)
}

/// Reads `stream` to its end or error; what was read.
async fn read_all(stream: &mut babble_net::stream::BoxConnection) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut read = Vec::new();
    stream.read_to_end(&mut read).await.map(|_| read)
}

/// An honest caller of `node` gets its answer.
async fn honest_call(node: &NetworkTransport, key: &NodeKey) {
    honest_call_from("127.0.0.1", node, key).await
}

/// An honest caller on `ip` gets its answer from `node`.
async fn honest_call_from(ip: &str, node: &NetworkTransport, key: &NodeKey) {
    let dir = tempfile::tempdir().unwrap();
    let target = node.advertise_addr();
    let honest = quic_node(&Config {
        bind_addr: format!("{ip}:0"),
        ..quic_config(
            &Config::default(),
            dir.path(),
            &NodeKey::generate(),
            &[(target.clone(), key.public())],
        )
    });
    within(honest.sync(&target, SyncRequest::default()))
        .await
        .unwrap();
}

#[actix_rt::test]
async fn a_garbage_stream_is_closed_unanswered_and_the_connection_serves_on() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let (node, key) = open_node(Config::default());
    suite::serve(&node, suite::vector_answer);
    let target = node.advertise_addr();
    let peer = raw_peer(&target, key.public(), &NodeKey::generate());
    let mut garbage = peer.dial(&target, Duration::from_secs(5)).await.unwrap();
    garbage.write_all(b"\x09not a request\n").await.unwrap();
    garbage.shutdown().await.unwrap();
    let read = within(read_all(&mut garbage)).await;
    assert!(
        read.as_ref().map_or(true, Vec::is_empty),
        "garbage was answered: {read:?}"
    );
    // The same connection carries a good call next.
    let mut good = peer.dial(&target, Duration::from_secs(5)).await.unwrap();
    good.write_all(b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":0}\n")
        .await
        .unwrap();
    good.shutdown().await.unwrap();
    let reply = within(read_all(&mut good)).await.unwrap();
    assert!(
        reply.starts_with(b"\"\"\n"),
        "{}",
        String::from_utf8_lossy(&reply)
    );
    assert_eq!(
        node.inbound_totals().1,
        1,
        "the garbage stream counted as dropped"
    );
    // One connection carried both: the node closed the stream, not the
    // connection (a dialler would silently make a new one).
    assert_eq!(peer.connections_dialled(), 1);
}

#[actix_rt::test]
async fn trickled_and_silent_streams_are_cut_at_the_timeout_and_honest_calls_go_on() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let config = Config {
        timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (node, key) = open_node(config);
    suite::serve(&node, suite::vector_answer);
    let target = node.advertise_addr();
    let peer = raw_peer(&target, key.public(), &NodeKey::generate());
    // Silent streams: opened, never written.
    let mut silent = Vec::new();
    for _ in 0..16 {
        let mut stream = peer.dial(&target, Duration::from_secs(5)).await.unwrap();
        // A stream is known to the peer once a byte of it is sent;
        // whitespace is no request.
        stream.write_all(b" ").await.unwrap();
        silent.push(stream);
    }
    // Trickled ones, a byte every 100 ms: whitespace, which is no request
    // (cut at the stream's opening deadline), and a request that never
    // ends (cut at its own deadline: the timeout plus its bytes at the
    // minimum rate), both while honest calls go on.
    let trickle = |opening: &'static [u8], byte: &'static [u8]| {
        let peer = &peer;
        let target = &target;
        async move {
            let mut stream = peer.dial(target, Duration::from_secs(5)).await.unwrap();
            let started = std::time::Instant::now();
            stream.write_all(opening).await.unwrap();
            for _ in 0..100 {
                if stream.write_all(byte).await.is_err() {
                    return Some(started.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            None
        }
    };
    let honest_calls = async {
        for _ in 0..3 {
            honest_call(&node, &key).await;
        }
    };
    let (blank, endless, ()) = tokio::join!(
        within(trickle(b" ", b" ")),
        within(trickle(b"\x01{\"FromID\":", b"1")),
        honest_calls
    );
    // Each is cut within a few times the 300 ms timeout, not after its ten
    // seconds of trickling.
    for (what, cut) in [("whitespace", blank), ("an endless request", endless)] {
        let cut = cut.unwrap_or_else(|| panic!("{what} trickled for ten seconds"));
        assert!(cut < Duration::from_secs(3), "{what} cut after {cut:?}");
    }
    for mut stream in silent {
        assert!(within(read_all(&mut stream))
            .await
            .map_or(true, |r| r.is_empty()));
    }
    honest_call(&node, &key).await;
}

#[actix_rt::test]
async fn a_peer_opening_streams_without_end_waits_for_its_own_and_does_not_block_others() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let config = Config {
        quic_max_streams: 8,
        ..Config::default()
    };
    let (node, key) = open_node(config);
    // The node holds every Sync from 1 unanswered, answers the others.
    let mut rpcs = node.consumer();
    let (kept_tx, mut kept) = tokio::sync::mpsc::unbounded_channel();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            match &rpc.command {
                babble_net::Command::Sync(request) if request.from_id == 1 => {
                    let _ = kept_tx.send(rpc);
                }
                command => {
                    let answer = suite::vector_answer(command);
                    rpc.respond(answer);
                }
            }
        }
    });
    let target = node.advertise_addr();
    let peer = raw_peer(&target, key.public(), &NodeKey::generate());
    // Requests the node holds take every stream the peer may open on its
    // connection.
    let mut open = Vec::new();
    for _ in 0..8 {
        let mut stream = peer.dial(&target, Duration::from_secs(5)).await.unwrap();
        stream
            .write_all(b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":0}\n")
            .await
            .unwrap();
        stream.shutdown().await.unwrap();
        open.push(stream);
    }
    let mut held = Vec::new();
    for _ in 0..8 {
        held.push(within(kept.recv()).await.unwrap());
    }
    // The ninth waits in the peer's own stack (QUIC flow control), until
    // its deadline.
    let ninth = peer.dial(&target, Duration::from_millis(300)).await;
    assert!(
        matches!(&ninth, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "a ninth stream opened: {:?}",
        ninth.as_ref().err()
    );
    // Another peer is served meanwhile.
    honest_call(&node, &key).await;
    // Once the held calls are answered, the peer's streams are its own
    // again.
    for rpc in held {
        rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    }
    for mut stream in open {
        assert!(!within(read_all(&mut stream)).await.unwrap().is_empty());
    }
    peer.dial(&target, Duration::from_secs(5)).await.unwrap();
}

/// The benchmark's raw QUIC limit (`rpcbench quic-echo-serve` /
/// `quic-echo-call`, quinn alone) carries every round trip of a
/// FastForward's bytes, several at once, so that its figures in
/// docs/PERFORMANCE.md measure whole transfers.
#[test]
fn the_raw_quic_anchor_carries_every_round_trip() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let cert = dir.path().join("echo.der");
    let cert = cert.to_str().unwrap();
    let bench = common::interop::rpcbench();
    let mut serve = std::process::Command::new(&bench)
        .args([
            "quic-echo-serve",
            "--listen",
            "127.0.0.1:0",
            "--cert-file",
            cert,
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(serve.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let target = line
        .trim()
        .rsplit(' ')
        .next()
        .filter(|_| line.contains("listening on"))
        .unwrap_or_else(|| panic!("no listening line: {line:?}"))
        .to_owned();
    let call = std::process::Command::new(&bench)
        .args(["quic-echo-call", "--target", &target, "--cert-file", cert])
        .args([
            "--rpc",
            "fastforward",
            "--calls",
            "12",
            "--concurrency",
            "3",
        ])
        .output()
        .unwrap();
    let _ = serve.kill();
    let _ = serve.wait();
    assert!(call.status.success(), "{call:?}");
    let stdout = String::from_utf8_lossy(&call.stdout);
    let report: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["calls"], 12, "{report}");
    // A FastForward reply carries a 1 MiB snapshot in base64.
    let bytes_in = report["bytes_in"].as_u64().unwrap();
    assert!(bytes_in > 12 * 1_300_000, "{report}");
}

/// One address opening connection after connection holds at most its
/// share of the node's places: each newcomer beyond
/// `quic-max-connections-per-source` evicts that source's least recently
/// used connection, and a caller from another address still gets a place
/// and its answer while the flood holds on.
#[actix_rt::test]
async fn a_flood_of_connections_from_one_address_keeps_its_share_and_an_honest_peer_is_served() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    // Handshakes fast enough for forty connections from one address in a
    // moment (the share of connections is what this test is about).
    let (node, key) = open_node(Config {
        quic_max_connections: 16,
        quic_max_connections_per_source: 12,
        quic_max_handshakes: 256,
        ..Config::default()
    });
    suite::serve(&node, suite::vector_answer);
    let target = node.advertise_addr();
    // 40 connections from 127.0.0.1, each with a stream not yet written.
    let mut flood = Vec::new();
    for _ in 0..40 {
        let peer = raw_peer(&target, key.public(), &NodeKey::generate());
        let stream = within(peer.dial(&target, Duration::from_secs(5)))
            .await
            .unwrap();
        flood.push((peer, stream));
    }
    // A caller from 127.0.0.2 is served while the flood holds on.
    honest_call_from("127.0.0.2", &node, &key).await;
    // Of the flood, only the most recent connections are still served.
    let mut served = 0;
    for (_peer, mut stream) in flood {
        let asked = async {
            stream
                .write_all(b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":0}\n")
                .await?;
            stream.shutdown().await?;
            read_all(&mut stream).await
        };
        if matches!(within(asked).await, Ok(reply) if !reply.is_empty()) {
            served += 1;
        }
    }
    assert!(served >= 1, "the flood's newest connections serve on");
    assert!(
        served <= 12,
        "{served} flood connections kept a place (share: 12)"
    );
}

/// Large flow-control windows go to at most two connections per source
/// address: however many connections one address opens, it holds two,
/// another address gets its own, and they are given back when the
/// connections close.
#[actix_rt::test]
async fn large_windows_are_lent_one_per_source_and_given_back() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let key = NodeKey::generate();
    let server = open_layer(&key);
    let target = server.advertise_addr();
    // A peer's stream reaches the server once its connection has its
    // place and, if any, its large window.
    let connect = |ip: &'static str| {
        let peer = raw_peer_from(ip, &target, key.public(), &NodeKey::generate());
        let (server, target) = (&server, &target);
        async move {
            let mut stream = peer.dial(target, Duration::from_secs(5)).await.unwrap();
            stream.write_all(b"\x01").await.unwrap();
            within(server.accept_inbound()).await.unwrap();
            peer
        }
    };
    let mut from_one = Vec::new();
    for _ in 0..6 {
        from_one.push(connect("127.0.0.1").await);
    }
    assert_eq!(
        server.large_window_connections(),
        2,
        "one address, two windows"
    );
    let other = connect("127.0.0.2").await;
    assert_eq!(
        server.large_window_connections(),
        3,
        "another address, its own"
    );
    drop(from_one);
    drop(other);
    within(async {
        while server.large_window_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// With two I/O threads, a layer accepts on both: every lane has an
/// endpoint on the listening port, and the system spreads the peers'
/// connections over them (Linux). Peers dialling from 24 ports all land
/// on one lane only if each of 24 keyed hashes picks it (about one chance
/// in eight million).
#[cfg(target_os = "linux")]
#[actix_rt::test]
async fn connections_from_many_ports_are_spread_over_the_lanes() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let key = NodeKey::generate();
    let server = open_layer_on(&key, 2);
    let target = server.advertise_addr();
    let mut peers = Vec::new();
    for at in 0..24 {
        // From addresses of their own: one address may start only so
        // many handshakes a second.
        let ip = format!("127.0.0.{}", at + 2);
        let peer = raw_peer_from(&ip, &target, key.public(), &NodeKey::generate());
        let mut stream = peer.dial(&target, Duration::from_secs(5)).await.unwrap();
        stream.write_all(b"\x01").await.unwrap();
        within(server.accept_inbound()).await.unwrap();
        peers.push((peer, stream));
    }
    let by_lane = server.connections_by_lane();
    assert_eq!(by_lane.len(), 2, "a lane accepting on each I/O thread");
    assert_eq!(by_lane.iter().sum::<usize>(), 24, "{by_lane:?}");
    assert!(by_lane.iter().all(|&held| held > 0), "{by_lane:?}");
}

/// A layer may be bound to a host name: it listens on the first address
/// the name resolves to where it can, on every lane.
#[actix_rt::test]
async fn a_layer_binds_a_host_name() {
    use babble_net::stream::StreamLayer;
    let layer = babble_net::quic::QuicStreamLayer::bind(
        "localhost:0",
        None,
        babble_net::quic::QuicKeys {
            key: NodeKey::generate(),
            peers: Default::default(),
            accept_any_key: true,
        },
        limits::quic(&Config::default()),
        2,
        logging::discard(),
    )
    .unwrap();
    let local: std::net::SocketAddr = layer.local_addr().parse().unwrap();
    assert!(local.ip().is_loopback(), "{local}");
    assert_ne!(local.port(), 0);
}

/// Closing lets the port go even while a stream of one of its
/// connections is still held (by a task that has not finished with it):
/// a node restarted on its address can bind it.
#[actix_rt::test]
async fn close_lets_the_port_go_while_a_stream_is_still_held() {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let key = NodeKey::generate();
    let server = open_layer(&key);
    let addr = server.advertise_addr();
    let peer = raw_peer(&addr, key.public(), &NodeKey::generate());
    let mut stream = peer.dial(&addr, Duration::from_secs(5)).await.unwrap();
    stream.write_all(b"\x01").await.unwrap();
    let held = within(server.accept_inbound()).await.unwrap();
    server.close();
    let started = std::time::Instant::now();
    while std::net::UdpSocket::bind(&addr).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{addr} is still bound"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop((held, stream, peer, server));
}

#[actix_rt::test]
async fn half_open_handshakes_from_one_address_lock_no_newcomer_out() {
    let (node, key) = open_node(Config::default());
    suite::serve(&node, suite::echo_from_id);
    let target: std::net::SocketAddr = node.advertise_addr().parse().unwrap();
    // About 150 handshakes a second from one address, each answering the
    // Retry and then silent, held by the node up to the 5 s handshake
    // timeout: far more than the four times `quic-max-handshakes` (256)
    // that all sources together may have in progress.
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let flood = common::quic_flood::half_open(target, vec!["127.0.0.2".into()], 150, until);
    common::net::eventually(Duration::from_secs(10), "the flood is under way", || {
        flood.started.load(std::sync::atomic::Ordering::Relaxed) >= 400
    })
    .await;
    // Twenty newcomers, each from an address of its own, are all served
    // while it lasts.
    for i in 0..20 {
        honest_call_from(&format!("127.0.1.{}", i + 1), &node, &key).await;
    }
    assert!(std::time::Instant::now() < until, "the flood ended first");
}

#[actix_rt::test]
async fn opening_streams_keeps_no_place_fresh_only_answered_calls_do() {
    use babble_net::stream::StreamLayer;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::AsyncWriteExt;
    let (node, key) = open_node(Config {
        quic_max_connections: 2,
        ..Config::default()
    });
    suite::serve(&node, suite::vector_answer);
    let target = node.advertise_addr();
    // B holds a place and keeps opening streams that carry no call.
    let flooder = raw_peer_from("127.0.0.2", &target, key.public(), &NodeKey::generate());
    let opened = Arc::new(AtomicU64::new(0));
    let flooding = {
        let (target, opened) = (target.clone(), opened.clone());
        actix_rt::spawn(async move {
            let mut streams = Vec::new();
            while let Ok(mut stream) = flooder.dial(&target, Duration::from_secs(5)).await {
                if stream.write_all(b" ").await.is_err() {
                    break;
                }
                streams.push(stream);
                opened.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    common::net::eventually(Duration::from_secs(10), "the flooder has its place", || {
        opened.load(Ordering::Relaxed) > 0
    })
    .await;
    // A's call is answered after B took its place...
    let honest = raw_peer_from("127.0.0.3", &target, key.public(), &NodeKey::generate());
    assert!(raw_sync(&honest, &target).await.starts_with(b"\"\"\n"));
    // ...and B opens more streams after it.
    let after = opened.load(Ordering::Relaxed) + 5;
    common::net::eventually(Duration::from_secs(10), "the flooder opens more", || {
        opened.load(Ordering::Relaxed) >= after
    })
    .await;
    // At the cap, a newcomer takes the place least recently used by an
    // answered call: B's, which never had one.
    honest_call_from("127.0.0.4", &node, &key).await;
    assert!(raw_sync(&honest, &target).await.starts_with(b"\"\"\n"));
    assert_eq!(honest.connections_dialled(), 1, "A's connection was shed");
    within(flooding).await.unwrap();
}

/// A Sync over a stream of `peer`'s to `target`; the reply's bytes.
async fn raw_sync(peer: &babble_net::quic::QuicStreamLayer, target: &str) -> Vec<u8> {
    use babble_net::stream::StreamLayer;
    use tokio::io::AsyncWriteExt;
    let mut stream = peer.dial(target, Duration::from_secs(5)).await.unwrap();
    stream
        .write_all(b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":0}\n")
        .await
        .unwrap();
    stream.shutdown().await.unwrap();
    within(read_all(&mut stream)).await.unwrap()
}
