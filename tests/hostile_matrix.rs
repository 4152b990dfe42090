//! One hostile matrix: every attack, from one source and from many,
//! against every transport it applies to, each cell asserting over real
//! sockets that an honest peer from another address is served and that
//! the node's own peak memory (a real node process, read from `/proc`)
//! grows by no more than its buffer budgets and a documented constant.
//! The run writes its table into docs/SECURITY.md ("The hostile matrix").
//!
//! Each cell has a node process of its own (started in a fraction of a
//! second): memory an allocator kept after one attack would hide the next
//! one's growth.

#[path = "hostile_matrix/attacks.rs"]
mod attacks;
mod common;
#[path = "hostile_matrix/node.rs"]
mod node;
#[path = "hostile_matrix/router.rs"]
mod router;
#[path = "hostile_matrix/table.rs"]
mod table;
#[path = "hostile_matrix/webrtc.rs"]
mod webrtc;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use attacks::{Attack, Kind, Sizes, Target};
use babble_net::secure::{NodeKey, PeerKey};
use babble_net::signal::Signal;
use babble_net::wire::{WireBody, WireEvent};
use babble_net::*;
use node::NodeProcess;
use table::{Cell, Outcome};

/// The node's limits: small budgets, so that an attack that got past them
/// would show at once.
const MIB: u64 = 1 << 20;
const INBOUND_BUDGET: u64 = 16 * MIB;
const OUTBOUND_BUDGET: u64 = 16 * MIB;
const MAX_INBOUND: u64 = 64;
/// What the node may hold beyond its budgets: each inbound connection's
/// first 64 KiB each way (docs: "Limits"), a secure channel's buffers
/// (up to four 64 KiB messages while a frame moves, 16 KiB each idle), and
/// the allocator's slack.
const CONSTANT: u64 = 16 * MIB;
const BOUND: u64 = INBOUND_BUDGET + OUTBOUND_BUDGET + CONSTANT;

const NODE_FILE: &str = r#"
max-inbound = 64
max-inbound-per-ip = 32
inbound-buffer-budget = 16777216
outbound-buffer-budget = 16777216
max-request-size = 4194304
max-reply-size = 8388608
timeout = "2s"
min-transfer-rate = 1048576
idle-timeout = "10s"
handshake-timeout = "2s"
quic-max-connections = 64
quic-max-connections-per-source = 32
quic-max-handshakes = 16
webrtc-max-peers = 16
webrtc-max-channels = 16
"#;
/// The router WebRTC's peers meet through.
const RTC_ROUTER_FILE: &str = r#"
listen = "127.0.0.1:0"
realms = ["main"]
insecure = true
max-sessions = 8192
max-sessions-per-address = 8192
max-handshakes = 8192
"#;

/// What a WebRTC node may hold beyond its budgets: each peer
/// connection's SCTP receive window (1 MiB, `webrtc-max-peers` of them).
const RTC_WINDOWS: u64 = 16 * MIB;

/// The router's column, and what its memory may grow by: each session's
/// queue, a message being read and one being written, and tungstenite's
/// read buffer (16 KiB); each handshake's request (at most 64 KiB); the
/// same constant as a node's.
const ROUTER: &str = "signaling router";
const ROUTER_BOUND: u64 = router::MAX_SESSIONS
    * (router::MAX_QUEUED + 2 * router::MAX_MESSAGE + (16 << 10))
    + router::MAX_HANDSHAKES * (64 << 10)
    + CONSTANT;

/// How long each attack runs.
const ATTACK: Duration = Duration::from_secs(3);
/// Connections each attack holds, from one source or spread over many.
const CONNECTIONS: usize = 96;
/// Calls the honest peer makes during each attack.
const HONEST_CALLS: usize = 5;

