//! Every limit and deadline a transport runs with, built from a
//! [`Config`] in one place.
//!
//! A transport is made of parts that each take their own settings: the
//! per-peer connection pools ([`PoolSettings`]), the Listener
//! ([`ListenerLimits`]), the WebRTC layer (`RtcLimits`, `IceOptions`) and
//! the signaling client ([`SignalSettings`]), the QUIC layer
//! (`QuicLimits`). Each is built here from the
//! configuration, so that one key means one thing and a reader finds
//! every use of it below. [`Config::call_bound`] adds up the same values.

use std::sync::atomic::{AtomicBool, Ordering};

use babble_net_actors::listener::ListenerLimits;
use babble_net_actors::peer_pool::PoolSettings;
use slog::{warn, Logger};

#[cfg(feature = "signal")]
use babble_net_core::signaling::SignalSettings;

use crate::Config;

/// The connection pools' settings: `max-pool` connections kept per peer,
/// idle ones closed after half of `idle-timeout` (before the peer's
/// Listener closes them), replies up to `max-reply-size`, at most
/// `max-dials-per-peer` dials at once, transfers above
/// `min-transfer-rate`, frames above `large-frame` handled on the I/O
/// threads.
pub fn pool(config: &Config, transport: &'static str) -> PoolSettings {
    PoolSettings {
        max_pool: config.max_pool,
        max_idle: config.idle_timeout / 2,
        max_reply_size: config.max_reply_size,
        max_dials: config.max_dials_per_peer,
        min_rate: config.min_transfer_rate,
        large_frame: config.large_frame,
        transport,
    }
}

/// The QUIC layer's limits: `quic-max-streams` calls at once per
/// connection, `quic-max-connections` inbound connections (at most
/// `quic-max-connections-per-source` from one address), Retry beyond
/// `quic-max-handshakes` handshakes in progress (at most four times that
/// in progress, a quarter of it from one address, which may start no more
/// than that many a second), each within `handshake-timeout`, connections
/// closed after `idle-timeout` without a packet, and at most twice
/// `quic-max-connections` plus four times `quic-max-handshakes`
/// connections open or closing at once.
///
/// What peers may send towards this node before it reads (QUIC's
/// flow-control window, per inbound connection) comes from half of
/// `inbound-buffer-budget` ([`quic_window_budget`]; the Listener reading
/// the streams has the other half): a quarter of the budget is split
/// evenly over `quic-max-connections` (64 KiB each by default), the other
/// quarter is lent in [`QUIC_LARGE_WINDOWS`] large windows (4 MiB each by
/// default), at most two per source address at a time (taken back from a
/// connection idle for 10 s when a newcomer wants one), so that every
/// inbound connection together stays within its half. Windows are between
/// 64 KiB and 16 MiB. A reply waiting in QUIC's send buffer is still
/// charged to `outbound-buffer-budget` by the Listener until the caller
/// has acknowledged it, so the send window (16 MiB, as the window for
/// replies to this node's calls) adds nothing to it. Datagrams are off
/// (the transport sends none, and keeps none a peer sends), and at most
/// 4 KiB are kept of a connection not yet accepted.
#[cfg(feature = "quic")]
pub fn quic(config: &Config) -> crate::quic::QuicLimits {
    const KIB: u64 = 1024;
    let window = |share: u64| share.clamp(64 * KIB, 16 * 1024 * KIB);
    let connections = config.quic_max_connections.max(1) as u64;
    let half = quic_window_budget(config) as u64 / 2;
    let receive_window = window(half / connections);
    // A lent window is worth lending when it is larger than the one it
    // replaces, and only while the small windows keep to their share (the
    // 64 KiB floor may not).
    let large = window(half / QUIC_LARGE_WINDOWS as u64);
    let large_receive_window = match connections * receive_window <= half && large > receive_window
    {
        true => large,
        false => receive_window,
    };
    crate::quic::QuicLimits {
        max_streams: config.quic_max_streams,
        max_connections: config.quic_max_connections,
        max_connections_per_source: config.quic_max_connections_per_source,
        max_handshakes: config.quic_max_handshakes,
        handshake_timeout: config.handshake_timeout,
        idle_timeout: config.idle_timeout,
        receive_window,
        reply_window: 16 * 1024 * KIB,
        send_window: 16 * 1024 * KIB,
        large_windows: QUIC_LARGE_WINDOWS,
        large_receive_window,
        incoming_buffer: 4 * KIB,
        connection_states: 2
            * (config.quic_max_connections + config.quic_max_handshakes.saturating_mul(4)),
    }
}

