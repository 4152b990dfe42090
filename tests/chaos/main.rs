//! Chaos suite: five toy node processes (`tcp_cluster --node-config`), each
//! in its own network namespace, go through a SIGKILL and restart, a
//! partition, and a slow link, while every node logs each call's outcome
//! and duration. The test then checks the transport's promises: no call
//! outlived its bound, no call failed outside a fault, every node
//! exchanged with every other again within a few seconds of each fault
//! ending, and file descriptors and memory came back to normal.
//!
//! Needs root, iproute2 (ip, tc) and iptables; skipped with a message
//! without them, unless BABBLE_NET_REQUIRE_INTEROP=1 (CI).

#[path = "../common/mod.rs"]
mod common;

mod bed;
mod node;

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use babble_net::{Config, RpcType};
use bed::Bed;
use common::interop::{available_or_skip, example, has_program, is_root};
use node::{now_ms, read_calls, Call, Node};

const NODES: usize = 5;

/// The most a full exchange may take to come back after a fault ends.
const RECOVERY: Duration = Duration::from_secs(5);

/// Every node's transport settings: Go Babble's one-second timeout, and
/// request and reply caps that fit the toy gossip, so that the bound a
/// call promises (`Config::call_bound`) is seconds, not the defaults'
/// minutes.
const TRANSPORT: &str = r#"
max-pool = 2
timeout = "1s"
min-transfer-rate = 1048576
max-request-size = 1048576
max-reply-size = 1048576
idle-timeout = "5s"
"#;

/// A fault, from when it began to when it was undone (Unix ms).
struct Fault {
    name: &'static str,
    began: u64,
    ended: u64,
    /// How long after `ended` every node exchanged with every other.
    recovered_in: Duration,
}

/// The line a node prints on SIGTERM, followed by a count.
const HUNG_CALLS_REPORT: &str = "calls in flight longer than their bound: ";

/// The five-node cluster under test.
struct Cluster {
    bed: Bed,
    binary: PathBuf,
    dir: tempfile::TempDir,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    fn start() -> Cluster {
        let bed = Bed::up(NODES);
        let dir = tempfile::tempdir().expect("temp dir");
        let mut cluster = Cluster {
            binary: example("tcp_cluster"),
            bed,
            dir,
            nodes: Vec::new(),
        };
        for node in 1..=NODES {
            let config = cluster.config_path(node);
            std::fs::write(&config, cluster.node_file(node)).expect("node file");
            let started = cluster.start_node(node);
            cluster.nodes.push(Some(started));
        }
        cluster
    }

    fn node_file(&self, node: usize) -> String {
        let peers: Vec<String> = (1..=NODES)
            .filter(|&peer| peer != node)
            .map(|peer| format!("\"{}\"", self.addr(peer)))
            .collect();
        format!(
            "[node]\nid = {node}\npeers = [{}]\n\n[transport]\nlisten = \"{}\"\n{TRANSPORT}",
            peers.join(", "),
            self.addr(node)
        )
    }

    fn addr(&self, node: usize) -> String {
        format!("{}:1337", self.bed.ip(node))
    }