#[actix_rt::test]
async fn every_attack_on_every_transport_leaves_an_honest_peer_served_within_the_budgets() {
    if !Path::new("/proc/self/clear_refs").exists() {
        eprintln!("skipped: the hostile matrix reads and resets a process's peak memory in /proc");
        return;
    }
    let binary = common::interop::example("rpcbench");
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("node.toml");
    std::fs::write(&config, NODE_FILE).unwrap();
    let sizes = sizes();
    let one = vec!["127.0.0.2".to_owned()];
    let many: Vec<String> = (2..10).map(|i| format!("127.0.0.{i}")).collect();
    let mut cells = Vec::new();
    // HOSTILE_MATRIX_ONLY=quic (say) runs the cells of one transport.
    let only = std::env::var("HOSTILE_MATRIX_ONLY").unwrap_or_default();
    // WebRTC's peers meet through a router process whose caps per address
    // are out of the way, so that the node's own defences meet each
    // attack: the attackers' sessions come from their addresses (the
    // router gives those to the node as their offers' callers), the node's
    // and the honest peer's from 127.0.0.1.
    let rtc_router_file = dir.path().join("rtc-router.toml");
    std::fs::write(&rtc_router_file, RTC_ROUTER_FILE).unwrap();
    let rtc_router = NodeProcess::router(
        Path::new(env!("CARGO_BIN_EXE_babble-signal")),
        &rtc_router_file,
        &common::net::free_addr(),
    );
    let rtc_url = format!("ws://{}", rtc_router.addr);
    let rtc_router_addr: std::net::SocketAddr = rtc_router.addr.parse().unwrap();
    for kind in [Kind::Tcp, Kind::Noise, Kind::Quic, Kind::WebRtc] {
        if !only.is_empty() && !kind.name().to_lowercase().contains(&only.to_lowercase()) {
            continue;
        }
        let (attacks, bound) = match kind {
            Kind::WebRtc => (&Attack::ALL[..], BOUND + RTC_WINDOWS),
            _ => (&Attack::ON_NODES[..], BOUND),
        };
        for &attack in attacks {
            // HOSTILE_MATRIX_ATTACK=unread (say) runs the cells of one attack.
            let only_attack = std::env::var("HOSTILE_MATRIX_ATTACK").unwrap_or_default();
            if !attack.name().contains(only_attack.as_str()) {
                continue;
            }
            for (sources, from) in [(&one, "one address"), (&many, "8 addresses")] {
                // A node of its own for each cell: memory an allocator kept
                // from one attack would hide the next one's.
                let node = start_node(&binary, &config, dir.path(), kind, &rtc_url);
                let rtc = match kind {
                    Kind::WebRtc => Some(Arc::new(
                        webrtc::Attackers::new(rtc_router_addr, sources).await,
                    )),
                    _ => None,
                };
                let target = Target {
                    kind,
                    addr: node.addr.clone(),
                    key: node.key.as_deref().map(|k| PeerKey::parse(k).unwrap()),
                    rtc,
                };
                let honest = honest_peer(&target, dir.path(), &rtc_url).await;
                warm_up(&honest, &target, &sizes).await;
                let (served, growth) = cell(&node, &honest, &target, attack, sources, &sizes).await;
                assert!(node.alive(), "the {} node died", kind.name());
                eprintln!(
                    "{} / {} / {from}: {served}/{HONEST_CALLS} served, +{} KiB",
                    kind.name(),
                    attack.name(),
                    growth >> 10
                );
                cells.push(Cell {
                    attack: attack.name(),
                    sources: from,
                    transport: kind.name(),
                    outcome: Outcome::Ran {
                        served,
                        calls: HONEST_CALLS,
                        growth,
                        bound,
                    },
                });
                honest.close().await.ok();
            }
        }
        for from in ["one address", "8 addresses"] {
            if kind == Kind::WebRtc {
                break;
            }
            cells.push(Cell {
                attack: Attack::MintedIds.name(),
                sources: from,
                transport: kind.name(),
                outcome: Outcome::NotApplicable(
                    "no IDs here: a source is its address (and a minted key shares it)",
                ),
            });
        }
    }
    if only.is_empty() || ROUTER.contains(&only.to_lowercase()) {
        cells.extend(router_cells(dir.path(), &one, &many).await);
    }
    let bound = format!(
        "`inbound-buffer-budget` ({} MiB) + `outbound-buffer-budget` ({} MiB) + {} MiB \
         (each of the {MAX_INBOUND} inbound connections' first 64 KiB each way, a secure \
         channel's buffers, the allocator's slack) = {} MiB on a node ({} MiB on WebRTC, \
         with each of `webrtc-max-peers` (16) peer connections' 1 MiB SCTP receive \
         window); on the router, \
         `max-sessions` ({}) × (`max-queued-bytes` ({} KiB) + 2 × `max-message-size` \
         ({} KiB) + a 16 KiB read buffer) + `max-handshakes` ({}) × 64 KiB (a handshake's \
         request) + {} MiB = {} MiB",
        INBOUND_BUDGET / MIB,
        OUTBOUND_BUDGET / MIB,
        CONSTANT / MIB,
        BOUND / MIB,
        (BOUND + RTC_WINDOWS) / MIB,
        router::MAX_SESSIONS,
        router::MAX_QUEUED >> 10,
        router::MAX_MESSAGE >> 10,
        router::MAX_HANDSHAKES,
        CONSTANT / MIB,
        ROUTER_BOUND / MIB
    );
    let table = table::markdown(&cells, &bound);
    // Only a whole run describes the matrix.
    if only.is_empty() {
        table::write_into(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/SECURITY.md"),
            &table,
        );
    }
    let failed: Vec<String> = cells
        .iter()
        .filter(|cell| !cell.holds())
        .map(|cell| format!("{} / {} / {}", cell.transport, cell.attack, cell.sources))
        .collect();
    assert!(
        failed.is_empty(),
        "cells that do not hold: {failed:#?}\n{table}"
    );
}

