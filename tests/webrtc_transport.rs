//! The WebRTC transport over real data channels on loopback, with peers
//! meeting through an in-process signaling router: the shared transport
//! suite, and what is specific to WebRTC.

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use babble_net::rtc::{IceOptions, RtcLimits, WebRtcStreamLayer};
use babble_net::signal::router::Router;
use babble_net::signal::Signal;
use babble_net::*;
use common::signal::client;
use common::suite::{self, Pair};
use futures::future::join_all;

fn loopback() -> IceOptions {
    IceOptions {
        loopback_only: true,
        ..IceOptions::default()
    }
}

/// A WebRTC transport registered as `id` on the router at `addr`.
async fn node(addr: &str, id: &str, config: &Config) -> NetworkTransport {
    let signal: Arc<dyn Signal> = Arc::new(client(addr, "main", id, None));
    let transport = NetworkTransport::webrtc(signal, &loopback(), config, logging::discard())
        .await
        .unwrap();
    transport.listen().unwrap();
    transport
}

async fn pair(config: Config) -> Pair {
    // RUST_LOG=rtc_sctp=debug (and other stack crates) shows what the
    // WebRTC stack does.
    let _ = env_logger::builder().is_test(true).try_init();
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let client = node(&addr, "client", &config).await;
    let server = node(&addr, "server", &config).await;
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        target: "server".into(),
        client_addr: "client".into(),
    }
}

transport_suite!(pair);

