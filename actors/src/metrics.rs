//! What the transports report to the `metrics` facade: every name and
//! label here or, for the series recorded on every call, in
//! [`crate::call_metrics`] (docs/METRICS.md describes them for operators).
//!
//! The facade costs an atomic load per call when the application installs
//! no recorder; with one, each update here is a lookup in the recorder
//! (each in `call_metrics` the first time only). Labels
//! have a bounded number of values: the transport, the RPC type, a
//! direction, a result, an error kind. Peers are never a label.

use metrics::{counter, gauge};

use crate::error::TransportError;
use crate::wire::RpcType;

/// `rpc` label of an RPC type.
pub fn rpc_label(rpc: RpcType) -> &'static str {
    match rpc {
        RpcType::Sync => "sync",
        RpcType::EagerSync => "eager_sync",
        RpcType::FastForward => "fast_forward",
        RpcType::Join => "join",
    }
}

/// `kind` label of an error.
pub fn error_kind(error: &TransportError) -> &'static str {
    match error {
        _ if error.is_unanswered() => "unanswered",
        _ if error.is_refused() => "refused",
        TransportError::Shutdown => "shutdown",
        TransportError::Timeout { .. } => "timeout",
        TransportError::UnknownPeer(_) => "unknown_peer",
        TransportError::Remote(_) => "remote",
        TransportError::Connect { .. } => "connect",
        TransportError::Io { .. } => "io",
        TransportError::Encode { .. } => "encode",
        TransportError::Decode { .. } => "decode",
        TransportError::FrameTooLarge { .. } => "frame_too_large",
        TransportError::Config(_) => "config",
        TransportError::Handshake { .. } => "handshake",
        _ => "other",
    }
}

/// A call this node made failed.
pub fn call_failed(transport: &'static str, error: &TransportError) {
    counter!("babble_net_rpc_errors_total", "transport" => transport, "kind" => error_kind(error))
        .increment(1);
}

/// A pool was emptied because its peer seemed gone.
pub fn pool_restarted(transport: &'static str) {
    counter!("babble_net_pool_restarts_total", "transport" => transport).increment(1);
}

/// An inbound connection was shed or refused by a limit: `reason` is
/// `cap`, `per_ip`, `refused`, or `unread_reply` (closed while its reply
/// stalled, to make room in the outbound budget for another's).
pub fn inbound_shed(transport: &'static str, reason: &'static str) {
    counter!("babble_net_inbound_shed_total", "transport" => transport, "reason" => reason)
        .increment(1);
}

/// Bytes charged to a Listener's buffer `budget` (`inbound` or
/// `outbound`) changed by `delta`.
pub fn budget_held(transport: &'static str, budget: &'static str, delta: f64) {
    gauge!("babble_net_buffer_budget_bytes", "transport" => transport, "budget" => budget)
        .increment(delta);
}

/// Every error kind a failed call is counted under (`kind` label).
pub const ERROR_KINDS: [&str; 14] = [
    "unanswered",
    "refused",
    "shutdown",
    "timeout",
    "unknown_peer",
    "remote",
    "connect",
    "io",
    "encode",
    "decode",
    "frame_too_large",
    "config",
    "handshake",
    "other",
];

/// A transport of kind `transport` starts: its counters are shown at zero
/// from now on, so a rate over them has a value (0) before the first event
/// and the first event counts as an increase (a series that appears at 1
/// hides its first increment from `rate` and `increase`).
pub fn transport_started(transport: &'static str) {
    for kind in ERROR_KINDS {
        counter!("babble_net_rpc_errors_total", "transport" => transport, "kind" => kind)
            .increment(0);
    }
    for result in ["ok", "error"] {
        counter!("babble_net_dials_total", "transport" => transport, "result" => result)
            .increment(0);
    }
    counter!("babble_net_pool_restarts_total", "transport" => transport).increment(0);
}

/// A Listener of `transport` starts: its shedding counters are shown at
/// zero (see [`transport_started`]).
pub fn listener_started(transport: &'static str) {
    for reason in ["cap", "per_ip", "refused", "unread_reply"] {
        counter!("babble_net_inbound_shed_total", "transport" => transport, "reason" => reason)
            .increment(0);
    }
    gauge!("babble_net_connections", "transport" => transport, "role" => "inbound").increment(0.0);
}

