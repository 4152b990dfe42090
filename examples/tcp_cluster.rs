//! Toy gossip nodes over TCP.
//!
//! All nodes in one process, on 127.0.0.1 ephemeral ports, with one node
//! killed and restarted half-way through to show the others recover:
//! ```text
//! cargo run --example tcp_cluster -- --nodes 4 --secs 3
//! ```
//! One node per process, so that a cluster can span processes or machines
//! (start each of the three in its own terminal):
//! ```text
//! cargo run --example tcp_cluster -- --node-config config/node1.toml --secs 10
//! cargo run --example tcp_cluster -- --node-config config/node2.toml --secs 10
//! cargo run --example tcp_cluster -- --node-config config/node3.toml --secs 10
//! ```
//! With `--secure`, every connection is a secure channel: each node
//! generates its key and knows every other node's address and key.
//!
//! Large clusters work too (each node knows `--fanout` peers, the gossip
//! period grows with the cluster, nodes run on one thread per core):
//! ```text
//! cargo run --release --example tcp_cluster -- --nodes 64 --secs 10
//! ```
//! Prints progress once a second, then one JSON line with the totals and
//! the process's peak memory.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use actix::Addr;
use babble_net::secure::{NodeKey, PeerKey, SecureStreamLayer};
use babble_net::stream::{StreamLayer, TcpStreamLayer};
use babble_net::{logging, Config, NetworkTransport, Transport};
use clap::Parser;
use common::cluster::{run_killing_one, serve_one_node, NodeFile};
use common::{Gossip, GossipArgs, NodeThreads, Start, Stats, ToyNode};

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes over TCP")]
struct Args {
    /// Number of nodes in this process (at least 3); the last one joins late.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Run one node described by this file instead (see config/node1.toml).
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
    /// Secure channels: each node generates its key, and every node knows
    /// every other's address and key (docs/SECURITY.md).
    #[arg(long)]
    secure: bool,
    /// With --node-config: append one JSON line per Sync and EagerSync to
    /// this file as each ends (`{"at_ms":..,"from":..,"peer":..,"rpc":..,
    /// "ms":..,"ok":..,"events":..,"error":..}`, `at_ms` the Unix time it
    /// was made).
    #[arg(long)]
    call_log: Option<PathBuf>,
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
    let transport = NetworkTransport::tcp(&file.transport, log.clone())
        .unwrap_or_else(|err| fail(err.to_string()));
    transport
        .listen()
        .unwrap_or_else(|err| fail(err.to_string()));
    println!(
        "node {} listening on {}",
        file.node.id,
        transport.local_addr()
    );
    let stats = Arc::new(Stats::default());
    if let Some(path) = &args.call_log {
        log_calls_to(&stats, path);
    }
    let bound = file.transport.call_bound(babble_net::RpcType::Sync);
    let gossip = args.gossip.gossip(1);
    serve_one_node(
        &file,
        &transport,
        stats.clone(),
        gossip,
        args.secs,
        log,
        |stats: &Stats| {
            println!(
                "calls in flight longer than their bound: {}",
                stats.in_flight_longer_than(bound)
            )
        },
    )
    .await
    .unwrap_or_else(|err| fail(err));
    println!("{}", stats.summary("tcp", 1, &[]));
}

/// Appends a JSON line to `path` for every call of the node as it ends.
fn log_calls_to(stats: &Stats, path: &PathBuf) {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|err| fail(format!("cannot open {}: {err}", path.display())));
    let file = std::sync::Mutex::new(std::io::LineWriter::new(file));
    // Instants to Unix time, for whoever lines the log up with other clocks.
    let (then, then_unix) = (std::time::Instant::now(), std::time::SystemTime::now());
    let observer = move |call: &common::CallRecord<'_>| {
        let made = then_unix + call.made.duration_since(then);
        let at_ms = made
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let (ok, events, error) = match call.outcome {
            Ok(events) => (true, events, None),
            Err(err) => (false, 0, Some(err.to_string())),
        };
        let line = serde_json::json!({
            "at_ms": at_ms as u64,
            "from": call.from,
            "peer": call.target,
            "rpc": call.rpc,
            "ms": call.took.as_secs_f64() * 1000.0,
            "ok": ok,
            "events": events,
            "error": error,
        });
        use std::io::Write;
        let _ = writeln!(file.lock().unwrap(), "{line}");
    };
    let _ = stats.on_call.set(Box::new(observer));
}

