//! A cluster of toy gossip nodes on the in-memory transport.
//!
//! ```text
//! cargo run --example inmem_cluster -- --nodes 4 --secs 3
//! ```
//! Prints progress once a second, then one JSON line with the totals and
//! the process's peak memory. Large clusters work too (each node knows
//! `--fanout` peers, and the gossip period grows with the cluster):
//! ```text
//! cargo run --release --example inmem_cluster -- --nodes 1000 --secs 10
//! ```

mod common;

use std::sync::Arc;

use babble_net::{logging, Config, InmemTransport, Transport};
use clap::Parser;
use common::{GossipArgs, NodeThreads, Start, Stats, ToyNode};

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes on the in-memory transport")]
struct Args {
    /// Number of nodes (at least 2); the last one joins late.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    #[command(flatten)]
    gossip: GossipArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (docs/METRICS.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log level of the transports (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

#[actix_rt::main]
async fn main() {
    let args = Args::parse();
    if args.nodes < 2 {
        eprintln!("--nodes must be at least 2");
        std::process::exit(2);
    }
    let Some(level) = logging::parse_level(&args.log_level) else {
        eprintln!("unknown --log-level {}", args.log_level);
        std::process::exit(2);
    };
    let log = logging::terminal(level);
    common::serve_metrics(args.metrics_addr);
    let gossip = args.gossip.gossip(args.nodes);
    println!(
        "{} nodes, {} peers each, a gossip round every {:?}",
        args.nodes,
        args.gossip.fanout.min(args.nodes - 1),
        gossip.period
    );
    // A sync slower than a few gossip rounds is stale anyway; a large
    // cluster's longer period gives its calls more time (a debug build of
    // 1000 nodes on 2 cores answers in seconds, not milliseconds).
    let config = Config {
        timeout: Config::default().timeout.max(gossip.period * 5),
        ..Config::default()
    };
    let transports: Vec<InmemTransport> = (0..args.nodes)
        .map(|i| InmemTransport::with_config(Some(format!("node{i}")), &config, log.clone()))
        .collect();
    let founders = args.nodes - 1;
    let newcomer = &transports[founders];
    let sponsor = &transports[0];
    // Each founder reaches its own peers; the newcomer may be handed any
    // founder by its sponsor, and the sponsor adds the newcomer.
    let peers: Vec<Vec<usize>> = (0..founders)
        .map(|i| common::peers_of(i, founders, args.gossip.fanout))
        .collect();
    for (i, peers) in peers.iter().enumerate() {
        for &p in peers {
            transports[i].connect(transports[p].local_addr(), &transports[p]);
        }
    }
    for founder in &transports[..founders] {
        newcomer.connect(founder.local_addr(), founder);
    }
    sponsor.connect(newcomer.local_addr(), newcomer);

    let stats = Arc::new(Stats::default());
    let threads = NodeThreads::per_core();
    let nodes: Vec<_> = transports
        .iter()
        .enumerate()
        .map(|(i, transport)| {
            let start = match peers.get(i) {
                Some(peers) => Start::Member {
                    peers: peers.iter().map(|&p| transports[p].local_addr()).collect(),
                },
                None => Start::Newcomer {
                    sponsor: sponsor.local_addr(),
                },
            };
            let node = ToyNode::new(
                i as u32,
                Arc::new(transport.clone()),
                start,
                stats.clone(),
                gossip.clone(),
                log.clone(),
            );
            threads.start(i, node)
        })
        .collect();

    common::begin_all(&nodes).await;
    common::report_every_second(&stats, args.secs, |_| {}).await;

    common::stop_all(
        &stats,
        &nodes,
        transports.iter().map(|t| t as &dyn Transport),
    )
    .await;
    println!("{}", stats.summary("inmem", args.nodes, &[]));
}