/// The size of a buffer `budget` of `transport`: shown while the budget
/// exists (added when made, taken back when dropped), so that what is
/// held can be read as a share of it. Several nodes in one process add up,
/// as their holdings do.
pub fn budget_limit(transport: &'static str, budget: &'static str, delta: f64) {
    gauge!("babble_net_buffer_budget_limit_bytes", "transport" => transport, "budget" => budget)
        .increment(delta);
    // What is held is shown from the start (at zero), beside the limit.
    budget_held(transport, budget, 0.0);
}

/// The gauges of a transport's fair queue (docs/METRICS.md): the requests
/// waiting for the node, and the sources they come from. Handles taken
/// once, when the queue is made, so the per-request cost is an atomic
/// add: a recorder installed after a transport was made does not see its
/// queue.
#[derive(Clone)]
pub struct QueueGauges {
    /// `babble_net_fair_queue_requests`.
    pub requests: metrics::Gauge,
    /// `babble_net_fair_queue_sources`.
    pub sources: metrics::Gauge,
}

impl QueueGauges {
    /// The gauges of `transport`'s queue.
    pub fn of(transport: &'static str) -> QueueGauges {
        QueueGauges {
            requests: gauge!("babble_net_fair_queue_requests", "transport" => transport),
            sources: gauge!("babble_net_fair_queue_sources", "transport" => transport),
        }
    }

    /// Gauges no recorder sees (tests, queues without a transport).
    pub fn none() -> QueueGauges {
        QueueGauges {
            requests: metrics::Gauge::noop(),
            sources: metrics::Gauge::noop(),
        }
    }
}

/// The signaling client is connected (1) or not (0).
pub fn signal_connected(connected: bool) {
    gauge!("babble_net_signal_connected").set(if connected { 1.0 } else { 0.0 });
}

/// A signaling client starts, not connected yet; its reconnections are
/// shown at zero.
pub fn signal_client_started() {
    gauge!("babble_net_signal_connected").set(0.0);
    counter!("babble_net_signal_reconnects_total").increment(0);
}

/// The signaling client connects again after losing the router.
pub fn signal_reconnected() {
    counter!("babble_net_signal_reconnects_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{RemoteError, DROPPED_WITHOUT_ANSWER, NOT_CONSUMING};
    use babble_net_core::secure::HandshakeError;
    use std::time::Duration;

    #[test]
    fn every_error_kind_is_shown_at_zero() {
        let peer = || "p".to_owned();
        let io = || std::io::Error::other("x");
        let errors = [
            TransportError::Remote(RemoteError::from_wire(DROPPED_WITHOUT_ANSWER.into())),
            TransportError::Remote(RemoteError::from_wire(NOT_CONSUMING.into())),
            TransportError::Shutdown,
            TransportError::Timeout {
                peer: peer(),
                after: Duration::from_secs(1),
            },
            TransportError::UnknownPeer(peer()),
            TransportError::Remote(RemoteError::from_wire("boom".into())),
            TransportError::Connect {
                peer: peer(),
                source: io(),
            },
            TransportError::Io {
                peer: peer(),
                source: io(),
            },
            TransportError::Encode {
                peer: peer(),
                reason: "x".into(),
            },
            TransportError::Decode {
                peer: peer(),
                reason: "x".into(),
            },
            TransportError::FrameTooLarge {
                peer: peer(),
                max: 1,
            },
            TransportError::Config("x".into()),
            TransportError::Handshake {
                peer: peer(),
                source: HandshakeError::Timeout(Duration::from_secs(1)),
            },
        ];
        let kinds: Vec<&str> = errors.iter().map(error_kind).collect();
        // Each kind once, and every one of them shown at zero.
        let distinct: std::collections::HashSet<_> = kinds.iter().collect();
        assert_eq!(distinct.len(), kinds.len(), "{kinds:?}");
        for kind in &kinds {
            assert!(ERROR_KINDS.contains(kind), "{kind} is not in ERROR_KINDS");
        }
        // The list names nothing else but the catch-all.
        assert_eq!(ERROR_KINDS.len(), kinds.len() + 1);
        assert_eq!(ERROR_KINDS.last(), Some(&"other"));
    }
}
