//! Transport configuration, with Go Babble's names and defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::secure::{NodeKey, PeerKey};
use crate::TransportError;

/// Everything a transport can be configured with.
///
/// Defaults are Go Babble's; the TOML keys are its command-line flag names
/// (`listen`, `max-pool`, `timeout`, ...), so an existing `babble.toml`
/// section reads the same. Durations are written like `"1s"` or `"500ms"`.
///
/// ```
/// let config = babble_net::Config::from_toml_str(r#"
///     listen = "127.0.0.1:1338"
///     timeout = "500ms"
/// "#).unwrap();
/// assert_eq!(config.max_pool, 2);
/// assert_eq!(config.timeout, std::time::Duration::from_millis(500));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    /// Where the TCP transport binds (Go `BindAddr`).
    #[serde(rename = "listen", alias = "bind-addr")]
    pub bind_addr: String,
    /// The address peers should dial, when it differs from `bind_addr`
    /// (required when binding 0.0.0.0 or ::).
    pub advertise: Option<String>,
    /// Idle connections kept per peer.
    pub max_pool: usize,
    /// Deadline of each RPC's I/O: a call fails when no byte moves for
    /// this long (so a large transfer that keeps flowing does not), and in
    /// any case once it has taken this long plus its bytes at
    /// `min-transfer-rate`. See [`Config::call_bound`].
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The same deadline for Join, which waits on consensus.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// WebRTC: the least time a dial gets (signaling, ICE and DTLS take
    /// longer than one RPC's I/O), and the time a connection answered to
    /// another peer has to connect before it is closed. Unset:
    /// `join-timeout`'s value, as before this key existed (see
    /// [`Config::join_timeout_carried_over`]).
    #[serde(with = "humantime_serde")]
    pub webrtc_connect_timeout: Option<Duration>,
    /// The signaling client's connection to the router: a node that has no
    /// session within it fails to start (`TransportError::Connect`), and
    /// keeps trying in the background. Unset: `join-timeout`'s value.
    #[serde(with = "humantime_serde")]
    pub signal_connect_timeout: Option<Duration>,
    /// How long an offer waits for its answer through the signaling router,
    /// and how far from now a signed offer's or answer's timestamp may be.
    /// Unset: `join-timeout`'s value.
    #[serde(with = "humantime_serde")]
    pub offer_timeout: Option<Duration>,
    /// Bytes per second below which a transfer counts as stalled: a call
    /// moving `n` bytes ends within its timeout plus `n` at this rate, and
    /// so does reading a request or writing a reply on the server side.
    pub min_transfer_rate: u64,
    /// Use the WebRTC transport instead of TCP.
    pub webrtc: bool,
    /// Address of the WebRTC signaling server.
    pub signal_addr: String,
    /// Realm (routing domain) on the signaling server.
    pub signal_realm: String,
    /// Accept any TLS certificate from the signaling server (tests only).
    pub signal_skip_verify: bool,
    /// Authenticate to the signaling server with the node's key
    /// (`key-file`) and sign every offer and answer, refusing unsigned
    /// ones; the node's signaling ID is then its `PubKeyHex`. Off by
    /// default: Go Babble nodes cannot authenticate.
    pub signal_auth: bool,
    /// Trust the signaling server certificates in this PEM file (a CA, or
    /// the server's self-signed certificate) instead of the system's roots.
    pub signal_ca_file: Option<PathBuf>,
    /// The local address the node's connection to the signaling server
    /// is made from (`signal-bind`, on a host with several); unset: the
    /// system's choice.
    pub signal_bind: Option<std::net::IpAddr>,
    /// STUN/TURN server for WebRTC, such as `stun:stun.l.google.com:19302`.
    pub ice_addr: Option<String>,
    /// Username for the TURN server.
    pub ice_username: Option<String>,
    /// Password for the TURN server.
    pub ice_password: Option<String>,
    /// Encrypt and authenticate every connection with the Noise handshake
    /// keyed to the node's key (`key-file`); see [`crate::secure`]. Off by
    /// default: Go Babble nodes speak plaintext.
    pub secure: bool,
    /// The node's private key: a file holding the hex of the secp256k1
    /// scalar (Go Babble's `priv_key`). Needed by `secure` and by
    /// authenticated signaling.
    pub key_file: Option<PathBuf>,
    /// Go Babble's `peers.json` (`[{"NetAddr", "PubKeyHex", "Moniker"}]`):
    /// the key each peer address must prove, and the keys a secure node
    /// accepts.
    pub peers_file: Option<PathBuf>,
    /// More peers, as `address = "PubKeyHex"`.
    pub peer_keys: BTreeMap<String, String>,
    /// A secure node accepts any key that proves itself, not only its
    /// peers' (for nodes that join a running network).
    pub accept_any_key: bool,
    /// Time a secure handshake (Noise, or QUIC's TLS) may take.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Use the QUIC transport ([`crate::NetworkTransport::quic`]): UDP on
    /// `listen`, TLS keyed to `key-file`, the peers' keys as for `secure`.
    /// Rust nodes only: Go Babble has no QUIC. Off by default.
    pub quic: bool,
    /// QUIC: calls (streams) one peer connection may have open at once;
    /// more wait in the caller's QUIC stack.
    pub quic_max_streams: u32,
    /// QUIC: inbound connections at once; at the cap a newcomer evicts the
    /// least recently used connection of the source holding the most.
    pub quic_max_connections: usize,
    /// QUIC: inbound connections from one source address at once.
    pub quic_max_connections_per_source: usize,
    /// QUIC: handshakes in progress beyond which a newcomer must prove its
    /// address with a Retry; beyond four times this, newcomers are
    /// refused.
    pub quic_max_handshakes: usize,
    /// WebRTC: peer connections other peers may hold to this node; at the
    /// cap a newcomer evicts the least recently used connection of the
    /// source (the peer's address on it) holding the most.
    pub webrtc_max_peers: usize,
    /// WebRTC: data channels one peer may have open on its peer connection
    /// to this node; at the cap a new one closes the one least recently
    /// used by a reply (the node sees an RPC being answered on it
    /// abandoned).
    pub webrtc_max_channels: usize,
    /// Largest request accepted from a peer, in bytes (an EagerSync of a
    /// full sync limit of events must fit).
    pub max_request_size: usize,
    /// Largest reply accepted from a peer, in bytes (a FastForward snapshot
    /// must fit; base64 makes it a third larger).
    #[serde(alias = "max-frame-size")]
    pub max_reply_size: usize,
    /// Most inbound connections served at once. A new connection beyond it
    /// is still served: one connection of the source holding the most
    /// (an IPv4 address, an IPv6 /64) is closed for it, the one least
    /// recently used by a completed RPC, even if its request is being
    /// answered or its reply written (the node sees the RPC abandoned).
    pub max_inbound: usize,
    /// Most inbound connections from one source (an IPv4 address, an IPv6
    /// /64; on WebRTC, the peer's address on its connection); beyond it
    /// that source's own least recently used connection is closed for the
    /// newcomer.
    pub max_inbound_per_ip: usize,
    /// Bytes all inbound connections together may hold for requests
    /// (each connection holds its first 64 KiB outside it): a request's
    /// buffer as it is read, charged at twice its capacity (its bytes and
    /// what they decode into), then the decoded request until it is
    /// answered. A connection that needs more waits for it, within its
    /// request's deadline (its bytes wait in the kernel meanwhile). Must
    /// hold two `max-request-size` requests.
    pub inbound_buffer_budget: usize,
    /// Bytes all inbound connections together may hold for replies (each
    /// connection holds its first 64 KiB outside it): a reply from the
    /// moment the node hands it over until it is encoded (the reply and
    /// its frame), then its frame until it is written. A reply is already
    /// in memory when the node hands it over, so it never waits: one the
    /// budget has no room for is dropped at once and replaced by an error
    /// the caller sees as refused (`TransportError::is_refused`). Must
    /// hold two `max-reply-size` replies.
    pub outbound_buffer_budget: usize,
    /// An inbound connection with no request for this long is closed.
    /// Whitespace does not count as a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections dialled at once to one peer; more callers wait for one
    /// of them (or for a pooled connection) within their timeout.
    pub max_dials_per_peer: usize,
    /// RPCs one source (an address, and within it a verified key) may have
    /// queued for the application; the node takes RPCs from the sources in
    /// turn, and a source whose queue is full is not read further until
    /// the node takes one of its RPCs.
    pub consumer_buffer: usize,
    /// Threads (actix arbiters) that parse and encode the network
    /// transports' large frames (above `large-frame`), shared by the
    /// transports of one actix system, and that drive WebRTC peer
    /// connections. Small calls never leave the thread that makes or
    /// answers them. 0 does everything on the node's own threads (a large
    /// frame then stalls them while it is parsed). Default: the number of
    /// cores.
    pub io_threads: usize,
    /// Frames larger than this many bytes are parsed and encoded on the
    /// I/O threads while the node's thread waits for the result; smaller
    /// ones on the node's thread, which is cheaper than a hand-off.
    /// Default: 2 MiB (a few milliseconds of parsing at most).
    pub large_frame: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_addr: "127.0.0.1:1337".to_owned(),
            advertise: None,
            max_pool: 2,
            timeout: Duration::from_secs(1),
            join_timeout: Duration::from_secs(10),
            webrtc_connect_timeout: None,
            signal_connect_timeout: None,
            offer_timeout: None,
            webrtc: false,
            signal_addr: "127.0.0.1:2443".to_owned(),
            signal_realm: "main".to_owned(),
            signal_skip_verify: false,
            signal_auth: false,
            signal_ca_file: None,
            signal_bind: None,
            ice_addr: None,
            ice_username: None,
            ice_password: None,
            secure: false,
            key_file: None,
            peers_file: None,
            peer_keys: BTreeMap::new(),
            accept_any_key: false,
            handshake_timeout: Duration::from_secs(5),
            quic: false,
            quic_max_streams: 64,
            quic_max_connections: 1024,
            quic_max_connections_per_source: 256,
            quic_max_handshakes: 64,
            webrtc_max_peers: 256,
            webrtc_max_channels: 64,
            min_transfer_rate: 64 * 1024,
            max_request_size: 16 * 1024 * 1024,
            max_reply_size: babble_net_core::codec::DEFAULT_MAX_FRAME_SIZE,
            max_inbound: 1024,
            max_inbound_per_ip: 256,
            inbound_buffer_budget: 256 * 1024 * 1024,
            outbound_buffer_budget: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_dials_per_peer: 4,
            consumer_buffer: 64,
            io_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            large_frame: 2 * 1024 * 1024,
        }
    }
}

