//! Every command README.md shows, run as written: the example clusters
//! (their binaries, which `cargo test` builds), the node-per-process
//! cluster from `config/`, and the signaling server with the README's own
//! certificate. `cargo test --workspace` itself is what runs this.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

/// Held by each test while its commands run: they start whole clusters,
/// and one test's 300-node simulation on both cores would starve another
/// test's node processes into timeouts.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The repository's root, where README.md's commands are run.
fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where cargo put the example and binary executables of this build.
fn target_dir() -> PathBuf {
    let test = std::env::current_exe().unwrap();
    // target/<profile>/deps/<this test>
    test.parent().unwrap().parent().unwrap().to_path_buf()
}

/// The `sh` blocks of README.md, each as its commands (continuation lines
/// joined, comments left out).
fn readme_blocks() -> Vec<Vec<String>> {
    doc_blocks("README.md")
}

/// The `sh` blocks of the document at `path` (from the repository root).
fn doc_blocks(path: &str) -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(root().join(path)).unwrap();
    let mut blocks = Vec::new();
    let mut current: Option<Vec<String>> = None;
    let mut pending = String::new();
    for line in readme.lines() {
        match (&mut current, line.trim()) {
            (None, "```sh") => current = Some(Vec::new()),
            (Some(_), "```") => blocks.push(current.take().unwrap()),
            (Some(commands), text) if !text.starts_with('#') && !text.is_empty() => {
                match text.strip_suffix('\\') {
                    Some(head) => pending.push_str(head),
                    None => {
                        pending.push_str(text);
                        commands.push(std::mem::take(&mut pending));
                    }
                }
            }
            _ => {}
        }
    }
    blocks
}

/// The executable and arguments `cargo run --example X -- ARGS` or
/// `cargo run --bin X -- ARGS` stands for (with or without `--release`:
/// this build's own executables are run).
fn executable(command: &str) -> Option<(PathBuf, Vec<String>)> {
    let words: Vec<&str> = command
        .split_whitespace()
        .filter(|w| *w != "--release")
        .collect();
    let (kind, name) = match words.as_slice() {
        ["cargo", "run", "--example", name, ..] => ("examples", *name),
        ["cargo", "run", "--bin", name, ..] => ("", *name),
        _ => return None,
    };
    let args = match words.iter().position(|w| *w == "--") {
        Some(at) => words[at + 1..].iter().map(|w| w.to_string()).collect(),
        None => Vec::new(),
    };
    Some((target_dir().join(kind).join(name), args))
}

fn spawn(command: &str, dir: &Path) -> Child {
    let (program, args) =
        executable(command).unwrap_or_else(|| panic!("not a cargo run: {command}"));
    Command::new(&program)
        .args(&args)
        .current_dir(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()))
}

/// Waits for a cluster example to end (within `limit`), and checks it
/// succeeded and reported no errors in its final JSON line.
fn finishes_without_errors(command: &str, mut child: Child, limit: Duration) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            panic!("{command}: still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
    assert!(status.success(), "{command}: {status}\n{stdout}");
    let last = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value =
        serde_json::from_str(last).unwrap_or_else(|_| panic!("{command}: last line {last:?}"));
    assert_eq!(summary["errors"], 0, "{command}: {last}");
}