/// How the nodes of one process reach each other: plain TCP, or secure
/// channels with a key per node and everyone's keys known.
struct Network {
    keys: Option<Vec<NodeKey>>,
    peers: Vec<(String, PeerKey)>,
    log: slog::Logger,
}

impl Network {
    /// Node `index`'s transport on `tcp`.
    fn transport(&self, index: usize, tcp: TcpStreamLayer) -> NetworkTransport {
        let tcp: Arc<dyn StreamLayer> = Arc::new(tcp);
        let layer: Arc<dyn StreamLayer> = match &self.keys {
            Some(keys) => Arc::new(SecureStreamLayer::new(
                tcp,
                keys[index].clone(),
                self.peers.clone(),
                false,
            )),
            None => tcp,
        };
        let transport = NetworkTransport::new(layer, &Config::default(), self.log.clone());
        transport
            .listen()
            .unwrap_or_else(|err| fail(err.to_string()));
        transport
    }
}

fn bind(addr: &str) -> TcpStreamLayer {
    TcpStreamLayer::bind(addr, None).unwrap_or_else(|e| fail(e.to_string()))
}

/// What the nodes of the cluster share.
struct Cluster {
    stats: Arc<Stats>,
    gossip: Gossip,
    threads: NodeThreads,
    log: slog::Logger,
}

impl Cluster {
    fn start_node(
        &self,
        id: u32,
        transport: NetworkTransport,
        start: Start,
    ) -> (NetworkTransport, Addr<ToyNode>) {
        let node = ToyNode::new(
            id,
            Arc::new(transport.clone()),
            start,
            self.stats.clone(),
            self.gossip.clone(),
            self.log.clone(),
        );
        (transport, self.threads.start(id as usize, node))
    }
}

async fn run_cluster(args: &Args, log: slog::Logger) {
    if args.nodes < 3 {
        fail("--nodes must be at least 3".into());
    }
    let cluster = Cluster {
        stats: Arc::new(Stats::default()),
        gossip: args.gossip.gossip(args.nodes),
        threads: NodeThreads::per_core(),
        log: log.clone(),
    };
    let stats = &cluster.stats;
    println!(
        "{} nodes, {} peers each, a gossip round every {:?}",
        args.nodes,
        args.gossip.fanout.min(args.nodes - 2),
        cluster.gossip.period
    );
    // Bind every node first, so that each knows the others' ports (and,
    // secure, their keys).
    let layers: Vec<TcpStreamLayer> = (0..args.nodes).map(|_| bind("127.0.0.1:0")).collect();
    let addrs: Vec<String> = layers.iter().map(|l| l.advertise_addr()).collect();
    let keys: Option<Vec<NodeKey>> = args
        .secure
        .then(|| (0..args.nodes).map(|_| NodeKey::generate()).collect());
    let peers = match &keys {
        Some(keys) => addrs
            .iter()
            .cloned()
            .zip(keys.iter().map(|k| k.public()))
            .collect(),
        None => Vec::new(),
    };
    let network = Network {
        keys,
        peers,
        log: log.clone(),
    };
    let founders = args.nodes - 1;
    let peers_of = |me: usize| -> Vec<String> {
        common::peers_of(me, founders, args.gossip.fanout)
            .into_iter()
            .map(|p| addrs[p].clone())
            .collect()
    };

    let mut nodes: Vec<(NetworkTransport, Addr<ToyNode>)> = Vec::new();
    for (id, layer) in layers.into_iter().enumerate() {
        let start = if id + 1 < args.nodes {
            Start::Member {
                peers: peers_of(id),
            }
        } else {
            Start::Newcomer {
                sponsor: addrs[0].clone(),
            }
        };
        let transport = network.transport(id, layer);
        nodes.push(cluster.start_node(id as u32, transport, start));
    }

    common::begin_all(nodes.iter().map(|(_, node)| node)).await;

    // Half-way through, node 1 dies; a second later it comes back on the
    // same address (with the same key) and catches up through gossip.
    let victim = 1;
    let restarts = run_killing_one(stats, args.secs, &mut nodes, &addrs, victim, || async {
        let start = Start::Member {
            peers: peers_of(victim),
        };
        let transport = network.transport(victim, bind(&addrs[victim]));
        cluster.start_node(victim as u32, transport, start)
    })
    .await;

    common::stop_all(
        stats,
        nodes.iter().map(|(_, node)| node),
        nodes.iter().map(|(t, _)| t as &dyn Transport),
    )
    .await;
    let transport = if args.secure { "tcp+secure" } else { "tcp" };
    println!(
        "{}",
        stats.summary(transport, args.nodes, &[("restarts", restarts)])
    );
}