impl Config {
    /// Reads a configuration from TOML text; missing keys keep defaults.
    pub fn from_toml_str(text: &str) -> Result<Config, TransportError> {
        let config: Config =
            toml::from_str(text).map_err(|err| TransportError::Config(err.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// Reads a configuration from a TOML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, TransportError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|err| {
            TransportError::Config(format!("cannot read {}: {err}", path.display()))
        })?;
        Config::from_toml_str(&text)
            .map_err(|err| TransportError::Config(format!("{}: {err}", path.display())))
    }

    /// Checks values that cannot work (zero limits, a budget smaller than a
    /// request) or that overflow the deadline arithmetic (timeouts beyond a
    /// day).
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |what: &str| Err(TransportError::Config(what.to_owned()));
        for (name, value) in [
            ("timeout", self.timeout),
            ("join-timeout", self.join_timeout),
            ("webrtc-connect-timeout", self.webrtc_connect_deadline()),
            ("signal-connect-timeout", self.signal_connect_deadline()),
            ("offer-timeout", self.offer_deadline()),
            ("idle-timeout", self.idle_timeout),
            ("handshake-timeout", self.handshake_timeout),
        ] {
            if value.is_zero() {
                return fail(&format!("{name} must be greater than zero"));
            }
            if value > MAX_TIMEOUT {
                return fail(&format!("{name} must be at most {MAX_TIMEOUT:?}"));
            }
        }
        if self.min_transfer_rate < 1024 {
            return fail("min-transfer-rate must be at least 1024 bytes per second");
        }
        if self.max_request_size < 64 || self.max_reply_size < 64 {
            return fail("max-request-size and max-reply-size must be at least 64 bytes");
        }
        if self.max_request_size > MAX_FRAME || self.max_reply_size > MAX_FRAME {
            return fail("max-request-size and max-reply-size must be at most 1 GiB");
        }
        if self.inbound_buffer_budget / 2 < self.max_request_size {
            return fail("inbound-buffer-budget must hold two max-request-size requests (a request is charged for its bytes and what they decode into)");
        }
        if self.outbound_buffer_budget / 2 < self.max_reply_size {
            return fail("outbound-buffer-budget must hold two max-reply-size replies (a reply is charged for itself and its frame while it is encoded)");
        }
        if self.max_inbound == 0 || self.max_inbound_per_ip == 0 {
            return fail("max-inbound and max-inbound-per-ip must be at least 1");
        }
        if self.io_threads > 256 {
            return fail("io-threads must be at most 256");
        }
        if self.max_dials_per_peer == 0 {
            return fail("max-dials-per-peer must be at least 1");
        }
        if self.consumer_buffer == 0 {
            return fail("consumer-buffer must be at least 1");
        }
        if self.secure && self.key_file.is_none() {
            return fail("secure needs a key-file (the node's private key)");
        }
        if self.signal_auth && self.key_file.is_none() {
            return fail("signal-auth needs a key-file (the node's private key)");
        }
        for (address, key) in &self.peer_keys {
            if PeerKey::parse(key).is_err() {
                return fail(&format!(
                    "peer-keys: {address} = {key:?} is not a public key"
                ));
            }
        }
        if self.webrtc_max_peers == 0 || self.webrtc_max_channels == 0 {
            return fail("webrtc-max-peers and webrtc-max-channels must be at least 1");
        }
        if self.quic && self.key_file.is_none() {
            return fail("quic needs a key-file (the node's private key)");
        }
        if self.quic && (self.webrtc || self.secure) {
            return fail("quic is a transport of its own: it cannot be combined with webrtc or secure (QUIC is always encrypted)");
        }
        if self.webrtc && self.inbound_buffer_budget / 4 < self.max_request_size {
            return fail("with webrtc, inbound-buffer-budget must hold four max-request-size requests (half of it is what the channels read ahead of the Listener)");
        }
        if self.quic && self.inbound_buffer_budget / 4 < self.max_request_size {
            return fail("with quic, inbound-buffer-budget must hold four max-request-size requests (half of it is the connections' flow-control windows)");
        }
        if self.quic_max_streams == 0
            || self.quic_max_connections == 0
            || self.quic_max_connections_per_source == 0
            || self.quic_max_handshakes == 0
        {
            return fail("quic-max-streams, quic-max-connections, quic-max-connections-per-source and quic-max-handshakes must be at least 1");
        }
        if self.quic && !cfg!(feature = "quic") {
            return fail("quic = true needs the feature `quic` (babble-net was built without it)");
        }
        if self.webrtc && !cfg!(feature = "webrtc") {
            return fail(
                "webrtc = true needs the feature `webrtc` (babble-net was built without it)",
            );
        }
        Ok(())
    }

    /// The WebRTC connect timeout: `webrtc-connect-timeout`, or
    /// `join-timeout` when unset.
    pub fn webrtc_connect_deadline(&self) -> Duration {
        self.webrtc_connect_timeout.unwrap_or(self.join_timeout)
    }

    /// The signaling connect timeout: `signal-connect-timeout`, or
    /// `join-timeout` when unset.
    pub fn signal_connect_deadline(&self) -> Duration {
        self.signal_connect_timeout.unwrap_or(self.join_timeout)
    }

    /// The offer timeout: `offer-timeout`, or `join-timeout` when unset.
    pub fn offer_deadline(&self) -> Duration {
        self.offer_timeout.unwrap_or(self.join_timeout)
    }

    /// The keys that take `join-timeout`'s value because they are unset
    /// while `join-timeout` is not its default: a file written before
    /// they existed keeps its behaviour, and the transports log one
    /// warning naming them. Empty when nothing is carried over.
    pub fn join_timeout_carried_over(&self) -> Vec<&'static str> {
        if self.join_timeout == Config::default().join_timeout {
            return Vec::new();
        }
        [
            ("webrtc-connect-timeout", self.webrtc_connect_timeout),
            ("signal-connect-timeout", self.signal_connect_timeout),
            ("offer-timeout", self.offer_timeout),
        ]
        .into_iter()
        .filter(|(_, value)| value.is_none())
        .map(|(name, _)| name)
        .collect()
    }

    /// The deadline that applies to an RPC of the given type.
    pub fn timeout_for(&self, rpc_type: crate::RpcType) -> Duration {
        match rpc_type {
            crate::RpcType::Join => self.join_timeout,
            _ => self.timeout,
        }
    }

    /// The longest a call of `rpc_type` can take, whatever the peer does.
    ///
    /// An attempt waits at most the timeout for a connection (a pooled one
    /// or a dial slot), at most the dial time for a dial (the timeout; on
    /// WebRTC at least `webrtc-connect-timeout`, which ICE and DTLS may
    /// need), and
    /// exchanges the request and reply within the timeout plus their bytes
    /// at `min-transfer-rate`. A call whose pooled connection turns out
    /// stale (closed before any reply byte) is retried once on a new one.
    /// So a call ends within four timeouts and two dial times plus two of
    /// the largest requests and the largest reply at that rate (plus two
    /// handshake timeouts on a secure channel); a call to a peer that
    /// merely stops answering fails after about one timeout.
    pub fn call_bound(&self, rpc_type: crate::RpcType) -> Duration {
        let timeout = self.timeout_for(rpc_type);
        let dial = match self.webrtc {
            true => timeout.max(self.webrtc_connect_deadline()),
            false => timeout,
        };
        let bytes = (2 * self.max_request_size + self.max_reply_size) as f64;
        let handshakes = match self.secure {
            true => self.handshake_timeout * 2,
            false => Duration::ZERO,
        };
        timeout * 4
            + dial * 2
            + handshakes
            + Duration::from_secs_f64(bytes / self.min_transfer_rate as f64)
    }
}

