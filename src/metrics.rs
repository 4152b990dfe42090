//! Metrics, in Prometheus form. The transports report through the
//! [`metrics`](https://docs.rs/metrics) facade: nothing is recorded, and
//! next to nothing spent, until the application installs a recorder. Every
//! name starts with `babble_net_`; docs/METRICS.md lists them, their
//! labels, and alert rules.
//!
//! A node with its own recorder (any `metrics` exporter) gets the
//! transport's metrics with the rest. [`serve_prometheus`] (feature
//! `prometheus`, on by default) installs one that serves `/metrics` over
//! HTTP, as the binaries and examples do with `--metrics-addr`.

/// Bounds (seconds) of the `babble_net_rpc_duration_seconds` histogram
/// buckets: from a loopback ping to a call near the default timeout.
pub const DURATION_BUCKETS: &[f64] = &[
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];

/// Installs a Prometheus recorder for this process and serves its text
/// exposition at `http://ADDR/metrics` (any path answers). Fails if a
/// recorder is already installed or `addr` cannot be bound. Call it inside
/// a Tokio (or actix) runtime.
#[cfg(feature = "prometheus")]
pub fn serve_prometheus(addr: std::net::SocketAddr) -> Result<(), String> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(
            Matcher::Full("babble_net_rpc_duration_seconds".into()),
            DURATION_BUCKETS,
        )
        .map_err(|e| e.to_string())?
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// The QUIC listener turned a handshake or connection away, or asked for
/// a Retry: `reason` is one of [`QUIC_REFUSALS`] (docs/METRICS.md).
#[cfg(feature = "quic")]
pub(crate) fn quic_refused(reason: &'static str) {
    debug_assert!(QUIC_REFUSALS.contains(&reason), "{reason}");
    metrics::counter!("babble_net_quic_refused_total", "reason" => reason).increment(1);
}

/// Every `reason` of `babble_net_quic_refused_total`.
#[cfg(feature = "quic")]
const QUIC_REFUSALS: [&str; 9] = [
    "retry",
    "handshakes",
    "handshake_shed",
    "handshake_rate",
    "states",
    "handshake",
    "timeout",
    "certificate",
    "not_a_peer",
];

/// A QUIC listener starts: its refusal and connection-shedding counters
/// are shown at zero, so that rates over them have a value before the
/// first refusal.
#[cfg(feature = "quic")]
pub(crate) fn quic_listener_started() {
    for reason in QUIC_REFUSALS {
        metrics::counter!("babble_net_quic_refused_total", "reason" => reason).increment(0);
    }
    for reason in ["cap", "per_ip"] {
        metrics::counter!("babble_net_inbound_shed_total", "transport" => "quic_connection", "reason" => reason)
            .increment(0);
    }
}

/// A QUIC connection was evicted for a newcomer at a connection cap.
#[cfg(feature = "quic")]
pub(crate) fn quic_shed(reason: babble_net_core::places::Shed) {
    let reason = match reason {
        babble_net_core::places::Shed::Cap => "cap",
        babble_net_core::places::Shed::SourceCap => "per_ip",
    };
    metrics::counter!("babble_net_inbound_shed_total", "transport" => "quic_connection", "reason" => reason)
        .increment(1);
}