/// Runs one cell: `attack` from `sources` while the honest peer calls.
/// Returns the honest calls served and the node's peak memory growth.
async fn cell(
    node: &NodeProcess,
    honest: &NetworkTransport,
    target: &Target,
    attack: Attack,
    sources: &[String],
    sizes: &Sizes,
) -> (usize, u64) {
    let start = |until| attacks::start(attack, target, sources, CONNECTIONS, sizes, until);
    // Every other call asks for a large reply, as a node catching up
    // does.
    let large = sizes.reply_events as i64;
    let calls = async {
        let mut served = 0;
        for id in 0..HONEST_CALLS {
            let request = SyncRequest {
                from_id: id as u32,
                sync_limit: if id % 2 == 1 { large } else { 0 },
                ..Default::default()
            };
            match honest.sync(&target.addr, request).await {
                Ok(_) => served += 1,
                Err(err) => eprintln!("honest call {id} failed: {err}"),
            }
        }
        served
    };
    let (served, growth) = measure(node, start, calls).await;
    if std::env::var("HOSTILE_MATRIX_TRACE").is_ok() {
        for budget in ["inbound", "outbound", "read_ahead"] {
            let series = format!(
                "babble_net_buffer_budget_bytes{{transport=\"{}\",budget=\"{budget}\"}}",
                target.kind.label()
            );
            eprintln!(
                "  {budget} budget held at the end: {}",
                node.metric(&series).await
            );
        }
        eprintln!("  rss at the end: {} KiB", node.rss() >> 10);
    }
    (served, growth)
}

/// Starts an attack (`start`, given when it must end), makes the honest
/// calls (`honest`, the calls served) once it is under way, and waits for
/// its end. Returns the calls served and the process's peak memory growth
/// over what it held before the attack.
async fn measure(
    node: &NodeProcess,
    start: impl FnOnce(Instant) -> Arc<attacks::Progress>,
    honest: impl std::future::Future<Output = usize>,
) -> (usize, u64) {
    node.reset_peak();
    let base = node.rss();
    let until = Instant::now() + ATTACK;
    let progress = start(until);
    // The honest peer calls once the attack is under way.
    while progress.opened.load(Ordering::Relaxed) < 16 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let served = honest.await;
    tokio::time::sleep_until(until.into()).await;
    (served, node.peak().saturating_sub(base))
}

/// The router's column: every attack on a `babble-signal` process of its
/// own, while a node registered before it (`bob`) takes offers from a
/// newcomer who joins while it lasts.
async fn router_cells(dir: &Path, one: &[String], many: &[String]) -> Vec<Cell> {
    let config = dir.join("router.toml");
    std::fs::write(&config, router::ROUTER_FILE).unwrap();
    let binary = Path::new(env!("CARGO_BIN_EXE_babble-signal"));
    let mut cells = Vec::new();
    for attack in Attack::ALL {
        for (sources, from) in [(one, "one address"), (many, "8 addresses")] {
            let node = NodeProcess::router(binary, &config, &common::net::free_addr());
            let url = format!("ws://{}", node.addr);
            let addr = node.addr.parse().unwrap();
            let bob = router::callee(&url).await;
            // A first newcomer before the attack: the router's first
            // sessions and calls are made before any cell measures.
            assert_eq!(router::newcomer_offers(&url, "warm", 1).await, 1);
            let start = |until| router::start(attack, addr, sources, CONNECTIONS, until);
            let calls = router::newcomer_offers(&url, "alice", HONEST_CALLS);
            let (served, growth) = measure(&node, start, calls).await;
            assert!(node.alive(), "the router died");
            eprintln!(
                "{ROUTER} / {} / {from}: {served}/{HONEST_CALLS} served, +{} KiB",
                attack.name(),
                growth >> 10
            );
            cells.push(Cell {
                attack: attack.name(),
                sources: from,
                transport: ROUTER,
                outcome: Outcome::Ran {
                    served,
                    calls: HONEST_CALLS,
                    growth,
                    bound: ROUTER_BOUND,
                },
            });
            bob.close().await.ok();
        }
    }
    cells
}

