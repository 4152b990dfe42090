//! A node over real TCP sockets against hostile peers, while an honest
//! peer keeps calling it; and a caller against hostile servers. Every
//! attack must leave honest calls succeeding within their normal timeout,
//! every call ending within its documented bound, memory bounded by what
//! was received, and nothing behind once the attack stops.

mod common;
#[path = "hostile_peers/fairness.rs"]
mod fairness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::*;
use common::net::{eventually, sockets_on_port};
use common::suite;
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

fn local(config: Config) -> Config {
    Config {
        bind_addr: "127.0.0.1:0".into(),
        ..config
    }
}

/// A listening node answering every Sync with the caller's `FromID`.
fn node(config: &Config) -> NetworkTransport {
    let node = NetworkTransport::tcp(&local(config.clone()), logging::discard()).unwrap();
    node.listen().unwrap();
    suite::serve(&node, suite::echo_from_id);
    node
}

/// An honest peer with the default configuration.
fn honest() -> NetworkTransport {
    NetworkTransport::tcp(&local(Config::default()), logging::discard()).unwrap()
}

/// Calls `target` once and checks the answer is its own. A call that
/// is not served fails by its own deadline (the default timeout), so the
/// test needs no clock of its own.
async fn honest_call(peer: &NetworkTransport, target: &str, id: u32) {
    let request = SyncRequest {
        from_id: id,
        ..Default::default()
    };
    let answer = peer
        .sync(target, request)
        .await
        .unwrap_or_else(|e| panic!("honest call {id}: {e}"));
    assert_eq!(answer.from_id, id);
}

/// A connection to `addr` from the loopback address `from`.
async fn connect_from(from: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Waits until the node has closed `stream` (a read sees the end or an
/// error); fails the test if it is still open after `limit`.
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) {
    let mut sink = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit, stream.read(&mut sink)).await {
            Err(_) => panic!("still open after {limit:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
        }
    }
}

/// What the node holds before an attack, to compare with after it. The
/// node serves its connections on this test's runtime, so the runtime's
/// tasks include them.
struct Baseline {
    tasks: usize,
}

fn baseline() -> Baseline {
    Baseline {
        tasks: tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks(),
    }
}

/// Waits until the attack's connections, tasks and sockets are gone: at
/// most `connections` inbound connections, and no more sockets on the
/// node's port than those and the listening one (asked of each of the
/// process's descriptors, so other tests running beside this one do not
/// move it).
async fn back_to(base: Baseline, node: &NetworkTransport, connections: usize) {
    let metrics = tokio::runtime::Handle::current().metrics();
    let port = port_of(node);
    eventually(
        Duration::from_secs(10),
        "connections, tasks and sockets are released",
        || {
            node.inbound_connections() <= connections
                && metrics.num_alive_tasks() <= base.tasks
                && sockets_on_port(port) <= connections + 1
        },
    )
    .await;
}

/// The port a node listens on.
fn port_of(node: &NetworkTransport) -> u16 {
    let addr: std::net::SocketAddr = node.local_addr().parse().expect("a socket address");
    addr.port()
}

#[actix_rt::test]
async fn idle_connections_at_the_cap_do_not_lock_out_an_honest_peer() {
    let node = node(&Config {
        max_inbound: 32,
        ..Config::default()
    });
    let addr = node.advertise_addr();
    let peer = honest();
    honest_call(&peer, &addr, 0).await;
    let base = baseline();
    // Twice the cap of connections that never send a byte, from another
    // address than the honest peer's.
    let mut squatters = Vec::new();
    for _ in 0..64 {
        squatters.push(connect_from("127.0.0.2", &addr).await);
    }
    eventually(Duration::from_secs(5), "the cap is reached", || {
        node.inbound_connections() == 32
    })
    .await;
    // Honest newcomers: each dials a new connection during the attack.
    for id in 1..=20 {
        let newcomer = honest();
        honest_call(&newcomer, &addr, id).await;
        newcomer.close().await.unwrap();
    }
    let (shed, refused) = node.inbound_shed();
    assert!(shed >= 32, "{shed} shed");
    assert_eq!(refused, 0);
    drop(squatters);
    back_to(base, &node, 1).await;
}

