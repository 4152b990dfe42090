//! The series a transport records on every call and connection, with
//! their handles kept.
//!
//! Naming a series through the `metrics` facade builds its key (the name
//! and every label) and looks it up in the recorder: a few hundred
//! instructions each time, and a small QUIC call records six of them on
//! the serving side (5% of its instructions, counted with callgrind). A
//! [`CallMetrics`] takes each handle from the recorder the first time its
//! series is used and keeps it, so that every later update is an atomic
//! addition. Each transport makes its own when it is made; as with its
//! fair-queue gauges, a recorder installed after a series was first used
//! does not see it (docs/METRICS.md: install the recorder before making
//! transports).

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram, Counter, Gauge, Histogram};

use crate::metrics::rpc_label;
use crate::wire::RpcType;

/// Which way bytes or an RPC went, as the `direction` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Towards this node: bytes read, requests served.
    In,
    /// From this node: bytes written, calls made.
    Out,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Whose open connections a change of `babble_net_connections` counts, as
/// the `role` label says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Connections peers opened to this node.
    Inbound,
    /// Idle connections this node keeps to its peers.
    Pooled,
}

impl Role {
    fn label(self) -> &'static str {
        match self {
            Role::Inbound => "inbound",
            Role::Pooled => "pooled",
        }
    }
}

/// See the [module docs](self). Cheap to share (`Arc`) between the parts
/// of one transport.
pub struct CallMetrics {
    transport: &'static str,
    /// `babble_net_bytes_total`, by direction.
    bytes: [OnceLock<Counter>; 2],
    /// `babble_net_rpcs_total`, by direction, RPC type and result (ok,
    /// error).
    rpcs: [[[OnceLock<Counter>; 2]; 4]; 2],
    /// `babble_net_rpc_duration_seconds`, by direction and RPC type.
    durations: [[OnceLock<Histogram>; 4]; 2],
    /// `babble_net_connections`, by role.
    connections: [OnceLock<Gauge>; 2],
    /// `babble_net_dials_total`, by result (ok, error).
    dials: [OnceLock<Counter>; 2],
}

impl CallMetrics {
    /// The series of a transport labelled `transport` (`tcp`, `quic`, ...).
    pub fn new(transport: &'static str) -> CallMetrics {
        CallMetrics {
            transport,
            bytes: Default::default(),
            rpcs: Default::default(),
            durations: Default::default(),
            connections: Default::default(),
            dials: Default::default(),
        }
    }

    /// `bytes` were read (`In`) or written (`Out`).
    pub fn bytes(&self, direction: Direction, bytes: usize) {
        let transport = self.transport;
        self.bytes[direction as usize]
            .get_or_init(|| {
                counter!("babble_net_bytes_total", "transport" => transport, "direction" => direction.label())
            })
            .increment(bytes as u64);
    }

    /// An RPC ended: served (`In`, counted once its reply is written) or
    /// called (`Out`), `ok` or not, after `took`.
    pub fn rpc_done(&self, direction: Direction, rpc: RpcType, ok: bool, took: Duration) {
        let transport = self.transport;
        let (way, label) = (direction.label(), rpc_label(rpc));
        // Tables are indexed by the RPC type's wire byte.
        let at = rpc as usize;
        self.rpcs[direction as usize][at][usize::from(!ok)]
            .get_or_init(|| {
                let result = if ok { "ok" } else { "error" };
                counter!("babble_net_rpcs_total", "transport" => transport, "direction" => way, "rpc" => label, "result" => result)
            })
            .increment(1);
        self.durations[direction as usize][at]
            .get_or_init(|| {
                histogram!("babble_net_rpc_duration_seconds", "transport" => transport, "direction" => way, "rpc" => label)
            })
            .record(took.as_secs_f64());
    }

    /// Open connections of `role` changed by `delta`.
    pub fn connections(&self, role: Role, delta: f64) {
        let transport = self.transport;
        self.connections[role as usize]
            .get_or_init(|| {
                gauge!("babble_net_connections", "transport" => transport, "role" => role.label())
            })
            .increment(delta);
    }

    /// A dial ended.
    pub fn dialled(&self, ok: bool) {
        let transport = self.transport;
        self.dials[usize::from(!ok)]
            .get_or_init(|| {
                let result = if ok { "ok" } else { "error" };
                counter!("babble_net_dials_total", "transport" => transport, "result" => result)
            })
            .increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    /// Every update lands in the series the label values name, the first
    /// and the later ones alike.
    #[test]
    fn each_update_lands_in_the_series_its_labels_name() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let calls = CallMetrics::new("tcp");
            for _ in 0..2 {
                calls.bytes(Direction::In, 10);
                calls.bytes(Direction::Out, 3);
                calls.rpc_done(Direction::In, RpcType::Sync, true, Duration::from_millis(1));
                calls.rpc_done(
                    Direction::Out,
                    RpcType::Join,
                    false,
                    Duration::from_millis(2),
                );
                calls.connections(Role::Inbound, 1.0);
                calls.connections(Role::Pooled, -1.0);
                calls.dialled(false);
            }
        });
        let mut seen: Vec<(String, Vec<String>, String)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .map(|(key, _, _, value)| {
                let key = key.key();
                let mut labels: Vec<String> = key
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()))
                    .collect();
                labels.sort();
                let value = match value {
                    DebugValue::Counter(n) => n.to_string(),
                    DebugValue::Gauge(g) => g.into_inner().to_string(),
                    DebugValue::Histogram(h) => format!("{} samples", h.len()),
                };
                (key.name().to_owned(), labels, value)
            })
            .collect();
        seen.sort();
        let expect = |name: &str, labels: &[&str], value: &str| {
            (
                name.to_owned(),
                labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
                value.to_owned(),
            )
        };
        let mut expected = vec![
            expect(
                "babble_net_bytes_total",
                &["direction=in", "transport=tcp"],
                "20",
            ),
            expect(
                "babble_net_bytes_total",
                &["direction=out", "transport=tcp"],
                "6",
            ),
            expect(
                "babble_net_connections",
                &["role=inbound", "transport=tcp"],
                "2",
            ),
            expect(
                "babble_net_connections",
                &["role=pooled", "transport=tcp"],
                "-2",
            ),
            expect(
                "babble_net_dials_total",
                &["result=error", "transport=tcp"],
                "2",
            ),
            expect(
                "babble_net_rpc_duration_seconds",
                &["direction=in", "rpc=sync", "transport=tcp"],
                "2 samples",
            ),
            expect(
                "babble_net_rpc_duration_seconds",
                &["direction=out", "rpc=join", "transport=tcp"],
                "2 samples",
            ),
            expect(
                "babble_net_rpcs_total",
                &["direction=in", "result=ok", "rpc=sync", "transport=tcp"],
                "2",
            ),
            expect(
                "babble_net_rpcs_total",
                &["direction=out", "result=error", "rpc=join", "transport=tcp"],
                "2",
            ),
        ];
        expected.sort();
        assert_eq!(seen, expected);
    }
}