/// A port free a moment ago, for a process's metrics.
/// The node process of `kind`.
/// (A WebRTC node registers as `server` with the router at `rtc_url`.)
fn start_node(binary: &Path, config: &Path, dir: &Path, kind: Kind, rtc_url: &str) -> NodeProcess {
    let key_file = dir.join(format!("node-{}.key", kind.label()));
    let key = key_file.display().to_string();
    let mut args: Vec<String> = vec!["--listen".into(), "127.0.0.1:0".into()];
    // A node that spends 2 ms on each RPC: large requests arrive faster
    // than it answers them.
    args.extend(["--work-us".into(), "2000".into()]);
    match kind {
        Kind::Tcp => {}
        Kind::Noise => args.extend(["--secure".into(), "--key-file".into(), key]),
        Kind::Quic => args.extend([
            "--transport".into(),
            "quic".into(),
            "--key-file".into(),
            key,
        ]),
        Kind::WebRtc => args.extend(
            [
                "--transport",
                "webrtc",
                "--signal",
                rtc_url,
                "--id",
                "server",
                "--loopback-only",
            ]
            .map(String::from),
        ),
    }
    NodeProcess::start(binary, config, &common::net::free_addr(), &args)
}

/// An honest peer of the node's transport, calling from 127.0.0.1 (on
/// WebRTC, its link from 127.0.0.10: every signaling session of this
/// process comes from 127.0.0.1, the made-up IDs' offers included, and
/// the honest link must not share their address), with a timeout long
/// enough for a test build on a loaded machine: what the matrix asks is
/// whether it is served, not how fast.
async fn honest_peer(target: &Target, dir: &Path, rtc_url: &str) -> NetworkTransport {
    let base = Config {
        bind_addr: "127.0.0.1:0".into(),
        timeout: Duration::from_secs(10),
        ..Config::default()
    };
    let keyed = |config: Config| {
        let key_file = dir.join("honest.key");
        NodeKey::generate().save(&key_file).unwrap();
        Config {
            key_file: Some(key_file),
            peer_keys: [(target.addr.clone(), target.key.unwrap().to_string())]
                .into_iter()
                .collect(),
            ..config
        }
    };
    match target.kind {
        Kind::Tcp => NetworkTransport::tcp(&base, logging::discard()).unwrap(),
        Kind::Noise => NetworkTransport::tcp(
            &keyed(Config {
                secure: true,
                ..base
            }),
            logging::discard(),
        )
        .unwrap(),
        Kind::Quic => {
            NetworkTransport::quic(&keyed(Config { quic: true, ..base }), logging::discard())
                .unwrap()
        }
        Kind::WebRtc => {
            let id = format!("honest-{}", rand::random::<u32>());
            NetworkTransport::webrtc(
                webrtc::signal(rtc_url, &id),
                &webrtc::ice("127.0.0.10"),
                &base,
                logging::discard(),
            )
            .await
            .unwrap()
        }
    }
}

/// Calls the node as the attacks will (so that its first answers of each
/// size are made before any cell measures).
async fn warm_up(honest: &NetworkTransport, target: &Target, sizes: &Sizes) {
    honest
        .sync(&target.addr, SyncRequest::default())
        .await
        .expect("the node answers");
    let request = SyncRequest {
        sync_limit: sizes.reply_events as i64,
        ..Default::default()
    };
    honest
        .sync(&target.addr, request)
        .await
        .expect("the node answers a large Sync");
}

/// The attacks' sizes: replies of about 2 MiB, requests just under the
/// 4 MiB cap.
fn sizes() -> Sizes {
    let event = |i: usize| WireEvent {
        body: WireBody {
            transactions: Some((0..4).map(|t| Some(vec![(i + t) as u8; 100])).collect()),
            creator_id: (i % 4) as u32,
            index: i as i64,
            ..Default::default()
        },
        signature: "ab".repeat(32),
    };
    let command = Command::EagerSync(EagerSyncRequest {
        from_id: 1,
        events: Some((0..4000).map(event).collect()),
    });
    let mut frame = bytes::BytesMut::new();
    babble_net::codec::encode_request(&command, &mut frame).unwrap();
    assert!(frame.len() < 4 << 20, "{} bytes", frame.len());
    Sizes {
        reply_events: 2500,
        large_request: Arc::new(frame.to_vec()),
        max_request: 4 << 20,
    }
}
