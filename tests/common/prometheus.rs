//! A real Prometheus server for the monitoring tests: started from the
//! shipped configuration (config/monitoring/), asked through its HTTP API.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The shipped monitoring folder.
pub fn monitoring_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/monitoring")
}

/// A Prometheus process, killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Its HTTP address (HOST:PORT).
    pub addr: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Prometheus {
    /// Starts `prometheus` with the configuration file `config`, serving on
    /// `addr`, its data in `data`; waits (60 s at most) until it is ready.
    pub fn start(config: &Path, addr: &str, data: &Path, dir: Option<tempfile::TempDir>) -> Self {
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg(format!("--storage.tsdb.path={}", data.display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus runs");
        let prometheus = Prometheus {
            child,
            addr: addr.to_owned(),
            _dir: dir,
        };
        prometheus.await_ready();
        prometheus
    }

    /// Waits (60 s at most) for `/-/ready` to answer 200.
    pub fn await_ready(&self) {
        until(Duration::from_secs(60), "Prometheus is ready", || {
            get(&self.addr, "/-/ready").is_some_and(|(status, _)| status == 200)
        });
    }

    /// GET `path` of the API; the JSON body of a 200 or 4xx answer, `None`
    /// when Prometheus cannot be reached.
    pub fn api(&self, path: &str) -> Option<Value> {
        let (_, body) = get(&self.addr, path)?;
        serde_json::from_str(&body).ok()
    }

    /// Runs the instant `query`: `Ok` with its result (an array: each
    /// series of a vector), `Err` with what Prometheus said of a query it
    /// could not run. Panics when Prometheus cannot be reached.
    pub fn query(&self, query: &str) -> Result<Vec<Value>, String> {
        let answer = self
            .api(&format!("/api/v1/query?query={}", encode(query)))
            .unwrap_or_else(|| panic!("Prometheus at {} answers", self.addr));
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        match &answer["data"]["result"] {
            Value::Array(series) => Ok(series.clone()),
            // A scalar or string result: one value.
            other => Ok(vec![other.clone()]),
        }
    }

    /// The scrape targets' health (`up`, or `down` and why), by scrape
    /// URL.
    pub fn targets(&self) -> Vec<(String, String)> {
        let Some(answer) = self.api("/api/v1/targets") else {
            return Vec::new();
        };
        answer["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        (
                            t["scrapeUrl"].as_str().unwrap_or_default().to_owned(),
                            format!(
                                "{} {}",
                                t["health"].as_str().unwrap_or_default(),
                                t["lastError"].as_str().unwrap_or_default()
                            )
                            .trim_end()
                            .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The loaded rules (every group's), as Prometheus reports them: name,
    /// query, health, state (alerts) and last error.
    pub fn rules(&self) -> Vec<Value> {
        let answer = self.api("/api/v1/rules").expect("Prometheus answers");
        answer["data"]["groups"]
            .as_array()
            .expect("rule groups")
            .iter()
            .flat_map(|group| group["rules"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

/// Checks `condition` every 200 ms until it holds; panics after `limit`.
pub fn until(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    until_ok(limit, what, || {
        condition().then_some(()).ok_or_else(String::new)
    })
}

/// Checks `condition` every 200 ms until it is `Ok`; panics after `limit`
/// with what it last said.
pub fn until_ok(limit: Duration, what: &str, mut condition: impl FnMut() -> Result<(), String>) {
    let started = Instant::now();
    loop {
        let last = match condition() {
            Ok(()) => return,
            Err(last) => last,
        };
        assert!(
            started.elapsed() < limit,
            "still not true after {limit:?}: {what} {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET `path` from `addr` over HTTP/1.0: the status code and the body, or
/// `None` when nothing answers.
pub fn get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_owned()))
}

/// `text` percent-encoded for a URL's query (every byte but the
/// unreserved ones).
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
