//! A cluster of toy gossip nodes on the in-memory transport.
//!
//! ```text
//! cargo run --example inmem_cluster -- --nodes 4 --secs 3
//! ```
//! Prints progress once a second, then one JSON line with the totals.

mod common;

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use babble_net::{logging, Config, InmemTransport, Transport};
use clap::Parser;
use common::{Start, Stats, StopNode, ToyNode};

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes on the in-memory transport")]
struct Args {
    /// Number of nodes (at least 2); the last one joins late.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 3)]
    secs: u64,
    /// Milliseconds between two gossip rounds of a node.
    #[arg(long, default_value_t = 20)]
    period_ms: u64,
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
    let config = Config::default();
    let transports: Vec<InmemTransport> = (0..args.nodes)
        .map(|i| InmemTransport::with_config(Some(format!("node{i}")), &config, log.clone()))
        .collect();
    for a in &transports {
        for b in &transports {
            if a.local_addr() != b.local_addr() {
                a.connect(b.local_addr(), b);
            }
        }
    }

    let stats = Arc::new(Stats::default());
    let founders: Vec<String> = transports[..args.nodes - 1]
        .iter()
        .map(|t| t.local_addr())
        .collect();
    let nodes: Vec<_> = transports
        .iter()
        .enumerate()
        .map(|(i, transport)| {
            let start = if i + 1 < args.nodes {
                let peers = founders
                    .iter()
                    .filter(|a| **a != transport.local_addr())
                    .cloned();
                Start::Member {
                    peers: peers.collect(),
                }
            } else {
                Start::Newcomer {
                    sponsor: founders[0].clone(),
                }
            };
            ToyNode::new(
                i as u32,
                Arc::new(transport.clone()),
                start,
                stats.clone(),
                Duration::from_millis(args.period_ms),
                log.clone(),
            )
            .start()
        })
        .collect();

    common::report_every_second(&stats, args.secs, |_| {}).await;

    stats
        .finished
        .store(true, std::sync::atomic::Ordering::Relaxed);
    for node in &nodes {
        let _ = node.send(StopNode).await;
    }
    for transport in &transports {
        let _ = transport.close().await;
    }
    println!("{}", stats.summary("inmem", args.nodes, &[]));
}