/// The part of `inbound-buffer-budget` that QUIC's flow-control windows
/// take (half); the Listener reading QUIC streams has the rest.
#[cfg(feature = "quic")]
pub fn quic_window_budget(config: &Config) -> usize {
    config.inbound_buffer_budget / 2
}

/// The part of `inbound-buffer-budget` that WebRTC channels' read-ahead
/// takes (half: what the stack hands over before the Listener reads it,
/// see `rtc::read_ahead`); the Listener reading the channels has the rest.
#[cfg(feature = "webrtc")]
pub fn rtc_read_ahead_budget(config: &Config) -> usize {
    config.inbound_buffer_budget / 2
}

/// How many inbound QUIC connections at once, at most two per source
/// address, are lent large flow-control windows ([`quic`]).
#[cfg(feature = "quic")]
pub const QUIC_LARGE_WINDOWS: usize = 16;

/// The Listener's limits: `max-inbound` and `max-inbound-per-ip`
/// connections, `idle-timeout`, requests and replies within `timeout`
/// plus their size at `min-transfer-rate`, requests up to
/// `max-request-size`, the inbound and outbound buffer budgets, the
/// secure handshake within `handshake-timeout`, frames above
/// `large-frame` handled on the I/O threads.
pub fn listener(config: &Config, transport: &'static str) -> ListenerLimits {
    // Under QUIC, half of the inbound budget is the connections' windows;
    // under WebRTC, half is what the channels' pumps read ahead.
    let buffer_budget = match transport {
        #[cfg(feature = "quic")]
        "quic" => config.inbound_buffer_budget - quic_window_budget(config),
        #[cfg(feature = "webrtc")]
        "webrtc" => config.inbound_buffer_budget - rtc_read_ahead_budget(config),
        _ => config.inbound_buffer_budget,
    };
    ListenerLimits {
        max_inbound: config.max_inbound,
        max_inbound_per_ip: config.max_inbound_per_ip,
        idle_timeout: config.idle_timeout,
        timeout: config.timeout,
        min_rate: config.min_transfer_rate,
        max_request_size: config.max_request_size,
        buffer_budget,
        outbound_budget: config.outbound_buffer_budget,
        handshake_timeout: config.handshake_timeout,
        large_frame: config.large_frame,
        transport,
    }
}

/// The WebRTC layer's limits: `webrtc-connect-timeout` to connect,
/// `webrtc-max-peers`, `webrtc-max-channels`, failed connections pruned
/// every 5 s, peer connections driven on the `io-threads`.
#[cfg(feature = "webrtc")]
pub fn rtc(config: &Config) -> crate::rtc::RtcLimits {
    crate::rtc::RtcLimits {
        connect_timeout: config.webrtc_connect_deadline(),
        max_peers: config.webrtc_max_peers,
        max_channels: config.webrtc_max_channels,
        prune_interval: std::time::Duration::from_secs(5),
        io_threads: config.io_threads,
        read_ahead_budget: rtc_read_ahead_budget(config),
    }
}

/// The ICE servers of the configuration (`ice-addr`, `ice-username`,
/// `ice-password`), if any.
#[cfg(feature = "webrtc")]
pub fn ice(config: &Config) -> crate::rtc::IceOptions {
    let servers = config
        .ice_addr
        .iter()
        .map(|addr| crate::rtc::IceServer {
            urls: vec![addr.clone()],
            username: config.ice_username.clone().unwrap_or_default(),
            credential: config.ice_password.clone().unwrap_or_default(),
        })
        .collect();
    crate::rtc::IceOptions {
        servers,
        ..crate::rtc::IceOptions::default()
    }
}