    fn config_path(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("node{node}.toml"))
    }

    fn logs(&self) -> Vec<PathBuf> {
        (1..=NODES).map(|n| self.log_path(n)).collect()
    }

    fn log_path(&self, node: usize) -> PathBuf {
        self.dir.path().join(format!("calls{node}.jsonl"))
    }

    fn start_node(&self, node: usize) -> Node {
        Node::start(
            &self.bed,
            node,
            &self.binary,
            &self.config_path(node),
            &self.log_path(node),
        )
    }

    fn node(&self, node: usize) -> &Node {
        self.nodes[node - 1].as_ref().expect("node running")
    }

    /// The node index of an address of the bed.
    fn index_of(&self, addr: &str) -> Option<usize> {
        (1..=NODES).find(|&n| self.addr(n) == addr)
    }

    /// Waits until every node has called every other successfully with a
    /// call made at or after `since`; returns how long after `since`.
    fn wait_for_full_exchange(&self, since: u64, deadline: Duration) -> Option<Duration> {
        let until = Instant::now() + deadline;
        loop {
            let calls = read_calls(&self.logs());
            let mut pairs = HashSet::new();
            let mut last = since;
            for call in calls.iter().filter(|c| c.ok && c.at_ms >= since) {
                if let (Some(a), Some(b)) = (self.index_of(&call.from), self.index_of(&call.peer)) {
                    if pairs.insert((a, b)) {
                        last = last.max(call.end_ms());
                    }
                }
            }
            if pairs.len() == NODES * (NODES - 1) {
                return Some(Duration::from_millis(last - since));
            }
            if Instant::now() > until {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to `deadline` until `node`'s open descriptors are at most
    /// `limit`; returns the last count seen.
    fn wait_for_fds(&self, node: usize, limit: usize, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        loop {
            let fds = self.node(node).open_fds();
            if fds <= limit || Instant::now() > until {
                return fds;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Runs `fault` for `lasting`, then `undo`; returns the fault with its
/// recovery time.
fn inject(
    cluster: &mut Cluster,
    name: &'static str,
    lasting: Duration,
    fault: impl FnOnce(&mut Cluster),
    undo: impl FnOnce(&mut Cluster),
) -> Fault {
    let began = now_ms();
    fault(cluster);
    // The fault's length is the scenario, not a wait for something.
    std::thread::sleep(lasting);
    undo(cluster);
    let ended = now_ms();
    let recovered_in = cluster
        .wait_for_full_exchange(ended, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("no full exchange within 30 s after {name}"));
    eprintln!("{name}: full exchange again {recovered_in:?} after it ended");
    Fault {
        name,
        began,
        ended,
        recovered_in,
    }
}

/// One call per line.
fn lines(calls: &[&Call]) -> String {
    calls.iter().map(|c| format!("  {c}\n")).collect()
}

/// Whether `call` was in flight at some point during `fault`.
fn during(call: &Call, fault: &Fault) -> bool {
    call.at_ms <= fault.ended && call.end_ms() >= fault.began
}

#[test]
fn five_nodes_ride_out_a_kill_a_partition_and_a_slow_link() {
    let ready = available_or_skip(is_root(), "root (for network namespaces)")
        && ["ip", "iptables", "tc"]
            .iter()
            .all(|tool| available_or_skip(has_program(tool), tool));
    if !ready {
        return;
    }
    let config = Config::from_toml_str(TRANSPORT).expect("valid transport settings");
    let mut cluster = Cluster::start();
    let observed_from = now_ms();
    let warm = cluster
        .wait_for_full_exchange(observed_from, Duration::from_secs(30))
        .expect("the cluster exchanges fully once started");
    eprintln!("started: full exchange {warm:?} after every node listened");
    let survivors = [1, 2, 4, 5];
    let baseline: Vec<(usize, u64)> = (1..=NODES)
        .map(|n| (cluster.node(n).open_fds(), cluster.node(n).rss_kib()))
        .collect();

    let faults = [
        inject(
            &mut cluster,
            "node 3 killed (SIGKILL) for 2 s and restarted",
            Duration::from_secs(2),
            |c| c.nodes[2].take().expect("node 3").kill(),
            |c| c.nodes[2] = Some(c.start_node(3)),
        ),
        inject(
            &mut cluster,
            "partition {1,2} | {3,4,5} for 3 s",
            Duration::from_secs(3),
            |c| c.bed.partition(&[1, 2], &[3, 4, 5]),
            |c| c.bed.heal(),
        ),
        inject(
            &mut cluster,
            "node 5's link at 1 Mbit/s (tc tbf) for 3 s",
            Duration::from_secs(3),
            |c| c.bed.throttle(5, "1mbit"),
            |c| c.bed.unthrottle(5),
        ),
    ];

    // Resources back to normal: a connection left half-open by the
    // partition is closed by the idle timeout at the latest.
    let settle = config.idle_timeout + Duration::from_secs(5);
    let mut resources = Vec::new();
    for node in 1..=NODES {
        let (fds, rss) = baseline[node - 1];
        // A pool may hold a connection or two more per peer than it did
        // at the baseline (max-pool per peer).
        let limit = fds + config.max_pool * (NODES - 1);
        let now_fds = cluster.wait_for_fds(node, limit, settle);
        let now_rss = cluster.node(node).rss_kib();
        resources.push((node, fds, now_fds, limit, rss, now_rss));
    }
    let finished = now_ms();
    let mut leftovers = Vec::new();
    for node in 1..=NODES {
        let printed = cluster.nodes[node - 1].take().expect("running").stop();
        // The node's last report must be there: its absence (a crash, a
        // broken SIGTERM path, other wording) is a failure, not a pass.
        let reports: Vec<&String> = printed
            .iter()
            .filter(|line| line.starts_with(HUNG_CALLS_REPORT))
            .collect();
        assert_eq!(
            reports.len(),
            1,
            "node {node} printed no single hung-call report on SIGTERM: {printed:?}"
        );
        let hung: usize = reports[0][HUNG_CALLS_REPORT.len()..]
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("node {node}: unreadable report {:?}: {e}", reports[0]));
        if hung > 0 {
            leftovers.push(format!("node {node}: {}", reports[0]));
        }
    }

    let calls: Vec<Call> = read_calls(&cluster.logs())
        .into_iter()
        .filter(|c| c.at_ms >= observed_from && c.at_ms <= finished)
        .collect();
    eprintln!("{} calls observed", calls.len());
    for fault in &faults {
        let inside: Vec<&Call> = calls.iter().filter(|c| during(c, fault)).collect();
        let failed = inside.iter().filter(|c| !c.ok).count();
        let longest = inside.iter().map(|c| c.ms).fold(0.0, f64::max);
        eprintln!(
            "{} (Unix ms {}..{}): {} calls in flight during it, {failed} failed, longest {longest:.0} ms; recovered in {} ms",
            fault.name,
            fault.began,
            fault.ended,
            inside.len(),
            fault.recovered_in.as_millis()
        );
    }
    for (node, fds, now_fds, limit, rss, now_rss) in &resources {
        eprintln!(
            "node {node}: fds {fds} -> {now_fds} (limit {limit}), rss {} -> {} MiB",
            rss / 1024,
            now_rss / 1024
        );
    }

    // 1. No call outlived its bound, and none was left hanging.
    let too_long: Vec<&Call> = calls
        .iter()
        .filter(|c| {
            let rpc = if c.rpc == "sync" {
                RpcType::Sync
            } else {
                RpcType::EagerSync
            };
            c.ms > config.call_bound(rpc).as_millis() as f64
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "calls outlived their bound:\n{}",
        lines(&too_long)
    );
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // 2. No error outside the fault windows.
    let stray: Vec<&Call> = calls
        .iter()
        .filter(|c| !c.ok && !faults.iter().any(|f| during(c, f)))
        .collect();
    assert!(
        stray.is_empty(),
        "calls failed outside any fault:\n{}",
        lines(&stray)
    );
    // 3. Full exchange again within a few seconds of each fault.
    for fault in &faults {
        assert!(
            fault.recovered_in <= RECOVERY,
            "{}: full exchange only {:?} after it ended",
            fault.name,
            fault.recovered_in
        );
    }
    // 4. Descriptors and memory back to normal on the nodes that ran
    // throughout (node 3 is a new process).
    for &(node, _, now_fds, limit, rss, now_rss) in &resources {
        if !survivors.contains(&node) {
            continue;
        }
        assert!(now_fds <= limit, "node {node} holds {now_fds} descriptors");
        assert!(
            now_rss <= rss + 16 * 1024,
            "node {node} grew from {rss} to {now_rss} KiB"
        );
    }
}