/// How long a cluster command may take: its `--secs` and a minute for
/// starting and stopping a debug build.
fn limit_of(command: &str) -> Duration {
    let words: Vec<&str> = command.split_whitespace().collect();
    let secs = words
        .iter()
        .position(|w| *w == "--secs")
        .and_then(|at| words.get(at + 1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    Duration::from_secs(secs + 60)
}

#[test]
fn the_readme_cluster_commands_run_with_no_errors() {
    let _alone = one_at_a_time();
    // docs/QUIC.md shows the QUIC cluster too.
    let clusters: Vec<Vec<String>> = readme_blocks()
        .into_iter()
        .chain(doc_blocks("docs/QUIC.md"))
        // The monitoring block's cluster runs with its Prometheus, below.
        .filter(|block| !block.iter().any(|c| c.starts_with("prometheus ")))
        .map(|block| {
            block
                .into_iter()
                .filter(|c| c.contains("--example") && c.contains("cluster"))
                .collect::<Vec<_>>()
        })
        .filter(|block| !block.is_empty())
        .collect();
    assert!(clusters.len() >= 3, "README shows the cluster commands");
    for block in clusters {
        // The commands of one block run side by side, as the README says
        // for the node-per-process cluster.
        let children: Vec<_> = block.iter().map(|c| (c, spawn(c, root()))).collect();
        for (command, child) in children {
            finishes_without_errors(command, child, limit_of(command));
        }
    }
}

/// The keys of the simulation's final line, in order.
const SIMULATION_KEYS: [&str; 8] = [
    "nodes",
    "syncs",
    "errors_before_partition",
    "errors_during_partition",
    "errors_after_heal",
    "hung_calls",
    "max_call_ms",
    "recovered_after_ms",
];

#[test]
fn the_documented_simulation_commands_run_and_recover() {
    let _alone = one_at_a_time();
    let shown = |doc: &str| -> Vec<String> {
        doc_blocks(doc)
            .into_iter()
            .flatten()
            .filter(|c| c.contains("--example simulate"))
            .collect()
    };
    let (readme, guide) = (shown("README.md"), shown("docs/TESTING.md"));
    assert!(!readme.is_empty() && !guide.is_empty(), "both show it");
    // A command shown in both is run once.
    let commands: std::collections::BTreeSet<String> = readme.into_iter().chain(guide).collect();
    for command in commands {
        let mut child = spawn(&command, root());
        let limit = limit_of(&command);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < limit, "{command}: still running");
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = std::io::read_to_string(child.stdout.take().unwrap()).unwrap();
        assert!(status.success(), "{command}: {status}\n{stdout}");
        let last = stdout.lines().last().unwrap_or_default();
        let summary: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(last).unwrap_or_else(|_| panic!("{command}: last line {last:?}"));
        // Exactly these keys, in this order.
        assert_eq!(summary.len(), SIMULATION_KEYS.len(), "{command}: {last}");
        let at: Vec<Option<usize>> = SIMULATION_KEYS
            .iter()
            .map(|key| last.find(&format!("\"{key}\":")))
            .collect();
        assert!(
            at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
            "{command}: {last}"
        );
        assert_eq!(summary["hung_calls"], 0, "{command}: {last}");
        assert!(summary["syncs"].as_u64() > Some(0), "{command}: {last}");
        assert!(
            summary["errors_during_partition"].as_u64() > Some(0),
            "the partition cut calls: {last}"
        );
        assert!(
            summary["recovered_after_ms"].is_u64(),
            "{command}: the halves exchanged again after the heal: {last}"
        );
    }
}

#[test]
fn the_readme_monitoring_commands_bring_a_node_into_prometheus() {
    let _alone = one_at_a_time();
    if !common::interop::available_or_skip(
        common::interop::has_program("prometheus"),
        "prometheus (Debian's prometheus package)",
    ) {
        return;
    }
    let block = readme_blocks()
        .into_iter()
        .find(|block| block.iter().any(|c| c.starts_with("prometheus ")))
        .expect("README shows how to start Prometheus");
    let mut children = Vec::new();
    let mut web = None;
    for command in &block {
        if command.contains("--example") {
            children.push(spawn(command, root()));
            continue;
        }
        let words: Vec<&str> = command.split_whitespace().collect();
        web = words
            .iter()
            .find_map(|w| w.strip_prefix("--web.listen-address="))
            .map(str::to_owned);
        let child = Command::new(words[0])
            .args(&words[1..])
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{command}: {e}"));
        children.push(child);
    }
    let _children = common::net::KillOnDrop(children);
    let web = web.expect("the Prometheus command names its address");
    let prometheus = |path: &str| {
        common::prometheus::get(&web, path)
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
    };
    // The node is scraped (its series reach Prometheus) and the shipped
    // rules are loaded.
    let query = format!(
        "/api/v1/query?query={}",
        common::prometheus::encode("babble_net_rpcs_total{job=\"babble-net\"}")
    );
    common::prometheus::until(
        Duration::from_secs(90),
        "Prometheus holds the node's calls",
        || {
            prometheus(&query).is_some_and(|a| {
                a["data"]["result"]
                    .as_array()
                    .is_some_and(|r| !r.is_empty())
            })
        },
    );
    let rules = prometheus("/api/v1/rules").expect("Prometheus answers");
    let loaded = rules["data"]["groups"]
        .as_array()
        .map(|groups| {
            groups
                .iter()
                .map(|g| g["rules"].as_array().map_or(0, Vec::len))
                .sum::<usize>()
        })
        .unwrap_or(0);
    assert!(
        loaded > 0,
        "the rules of config/monitoring/rules.yml are loaded"
    );
}

#[test]
fn the_readme_signaling_server_commands_work() {
    let _alone = one_at_a_time();
    let block = readme_blocks()
        .into_iter()
        .find(|block| block.iter().any(|c| c.contains("babble-signal")))
        .expect("README shows how to start babble-signal");
    let dir = tempfile::tempdir().unwrap();
    for command in &block {
        if command.starts_with("openssl") {
            let status = Command::new("sh")
                .arg("-c")
                .arg(command)
                .current_dir(dir.path())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(status.success(), "{command}");
            continue;
        }
        let mut server = spawn(command, dir.path());
        let mut stdout = BufReader::new(server.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(
            line.starts_with("babble-signal listening on wss://127.0.0.1:2443/"),
            "{command}: {line}"
        );
        // It stops cleanly on SIGTERM, as the README says.
        let pid = server.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let status = server.wait().unwrap();
        assert!(status.success(), "{command}: {status}");
    }
}
