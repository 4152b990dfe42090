//! The TCP transport over real sockets: the shared transport suite, Go
//! Babble's TCP tests, and what a hostile or failing network does.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::codec::Reply;
use babble_net::*;
use common::net::{eventually, silent_server, sockets_on_port};
use common::suite::{self, Pair};
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn local(config: Config) -> Config {
    Config {
        bind_addr: "127.0.0.1:0".into(),
        ..config
    }
}

fn tcp(config: &Config) -> NetworkTransport {
    let transport = NetworkTransport::tcp(&local(config.clone()), logging::discard()).unwrap();
    transport.listen().unwrap();
    transport
}

async fn pair(config: Config) -> Pair {
    let client = tcp(&config);
    let server = tcp(&config);
    Pair {
        target: server.advertise_addr(),
        client_addr: client.advertise_addr(),
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

transport_suite!(pair);

#[actix_rt::test]
async fn an_unadvertisable_or_unresolvable_address_is_refused() {
    let bind = |bind: &str, advertise: Option<&str>| {
        let config = Config {
            bind_addr: bind.into(),
            advertise: advertise.map(str::to_owned),
            ..Config::default()
        };
        NetworkTransport::tcp(&config, logging::discard())
            .err()
            .map(|e| e.to_string())
    };
    let err = bind("0.0.0.0:0", None).expect("refused");
    assert!(err.contains("not advertisable"), "{err}");
    let err = bind("[::]:0", None).expect("refused");
    assert!(err.contains("not advertisable"), "{err}");
    let err = bind("127.0.0.1:0", Some("no-such-host.invalid:1337")).expect("refused");
    assert!(err.contains("no-such-host.invalid:1337"), "{err}");
    let err = bind("127.0.0.1:0", Some("0.0.0.0:1337")).expect("refused");
    assert!(err.contains("not advertisable"), "{err}");
    let err = bind("256.1.1.1:0", None).expect("refused");
    assert!(err.contains("cannot bind"), "{err}");
    assert!(bind("0.0.0.0:0", Some("127.0.0.1:1337")).is_none());
}

#[actix_rt::test]
async fn the_advertise_address_is_what_peers_are_told() {
    let config = Config {
        bind_addr: "127.0.0.1:0".into(),
        advertise: Some("127.0.0.1:4242".into()),
        ..Config::default()
    };
    let transport = NetworkTransport::tcp(&config, logging::discard()).unwrap();
    assert_eq!(transport.advertise_addr(), "127.0.0.1:4242");
    let local = transport.local_addr();
    assert!(
        local.starts_with("127.0.0.1:") && !local.ends_with(":0"),
        "{local}"
    );
    assert_ne!(local, "127.0.0.1:4242");
}

#[actix_rt::test]
async fn pooled_connections_keep_at_most_max_pool_idle() {
    let config = Config {
        max_pool: 3,
        ..Config::default()
    };
    let client = Arc::new(tcp(&config));
    let server = tcp(&config);
    let target = server.advertise_addr();
    let mut held = suite::hold(&server);
    let calls = (0..5).map(|_| {
        let client = client.clone();
        let target = target.clone();
        async move { client.sync(&target, SyncRequest::default()).await }
    });
    let calls = actix_rt::spawn(join_all(calls));
    // All five are in flight at once, so five connections were dialled.
    let mut rpcs = Vec::new();
    for _ in 0..5 {
        rpcs.push(held.recv().await.unwrap());
    }
    for rpc in rpcs {
        rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    }
    for result in calls.await.unwrap() {
        result.unwrap();
    }
    let stats = client.pool_stats(&target).await;
    assert_eq!((stats.idle, stats.dials), (3, 5));

    // The next call reuses one of them.
    suite::serve(&server, suite::vector_answer);
    client.sync(&target, SyncRequest::default()).await.unwrap();
    let stats = client.pool_stats(&target).await;
    assert_eq!((stats.idle, stats.dials), (3, 5));
}

#[actix_rt::test]
async fn a_silent_peer_times_out_and_its_connection_is_not_reused() {
    let silent = silent_server().await;
    let client = tcp(&suite::short_timeout());
    let started = Instant::now();
    let err = client
        .sync(&silent, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Timeout { peer, after } if *peer == silent && *after == Duration::from_millis(300)),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(client.idle_connections(&silent).await, 0);
    let err = client
        .sync(&silent, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    let stats = client.pool_stats(&silent).await;
    assert_eq!((stats.idle, stats.dials), (0, 2), "each call dialled anew");
    // A timeout says the peer is slow, not gone: the pool keeps its other
    // connections.
    assert_eq!(stats.restarts, 0);
}

#[actix_rt::test]
async fn join_has_its_own_longer_timeout() {
    let silent = silent_server().await;
    let config = Config {
        timeout: Duration::from_millis(200),
        join_timeout: Duration::from_millis(700),
        ..Config::default()
    };
    let client = tcp(&config);
    let err = client
        .sync(&silent, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { after, .. } if after == Duration::from_millis(200)),
        "{err}"
    );
    let started = Instant::now();
    let err = client
        .join(&silent, JoinRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Timeout { after, .. } if after == Duration::from_millis(700)),
        "{err}"
    );
    assert!(started.elapsed() >= Duration::from_millis(700));
}

#[actix_rt::test]
async fn a_peer_dying_mid_rpc_fails_the_call_without_touching_other_peers() {
    // A peer that reads one request and dies without answering.
    let dying = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying_addr = dying.local_addr().unwrap().to_string();
    let (got_request_tx, got_request) = tokio::sync::oneshot::channel();
    let (kill_tx, kill) = tokio::sync::oneshot::channel::<()>();
    actix_rt::spawn(async move {
        let (mut socket, _) = dying.accept().await.unwrap();
        let mut buf = [0u8; 64];
        let _ = socket.read(&mut buf).await.unwrap();
        got_request_tx.send(()).unwrap();
        let _ = kill.await;
        drop(socket);
    });
    let healthy = tcp(&Config::default());
    suite::serve(&healthy, suite::echo_from_id);

    let client = Arc::new(tcp(&Config {
        timeout: Duration::from_secs(30),
        ..Config::default()
    }));
    let doomed = {
        let client = client.clone();
        let target = dying_addr.clone();
        actix_rt::spawn(async move { client.sync(&target, SyncRequest::default()).await })
    };
    got_request.await.unwrap();
    // While that call hangs, calls to another peer go through.
    for id in 0..10 {
        let request = SyncRequest {
            from_id: id,
            ..Default::default()
        };
        let response = client
            .sync(&healthy.advertise_addr(), request)
            .await
            .unwrap();
        assert_eq!(response.from_id, id);
    }
    kill_tx.send(()).unwrap();
    let err = doomed.await.unwrap().unwrap_err();
    // The connection ended before any answer: an end of stream, not a
    // reset, a timeout or a refusal.
    assert!(
        matches!(&err, TransportError::Io { source, .. }
            if source.kind() == std::io::ErrorKind::UnexpectedEof),
        "{err:?}"
    );
}

#[actix_rt::test]
async fn a_restarted_peer_is_reachable_again_without_restarting_the_caller() {
    let server = tcp(&Config::default());
    suite::serve(&server, suite::vector_answer);
    let addr = server.local_addr();
    let client = tcp(&Config::default());
    client.sync(&addr, SyncRequest::default()).await.unwrap();
    assert_eq!(client.idle_connections(&addr).await, 1);

    server.close().await.unwrap();
    let err = client
        .sync(&addr, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");

    let config = Config {
        bind_addr: addr.clone(),
        ..Config::default()
    };
    let restarted = NetworkTransport::tcp(&config, logging::discard()).unwrap();
    restarted.listen().unwrap();
    assert_eq!(restarted.local_addr(), addr);
    suite::serve(&restarted, suite::vector_answer);
    let response = client.sync(&addr, SyncRequest::default()).await.unwrap();
    assert_eq!(
        response,
        suite::vector_answer(&Command::Sync(SyncRequest::default()))
            .unwrap()
            .try_into()
            .unwrap()
    );
}

#[actix_rt::test]
async fn a_stale_pooled_connection_is_retried_once_on_a_fresh_one() {
    // The server closes idle connections after 200 ms; the client keeps
    // its idle connections longer than that.
    let server = tcp(&Config {
        idle_timeout: Duration::from_millis(200),
        ..Config::default()
    });
    suite::serve(&server, suite::vector_answer);
    let client = tcp(&Config::default());
    let addr = server.advertise_addr();
    client.sync(&addr, SyncRequest::default()).await.unwrap();
    eventually(
        Duration::from_secs(5),
        "the server dropped the idle connection",
        || server.inbound_connections() == 0,
    )
    .await;
    assert_eq!(
        client.idle_connections(&addr).await,
        1,
        "the client still holds it"
    );
    client
        .eager_sync(&addr, EagerSyncRequest::default())
        .await
        .unwrap();
    assert_eq!(client.pool_stats(&addr).await.dials, 2);
}

#[actix_rt::test]
async fn a_64_mib_snapshot_crosses_intact() {
    let snapshot: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let config = Config {
        timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let Pair {
        client,
        server,
        target,
        ..
    } = pair(config).await;
    let expected = FastForwardResponse {
        from_id: 1,
        snapshot: Some(snapshot),
        ..Default::default()
    };
    let answer = expected.clone();
    suite::serve(&*server, move |_| Ok(Response::FastForward(answer.clone())));
    let response = client
        .fast_forward(&target, FastForwardRequest { from_id: 2 })
        .await
        .unwrap();
    assert!(response == expected, "the snapshot differs");
}

/// Serves one request by writing `reply` in `chunk`-byte pieces, pausing
/// `pause` between them (and `stall` once, half-way).
async fn trickling_server(
    reply: Vec<u8>,
    chunk: usize,
    pause: Duration,
    stall: Duration,
) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    actix_rt::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 256];
        let _ = socket.read(&mut buf).await.unwrap();
        for (i, piece) in reply.chunks(chunk).enumerate() {
            if i == reply.len() / chunk / 2 {
                tokio::time::sleep(stall).await;
            }
            if socket.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    addr
}

fn encoded_fast_forward_reply(snapshot_len: usize) -> Vec<u8> {
    use tokio_util::codec::Encoder;
    let reply = Reply::ok(Response::FastForward(FastForwardResponse {
        snapshot: Some(vec![7; snapshot_len]),
        ..Default::default()
    }));
    let mut wire = bytes::BytesMut::new();
    codec::ServerCodec::default()
        .encode(&reply, &mut wire)
        .unwrap();
    wire.to_vec()
}

#[actix_rt::test]
async fn a_reply_that_keeps_flowing_is_not_cut_by_the_timeout() {
    // About 1.5 s in all, never more than 50 ms without a byte.
    let reply = encoded_fast_forward_reply(300_000);
    let addr = trickling_server(reply, 10_000, Duration::from_millis(50), Duration::ZERO).await;
    let client = tcp(&suite::short_timeout());
    let started = Instant::now();
    let response = client
        .fast_forward(&addr, FastForwardRequest::default())
        .await
        .unwrap();
    assert_eq!(response.snapshot.map(|s| s.len()), Some(300_000));
    assert!(
        started.elapsed() > Duration::from_millis(300),
        "the transfer outlasted the timeout"
    );
}

#[actix_rt::test]
async fn a_reply_that_stalls_mid_way_times_out() {
    let reply = encoded_fast_forward_reply(300_000);
    let addr = trickling_server(reply, 10_000, Duration::ZERO, Duration::from_secs(5)).await;
    let client = tcp(&suite::short_timeout());
    let err = client
        .fast_forward(&addr, FastForwardRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
}

/// One way of misbehaving, by index.
async fn abuse(addr: &str, kind: usize) {
    let mut socket = TcpStream::connect(addr).await.unwrap();
    let sync = common::vectors::bytes("sync_request");
    match kind % 8 {
        0 => {}
        1 => socket.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap(),
        2 => socket
            .write_all(&common::vectors::bytes("unknown_rpc_type_request"))
            .await
            .unwrap(),
        3 => socket
            .write_all(b"\x01{\"FromID\":\"nope\"}\n")
            .await
            .unwrap(),
        4 => socket.write_all(&sync[..sync.len() / 2]).await.unwrap(),
        5 => {
            // Bigger than the server's 4 KiB frame limit.
            let mut big = vec![1u8];
            big.extend_from_slice(b"{\"FromID\":1,\"Known\":{");
            big.extend(std::iter::repeat_n(b' ', 8192));
            let _ = socket.write_all(&big).await;
        }
        6 => {
            // Half a frame, then silence: the idle timeout closes it.
            socket.write_all(&sync[..10]).await.unwrap();
        }
        _ => socket.write_all(b"\x02{\"Events\":[[[[[[[[").await.unwrap(),
    }
    if !kind.is_multiple_of(8) && kind % 8 != 6 {
        let _ = socket.shutdown().await;
    }
    // The server closes its end: read until EOF (or a reset), within a
    // wide margin of the test's idle timeout and request deadline.
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "kind {kind}: the server never closed the connection"
    );
    assert!(
        rest.is_empty(),
        "kind {kind}: the server answered garbage with {rest:?}"
    );
}

#[actix_rt::test]
async fn a_thousand_abusive_connections_leave_the_node_serving_and_nothing_behind() {
    let config = Config {
        max_request_size: 4096,
        inbound_buffer_budget: 1 << 20,
        idle_timeout: Duration::from_millis(500),
        max_inbound: 128,
        ..Config::default()
    };
    let server = tcp(&config);
    suite::serve(&server, suite::echo_from_id);
    let client = tcp(&Config::default());
    let addr = server.advertise_addr();
    client.sync(&addr, SyncRequest::default()).await.unwrap();
    let metrics = tokio::runtime::Handle::current().metrics();
    let tasks_before = metrics.num_alive_tasks();
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();

    for batch in 0..10 {
        let abusers = (0..100).map(|i| abuse(&addr, batch * 100 + i));
        join_all(abusers).await;
        // Between batches, the node still serves a well-behaved peer.
        let request = SyncRequest {
            from_id: batch as u32,
            ..Default::default()
        };
        assert_eq!(
            client.sync(&addr, request).await.unwrap().from_id,
            batch as u32
        );
    }

    eventually(
        Duration::from_secs(10),
        "only the client's pooled connection is left",
        || server.inbound_connections() == 1,
    )
    .await;
    let (accepted, dropped) = server.inbound_totals();
    // The client may have had to reconnect after an idle timeout.
    assert!((1001..=1011).contains(&accepted), "{accepted} accepted");
    assert!(
        dropped >= 800,
        "{dropped} connections were closed for bad input"
    );
    // The server serves its connections on this runtime; its sockets (the
    // listening one and the client's connection) are asked of each
    // descriptor, which other tests do not move.
    eventually(
        Duration::from_secs(10),
        "tasks and sockets are released",
        || metrics.num_alive_tasks() <= tasks_before && sockets_on_port(port) == 2,
    )
    .await;
}

#[actix_rt::test]
async fn close_releases_the_port_and_every_connection() {
    let client = tcp(&Config::default());
    let server = tcp(&Config::default());
    let target = server.advertise_addr();
    suite::serve(&server, suite::vector_answer);
    client.sync(&target, SyncRequest::default()).await.unwrap();
    assert_eq!(server.inbound_connections(), 1);
    server.close().await.unwrap();
    // The port is free at once.
    let rebound = std::net::TcpListener::bind(&target);
    assert!(rebound.is_ok(), "{rebound:?}");
    eventually(Duration::from_secs(5), "inbound connections closed", || {
        server.inbound_connections() == 0
    })
    .await;
}
