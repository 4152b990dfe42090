//! What the cluster examples over real sockets share: the node file of a
//! one-node-per-process run, and the run that kills a node half-way and
//! brings it back on its address.

use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use babble_net::{Config, NetworkTransport, Transport};
use serde::Deserialize;

use super::{Begin, Gossip, Start, Stats, StopNode, ToyNode};

/// A node's file: its place in the cluster and its transport settings
/// (config/node1.toml).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFile {
    pub node: NodeSection,
    #[serde(default)]
    pub transport: Config,
}

/// The `[node]` section of a node file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    pub id: u32,
    /// Addresses of the other members.
    #[serde(default)]
    pub peers: Vec<String>,
    /// Join through this member (and fast-forward from it) instead.
    pub sponsor: Option<String>,
}

impl NodeFile {
    /// The file at `path`, or what is wrong with it.
    pub fn read(path: &Path) -> Result<NodeFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))?;
        toml::from_str(&text).map_err(|err| format!("{}: {err}", path.display()))
    }

    /// How the node starts: as a member knowing its peers, or as a
    /// newcomer joining through its sponsor.
    pub fn start(&self) -> Start {
        match &self.node.sponsor {
            Some(sponsor) => Start::Newcomer {
                sponsor: sponsor.clone(),
            },
            None => Start::Member {
                peers: self.node.peers.clone(),
            },
        }
    }
}

/// Runs the node of `file` on `transport` (listening) for `secs` seconds,
/// or until SIGTERM (a supervisor stopping the node still gets the
/// summary), printing its progress each second; then `before_stop` sees
/// the counters while the node still runs, and the node stops and its
/// transport closes.
pub async fn serve_one_node(
    file: &NodeFile,
    transport: &NetworkTransport,
    stats: Arc<Stats>,
    gossip: Gossip,
    secs: u64,
    log: slog::Logger,
    before_stop: impl FnOnce(&Stats),
) -> Result<(), String> {
    let node = actix::Actor::start(ToyNode::new(
        file.node.id,
        Arc::new(transport.clone()),
        file.start(),
        stats.clone(),
        gossip,
        log,
    ));
    node.do_send(Begin);
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|err| format!("cannot watch SIGTERM: {err}"))?;
    tokio::select! {
        _ = super::report_every_second(&stats, secs, |_| {}) => {}
        _ = terminate.recv() => println!("terminated"),
    }
    before_stop(&stats);
    stats.finished.store(true, Ordering::Relaxed);
    let _ = node.send(StopNode).await;
    let _ = transport.close().await;
    Ok(())
}

/// A node of the cluster: its transport and its actor.
pub type RunningNode = (NetworkTransport, Addr<ToyNode>);

/// Runs the cluster for `secs` seconds, printing its progress each
/// second. Half-way through, node `victim` (on `addrs[victim]`) is
/// stopped and its transport closed; a second later `restart` brings it
/// back (on the same address) and it begins again. Returns how many
/// times it came back.
pub async fn run_killing_one<F, Fut>(
    stats: &Stats,
    secs: u64,
    nodes: &mut [RunningNode],
    addrs: &[String],
    victim: usize,
    mut restart: F,
) -> u64
where
    F: FnMut() -> Fut,
    Fut: Future<Output = RunningNode>,
{
    let address = &addrs[victim];
    let kill_at = (secs / 2).max(1);
    let mut restarts = 0u64;
    let mut pending: Option<u64> = None;
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    for second in 1..=secs {
        interval.tick().await;
        println!("{}", stats.progress(second));
        if second == kill_at {
            let (transport, node) = &nodes[victim];
            stats.down.lock().unwrap().insert(address.clone());
            let _ = node.send(StopNode).await;
            let _ = transport.close().await;
            println!("node {victim} killed");
            pending = Some(second + 1);
        }
        if pending == Some(second) || (pending.is_some() && second == secs) {
            nodes[victim] = restart().await;
            nodes[victim].1.do_send(Begin);
            stats
                .came_back
                .lock()
                .unwrap()
                .insert(address.clone(), std::time::Instant::now());
            stats.down.lock().unwrap().remove(address);
            restarts += 1;
            pending = None;
            println!("node {victim} restarted on {address}");
        }
    }
    restarts
}
