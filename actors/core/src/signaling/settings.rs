//! How a signaling client reaches its router, and its limits.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::identity::NodeKey;

/// How to reach the signaling router, who we are there, and the bounds
/// the client keeps. Start from [`SignalSettings::new`] and change what
/// differs.
#[derive(Clone)]
pub struct SignalSettings {
    /// `host:port` (the scheme follows `tls`), or a `ws://` / `wss://` URL.
    pub address: String,
    /// The realm to join.
    pub realm: String,
    /// Our ID: the procedure we register, and who our offers are from.
    pub id: String,
    /// TLS client settings; `None` for plain `ws://` (tests, local demos).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Connecting, the handshakes and WELCOME must finish within this; a
    /// listener not registered within it is told why.
    pub connect_timeout: Duration,
    /// A write to the router that takes longer than this closes the
    /// connection (the router stopped reading).
    pub write_timeout: Duration,
    /// The client pings the router after this much quiet, and gives the
    /// connection up after three times this without a byte from it.
    pub keepalive: Duration,
    /// Largest WebSocket message accepted.
    pub max_message_size: usize,
    /// First pause before reconnecting; it doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    /// Longest pause before reconnecting.
    pub reconnect_max: Duration,
    /// Offers of ours waiting for a session; more fail at once.
    pub max_queued_offers: usize,
    /// Offers of ours in flight; more fail at once with `Busy`.
    pub max_calls: usize,
    /// Offers from other peers being answered at once; more are refused
    /// with `io.babble.processing_offer`.
    pub max_offers: usize,
    /// Offers from one peer being answered at once.
    pub max_offers_per_caller: usize,
    /// Authenticate with this key (`babble-secp256k1`) and sign every
    /// offer and answer, refusing unsigned ones. `id` must then be the
    /// key's `PubKeyHex`. `None`: anonymous, as Go Babble nodes are.
    pub key: Option<NodeKey>,
    /// With a key: signed offers and answers older (or newer) than this
    /// are refused as stale.
    pub max_offer_age: Duration,
    /// The local address the connection to the router is made from (on a
    /// host with several, the one the router should see); `None`: the
    /// system's choice. Its family must be the router's.
    pub bind_ip: Option<std::net::IpAddr>,
}

impl SignalSettings {
    /// Settings for `id` in `realm` at `address`, plain `ws://` unless
    /// `tls` is set, with the default timeouts and limits.
    pub fn new(
        address: impl Into<String>,
        realm: impl Into<String>,
        id: impl Into<String>,
    ) -> SignalSettings {
        SignalSettings {
            address: address.into(),
            realm: realm.into(),
            id: id.into(),
            tls: None,
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            keepalive: Duration::from_secs(10),
            max_message_size: 1024 * 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
            max_queued_offers: 64,
            max_calls: 64,
            max_offers: 64,
            max_offers_per_caller: 4,
            key: None,
            max_offer_age: Duration::from_secs(10),
            bind_ip: None,
        }
    }

    /// The WebSocket URL to connect to.
    pub fn url(&self) -> String {
        if self.address.starts_with("ws://") || self.address.starts_with("wss://") {
            return self.address.clone();
        }
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/", self.address)
    }
}

impl fmt::Debug for SignalSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignalSettings")
            .field("address", &self.address)
            .field("realm", &self.realm)
            .field("id", &self.id)
            .field("tls", &self.tls.is_some())
            .field("authenticated", &self.key.is_some())
            .finish_non_exhaustive()
    }
}