impl Config {
    /// The node's key, from `key-file`.
    pub fn node_key(&self) -> Result<NodeKey, TransportError> {
        let path = self
            .key_file
            .as_ref()
            .ok_or_else(|| TransportError::Config("no key-file given".into()))?;
        NodeKey::load(path).map_err(|e| TransportError::Config(format!("key-file: {e}")))
    }

    /// The peers' addresses and keys, from `peers-file` and `peer-keys`.
    pub fn peer_key_map(&self) -> Result<Vec<(String, PeerKey)>, TransportError> {
        let mut peers = Vec::new();
        if let Some(path) = &self.peers_file {
            let fail = |why: String| TransportError::Config(format!("{}: {why}", path.display()));
            let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
            let entries: Vec<PeersFileEntry> =
                serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
            for entry in entries {
                let key = PeerKey::parse(&entry.pub_key_hex)
                    .map_err(|e| fail(format!("{}: {e}", entry.net_addr)))?;
                peers.push((entry.net_addr, key));
            }
        }
        for (address, key) in &self.peer_keys {
            let key = PeerKey::parse(key)
                .map_err(|e| TransportError::Config(format!("peer-keys: {address}: {e}")))?;
            peers.push((address.clone(), key));
        }
        Ok(peers)
    }
}

/// One peer of Go Babble's `peers.json`.
#[derive(Deserialize)]
struct PeersFileEntry {
    #[serde(rename = "NetAddr")]
    net_addr: String,
    #[serde(rename = "PubKeyHex")]
    pub_key_hex: String,
}