#[actix_rt::test]
async fn trickled_requests_are_cut_and_do_not_lock_out_an_honest_peer() {
    let config = Config {
        max_inbound: 16,
        ..Config::default()
    };
    let node = node(&config);
    let addr = node.advertise_addr();
    let base = baseline();
    // Each trickler is cut once it has taken the timeout plus its few
    // bytes at the minimum rate (or sooner, when shed for a newcomer);
    // five timeouts is a margin only a connection that is never cut uses.
    let cut_by = config.timeout * 5;
    // Sixteen connections that start a request and then send a byte every
    // 200 ms: progress, but far below the minimum rate.
    let tricklers = (0..16).map(|_| {
        let addr = addr.clone();
        async move {
            let mut stream = connect_from("127.0.0.2", &addr).await;
            stream.write_all(b"\x01{\"FromID\":").await.unwrap();
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if stream.write_all(b"1").await.is_err() {
                    break;
                }
                let mut probe = [0u8; 1];
                match tokio::time::timeout(Duration::from_millis(1), stream.read(&mut probe)).await
                {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    _ => {}
                }
                assert!(started.elapsed() < cut_by, "not cut within {cut_by:?}");
            }
        }
    });
    let tricklers = actix_rt::spawn(join_all(tricklers));
    // The attack holds every place before any honest peer comes.
    eventually(Duration::from_secs(5), "the tricklers fill the cap", || {
        node.inbound_connections() == 16
    })
    .await;
    // Honest newcomers: each dials a new connection during the attack
    // (a pooled one would not show whether newcomers get in).
    for id in 0..20 {
        let newcomer = honest();
        honest_call(&newcomer, &addr, id).await;
        newcomer.close().await.unwrap();
    }
    tricklers.await.unwrap();
    back_to(base, &node, 1).await;
}

#[actix_rt::test]
async fn whitespace_does_not_keep_a_connection_open() {
    let idle_timeout = Duration::from_millis(500);
    let node = node(&Config {
        idle_timeout,
        ..Config::default()
    });
    let addr = node.advertise_addr();
    // A newline every 100 ms is not a request: the idle timeout still
    // runs from the connection's start, so the connection is closed
    // (six idle timeouts is a margin only a refreshed deadline uses).
    let (mut slow, mut write) = TcpStream::connect(&addr).await.unwrap().into_split();
    let writer = actix_rt::spawn(async move {
        while write.write_all(b"\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    closed_within(&mut slow, idle_timeout * 6).await;
    writer.abort();
    // A flood of whitespace is refused at once: on a node whose idle
    // timeout and request deadline are both a minute, it is closed long
    // before either could have done it.
    let patient = crate::node(&Config {
        idle_timeout: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        ..Config::default()
    });
    let mut flood = TcpStream::connect(&patient.advertise_addr()).await.unwrap();
    flood.write_all(&[b' '; 4096]).await.unwrap();
    closed_within(&mut flood, Duration::from_secs(10)).await;
}

#[actix_rt::test]
async fn one_address_cannot_take_every_slot_or_another_peers_connections() {
    let node = node(&Config {
        max_inbound: 64,
        max_inbound_per_ip: 8,
        ..Config::default()
    });
    let addr = node.advertise_addr();
    let peer = honest();
    honest_call(&peer, &addr, 0).await;
    // Fifty connections from one other address shed only each other.
    let mut flood = Vec::new();
    for _ in 0..50 {
        flood.push(connect_from("127.0.0.2", &addr).await);
    }
    eventually(Duration::from_secs(5), "the flood is capped", || {
        node.inbound_connections() == 9
    })
    .await;
    // The honest peer's pooled connection survived: no new dial.
    honest_call(&peer, &addr, 1).await;
    assert_eq!(peer.pool_stats(&addr).await.dials, 1);
    // On one shared address (loopback), a newcomer still gets in.
    let mut same = Vec::new();
    for _ in 0..8 {
        same.push(connect_from("127.0.0.1", &addr).await);
    }
    let newcomer = honest();
    honest_call(&newcomer, &addr, 2).await;
}

#[actix_rt::test]
async fn large_requests_share_one_buffer_budget() {
    let node = node(&Config {
        max_request_size: 4 << 20,
        inbound_buffer_budget: 8 << 20,
        timeout: Duration::from_secs(3),
        // A request is bounded by 3 s + its 2 MiB at 1 MiB/s, from its
        // first byte, whatever time it spends waiting for budget.
        min_transfer_rate: 1 << 20,
        ..Config::default()
    });
    let addr = node.advertise_addr();
    let peer = honest();
    let base = baseline();
    // Twenty connections each send 2 MiB of one request and stop: without
    // a shared budget the node would buffer 40 MiB.
    let mut hogs = Vec::new();
    for _ in 0..20 {
        let mut stream = connect_from("127.0.0.2", &addr).await;
        let mut partial = b"\x02{\"FromID\":1,\"Events\":[".to_vec();
        let event = br#"{"Body":{"Transactions":["aGVsbG8="]},"Signature":"x"},"#;
        while partial.len() < 2 << 20 {
            partial.extend_from_slice(event);
        }
        let writer = actix_rt::spawn(async move {
            let _ = stream.write_all(&partial).await;
            stream
        });
        hogs.push(writer);
    }
    eventually(Duration::from_secs(10), "the budget fills", || {
        node.inbound_buffered_bytes() > 4 << 20
    })
    .await;
    for id in 0..10 {
        assert!(node.inbound_buffered_bytes() <= 8 << 20);
        honest_call(&peer, &addr, id).await;
    }
    // The stalled requests are cut at their deadline (at most 5 s after
    // their first byte) and give the budget back.
    eventually(Duration::from_secs(15), "the budget is free again", || {
        node.inbound_buffered_bytes() == 0
    })
    .await;
    for hog in hogs {
        drop(hog.await.unwrap());
    }
    back_to(base, &node, 1).await;
}

#[actix_rt::test]
async fn a_request_of_empty_events_cannot_multiply_into_gigabytes() {
    let node = node(&Config::default());
    let addr = node.advertise_addr();
    let peer = honest();
    // 8 MiB of `{}` events would decode into over a GiB of WireEvents.
    let mut request = b"\x02{\"FromID\":1,\"Events\":[".to_vec();
    while request.len() < 8 << 20 {
        request.extend_from_slice(b"{},");
    }
    request.extend_from_slice(b"{}]}\n");
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&request).await.unwrap();
    closed_within(&mut stream, Duration::from_secs(10)).await;
    // The Listener counts the close on its own thread, just after it.
    eventually(
        Duration::from_secs(5),
        "counted as closed for bad input",
        || node.inbound_totals().1 == 1,
    )
    .await;
    honest_call(&peer, &addr, 1).await;
}

#[actix_rt::test]
async fn a_caller_that_hangs_up_abandons_its_request_and_frees_its_slot() {
    let node = NetworkTransport::tcp(&local(Config::default()), logging::discard()).unwrap();
    node.listen().unwrap();
    let mut held = suite::hold(&node);
    let mut stream = TcpStream::connect(node.advertise_addr()).await.unwrap();
    stream
        .write_all(b"\x01{\"FromID\":7,\"Known\":null,\"SyncLimit\":1}\n")
        .await
        .unwrap();
    let mut rpc = held.recv().await.unwrap();
    assert!(!rpc.is_abandoned());
    drop(stream);
    tokio::time::timeout(Duration::from_secs(5), rpc.abandoned())
        .await
        .expect("the node sees the caller leave");
    assert!(rpc.is_abandoned());
    eventually(Duration::from_secs(5), "the slot is free", || {
        node.inbound_connections() == 0
    })
    .await;
}

/// A server that answers every connection with `behave`.
async fn hostile_server<F, Fut>(behave: F) -> String
where
    F: Fn(TcpStream) -> Fut + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    actix_rt::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            // Read the request first, as a real server would.
            let mut request = [0u8; 512];
            let _ = stream.read(&mut request).await;
            actix_rt::spawn(behave(stream));
        }
    });
    addr
}

