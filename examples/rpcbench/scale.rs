//! `rpcbench scale`: one server's latency and memory as the number of
//! peers calling it grows, at a fixed total rate, and what an idle
//! connection costs on each side.
//!
//! Each step starts `peers` caller transports in this process, each with
//! its own pool, calling the server in turn so that together they make
//! `rate` pings a second; after a warm-up (every caller has dialled) it
//! records every call's latency for `secs`. The server's memory is read
//! from `/proc/PID/status` when its PID is given.
//!
//! The idle-connection figure, first, opens `idle` pooled connections from
//! one caller (all at once, so that each dials its own) and compares both
//! processes' resident memory before and after.

use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::{logging, Command, Config, NetworkTransport, Transport};
use futures::future::join_all;

/// What `scale` measures, from its arguments.
pub struct Plan {
    pub target: String,
    pub server_pid: Option<u32>,
    pub peers: Vec<usize>,
    pub rate: u64,
    pub secs: f64,
    pub idle: usize,
}

/// A process's resident memory now (`VmRSS`), in KiB; 0 if unknown.
pub fn rss_kib(pid: Option<u32>) -> u64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

fn caller(config: &Config) -> Arc<NetworkTransport> {
    let transport = NetworkTransport::tcp(config, logging::terminal(slog::Level::Error))
        .unwrap_or_else(|e| super::fail(e));
    Arc::new(transport)
}

fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[index - 1]
}

/// One step: `peers` callers sharing `rate` calls a second. Returns its
/// JSON line.
async fn step(plan: &Plan, peers: usize, ping: &Command) -> String {
    let config = Config {
        bind_addr: "127.0.0.1:0".into(),
        max_pool: 1,
        ..Config::default()
    };
    let callers: Vec<_> = (0..peers).map(|_| caller(&config)).collect();
    // Warm-up: every caller has its connection.
    for caller in &callers {
        caller
            .call(&plan.target, ping.clone())
            .await
            .unwrap_or_else(|e| super::fail(e));
    }
    let period = Duration::from_secs_f64(peers as f64 / plan.rate as f64);
    let until = Instant::now() + Duration::from_secs_f64(plan.secs);
    let started = Instant::now();
    let runs = callers.iter().enumerate().map(|(i, caller)| {
        let (caller, target, ping) = (caller.clone(), plan.target.clone(), ping.clone());
        async move {
            // Spread the callers' turns over the period.
            let offset = period.mul_f64(i as f64 / peers as f64);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            while Instant::now() < until {
                ticks.tick().await;
                let t0 = Instant::now();
                match caller.call(&target, ping.clone()).await {
                    Ok(_) => latencies.push(t0.elapsed().as_micros() as u64),
                    Err(_) => errors += 1,
                }
            }
            (latencies, errors)
        }
    });
    let results = join_all(runs).await;
    let secs = started.elapsed().as_secs_f64();
    let server_rss = rss_kib(plan.server_pid);
    let mut latencies: Vec<u64> = results.iter().flat_map(|(l, _)| l.clone()).collect();
    let errors: u64 = results.iter().map(|(_, e)| e).sum();
    latencies.sort_unstable();
    for caller in &callers {
        let _ = caller.close().await;
    }
    format!(
        r#"{{"scale":"rate","peers":{peers},"calls":{},"errors":{errors},"rpcs_per_s":{:.0},"p50_us":{},"p99_us":{},"server_rss_kib":{server_rss}}}"#,
        latencies.len(),
        latencies.len() as f64 / secs,
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
    )
}

/// The idle-connection figure; returns its JSON line.
async fn idle_connections(plan: &Plan, ping: &Command) -> String {
    let n = plan.idle;
    let config = Config {
        bind_addr: "127.0.0.1:0".into(),
        max_pool: n,
        max_dials_per_peer: n,
        ..Config::default()
    };
    let caller = caller(&config);
    // One call first, so that the pool and the caller's own machinery
    // exist before the "before" figure.
    caller
        .call(&plan.target, ping.clone())
        .await
        .unwrap_or_else(|e| super::fail(e));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (client_before, server_before) = (rss_kib(None), rss_kib(plan.server_pid));
    let calls = (0..n).map(|_| caller.call(&plan.target, ping.clone()));
    let results = join_all(calls).await;
    let failed: Vec<_> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    if let Some(first) = failed.first() {
        eprintln!(
            "rpcbench scale: {} idle-connection calls failed, first: {first}",
            failed.len()
        );
    }
    let errors = failed.len();
    let pooled = caller.pool_stats(&plan.target).await.idle;
    // Let the server's connection tasks settle into their idle state.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (client_after, server_after) = (rss_kib(None), rss_kib(plan.server_pid));
    let per = |after: u64, before: u64| {
        (after.saturating_sub(before) as f64 * 1024.0 / pooled.max(1) as f64).round() as u64
    };
    let line = format!(
        r#"{{"scale":"idle","connections":{pooled},"errors":{errors},"pooled_bytes_each":{},"inbound_bytes_each":{}}}"#,
        per(client_after, client_before),
        per(server_after, server_before),
    );
    let _ = caller.close().await;
    line
}

/// Runs the plan, printing one JSON line per step. The idle-connection
/// figure comes first, while both processes are fresh (afterwards, memory
/// freed by the larger steps would be reused and hide what connections
/// cost).
pub async fn run(plan: Plan, ping: Command) {
    if plan.idle > 0 {
        println!("{}", idle_connections(&plan, &ping).await);
    }
    for &peers in &plan.peers {
        println!("{}", step(&plan, peers, &ping).await);
    }
}
