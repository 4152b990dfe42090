//! The secure channel over real TCP sockets: the shared transport suite,
//! who may talk to whom, the errors a node sees, and an independent
//! implementation of the libp2p Noise handshake (Python's noiseprotocol and
//! coincurve) on the other end.

#[macro_use]
mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::secure::{HandshakeError, NodeKey, PeerKey, SecureStreamLayer};
use babble_net::stream::{StreamLayer, TcpStreamLayer};
use babble_net::*;
use common::interop::venv_tool;
use common::net::eventually;
use common::suite::{self, Pair};
use tokio::io::AsyncReadExt;

/// A secure TCP node that is `key`, with `peers`.
fn secure_node(
    config: &Config,
    tcp: TcpStreamLayer,
    key: &NodeKey,
    peers: Vec<(String, PeerKey)>,
) -> NetworkTransport {
    let layer = SecureStreamLayer::new(Arc::new(tcp), key.clone(), peers, false);
    let node = NetworkTransport::new(Arc::new(layer), config, logging::discard());
    node.listen().unwrap();
    node
}

/// Mallory, serving at the address where Alice expects Bob.
struct Impostor {
    alice: NodeKey,
    bob: NodeKey,
    mallory: NodeKey,
    address: String,
    _mallory_node: NetworkTransport,
}

impl Impostor {
    fn start() -> Impostor {
        let (alice, bob, mallory) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let mallory_tcp = bind();
        let address = mallory_tcp.advertise_addr();
        let mallory_node = secure_node(
            &Config::default(),
            mallory_tcp,
            &mallory,
            vec![("alice".into(), alice.public())],
        );
        suite::serve(&mallory_node, suite::vector_answer);
        Impostor {
            alice,
            bob,
            mallory,
            address,
            _mallory_node: mallory_node,
        }
    }

    /// Alice's node, expecting Bob's key at the address.
    fn alice_node(&self, config: &Config) -> NetworkTransport {
        secure_node(
            config,
            bind(),
            &self.alice,
            vec![(self.address.clone(), self.bob.public())],
        )
    }
}

fn bind() -> TcpStreamLayer {
    TcpStreamLayer::bind("127.0.0.1:0", None).unwrap()
}

/// Two secure nodes that know each other's address and key.
async fn pair(config: Config) -> Pair {
    let (client_key, server_key) = (NodeKey::generate(), NodeKey::generate());
    let (client_tcp, server_tcp) = (bind(), bind());
    let (client_addr, server_addr) = (client_tcp.advertise_addr(), server_tcp.advertise_addr());
    let client = secure_node(
        &config,
        client_tcp,
        &client_key,
        vec![(server_addr.clone(), server_key.public())],
    );
    let server = secure_node(
        &config,
        server_tcp,
        &server_key,
        vec![(client_addr.clone(), client_key.public())],
    );
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        target: server_addr,
        client_addr,
    }
}

transport_suite!(pair);

#[actix_rt::test]
async fn an_rpc_carries_the_callers_verified_key() {
    let (alice, bob) = (NodeKey::generate(), NodeKey::generate());
    let bob_tcp = bind();
    let bob_addr = bob_tcp.advertise_addr();
    let bob_node = secure_node(
        &Config::default(),
        bob_tcp,
        &bob,
        vec![("alice".into(), alice.public())],
    );
    let mut rpcs = suite::hold(&bob_node);
    let alice_node = secure_node(
        &Config::default(),
        bind(),
        &alice,
        vec![(bob_addr.clone(), bob.public())],
    );
    let call =
        actix_rt::spawn(async move { alice_node.sync(&bob_addr, SyncRequest::default()).await });
    let rpc = rpcs.recv().await.unwrap();
    assert_eq!(rpc.peer_key, Some(alice.public()));
    rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    call.await.unwrap().unwrap();
}

#[actix_rt::test]
async fn a_node_with_another_key_at_the_address_is_refused() {
    let impostor = Impostor::start();
    let (address, bob, mallory) = (&impostor.address, &impostor.bob, &impostor.mallory);
    let alice_node = impostor.alice_node(&Config::default());
    let err = alice_node
        .sync(address, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            TransportError::Handshake { source: HandshakeError::WrongKey { expected, got }, .. }
                if *expected == bob.public() && *got == mallory.public()
        ),
        "{err}"
    );
    assert!(err.is_handshake());
}