/// The caller's configuration against hostile servers.
fn caller_config() -> Config {
    Config {
        timeout: Duration::from_millis(500),
        max_reply_size: 1 << 20,
        ..Config::default()
    }
}

/// Calls `addr` once and checks the call failed within its bound
/// (`Config::call_bound`, and ten seconds: twenty timeouts, a margin only
/// a call that is never cut uses up); returns the error.
async fn fails_in_bound(addr: &str) -> TransportError {
    let config = caller_config();
    let caller = NetworkTransport::tcp(&local(config.clone()), logging::discard()).unwrap();
    let started = Instant::now();
    let call = caller.sync(addr, SyncRequest::default());
    let err = tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .expect("the call ends")
        .expect_err("a hostile server cannot answer");
    let took = started.elapsed();
    assert!(took <= config.call_bound(RpcType::Sync), "took {took:?}");
    err
}

#[actix_rt::test]
async fn a_trickled_reply_fails_the_call_in_bound() {
    let addr = hostile_server(|mut stream| async move {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() {
                return;
            }
        }
    })
    .await;
    let err = fails_in_bound(&addr).await;
    // Whitespace is no progress: the call times out long before the
    // whitespace cap (a Decode error) could be reached at ten bytes a
    // second.
    assert!(err.is_timeout(), "{err:?}");
}

