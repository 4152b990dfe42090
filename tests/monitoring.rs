//! The monitoring files an operator copies (config/monitoring/): the alert
//! rules checked and unit-tested by `promtool`, then a real Prometheus,
//! started from the shipped scrape configuration, scraping a real cluster
//! (TCP, QUIC and WebRTC nodes, a `babble-signal`, an `rpcbench serve`
//! under a connection flood). Every dashboard panel's query must return
//! series, every rule must load and evaluate, and the shedding alert must
//! fire. Needs Debian's `prometheus` package (`promtool` comes with it);
//! skipped without it, except in CI (`BABBLE_NET_REQUIRE_INTEROP=1`).

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::interop::{available_or_skip, example, has_program, rpcbench};
use common::net::{free_addr, KillOnDrop};
use common::prometheus::{monitoring_dir, until, until_ok, Prometheus};
use serde_json::Value;

/// The size docs/METRICS.md promises a node's scrape stays under.
const SCRAPE_BOUND: usize = 64 * 1024;

/// Whether Prometheus and promtool are installed (or the test may skip).
fn prometheus_installed() -> bool {
    available_or_skip(
        has_program("prometheus") && has_program("promtool"),
        "prometheus and promtool (Debian's prometheus package)",
    )
}

#[test]
fn promtool_checks_the_rules_and_their_tests_pass() {
    if !prometheus_installed() {
        return;
    }
    let dir = monitoring_dir();
    for args in [
        vec!["check", "rules", "rules.yml"],
        vec!["check", "config", "prometheus.yml"],
        vec!["test", "rules", "rules_test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_rule_test_fails_when_its_rule_cannot_fire() {
    // The rule tests are not vacuous: with every rule's threshold made
    // unreachable, each expected alert is missing.
    if !prometheus_installed() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(monitoring_dir().join("rules.yml")).unwrap();
    // Every expression (one line, or a block of more indented lines) is
    // replaced by one that is never true.
    let mut never = Vec::new();
    let mut block_indent = None;
    for line in rules.lines() {
        let indent = line.len() - line.trim_start().len();
        if let Some(expr_indent) = block_indent {
            if line.trim().is_empty() || indent > expr_indent {
                continue;
            }
            block_indent = None;
        }
        match line.trim_start().strip_prefix("expr:") {
            Some(expr) => {
                never.push(format!("{}expr: vector(1) > 2", &line[..indent]));
                if expr.trim() == "|" {
                    block_indent = Some(indent);
                }
            }
            None => never.push(line.to_owned()),
        }
    }
    let never = never.join("\n");
    assert_eq!(never.matches("vector(1) > 2").count(), alert_names().len());
    std::fs::write(dir.path().join("rules.yml"), never).unwrap();
    std::fs::copy(
        monitoring_dir().join("rules_test.yml"),
        dir.path().join("rules_test.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "rules_test.yml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{report}");
    for alert in alert_names() {
        assert!(
            report.contains(&format!("alertname: {alert},")),
            "{alert}'s test passes with a rule that cannot fire:\n{report}"
        );
    }
}

/// The alert names of the shipped rules.
fn alert_names() -> Vec<String> {
    std::fs::read_to_string(monitoring_dir().join("rules.yml"))
        .unwrap()
        .lines()
        .filter_map(|line| line.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

/// The processes a test starts, killed when it ends.
#[derive(Default)]
struct Processes(KillOnDrop);

impl Processes {
    /// Starts `program` with `args`; returns the first line of its output
    /// that contains `wait_for` (30 s at most).
    fn start(&mut self, program: PathBuf, args: &[&str], wait_for: &str) -> String {
        let mut child = Command::new(&program)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
        let stdout = child.stdout.take().unwrap();
        (self.0).0.push(child);
        let (tx, rx) = mpsc::channel();
        let wanted = wait_for.to_owned();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains(&wanted) {
                    let _ = tx.send(line);
                    sent = true;
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30))
            .unwrap_or_else(|_| panic!("{} printed no {wait_for:?}", program.display()))
    }
}

/// The shipped scrape configuration, pointed at this test's ports, scraped
/// and evaluated every second, and its rules with every `for` at zero (the
/// expressions are the shipped ones; rules_test.yml tests the durations).
fn test_configuration(nodes: &[String], signal: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let shipped = std::fs::read_to_string(monitoring_dir().join("prometheus.yml")).unwrap();
    for expected in [
        "targets: ['127.0.0.1:9101']",
        "targets: ['127.0.0.1:9100']",
        "scrape_interval: 15s",
        "evaluation_interval: 15s",
        "- rules.yml",
    ] {
        assert!(shipped.contains(expected), "prometheus.yml has {expected}");
    }
    let quoted: Vec<String> = nodes.iter().map(|n| format!("'{n}'")).collect();
    let config = shipped
        .replace(
            "targets: ['127.0.0.1:9101']",
            &format!("targets: [{}]", quoted.join(", ")),
        )
        .replace(
            "targets: ['127.0.0.1:9100']",
            &format!("targets: ['{signal}']"),
        )
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
        .replace("evaluation_interval: 15s", "evaluation_interval: 1s");
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let rules: Vec<String> = std::fs::read_to_string(monitoring_dir().join("rules.yml"))
        .unwrap()
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for:") {
            Some(_) => line.replace(line.trim_start(), "for: 0s"),
            None => line.to_owned(),
        })
        .collect();
    std::fs::write(dir.path().join("rules.yml"), rules.join("\n")).unwrap();
    dir
}

/// Each panel of the shipped dashboard: its title and its queries, with
/// the dashboard's variables filled in (every node, every signaling
/// server, a rate window of 30 s).
fn panel_queries() -> Vec<(String, Vec<String>)> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).expect("dashboard.json is JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .filter(|panel| panel["type"] != "row")
        .map(|panel| {
            let queries = panel["targets"]
                .as_array()
                .expect("a panel has queries")
                .iter()
                .map(|target| {
                    target["expr"]
                        .as_str()
                        .expect("a query")
                        .replace("$instance", ".+")
                        .replace("$signal", ".+")
                        .replace("$__rate_interval", "30s")
                })
                .collect();
            (panel["title"].as_str().unwrap().to_owned(), queries)
        })
        .collect()
}

/// The metrics the dashboard's variables list their values from.
fn variable_metrics() -> Vec<String> {
    let text = std::fs::read_to_string(monitoring_dir().join("dashboard.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|variable| variable["definition"].as_str())
        .map(|definition| {
            let inner = definition
                .strip_prefix("label_values(")
                .and_then(|rest| rest.split_once(','))
                .expect("label_values(METRIC, LABEL)");
            inner.0.trim().to_owned()
        })
        .collect()
}

#[test]
fn a_real_prometheus_scraping_a_cluster_answers_every_panel_and_fires_the_flood_alert() {
    if !prometheus_installed() {
        return;
    }
    let mut processes = Processes::default();
    let signal_metrics = free_addr();
    let line = processes.start(
        PathBuf::from(env!("CARGO_BIN_EXE_babble-signal")),
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-addr",
            &signal_metrics,
        ],
        "listening on",
    );
    let signal_addr = line
        .split_whitespace()
        .last()
        .expect("an address")
        .trim_end_matches('/')
        .to_owned();
    let (tcp, quic, rtc, serve) = (free_addr(), free_addr(), free_addr(), free_addr());
    for (name, args) in [
        ("tcp_cluster", vec!["--nodes", "4", "--secs", "600"]),
        ("quic_cluster", vec!["--nodes", "3", "--secs", "600"]),
        (
            "webrtc_cluster",
            vec![
                "--nodes",
                "2",
                "--secs",
                "600",
                "--signal-addr",
                &signal_addr,
            ],
        ),
    ] {
        let metrics = match name {
            "tcp_cluster" => &tcp,
            "quic_cluster" => &quic,
            _ => &rtc,
        };
        let mut args = args.clone();
        args.extend(["--metrics-addr", metrics.as_str()]);
        // Running: its first second of progress.
        processes.start(example(name), &args, "t=1s");
    }
    let node = free_addr();
    processes.start(
        rpcbench(),
        &["serve", "--listen", &node, "--metrics-addr", &serve],
        "listening on",
    );
    let nodes = vec![tcp, quic, rtc, serve];
    let dir = test_configuration(&nodes, &signal_metrics);
    let prometheus = Prometheus::start(
        &dir.path().join("prometheus.yml"),
        &free_addr(),
        &dir.path().join("data"),
        None,
    );

    // Every target scraped: a node and the signaling server answer.
    until_ok(Duration::from_secs(60), "every target is up", || {
        let targets = prometheus.targets();
        match targets.len() == nodes.len() + 1 && targets.iter().all(|(_, health)| health == "up") {
            true => Ok(()),
            false => Err(format!("{targets:?}")),
        }
    });

    // No series names a peer, and a node's scrape stays small (its size
    // does not grow with the cluster: docs/METRICS.md).
    for target in &nodes {
        let (status, body) = common::prometheus::get(target, "/metrics").expect("a scrape");
        assert_eq!(status, 200);
        assert!(
            body.len() < SCRAPE_BOUND,
            "{target}: {} bytes scraped",
            body.len()
        );
        let samples = body.lines().filter(|l| !l.starts_with('#'));
        for sample in samples {
            assert!(
                !sample.contains("127.0.0."),
                "a series names a peer: {sample}"
            );
        }
    }

    // A connection flood from one address, over max-inbound-per-ip (256):
    // the node sheds, and the real Prometheus fires the shedding alert.
    let flood = Command::new(rpcbench())
        .args([
            "flood",
            "--target",
            &node,
            "--sources",
            "127.0.0.2",
            "--connections",
            "320",
            "--secs",
            "120",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (processes.0).0.push(flood);
    until(
        Duration::from_secs(90),
        "BabbleNetInboundShed fires in Prometheus",
        || {
            prometheus
                .rules()
                .iter()
                .any(|rule| rule["name"] == "BabbleNetInboundShed" && rule["state"] == "firing")
        },
    );

    // The series carry the cluster's real traffic, not only the counters
    // shown at zero from the start: calls served on every transport, a
    // WebRTC offer routed and its sessions, connections shed.
    for (what, query) in [
        (
            "TCP calls",
            r#"sum(babble_net_rpcs_total{transport="tcp",result="ok"}) > 0"#,
        ),
        (
            "QUIC calls",
            r#"sum(babble_net_rpcs_total{transport="quic",result="ok"}) > 0"#,
        ),
        (
            "WebRTC calls",
            r#"sum(babble_net_rpcs_total{transport="webrtc",result="ok"}) > 0"#,
        ),
        (
            "offers routed",
            r#"sum(babble_net_signal_calls_total{result="routed"}) > 0"#,
        ),
        ("signaling sessions", "sum(babble_net_signal_sessions) > 0"),
        ("connected nodes", "sum(babble_net_signal_connected) > 0"),
        ("connections shed", "sum(babble_net_inbound_shed_total) > 0"),
        ("bytes", "sum(babble_net_bytes_total) > 0"),
    ] {
        until(Duration::from_secs(60), what, || {
            prometheus
                .query(query)
                .is_ok_and(|series| !series.is_empty())
        });
    }

    // Every panel's queries are valid and return series.
    let mut report = vec!["| panel | series |".to_owned(), "|---|---|".to_owned()];
    for (title, queries) in panel_queries() {
        let mut counts = Vec::new();
        for query in &queries {
            let mut count = 0;
            until(
                Duration::from_secs(60),
                &format!("panel {title:?}: {query} returns series"),
                || {
                    let result = prometheus.query(query);
                    let series = result.unwrap_or_else(|e| panic!("{title}: {query}: {e}"));
                    count = series.len();
                    count > 0
                },
            );
            counts.push(count.to_string());
        }
        report.push(format!("| {title} | {} |", counts.join(" + ")));
    }
    for metric in variable_metrics() {
        let series = prometheus.query(&metric).unwrap();
        assert!(
            !series.is_empty(),
            "the dashboard variable's {metric} exists"
        );
    }

    // Every rule loaded, evaluated without error, and its expression runs.
    report.extend([
        "".into(),
        "| rule | state | series |".into(),
        "|---|---|---|".into(),
    ]);
    let rules = prometheus.rules();
    assert_eq!(rules.len(), alert_names().len(), "every rule is loaded");
    for rule in rules {
        let name = rule["name"].as_str().unwrap_or_default();
        until(
            Duration::from_secs(30),
            &format!("rule {name} was evaluated"),
            || {
                prometheus
                    .rules()
                    .iter()
                    .any(|r| r["name"] == name && r["health"] == "ok")
            },
        );
        let query = rule["query"].as_str().expect("a rule's query");
        let series = prometheus
            .query(query)
            .unwrap_or_else(|e| panic!("{name}: {query}: {e}"));
        report.push(format!("| {name} | {} | {} |", rule["state"], series.len()));
    }
    let report = report.join("\n");
    eprintln!("{report}");
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("monitoring-report.md");
    std::fs::write(&out, format!("{report}\n")).unwrap();
}
