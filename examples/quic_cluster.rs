//! Toy gossip nodes over QUIC.
//!
//! All nodes in one process, on 127.0.0.1 ephemeral UDP ports, each with
//! a key of its own and every other node's address and key, with one node
//! killed and restarted (same address, same key) half-way through to show
//! the others recover:
//! ```text
//! cargo run --example quic_cluster -- --nodes 4 --secs 3
//! ```
//! Large clusters work too (each node knows `--fanout` peers, the gossip
//! period grows with the cluster, nodes run on one thread per core):
//! ```text
//! cargo run --release --example quic_cluster -- --nodes 64 --secs 10
//! ```
//! One node per process takes a node file as `tcp_cluster` does, with
//! `quic = true`, a `key-file` and the peers' keys in its `[transport]`
//! section (`--node-config`). Prints progress once a second, then one JSON
//! line with the totals and the process's peak memory, as `tcp_cluster`.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use babble_net::quic::{QuicKeys, QuicStreamLayer};
use babble_net::secure::{NodeKey, PeerKey};
use babble_net::{limits, logging, Config, NetworkTransport, Transport};
use clap::Parser;
use common::cluster::{run_killing_one, serve_one_node, NodeFile};
use common::{Gossip, GossipArgs, NodeThreads, Start, Stats, ToyNode};

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes over QUIC")]
struct Args {
    /// Number of nodes in this process (at least 3); the last one joins late.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Run one node described by this file instead (a node file as for
    /// tcp_cluster, whose [transport] has quic = true and a key-file).
    #[arg(long)]
    node_config: Option<PathBuf>,
    #[command(flatten)]
    gossip: GossipArgs,
    /// Serve Prometheus metrics at http://ADDR/metrics (docs/METRICS.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, default_value = "warn")]
    log_level: String,
}

fn fail(message: String) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

#[actix_rt::main]
async fn main() {
    let args = Args::parse();
    let level = logging::parse_level(&args.log_level)
        .unwrap_or_else(|| fail(format!("unknown --log-level {}", args.log_level)));
    let log = logging::terminal(level);
    common::serve_metrics(args.metrics_addr);
    match &args.node_config {
        Some(path) => run_one_node(&args, path, log).await,
        None => run_cluster(&args, log).await,
    }
}

async fn run_one_node(args: &Args, path: &Path, log: slog::Logger) {
    let file = NodeFile::read(path).unwrap_or_else(|err| fail(err));
    let transport = NetworkTransport::quic(&file.transport, log.clone())
        .unwrap_or_else(|err| fail(err.to_string()));
    transport
        .listen()
        .unwrap_or_else(|err| fail(err.to_string()));
    println!(
        "node {} listening on {} (QUIC)",
        file.node.id,
        transport.local_addr()
    );
    let stats = Arc::new(Stats::default());
    let gossip = args.gossip.gossip(1);
    serve_one_node(
        &file,
        &transport,
        stats.clone(),
        gossip,
        args.secs,
        log,
        |_| {},
    )
    .await
    .unwrap_or_else(|err| fail(err));
    println!("{}", stats.summary("quic", 1, &[]));
}

/// The nodes' keys and addresses: every node expects each other's key at
/// its address.
struct Network {
    keys: Vec<NodeKey>,
    peers: Vec<(String, PeerKey)>,
    config: Config,
    log: slog::Logger,
}

