//! The node under attack: a real node process (`rpcbench serve`), whose
//! own memory the matrix reads from `/proc`, and whose metrics it reads
//! from its endpoint.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long a node may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// A running node process.
pub struct NodeProcess {
    child: Child,
    /// The address peers call.
    pub addr: String,
    /// Its public key (`0X04…`), on the keyed transports.
    pub key: Option<String>,
    metrics: String,
}

impl NodeProcess {
    /// Starts `binary serve` with `args` and the node file `config`,
    /// exposing metrics on `metrics`; returns once it listens.
    pub fn start(binary: &Path, config: &Path, metrics: &str, args: &[String]) -> NodeProcess {
        let mut command = Command::new(binary);
        command.arg("serve").arg("--config").arg(config).args(args);
        let mut process = NodeProcess::spawn(command, metrics, "rpcbench serve listening on ");
        // "ADDR[ as KEY]"
        if let Some((addr, key)) = process.addr.split_once(" as ") {
            (process.addr, process.key) = (addr.to_owned(), Some(key.to_owned()));
        }
        process
    }

    /// Starts the signaling router `binary` (`babble-signal`) with the
    /// settings file `config`; returns once it listens, its `addr` the
    /// socket address (no scheme).
    pub fn router(binary: &Path, config: &Path, metrics: &str) -> NodeProcess {
        let mut command = Command::new(binary);
        command
            .arg("--config")
            .arg(config)
            .args(["--log-level", "error"]);
        let mut process = NodeProcess::spawn(command, metrics, "babble-signal listening on ws://");
        process.addr = process.addr.trim_end_matches('/').to_owned();
        process
    }

    /// Spawns `command` exposing metrics on `metrics`, and waits for the
    /// first line it prints, `prefix` followed by where it listens.
    fn spawn(mut command: Command, metrics: &str, prefix: &str) -> NodeProcess {
        let mut child = command
            .args(["--metrics-addr", metrics])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("the node starts");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let line = lines
            .recv_timeout(START_DEADLINE)
            .expect("the node said where it listens");
        let addr = line
            .strip_prefix(prefix)
            .unwrap_or_else(|| panic!("unexpected first line: {line}"))
            .to_owned();
        NodeProcess {
            child,
            addr,
            key: None,
            metrics: metrics.to_owned(),
        }
    }

    fn status(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the node is running");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in the node's status"))
    }

    /// The node's resident memory now, in bytes.
    pub fn rss(&self) -> u64 {
        self.status("VmRSS:") * 1024
    }

    /// The node's peak resident memory since the last
    /// [`reset_peak`](Self::reset_peak), in bytes.
    pub fn peak(&self) -> u64 {
        self.status("VmHWM:") * 1024
    }

    /// Starts a new peak from the memory held now (Linux: writing 5 to
    /// `/proc/PID/clear_refs`).
    pub fn reset_peak(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.child.id()), "5")
            .expect("the peak can be reset");
    }

    /// The value of the metric series `series` (name and labels, exactly
    /// as exposed), or 0 when it is absent.
    pub async fn metric(&self, series: &str) -> f64 {
        let body = scrape(&self.metrics).await.unwrap_or_default();
        body.lines()
            .filter(|line| !line.starts_with('#'))
            .find_map(|line| {
                let (name, value) = line.rsplit_once(' ')?;
                (name == series).then(|| value.parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    /// Whether the process is still running.
    pub fn alive(&self) -> bool {
        // A process that exited is gone, or a zombie until reaped.
        std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .is_ok_and(|status| !status.contains("State:\tZ"))
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of `http://addr/metrics`.
async fn scrape(addr: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut body))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
    Ok(body)
}