/// The signaling client's settings for `id` (`signal-addr`,
/// `signal-realm`, from `signal-bind`), connecting within `signal-connect-timeout` and taking
/// signed offers no older than `offer-timeout`; `tls` and `key` as the
/// caller made them from the configuration. Other limits are
/// [`SignalSettings::new`]'s.
#[cfg(feature = "signal")]
pub fn signal(
    config: &Config,
    id: String,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    key: Option<crate::secure::NodeKey>,
) -> SignalSettings {
    SignalSettings {
        tls,
        connect_timeout: config.signal_connect_deadline(),
        max_offer_age: config.offer_deadline(),
        key,
        bind_ip: config.signal_bind,
        ..SignalSettings::new(&config.signal_addr, &config.signal_realm, id)
    }
}

/// Logs, once per process, which keys take `join-timeout`'s value (see
/// [`Config::join_timeout_carried_over`]).
pub fn warn_carried_over(config: &Config, log: &Logger) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    let keys = config.join_timeout_carried_over();
    if keys.is_empty() || WARNED.swap(true, Ordering::Relaxed) {
        return;
    }
    warn!(log, "join-timeout also sets keys the configuration leaves unset, as before they existed; \
        set them to keep join-timeout for Join alone";
        "join_timeout" => ?config.join_timeout, "keys" => keys.join(", "));
}

#[cfg(feature = "webrtc")]
impl crate::rtc::RtcLimits {
    /// The limits of `config`: see [`rtc()`].
    pub fn from_config(config: &Config) -> crate::rtc::RtcLimits {
        rtc(config)
    }
}

#[cfg(feature = "webrtc")]
impl crate::rtc::IceOptions {
    /// The ICE servers of `config`: see [`ice`].
    pub fn from_config(config: &Config) -> crate::rtc::IceOptions {
        ice(config)
    }
}

#[cfg(all(test, feature = "quic"))]
mod tests {
    use super::*;

    /// Every inbound QUIC connection's windows together, the lent large
    /// ones included, stay within their half of the inbound budget, and
    /// the Listener has the other half (unless the budget is so small
    /// that the 64 KiB floor is above its share).
    #[test]
    fn quic_windows_stay_within_the_budgets() {
        for (budget, connections) in [
            (256 << 20, 1024),
            (256 << 20, 16),
            (64 << 20, 1024),
            (1 << 30, 4096),
            (16 << 20, 8),
        ] {
            let config = Config {
                inbound_buffer_budget: budget,
                quic_max_connections: connections,
                ..Config::default()
            };
            let limits = quic(&config);
            let windows = quic_window_budget(&config) as u64;
            let listener = listener(&config, "quic").buffer_budget as u64;
            assert_eq!(windows + listener, budget as u64);
            // A lent window replaces its connection's small one.
            let lent = limits.large_windows.min(connections) as u64;
            let all = connections as u64 * limits.receive_window
                + lent * (limits.large_receive_window - limits.receive_window);
            if connections as u64 * limits.receive_window > windows / 2 {
                // The floor: nothing is lent beyond it.
                assert_eq!(limits.large_receive_window, limits.receive_window);
                continue;
            }
            assert!(all <= windows, "{budget} / {connections}: {all}");
            assert!(limits.large_receive_window >= limits.receive_window);
        }
        assert_eq!(
            listener(&Config::default(), "tcp").buffer_budget,
            Config::default().inbound_buffer_budget
        );
        let defaults = quic(&Config::default());
        assert_eq!(defaults.receive_window, 64 << 10);
        assert_eq!(defaults.large_receive_window, 4 << 20);
    }

    /// Under WebRTC, what the channels' pumps take ahead of the Listener
    /// and what the Listener buffers share the inbound budget, and a
    /// budget too small for both to hold requests is refused.
    #[cfg(feature = "webrtc")]
    #[test]
    fn webrtc_read_ahead_and_the_listener_share_the_inbound_budget() {
        let config = Config::default();
        let read_ahead = rtc(&config).read_ahead_budget;
        let listener = listener(&config, "webrtc").buffer_budget;
        assert_eq!(read_ahead + listener, config.inbound_buffer_budget);
        assert!(read_ahead >= 2 * config.max_request_size);
        let tight = Config {
            webrtc: true,
            inbound_buffer_budget: 3 * config.max_request_size,
            ..Config::default()
        };
        let err = tight.validate().unwrap_err().to_string();
        assert!(err.contains("with webrtc"), "{err}");
    }
}