impl Network {
    /// Node `index`'s transport on `addr`: binding again may wait a moment
    /// for the port a killed node held (its transport lets it go a fraction
    /// of a second after closing, once its peers were told).
    async fn transport(&self, index: usize, addr: &str) -> NetworkTransport {
        let keys = QuicKeys {
            key: self.keys[index].clone(),
            peers: self.peers.iter().cloned().collect(),
            accept_any_key: false,
        };
        let mut tries = 0;
        let layer = loop {
            let bound = QuicStreamLayer::bind(
                addr,
                None,
                keys.clone(),
                limits::quic(&self.config),
                self.config.io_threads,
                self.log.clone(),
            );
            match bound {
                Ok(layer) => break layer,
                Err(err) if tries < 150 => {
                    tries += 1;
                    if tries == 1 {
                        println!("waiting for {addr}: {err}");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(err) => fail(err.to_string()),
            }
        };
        let transport = NetworkTransport::new(Arc::new(layer), &self.config, self.log.clone());
        transport
            .listen()
            .unwrap_or_else(|err| fail(err.to_string()));
        transport
    }
}

/// `count` distinct loopback addresses whose UDP ports were free a moment
/// ago, below the range the system hands out for port 0: a socket bound
/// to port 0 meanwhile (in this process or another) cannot take one
/// before its node binds it, nor while a killed node is down. Each is
/// held until all are chosen, so that no two are the same.
fn free_addresses(count: usize) -> Vec<String> {
    const PORTS: std::ops::Range<u16> = 20_000..32_000;
    let mut held = Vec::with_capacity(count);
    for _ in 0..count * 100 {
        if held.len() == count {
            break;
        }
        let port = rand::random_range(PORTS);
        if let Ok(socket) = std::net::UdpSocket::bind(("127.0.0.1", port)) {
            held.push(socket);
        }
    }
    if held.len() < count {
        fail(format!("no {count} free UDP ports in {PORTS:?}"));
    }
    held.iter()
        .map(|socket| socket.local_addr().unwrap_or_else(|e| fail(e.to_string())))
        .map(|addr| addr.to_string())
        .collect()
}

async fn run_cluster(args: &Args, log: slog::Logger) {
    if args.nodes < 3 {
        fail("--nodes must be at least 3".into());
    }
    let stats = Arc::new(Stats::default());
    let gossip: Gossip = args.gossip.gossip(args.nodes);
    let threads = NodeThreads::per_core();
    println!(
        "{} nodes, {} peers each, a gossip round every {:?}",
        args.nodes,
        args.gossip.fanout.min(args.nodes - 2),
        gossip.period
    );
    let addrs = free_addresses(args.nodes);
    let keys: Vec<NodeKey> = (0..args.nodes).map(|_| NodeKey::generate()).collect();
    let peers = addrs
        .iter()
        .cloned()
        .zip(keys.iter().map(NodeKey::public))
        .collect();
    let network = Network {
        keys,
        peers,
        config: Config::default(),
        log: log.clone(),
    };
    let founders = args.nodes - 1;
    let peers_of = |me: usize| -> Vec<String> {
        common::peers_of(me, founders, args.gossip.fanout)
            .into_iter()
            .map(|p| addrs[p].clone())
            .collect()
    };
    let start_node = |id: usize, transport: NetworkTransport, start: Start| {
        let node = ToyNode::new(
            id as u32,
            Arc::new(transport.clone()),
            start,
            stats.clone(),
            gossip.clone(),
            log.clone(),
        );
        (transport, threads.start(id, node))
    };

    let mut nodes: Vec<(NetworkTransport, Addr<ToyNode>)> = Vec::new();
    for (id, addr) in addrs.iter().enumerate() {
        let start = if id + 1 < args.nodes {
            Start::Member {
                peers: peers_of(id),
            }
        } else {
            Start::Newcomer {
                sponsor: addrs[0].clone(),
            }
        };
        let transport = network.transport(id, addr).await;
        nodes.push(start_node(id, transport, start));
    }
    common::begin_all(nodes.iter().map(|(_, node)| node)).await;

    // Half-way through, node 1 dies; a second later it comes back on the
    // same address with the same key and catches up through gossip.
    let victim = 1;
    let restarts = run_killing_one(
        stats.as_ref(),
        args.secs,
        &mut nodes,
        &addrs,
        victim,
        || async {
            let start = Start::Member {
                peers: peers_of(victim),
            };
            let transport = network.transport(victim, &addrs[victim]).await;
            start_node(victim, transport, start)
        },
    )
    .await;

    common::stop_all(
        &stats,
        nodes.iter().map(|(_, node)| node),
        nodes.iter().map(|(t, _)| t as &dyn Transport),
    )
    .await;
    println!(
        "{}",
        stats.summary("quic", args.nodes, &[("restarts", restarts)])
    );
}