#[actix_rt::test]
async fn an_endless_reply_fails_the_call_at_the_size_cap() {
    let addr = hostile_server(|mut stream| async move {
        let _ = stream.write_all(b"\"").await;
        let chunk = vec![b'a'; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let err = fails_in_bound(&addr).await;
    assert!(
        matches!(err, TransportError::FrameTooLarge { max, .. } if max == 1 << 20),
        "{err}"
    );
}

#[actix_rt::test]
async fn a_whitespace_flood_fails_the_call_at_once() {
    let addr = hostile_server(|mut stream| async move {
        let chunk = vec![b' '; 64 * 1024];
        while stream.write_all(&chunk).await.is_ok() {}
    })
    .await;
    let err = fails_in_bound(&addr).await;
    assert!(matches!(err, TransportError::Decode { .. }), "{err}");
}

#[actix_rt::test]
async fn garbage_fails_the_call_at_once() {
    let addr = hostile_server(|mut stream| async move {
        let _ = stream.write_all(b"\x00\xff}{garbage").await;
        std::future::pending::<()>().await;
    })
    .await;
    let err = fails_in_bound(&addr).await;
    assert!(matches!(err, TransportError::Decode { .. }), "{err}");
}

#[actix_rt::test]
async fn a_half_reply_fails_the_call_at_the_timeout() {
    let addr = hostile_server(|mut stream| async move {
        let _ = stream.write_all(b"\"\"\n{\"FromID\":").await;
        std::future::pending::<()>().await;
    })
    .await;
    let err = fails_in_bound(&addr).await;
    assert!(err.is_timeout(), "{err}");
}

#[actix_rt::test]
async fn silence_after_the_error_line_fails_the_call_at_the_timeout() {
    let addr = hostile_server(|mut stream| async move {
        let _ = stream.write_all(b"\"busy\"\n").await;
        std::future::pending::<()>().await;
    })
    .await;
    let err = fails_in_bound(&addr).await;
    assert!(err.is_timeout(), "{err}");
}

#[actix_rt::test]
async fn a_reply_of_empty_events_is_refused_not_decoded() {
    let addr = hostile_server(|mut stream| async move {
        let mut reply = b"\"\"\n{\"FromID\":1,\"Events\":[".to_vec();
        while reply.len() < 900 * 1024 {
            reply.extend_from_slice(b"{},");
        }
        reply.extend_from_slice(b"{}],\"Known\":null}\n");
        let _ = stream.write_all(&reply).await;
        std::future::pending::<()>().await;
    })
    .await;
    let err = fails_in_bound(&addr).await;
    // Refused as a malformed frame (decoding would multiply it), not
    // decoded and then cut by a timeout or a size limit.
    assert!(
        matches!(&err, TransportError::Decode { reason, .. } if reason.contains("times its size")),
        "{err:?}"
    );
}

/// Makes 50 calls at once to a port nobody listens on; returns how many
/// dials they cost.
async fn dials_for_fifty_calls_to_a_dead_peer(io_threads: usize) -> u64 {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    // A long timeout: a waiter that waited for a dial slot until its
    // deadline instead of failing with the dial would take it.
    let config = Config {
        max_dials_per_peer: 2,
        io_threads,
        timeout: Duration::from_secs(30),
        ..Config::default()
    };
    let caller =
        Arc::new(NetworkTransport::tcp(&local(config.clone()), logging::discard()).unwrap());
    let started = Instant::now();
    let calls = (0..50).map(|_| {
        let (caller, dead) = (caller.clone(), dead.clone());
        async move { caller.sync(&dead, SyncRequest::default()).await }
    });
    for result in join_all(calls).await {
        assert!(result.unwrap_err().is_connect());
    }
    let took = started.elapsed();
    assert!(took < config.timeout / 3, "waiters failed after {took:?}");
    caller.pool_stats(&dead).await.dials
}

#[actix_rt::test]
async fn dials_to_one_peer_are_capped_and_a_dead_peer_fails_its_waiters_fast() {
    // On the caller's own thread every call is made before the first dial
    // fails: the failed dials fail them all, none dials again.
    let dials = dials_for_fifty_calls_to_a_dead_peer(0).await;
    assert!(dials <= 2, "{dials} dials for 50 calls");
    // On I/O threads, dials race with the calls still being made: a call
    // made after a dial failed tries again, but the others do not.
    let dials = dials_for_fifty_calls_to_a_dead_peer(2).await;
    assert!(dials < 25, "{dials} dials for 50 calls");
}

#[actix_rt::test]
async fn pools_of_peers_no_longer_called_are_retired() {
    let server = node(&Config::default());
    let caller = NetworkTransport::tcp(
        &local(Config {
            idle_timeout: Duration::from_millis(400),
            ..Config::default()
        }),
        logging::discard(),
    )
    .unwrap();
    caller
        .sync(&server.advertise_addr(), SyncRequest::default())
        .await
        .unwrap();
    assert_eq!(caller.peer_pools(), 1);
    eventually(Duration::from_secs(5), "the pool is retired", || {
        caller.peer_pools() == 0
    })
    .await;
    eventually(Duration::from_secs(5), "its connection is closed", || {
        server.inbound_connections() == 0
    })
    .await;
}