#[actix_rt::test]
async fn calls_waiting_on_a_dial_that_failed_its_handshake_fail_as_a_handshake_too() {
    let impostor = Impostor::start();
    // One dial at a time: the other calls wait for it, and share its end.
    let config = Config {
        max_dials_per_peer: 1,
        ..Config::default()
    };
    let alice_node = impostor.alice_node(&config);
    let address = &impostor.address;
    let calls = (0..4).map(|_| alice_node.sync(address, SyncRequest::default()));
    for result in futures::future::join_all(calls).await {
        let err = result.unwrap_err();
        assert!(
            matches!(
                &err,
                TransportError::Handshake {
                    source: HandshakeError::WrongKey { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[actix_rt::test]
async fn a_caller_outside_the_peer_set_is_refused() {
    let (bob, stranger) = (NodeKey::generate(), NodeKey::generate());
    let bob_tcp = bind();
    let bob_addr = bob_tcp.advertise_addr();
    let bob_node = secure_node(&Config::default(), bob_tcp, &bob, vec![]);
    let mut rpcs = suite::hold(&bob_node);
    let stranger_node = secure_node(
        &Config::default(),
        bind(),
        &stranger,
        vec![(bob_addr.clone(), bob.public())],
    );
    let err = stranger_node
        .sync(&bob_addr, SyncRequest::default())
        .await
        .unwrap_err();
    // Bob closes the connection once the handshake names the stranger:
    // the stranger's request meets a reset or a closed connection.
    assert!(
        matches!(&err, TransportError::Io { source, .. } if matches!(
            source.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::UnexpectedEof
                | std::io::ErrorKind::BrokenPipe
        )),
        "{err:?}"
    );
    eventually(Duration::from_secs(5), "bob closed the connection", || {
        bob_node.inbound_totals().1 >= 1
    })
    .await;
    assert!(rpcs.try_recv().is_err(), "no RPC reached bob");
}

#[actix_rt::test]
async fn an_address_with_no_known_key_is_not_dialled_blind() {
    let alice = secure_node(&Config::default(), bind(), &NodeKey::generate(), vec![]);
    let err = alice
        .sync("127.0.0.1:9", SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Handshake { source: HandshakeError::UnknownKey(a), .. } if a == "127.0.0.1:9"),
        "{err}"
    );
}

#[actix_rt::test]
async fn plaintext_and_secure_nodes_do_not_talk() {
    let bob = NodeKey::generate();
    let bob_tcp = bind();
    let bob_addr = bob_tcp.advertise_addr();
    let secure_bob = secure_node(&Config::default(), bob_tcp, &bob, vec![]);
    suite::serve(&secure_bob, suite::vector_answer);
    let plain = NetworkTransport::tcp(
        &Config {
            bind_addr: "127.0.0.1:0".into(),
            ..Config::default()
        },
        logging::discard(),
    )
    .unwrap();
    plain.listen().unwrap();
    suite::serve(&plain, suite::vector_answer);
    // A plaintext frame is no Noise message: the secure node waits for
    // the rest of the handshake message its first two bytes announce, and
    // the caller's deadline passes first.
    let err = plain
        .sync(&bob_addr, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err:?}");
    assert_eq!(
        secure_bob.stats().await.unwrap().total(),
        0,
        "bob saw an RPC"
    );
    let alice = secure_node(
        &Config::default(),
        bind(),
        &NodeKey::generate(),
        vec![(plain.advertise_addr(), bob.public())],
    );
    let err = alice
        .sync(&plain.advertise_addr(), SyncRequest::default())
        .await
        .unwrap_err();
    // A Noise message is no frame: the plain node closes the connection
    // in the middle of the handshake.
    assert!(
        matches!(
            &err,
            TransportError::Handshake {
                source: HandshakeError::Io(_),
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        plain.stats().await.unwrap().total(),
        0,
        "the plain node saw an RPC"
    );
}

#[actix_rt::test]
async fn a_silent_dialler_is_dropped_at_the_handshake_timeout() {
    let bob_tcp = bind();
    let bob_addr = bob_tcp.advertise_addr();
    let config = Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let bob = secure_node(&config, bob_tcp, &NodeKey::generate(), vec![]);
    let mut silent = tokio::net::TcpStream::connect(&bob_addr).await.unwrap();
    let started = Instant::now();
    let mut sink = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut sink))
        .await
        .expect("closed within 5 s");
    assert!(matches!(read, Ok(0) | Err(_)));
    assert!(started.elapsed() >= Duration::from_millis(300));
    eventually(Duration::from_secs(5), "the slot is free", || {
        bob.inbound_connections() == 0
    })
    .await;
}

#[actix_rt::test]
async fn the_configuration_reads_the_key_file_and_go_babbles_peers_file() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (NodeKey::generate(), NodeKey::generate());
    let bob_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bob_addr = format!("127.0.0.1:{bob_port}");
    // peers.json as Go Babble writes it.
    let peers = serde_json::json!([
        {"NetAddr": bob_addr, "PubKeyHex": bob.public().to_string(), "Moniker": "bob"},
        {"NetAddr": "127.0.0.1:1", "PubKeyHex": alice.public().to_string(), "Moniker": "alice"},
    ]);
    std::fs::write(dir.path().join("peers.json"), peers.to_string()).unwrap();
    alice.save(dir.path().join("alice_key")).unwrap();
    bob.save(dir.path().join("bob_key")).unwrap();
    let config = |key: &str, bind: &str| {
        Config::from_toml_str(&format!(
            "listen = \"{bind}\"\nsecure = true\nkey-file = \"{}\"\npeers-file = \"{}\"",
            dir.path().join(key).display(),
            dir.path().join("peers.json").display()
        ))
        .unwrap()
    };
    let bob_node =
        NetworkTransport::tcp(&config("bob_key", &bob_addr), logging::discard()).unwrap();
    bob_node.listen().unwrap();
    let mut rpcs = suite::hold(&bob_node);
    let alice_node =
        NetworkTransport::tcp(&config("alice_key", "127.0.0.1:0"), logging::discard()).unwrap();
    let call =
        actix_rt::spawn(async move { alice_node.sync(&bob_addr, SyncRequest::default()).await });
    let rpc = rpcs.recv().await.unwrap();
    assert_eq!(rpc.peer_key, Some(alice.public()));
    rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    call.await.unwrap().unwrap();
    // Secure without a key is a clear configuration error.
    let err = Config::from_toml_str("secure = true").unwrap_err();
    assert!(err.to_string().contains("key-file"), "{err}");
}

/// Runs the independent Noise peer with `args`; its last line.
fn noise_peer(python: &std::path::Path, args: &[&str]) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/noise_peer.py");
    let output = Command::new(python)
        .arg(script)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned()
}

#[actix_rt::test]
async fn an_independent_noise_implementation_calls_a_node_and_is_called_by_one() {
    let Some(python) = venv_tool("python") else {
        return;
    };
    let has_modules = Command::new(&python)
        .args(["-c", "import noise, coincurve"])
        .status()
        .is_ok_and(|s| s.success());
    if !common::interop::available_or_skip(
        has_modules,
        "noiseprotocol and coincurve (run scripts/interop-setup.sh)",
    ) {
        return;
    }
    let (node_key, python_key) = (NodeKey::generate(), NodeKey::generate());
    // Python dials the node, which accepts only Python's key.
    let node_tcp = bind();
    let node_addr = node_tcp.advertise_addr();
    let node = secure_node(
        &Config::default(),
        node_tcp,
        &node_key,
        vec![("python".into(), python_key.public())],
    );
    let mut rpcs = suite::hold(&node);
    let expect = node_key.public().to_string();
    let (python_c, addr_c, key_c) = (python.clone(), node_addr.clone(), python_key.to_hex());
    let caller = actix_rt::task::spawn_blocking(move || {
        noise_peer(
            &python_c,
            &[
                "call",
                "--connect",
                &addr_c,
                "--key",
                &key_c,
                "--expect",
                &expect,
            ],
        )
    });
    let rpc = rpcs.recv().await.unwrap();
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

    // A forged identity signature is refused by the node.
    let (python_c, addr_c, key_c) = (python.clone(), node_addr.clone(), python_key.to_hex());
    let expect = node_key.public().to_string();
    let forged = actix_rt::task::spawn_blocking(move || {
        noise_peer(
            &python_c,
            &[
                "call",
                "--connect",
                &addr_c,
                "--key",
                &key_c,
                "--expect",
                &expect,
                "--forge",
            ],
        )
    });
    // It closes the connection once it has read message 3: the peer sees
    // the end of the stream, or a reset when the request it sent after
    // message 3 was still unread.
    let last = forged.await.unwrap();
    assert!(
        ["eof", "reset"]
            .map(|closed| format!("REFUSED after=3 closed={closed}"))
            .contains(&last),
        "the forger was not refused after message 3: {last}"
    );
    assert!(rpcs.try_recv().is_err());

    // The node dials Python, expecting Python's key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let python_addr = format!("127.0.0.1:{port}");
    let (python_c, addr_c, key_c) = (python.clone(), python_addr.clone(), python_key.to_hex());
    let server = actix_rt::task::spawn_blocking(move || {
        noise_peer(&python_c, &["serve", "--listen", &addr_c, "--key", &key_c])
    });
    let caller = secure_node(
        &Config::default(),
        bind(),
        &node_key,
        vec![(python_addr.clone(), python_key.public())],
    );
    let started = Instant::now();
    let answer = loop {
        match caller
            .sync(
                &python_addr,
                SyncRequest {
                    from_id: 7,
                    ..Default::default()
                },
            )
            .await
        {
            // The script may not listen yet.
            Err(e) if e.is_connect() && started.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => break other.unwrap(),
        }
    };
    assert_eq!(answer.from_id, 8);
    assert_eq!(
        server.await.unwrap(),
        format!("OK caller {}", node_key.public())
    );
}
