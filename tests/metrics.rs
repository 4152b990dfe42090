//! The Prometheus endpoint after known traffic: calls that succeed, and
//! calls that fail in known ways (a handler error, a refused dial, a
//! silent peer), on TCP and in memory; every count scraped over HTTP must
//! be exact. One test in this binary installs a recorder (it is global to
//! the process); the other runs the binaries with `--metrics-addr`, as
//! docs/METRICS.md shows them.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use babble_net::*;
use common::net::{free_addr, silent_server};
use common::suite;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One sample: its name and labels, and its value.
type Samples = BTreeMap<(String, BTreeMap<String, String>), f64>;

/// Parses the text exposition format (the lines this test needs: no
/// escaped quotes in label values).
fn parse(text: &str) -> Samples {
    let mut samples = Samples::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample line");
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let labels = rest.trim_end_matches('}');
                let labels = labels
                    .split(',')
                    .filter(|l| !l.is_empty())
                    .map(|pair| {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        (k.to_owned(), v.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels)
            }
            None => (series.to_owned(), BTreeMap::new()),
        };
        samples.insert((name, labels), value.parse().expect("a number"));
    }
    samples
}

/// GET /metrics, HTTP/1.0, the body.
async fn scrape(addr: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .expect("an answer within 5 s")
        .unwrap();
    assert!(response.starts_with("HTTP/1."), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").expect("headers end");
    body.to_owned()
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let labels: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

fn local(config: Config) -> Config {
    Config {
        bind_addr: "127.0.0.1:0".into(),
        ..config
    }
}

#[actix_rt::test]
async fn scraped_counts_match_the_traffic() {
    let metrics_addr = free_addr();
    metrics::serve_prometheus(metrics_addr.parse().unwrap()).unwrap();

    let server = NetworkTransport::tcp(&local(Config::default()), logging::discard()).unwrap();
    server.listen().unwrap();
    suite::serve(&server, suite::echo_from_id);
    let caller = NetworkTransport::tcp(
        &local(Config {
            timeout: Duration::from_millis(300),
            ..Config::default()
        }),
        logging::discard(),
    )
    .unwrap();
    let target = server.advertise_addr();
    // 5 Syncs answered; 2 EagerSyncs the handler refuses (remote errors).
    for id in 0..5 {
        let request = SyncRequest {
            from_id: id,
            ..Default::default()
        };
        caller.sync(&target, request).await.unwrap();
    }
    for _ in 0..2 {
        let err = caller
            .eager_sync(&target, EagerSyncRequest::default())
            .await
            .unwrap_err();
        assert!(err.is_remote(), "{err}");
    }
    // A Sync to a port nobody listens on: a refused dial.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .to_string();
    let err = caller
        .sync(&dead, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
    // A FastForward to a peer that never answers: a timeout.
    let silent = silent_server().await;
    let err = caller
        .fast_forward(&silent, FastForwardRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    // 3 Syncs in memory.
    let a = InmemTransport::new(Some("a".into()));
    let b = InmemTransport::new(Some("b".into()));
    a.connect("b", &b);
    suite::serve(&b, suite::echo_from_id);
    for _ in 0..3 {
        a.sync("b", SyncRequest::default()).await.unwrap();
    }

    // The server counts a request once its reply is written, which may be
    // just after the caller has read it: scrape until it has.
    let started = Instant::now();
    let samples = loop {
        let samples = parse(&scrape(&metrics_addr).await);
        let served = value(
            &samples,
            "babble_net_rpcs_total",
            &[
                ("transport", "tcp"),
                ("direction", "in"),
                ("rpc", "eager_sync"),
                ("result", "error"),
            ],
        );
        if served == 2.0 || started.elapsed() > Duration::from_secs(5) {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let rpcs = |transport, direction, rpc, result| {
        value(
            &samples,
            "babble_net_rpcs_total",
            &[
                ("transport", transport),
                ("direction", direction),
                ("rpc", rpc),
                ("result", result),
            ],
        )
    };
    assert_eq!(rpcs("tcp", "out", "sync", "ok"), 5.0);
    assert_eq!(rpcs("tcp", "out", "sync", "error"), 1.0);
    assert_eq!(rpcs("tcp", "out", "eager_sync", "error"), 2.0);
    assert_eq!(rpcs("tcp", "out", "fast_forward", "error"), 1.0);
    assert_eq!(rpcs("tcp", "in", "sync", "ok"), 5.0);
    assert_eq!(rpcs("tcp", "in", "eager_sync", "error"), 2.0);
    assert_eq!(rpcs("inmem", "out", "sync", "ok"), 3.0);
    assert_eq!(rpcs("inmem", "in", "sync", "ok"), 3.0);
    let errors = |kind| {
        value(
            &samples,
            "babble_net_rpc_errors_total",
            &[("transport", "tcp"), ("kind", kind)],
        )
    };
    assert_eq!(errors("remote"), 2.0);
    assert_eq!(errors("connect"), 1.0);
    assert_eq!(errors("timeout"), 1.0);
    let durations = value(
        &samples,
        "babble_net_rpc_duration_seconds_count",
        &[("transport", "tcp"), ("direction", "out"), ("rpc", "sync")],
    );
    assert_eq!(durations, 6.0);
    let dials = |result| {
        value(
            &samples,
            "babble_net_dials_total",
            &[("transport", "tcp"), ("result", result)],
        )
    };
    // One connection to the server (reused), one to the silent peer.
    assert_eq!(dials("ok"), 2.0);
    assert_eq!(dials("error"), 1.0);
    let connections = |role| {
        value(
            &samples,
            "babble_net_connections",
            &[("transport", "tcp"), ("role", role)],
        )
    };
    assert_eq!(connections("pooled"), 1.0);
    assert_eq!(connections("inbound"), 1.0);
    let bytes = |direction| {
        value(
            &samples,
            "babble_net_bytes_total",
            &[("transport", "tcp"), ("direction", direction)],
        )
    };
    assert!(bytes("out") > 0.0 && bytes("in") > 0.0);
    // Counters shown at zero from the transport's start: a kind no call
    // failed with, a reason nobody was shed for.
    let shown = |name: &str, labels: &[(&str, &str)]| {
        let labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        samples.get(&(name.to_owned(), labels)).copied()
    };
    let handshake = [("transport", "tcp"), ("kind", "handshake")];
    assert_eq!(shown("babble_net_rpc_errors_total", &handshake), Some(0.0));
    let cap = [("transport", "tcp"), ("reason", "cap")];
    assert_eq!(shown("babble_net_inbound_shed_total", &cap), Some(0.0));
    let held = [("transport", "tcp"), ("budget", "outbound")];
    assert_eq!(shown("babble_net_buffer_budget_bytes", &held), Some(0.0));
    // The budgets' sizes, beside what they hold: one Listener (the
    // caller's transport never listened).
    let budget = |name, gauge| value(&samples, gauge, &[("transport", "tcp"), ("budget", name)]);
    let defaults = Config::default();
    assert_eq!(
        budget("inbound", "babble_net_buffer_budget_limit_bytes"),
        defaults.inbound_buffer_budget as f64
    );
    assert_eq!(
        budget("outbound", "babble_net_buffer_budget_limit_bytes"),
        defaults.outbound_buffer_budget as f64
    );
    let queue = |samples: &Samples, gauge| value(samples, gauge, &[("transport", "tcp")]);
    let tcp = [("transport", "tcp")];
    assert_eq!(shown("babble_net_fair_queue_requests", &tcp), Some(0.0));

    // Requests nobody takes wait in the fair queue: the gauges count them
    // and their one source, and take them back when the transport closes.
    let idle = NetworkTransport::tcp(&local(Config::default()), logging::discard()).unwrap();
    idle.listen().unwrap();
    let idle_addr = idle.advertise_addr();
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let (caller, target) = (caller.clone(), idle_addr.clone());
            actix_rt::spawn(async move { caller.sync(&target, SyncRequest::default()).await })
        })
        .collect();
    let started = Instant::now();
    loop {
        let samples = parse(&scrape(&metrics_addr).await);
        let requests = queue(&samples, "babble_net_fair_queue_requests");
        if requests == 3.0 {
            assert_eq!(queue(&samples, "babble_net_fair_queue_sources"), 1.0);
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{requests} requests shown waiting, not 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    idle.close().await.unwrap();
    for call in waiting {
        assert!(call.await.unwrap().is_err(), "nobody answered");
    }
    let samples = parse(&scrape(&metrics_addr).await);
    assert_eq!(queue(&samples, "babble_net_fair_queue_requests"), 0.0);
    assert_eq!(queue(&samples, "babble_net_fair_queue_sources"), 0.0);
}

/// Where cargo put this build's executables (target/<profile>).
fn target_dir() -> std::path::PathBuf {
    let test = std::env::current_exe().unwrap();
    test.parent().unwrap().parent().unwrap().to_path_buf()
}

/// Starts `program` with `args` and waits (5 s at most) for the line
/// saying it listens.
fn start_listening(program: std::path::PathBuf, args: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = std::process::Command::new(&program)
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", program.display()));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("listening") {
                let _ = tx.send(());
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .unwrap_or_else(|_| panic!("{} did not start", program.display()));
    child
}

/// GET /metrics with a blocking socket: the status line and the body.
fn scrape_blocking(addr: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

#[test]
fn the_binaries_serve_metrics_with_metrics_addr() {
    let dir = target_dir();
    // rpcbench serve, after ten calls from rpcbench call.
    let (listen, metrics_addr) = (free_addr(), free_addr());
    let mut serve = start_listening(
        dir.join("examples").join("rpcbench"),
        &[
            "serve",
            "--listen",
            &listen,
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let call = std::process::Command::new(dir.join("examples").join("rpcbench"))
        .args(["call", "--target", &listen, "--calls", "10"])
        .output()
        .unwrap();
    assert!(call.status.success(), "{call:?}");
    let started = Instant::now();
    let served = loop {
        let (status, body) = scrape_blocking(&metrics_addr);
        assert!(status.contains("200"), "{status}");
        let served = value(
            &parse(&body),
            "babble_net_rpcs_total",
            &[
                ("transport", "tcp"),
                ("direction", "in"),
                ("rpc", "sync"),
                ("result", "ok"),
            ],
        );
        if served == 10.0 || started.elapsed() > Duration::from_secs(5) {
            break served;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = serve.kill();
    let _ = serve.wait();
    assert_eq!(served, 10.0);

    // babble-signal answers its scrape.
    let metrics_addr = free_addr();
    let mut signal = start_listening(
        dir.join("babble-signal"),
        &[
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--metrics-addr",
            &metrics_addr,
        ],
    );
    let (status, _) = scrape_blocking(&metrics_addr);
    let _ = signal.kill();
    let _ = signal.wait();
    assert!(status.contains("200"), "{status}");
}
