//! A toy node process of the chaos bed (`tcp_cluster --node-config`), and
//! the calls it logs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::bed::Bed;

/// How long a node may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// A running node.
pub struct Node {
    child: Child,
    /// Lines the node printed, as they come.
    stdout: mpsc::Receiver<String>,
}

impl Node {
    /// Starts `binary` for node `node` of `bed` from `config`, logging its
    /// calls to `call_log`; returns once it listens.
    pub fn start(bed: &Bed, node: usize, binary: &Path, config: &Path, call_log: &Path) -> Node {
        let mut child = bed
            .command(node, binary)
            .arg("--node-config")
            .arg(config)
            .args(["--secs", "3600", "--log-level", "error", "--call-log"])
            .arg(call_log)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the node starts");
        let (lines, stdout) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    break;
                }
            }
        });
        let mut node_proc = Node { child, stdout };
        node_proc
            .wait_for_line("listening", START_DEADLINE)
            .unwrap_or_else(|| panic!("node {node} did not start listening"));
        node_proc
    }

    /// The node's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `deadline` for a printed line containing `text`.
    pub fn wait_for_line(&mut self, text: &str, deadline: Duration) -> Option<String> {
        let until = Instant::now() + deadline;
        loop {
            let left = until.checked_duration_since(Instant::now())?;
            match self.stdout.recv_timeout(left) {
                Ok(line) if line.contains(text) => return Some(line),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// Kills the node at once (SIGKILL): no cleanup, no goodbye.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the node (SIGTERM) and returns what it printed then. A node
    /// that does not exit by itself within 20 s, or exits with an error,
    /// fails the test: its last report would be missing or wrong.
    pub fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        let mut printed = Vec::new();
        let until = Instant::now() + Duration::from_secs(20);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match self.stdout.recv_timeout(left) {
                Ok(line) => printed.push(line),
                Err(_) => break,
            }
        }
        // Its stdout closed: it has exited or is about to.
        let exited = wait_for_exit(&mut self.child, Duration::from_secs(5));
        let _ = self.child.kill();
        let _ = self.child.wait();
        match exited {
            Some(status) if status.success() => printed,
            Some(status) => panic!("node {pid} exited with {status} on SIGTERM"),
            None => panic!("node {pid} did not exit on SIGTERM"),
        }
    }

    /// Open file descriptors of the process; fails the test if the process
    /// is gone (a dead node has no leak to measure, and is a failure).
    pub fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or_else(|e| panic!("node {} is gone: {e}", self.pid()))
    }

    /// Resident memory of the process, in KiB; fails the test if the
    /// process is gone.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .unwrap_or_else(|e| panic!("node {} is gone: {e}", self.pid()));
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|line| line.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or_else(|| panic!("node {} has no VmRSS (a zombie?)", self.pid()))
    }
}

/// The exit status of `child` once it exits, or `None` after `deadline`.
fn wait_for_exit(child: &mut Child, deadline: Duration) -> Option<std::process::ExitStatus> {
    let until = Instant::now() + deadline;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= until {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One line of a node's call log.
#[derive(Clone, Deserialize)]
pub struct Call {
    /// When the call was made, Unix milliseconds.
    pub at_ms: u64,
    pub from: String,
    pub peer: String,
    pub rpc: String,
    /// How long it took.
    pub ms: f64,
    pub ok: bool,
    pub error: Option<String>,
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} -> {} at {} took {:.0} ms: {}",
            self.rpc,
            self.from,
            self.peer,
            self.at_ms,
            self.ms,
            self.error.as_deref().unwrap_or("ok")
        )
    }
}

impl Call {
    /// When it ended, Unix milliseconds.
    pub fn end_ms(&self) -> u64 {
        self.at_ms + self.ms.ceil() as u64
    }
}

/// Every call logged so far in `logs`.
pub fn read_calls(logs: &[PathBuf]) -> Vec<Call> {
    let mut calls = Vec::new();
    for path in logs {
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        // The last line may be half written.
        calls.extend(
            text.lines()
                .filter_map(|l| serde_json::from_str::<Call>(l).ok()),
        );
    }
    calls
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}