fn webrtc_config() -> Config {
    Config {
        // Opening a first data channel includes ICE and DTLS.
        timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

#[actix_rt::test]
async fn the_address_is_the_signaling_id() {
    let router = common::signal::router(&["main"]).await;
    let transport = node(
        &format!("ws://{}", router.local_addr()),
        "0X04ABCD",
        &Config::default(),
    )
    .await;
    assert_eq!(transport.local_addr(), "0X04ABCD");
    assert_eq!(transport.advertise_addr(), "0X04ABCD");
}

#[actix_rt::test]
async fn dialing_an_id_nobody_registered_fails_fast() {
    let Pair { client, .. } = pair(webrtc_config()).await;
    let started = std::time::Instant::now();
    let err = client
        .sync("nobody", SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::UnknownPeer(p) if p == "nobody"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

#[actix_rt::test]
async fn pooled_channels_share_one_peer_connection_and_keep_at_most_max_pool() {
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let config = Config {
        max_pool: 3,
        ..webrtc_config()
    };
    let client = Arc::new(node(&addr, "client", &config).await);
    let server = node(&addr, "server", &config).await;
    let mut held = suite::hold(&server);
    let calls = (0..5).map(|_| {
        let client = client.clone();
        async move { client.sync("server", SyncRequest::default()).await }
    });
    let calls = actix_rt::spawn(join_all(calls));
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
    let stats = client.pool_stats("server").await;
    assert_eq!((stats.idle, stats.dials), (3, 5));
    // Five channels arrived at the server over one peer connection.
    assert_eq!(server.inbound_totals().0, 5);
}

#[actix_rt::test]
async fn a_64_mib_snapshot_crosses_a_data_channel_intact() {
    let snapshot: Vec<u8> = (0..64 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let Pair {
        client,
        server,
        target,
        ..
    } = pair(Config {
        timeout: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    let expected = FastForwardResponse {
        from_id: 1,
        snapshot: Some(snapshot),
        ..Default::default()
    };
    let answer = expected.clone();
    suite::serve(&*server, move |_| Ok(Response::FastForward(answer.clone())));
    let response = client
        .fast_forward(&target, FastForwardRequest::default())
        .await
        .unwrap();
    assert!(response == expected, "the snapshot differs");
}

#[actix_rt::test]
async fn a_peer_that_disappears_mid_rpc_fails_the_call() {
    let Pair {
        client,
        server,
        target,
        ..
    } = pair(webrtc_config()).await;
    let mut held = suite::hold(&*server);
    let call = {
        let client = client.clone();
        actix_rt::spawn(async move { client.sync(&target, SyncRequest::default()).await })
    };
    let _rpc = held.recv().await.unwrap();
    server.close().await.unwrap();
    let err = call.await.unwrap().unwrap_err();
    assert!(!err.is_shutdown(), "the caller is not shut down: {err}");
}

/// How long the data-channel stress runs: `BABBLE_NET_STRESS_SECS`, one
/// minute by default.
fn stress_duration() -> Duration {
    let secs = std::env::var("BABBLE_NET_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    Duration::from_secs(secs)
}

/// 64 callers on one peer connection, half pushing ~1 MiB EagerSync
/// requests and half pulling ~1 MiB Sync replies, for
/// [`stress_duration`]: every call succeeds, none waits anywhere near its
/// deadline. (On webrtc 0.17 a call stalled for up to a minute in about
/// half the runs: its SCTP dropped chunks when the 1 MiB receive buffer
/// was full and backed retransmission off up to 60 s, webrtc-rs#822.)
#[actix_rt::test]
async fn sixty_four_calls_of_a_mebibyte_each_keep_flowing_over_one_peer_connection() {
    const CALLERS: u32 = 64;
    const EVENTS: usize = 760; // about 1 MiB a frame
    let Pair {
        client,
        server,
        target,
        ..
    } = pair(Config {
        max_pool: CALLERS as usize,
        // 64 MiB in flight share one connection: a call takes its 1/64th
        // of the throughput, seconds on a loaded machine.
        timeout: Duration::from_secs(60),
        ..Config::default()
    })
    .await;
    suite::serve(&*server, suite::bulky_answer);
    let until = std::time::Instant::now() + stress_duration();
    let callers = (0..CALLERS).map(|seed| {
        let (client, target) = (client.clone(), target.clone());
        async move {
            let (mut calls, mut longest) = (0u64, Duration::ZERO);
            while std::time::Instant::now() < until {
                let started = std::time::Instant::now();
                // Odd callers push, even ones pull: both directions at once.
                if (seed + calls as u32).is_multiple_of(2) {
                    let request = EagerSyncRequest {
                        from_id: seed,
                        events: Some(suite::bulky_events(EVENTS, 1000, seed)),
                    };
                    let answer = client.eager_sync(&target, request).await;
                    let answer = answer.unwrap_or_else(|e| panic!("caller {seed}: {e}"));
                    assert!(answer.success, "caller {seed}: events damaged");
                } else {
                    let request = SyncRequest {
                        from_id: seed,
                        known: None,
                        sync_limit: EVENTS as i64,
                    };
                    let answer = client.sync(&target, request).await;
                    let answer = answer.unwrap_or_else(|e| panic!("caller {seed}: {e}"));
                    assert_eq!(answer.events.map(|e| e.len()), Some(EVENTS));
                }
                longest = longest.max(started.elapsed());
                calls += 1;
            }
            (calls, longest)
        }
    });
    let started = std::time::Instant::now();
    let results = join_all(callers).await;
    let secs = started.elapsed().as_secs_f64();
    let calls: u64 = results.iter().map(|(calls, _)| calls).sum();
    let longest = results.iter().map(|(_, longest)| *longest).max().unwrap();
    eprintln!(
        "{calls} calls of ~1 MiB in {secs:.1} s: {:.1} MB/s, longest call {longest:?}",
        calls as f64 * 1.1 / secs
    );
    assert!(
        results.iter().all(|(calls, _)| *calls > 0),
        "every caller finished a call"
    );
}

#[actix_rt::test]
async fn an_unreachable_signaling_server_fails_the_transport_with_a_clear_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut settings =
        common::signal::settings(&format!("ws://127.0.0.1:{port}"), "main", "lonely", None);
    settings.connect_timeout = Duration::from_millis(500);
    let signal: Arc<dyn Signal> = Arc::new(babble_net::signal::WampSignal::new(
        settings,
        Duration::from_secs(1),
        logging::discard(),
    ));
    let started = std::time::Instant::now();
    let err = NetworkTransport::webrtc(signal, &loopback(), &Config::default(), logging::discard())
        .await
        .err()
        .expect("no transport without a signaling server");
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.is_connect(), "{err}");
    assert!(err.to_string().contains("signaling server"), "{err}");
}

/// A WebRTC layer registered as `id`, with `limits`, and a transport on it.
async fn layer(
    addr: &str,
    id: &str,
    limits: RtcLimits,
) -> (Arc<WebRtcStreamLayer>, NetworkTransport) {
    let signal: Arc<dyn Signal> = Arc::new(client(addr, "main", id, None));
    let layer = Arc::new(
        WebRtcStreamLayer::start(signal, &loopback(), limits, logging::discard())
            .await
            .unwrap(),
    );
    let transport = NetworkTransport::new(layer.clone(), &webrtc_config(), logging::discard());
    transport.listen().unwrap();
    (layer, transport)
}

fn limits() -> RtcLimits {
    RtcLimits {
        prune_interval: Duration::from_millis(100),
        ..RtcLimits::from_config(&webrtc_config())
    }
}

#[actix_rt::test]
async fn peer_connections_beyond_the_limit_are_refused() {
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let (server_layer, server) = layer(
        &addr,
        "server",
        RtcLimits {
            max_peers: 1,
            ..limits()
        },
    )
    .await;
    suite::serve(&server, suite::vector_answer);
    let first = node(&addr, "first", &webrtc_config()).await;
    let second = node(&addr, "second", &webrtc_config()).await;
    first.sync("server", SyncRequest::default()).await.unwrap();
    let err = second
        .sync("server", SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("too many peer connections"),
        "{err}"
    );
    assert_eq!(server_layer.inbound_peer_connections(), 1);
    // The first peer is served on.
    first.sync("server", SyncRequest::default()).await.unwrap();
}

#[actix_rt::test]
async fn at_the_peer_limit_an_idle_peer_connection_makes_room_for_a_new_peer() {
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let signal: Arc<dyn Signal> = Arc::new(client(&addr, "main", "server", None));
    let limits = RtcLimits {
        max_peers: 1,
        ..limits()
    };
    let server_layer = Arc::new(
        WebRtcStreamLayer::start(signal, &loopback(), limits, logging::discard())
            .await
            .unwrap(),
    );
    // The server closes a channel idle this long: the first peer's
    // connection then carries no channel.
    let server_config = Config {
        idle_timeout: Duration::from_millis(300),
        ..webrtc_config()
    };
    let server = NetworkTransport::new(server_layer.clone(), &server_config, logging::discard());
    server.listen().unwrap();
    suite::serve(&server, suite::vector_answer);
    let first = node(&addr, "first", &webrtc_config()).await;
    first.sync("server", SyncRequest::default()).await.unwrap();
    assert_eq!(server_layer.inbound_peer_connections(), 1);
    let second = node(&addr, "second", &webrtc_config()).await;
    let started = std::time::Instant::now();
    // Refused while the first peer's channel is open; let in once it is idle.
    while let Err(err) = second.sync("server", SyncRequest::default()).await {
        assert!(
            err.to_string().contains("too many peer connections"),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the idle peer connection was never shed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server_layer.inbound_peer_connections(), 1);
}

#[actix_rt::test]
async fn data_channels_beyond_the_limit_are_closed() {
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let (_, server) = layer(
        &addr,
        "server",
        RtcLimits {
            max_channels: 2,
            ..limits()
        },
    )
    .await;
    let mut held = suite::hold(&server);
    let client = Arc::new(
        node(
            &addr,
            "client",
            &Config {
                max_pool: 4,
                ..webrtc_config()
            },
        )
        .await,
    );
    // Two calls held open take both channels; a third cannot get one.
    let calls: Vec<_> = (0..2)
        .map(|_| {
            let client = client.clone();
            actix_rt::spawn(async move { client.sync("server", SyncRequest::default()).await })
        })
        .collect();
    let mut rpcs = vec![held.recv().await.unwrap(), held.recv().await.unwrap()];
    let third = client.sync("server", SyncRequest::default()).await;
    assert!(third.is_err(), "a third channel was served");
    // Answered, the first two free nothing (pooled channels stay open), but
    // they do serve further calls.
    for rpc in rpcs.drain(..) {
        rpc.respond(Ok(Response::Sync(SyncResponse::default())));
    }
    for call in calls {
        call.await.unwrap().unwrap();
    }
    let again = {
        let client = client.clone();
        actix_rt::spawn(async move { client.sync("server", SyncRequest::default()).await })
    };
    held.recv()
        .await
        .unwrap()
        .respond(Ok(Response::Sync(SyncResponse::default())));
    again.await.unwrap().unwrap();
}

#[actix_rt::test]
async fn a_closed_peer_connection_is_pruned_without_new_offers() {
    let router = common::signal::router(&["main"]).await;
    let addr = format!("ws://{}", router.local_addr());
    let (server_layer, server) = layer(&addr, "server", limits()).await;
    suite::serve(&server, suite::vector_answer);
    let client = node(&addr, "client", &webrtc_config()).await;
    client.sync("server", SyncRequest::default()).await.unwrap();
    assert_eq!(server_layer.inbound_peer_connections(), 1);
    client.close().await.unwrap();
    let started = std::time::Instant::now();
    while server_layer.inbound_peer_connections() > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the closed peer connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebRTC node authenticated as `key` on the router at `addr`, its data
/// channels secured with the same key; it accepts only `peers`.
async fn secure_node(
    addr: &str,
    key: &babble_net::secure::NodeKey,
    peers: &[babble_net::secure::PeerKey],
    config: &Config,
) -> NetworkTransport {
    let id = key.public().to_string();
    let settings = babble_net::signal::SignalSettings {
        key: Some(key.clone()),
        ..common::signal::settings(addr, "main", &id, None)
    };
    let signal: Arc<dyn Signal> = Arc::new(babble_net::signal::WampSignal::new(
        settings,
        Duration::from_secs(10),
        logging::discard(),
    ));
    let limits = RtcLimits::from_config(config);
    let layer = WebRtcStreamLayer::start(signal, &loopback(), limits, logging::discard())
        .await
        .unwrap();
    let peers = peers.iter().map(|k| (k.to_string(), *k));
    let secured =
        babble_net::secure::SecureStreamLayer::new(Arc::new(layer), key.clone(), peers, false);
    let transport = NetworkTransport::new(Arc::new(secured), config, logging::discard());
    transport.listen().unwrap();
    transport
}

/// Two secure WebRTC nodes through an authenticating router.
async fn secure_pair(config: Config) -> Pair {
    let router = Router::start(
        babble_net::signal::router::RouterConfig {
            require_auth: true,
            ..common::signal::router_config(&["main"])
        },
        logging::discard(),
    )
    .await
    .unwrap();
    // The router serves on after its handle is dropped.
    let addr = format!("ws://{}", router.local_addr());
    let (client_key, server_key) = (
        babble_net::secure::NodeKey::generate(),
        babble_net::secure::NodeKey::generate(),
    );
    let client = secure_node(&addr, &client_key, &[server_key.public()], &config).await;
    let server = secure_node(&addr, &server_key, &[client_key.public()], &config).await;
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        target: server_key.public().to_string(),
        client_addr: client_key.public().to_string(),
    }
}

transport_suite!(secure_suite, secure_pair);
