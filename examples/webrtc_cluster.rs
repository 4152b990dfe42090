//! Toy gossip nodes over WebRTC data channels, meeting through a signaling
//! server started in the same process (plain ws:// on 127.0.0.1, ICE on
//! loopback only).
//!
//! ```text
//! cargo run --example webrtc_cluster -- --nodes 4 --secs 5
//! ```
//! With `--secure`, the signaling server requires authentication, offers
//! and answers are signed, and data channels carry secure channels; each
//! node generates its key, which is its ID.
//!
//! Prints progress once a second, then one JSON line with the totals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use babble_net::rtc::{IceOptions, WebRtcStreamLayer};
use babble_net::secure::{NodeKey, PeerKey, SecureStreamLayer};
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, WampSignal};
use babble_net::stream::StreamLayer;
use babble_net::{logging, Config, NetworkTransport, Transport};
use clap::Parser;
use common::{Start, Stats, ToyNode};

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes over WebRTC")]
struct Args {
    /// Number of nodes (at least 2); the last one joins late.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 5)]
    secs: u64,
    /// Milliseconds between two gossip rounds of a node.
    #[arg(long, default_value_t = 20)]
    period_ms: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (docs/METRICS.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
    /// Authenticated signaling, signed offers and secure channels: each
    /// node generates its key, which is its ID (docs/SECURITY.md).
    #[arg(long)]
    secure: bool,
    /// The signaling server to meet through (`ws://HOST:PORT`, a running
    /// `babble-signal --insecure`, realm `main`) instead of one started in
    /// this process.
    #[arg(long)]
    signal_addr: Option<String>,
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

#[actix_rt::main]
async fn main() {
    let args = Args::parse();
    if args.nodes < 2 {
        fail("--nodes must be at least 2".into());
    }
    let level = logging::parse_level(&args.log_level)
        .unwrap_or_else(|| fail(format!("unknown --log-level {}", args.log_level)));
    let log = logging::terminal(level);
    common::serve_metrics(args.metrics_addr);

    let (router, signal_addr) = match args.signal_addr.clone() {
        Some(addr) => (None, addr),
        None => {
            let router_config = RouterConfig {
                listen: "127.0.0.1:0".into(),
                insecure: true,
                require_auth: args.secure,
                ..RouterConfig::default()
            };
            let router = Router::start(router_config, log.clone())
                .await
                .unwrap_or_else(|e| fail(e.to_string()));
            println!("signaling server on ws://{}/", router.local_addr());
            let addr = format!("ws://{}", router.local_addr());
            (Some(router), addr)
        }
    };
    let config = Config {
        signal_addr,
        // SCTP retransmits a lost packet after at least a second (its
        // minimum RTO): a WebRTC call needs a timeout above that to ride
        // out one loss (docs/WEBRTC.md).
        timeout: Duration::from_secs(3),
        ..Config::default()
    };
    let ice = IceOptions {
        loopback_only: true,
        ..IceOptions::default()
    };

    // Secure: each node's key is its ID, and every node knows the others.
    let keys: Vec<Option<NodeKey>> = (0..args.nodes)
        .map(|_| args.secure.then(NodeKey::generate))
        .collect();
    let ids: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| match key {
            Some(key) => key.public().to_string(),
            None => format!("node{i}"),
        })
        .collect();
    let peers: Vec<(String, PeerKey)> = keys
        .iter()
        .flatten()
        .map(|key| (key.public().to_string(), key.public()))
        .collect();
    let stats = Arc::new(Stats::default());
    let mut nodes = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let settings = babble_net::limits::signal(&config, id.clone(), None, keys[i].clone());
        let signal: Arc<dyn Signal> = Arc::new(WampSignal::new(
            settings,
            config.offer_deadline(),
            log.clone(),
        ));
        let layer =
            WebRtcStreamLayer::start(signal, &ice, babble_net::limits::rtc(&config), log.clone())
                .await
                .unwrap_or_else(|e| fail(e.to_string()));
        let layer: Arc<dyn StreamLayer> = match &keys[i] {
            Some(key) => Arc::new(SecureStreamLayer::new(
                Arc::new(layer),
                key.clone(),
                peers.clone(),
                false,
            )),
            None => Arc::new(layer),
        };
        let transport = NetworkTransport::new(layer, &config, log.clone());
        transport.listen().unwrap_or_else(|e| fail(e.to_string()));
        let founders = &ids[..args.nodes - 1];
        let start = if i + 1 < args.nodes {
            let peers = founders
                .iter()
                .filter(|other| *other != id)
                .cloned()
                .collect();
            Start::Member { peers }
        } else {
            Start::Newcomer {
                sponsor: founders[0].clone(),
            }
        };
        let node = ToyNode::new(
            i as u32,
            Arc::new(transport.clone()),
            start,
            stats.clone(),
            common::Gossip {
                period: Duration::from_millis(args.period_ms),
                max_syncs: 2,
                max_events: 256,
            },
            log.clone(),
        )
        .start();
        node.do_send(common::Begin);
        nodes.push((transport, node));
    }

    common::report_every_second(&stats, args.secs, |_| {}).await;

    common::stop_all(
        &stats,
        nodes.iter().map(|(_, node)| node),
        nodes.iter().map(|(t, _)| t as &dyn Transport),
    )
    .await;
    if let Some(router) = router {
        router.shutdown().await;
    }
    let transport = if args.secure {
        "webrtc+secure"
    } else {
        "webrtc"
    };
    println!("{}", stats.summary(transport, args.nodes, &[]));
}