/// Longest timeout accepted: a day (longer ones are typing mistakes).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Largest frame limit accepted.
const MAX_FRAME: usize = 1 << 30;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_go_babbles() {
        let config = Config::default();
        assert_eq!(config.bind_addr, "127.0.0.1:1337");
        assert_eq!(config.max_pool, 2);
        assert_eq!(config.timeout, Duration::from_secs(1));
        assert_eq!(config.join_timeout, Duration::from_secs(10));
        assert_eq!(config.signal_addr, "127.0.0.1:2443");
        assert_eq!(config.signal_realm, "main");
        assert!(!config.webrtc && !config.signal_skip_verify);
    }

    #[test]
    fn the_documented_example_file_loads() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/node.toml");
        let config = Config::load(path).unwrap();
        assert_eq!(config.bind_addr, "127.0.0.1:1337");
        // Its QUIC section says the defaults.
        let defaults = Config::default();
        assert_eq!(
            (
                config.quic,
                config.quic_max_streams,
                config.quic_max_connections,
                config.quic_max_connections_per_source,
                config.quic_max_handshakes
            ),
            (
                defaults.quic,
                defaults.quic_max_streams,
                defaults.quic_max_connections,
                defaults.quic_max_connections_per_source,
                defaults.quic_max_handshakes
            )
        );
    }

    #[test]
    fn join_timeout_means_join_and_an_old_file_keeps_its_behaviour() {
        // A file written before the WebRTC and signaling timeouts had keys
        // of their own: join-timeout's value carries over, named once.
        let old = Config::from_toml_str("join-timeout = \"3s\"").unwrap();
        let three = Duration::from_secs(3);
        assert_eq!(old.webrtc_connect_deadline(), three);
        assert_eq!(old.signal_connect_deadline(), three);
        assert_eq!(old.offer_deadline(), three);
        assert_eq!(
            old.join_timeout_carried_over(),
            [
                "webrtc-connect-timeout",
                "signal-connect-timeout",
                "offer-timeout"
            ]
        );
        // With the keys set, join-timeout is Join's alone.
        let new = Config::from_toml_str(
            "join-timeout = \"3s\"\nwebrtc-connect-timeout = \"20s\"\n\
             signal-connect-timeout = \"4s\"\noffer-timeout = \"5s\"",
        )
        .unwrap();
        assert_eq!(new.timeout_for(crate::RpcType::Join), three);
        assert_eq!(new.webrtc_connect_deadline(), Duration::from_secs(20));
        assert_eq!(new.signal_connect_deadline(), Duration::from_secs(4));
        assert_eq!(new.offer_deadline(), Duration::from_secs(5));
        assert!(new.join_timeout_carried_over().is_empty());
        let webrtc = Config {
            webrtc: true,
            ..new.clone()
        };
        assert!(webrtc.call_bound(crate::RpcType::Sync) > new.call_bound(crate::RpcType::Sync));
        // Defaults carry nothing over.
        assert!(Config::default().join_timeout_carried_over().is_empty());
        let err = Config::from_toml_str("offer-timeout = \"0s\"").unwrap_err();
        assert!(err.to_string().contains("offer-timeout"), "{err}");
    }

    #[cfg(not(feature = "webrtc"))]
    #[test]
    fn a_key_of_a_feature_compiled_out_says_which_feature() {
        let err = Config::from_toml_str("webrtc = true").unwrap_err();
        assert!(
            err.to_string().contains("needs the feature `webrtc`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_a_clear_error() {
        let err = Config::from_toml_str("max-pol = 3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("max-pol"), "{err}");
        let err = Config::from_toml_str("timeout = \"0s\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("timeout must be greater than zero"), "{err}");
    }

    #[test]
    fn absurd_values_are_refused_not_panicked_on() {
        for text in [
            "timeout = \"100000000years\"",
            "idle-timeout = \"30days\"",
            "min-transfer-rate = 0",
            "max-request-size = 0",
            "max-reply-size = 18446744073709551615",
            "max-inbound-per-ip = 0",
            "inbound-buffer-budget = 10",
            "max-dials-per-peer = 0",
        ] {
            let err = Config::from_toml_str(text).unwrap_err();
            assert!(matches!(err, TransportError::Config(_)), "{text}: {err}");
        }
    }

    #[test]
    fn the_call_bound_of_the_defaults() {
        // 6 s plus 160 MiB at 64 KiB/s: 2566 s, about 43 minutes.
        let bound = Config::default().call_bound(crate::RpcType::Sync);
        assert_eq!(bound, Duration::from_secs(2566));
    }

    #[test]
    fn the_old_frame_size_key_sets_the_reply_limit() {
        let config = Config::from_toml_str("max-frame-size = 1000").unwrap();
        assert_eq!(config.max_reply_size, 1000);
    }
}
