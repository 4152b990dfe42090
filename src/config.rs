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
    /// Time a secure handshake may take.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// WebRTC: peer connections other peers may hold to this node (two per
    /// peer at most); offers beyond it are refused.
    pub webrtc_max_peers: usize,
    /// WebRTC: data channels one peer may have open on its peer connection
    /// to this node; more are closed as they open.
    pub webrtc_max_channels: usize,
    /// Largest request accepted from a peer, in bytes (an EagerSync of a
    /// full sync limit of events must fit).
    pub max_request_size: usize,
    /// Largest reply accepted from a peer, in bytes (a FastForward snapshot
    /// must fit; base64 makes it a third larger).
    #[serde(alias = "max-frame-size")]
    pub max_reply_size: usize,
    /// Most inbound connections served at once. A new connection beyond it
    /// is still served: the connection idle longest is closed for it (or,
    /// when every one is in the middle of a request, the slowest one).
    pub max_inbound: usize,
    /// Most inbound connections from one IP address (one peer ID on
    /// WebRTC); beyond it that address's own connections are shed first.
    pub max_inbound_per_ip: usize,
    /// Bytes all inbound connections together may hold buffered while
    /// reading requests (each connection reads its first 64 KiB outside
    /// it); a connection that needs more waits, within its request's
    /// deadline.
    pub inbound_buffer_budget: usize,
    /// An inbound connection with no request for this long is closed.
    /// Whitespace does not count as a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections dialled at once to one peer; more callers wait for one
    /// of them (or for a pooled connection) within their timeout.
    pub max_dials_per_peer: usize,
    /// RPCs queued for the application before senders have to wait.
    pub consumer_buffer: usize,
    /// Threads (actix arbiters) the network transports' I/O and codec
    /// work runs on, shared by the transports of one actix system; the
    /// node's own arbiter only receives finished RPCs. 0 runs everything
    /// on the arbiter that created the transport. Default: the number of
    /// cores.
    pub io_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bind_addr: "127.0.0.1:1337".to_owned(),
            advertise: None,
            max_pool: 2,
            timeout: Duration::from_secs(1),
            join_timeout: Duration::from_secs(10),
            webrtc: false,
            signal_addr: "127.0.0.1:2443".to_owned(),
            signal_realm: "main".to_owned(),
            signal_skip_verify: false,
            signal_auth: false,
            signal_ca_file: None,
            ice_addr: None,
            ice_username: None,
            ice_password: None,
            secure: false,
            key_file: None,
            peers_file: None,
            peer_keys: BTreeMap::new(),
            accept_any_key: false,
            handshake_timeout: Duration::from_secs(5),
            webrtc_max_peers: 256,
            webrtc_max_channels: 64,
            min_transfer_rate: 64 * 1024,
            max_request_size: 16 * 1024 * 1024,
            max_reply_size: babble_net_actors::codec::DEFAULT_MAX_FRAME_SIZE,
            max_inbound: 1024,
            max_inbound_per_ip: 256,
            inbound_buffer_budget: 256 * 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            max_dials_per_peer: 4,
            consumer_buffer: 64,
            io_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
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
        if self.inbound_buffer_budget < self.max_request_size {
            return fail("inbound-buffer-budget must hold at least one max-request-size request");
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
        Ok(())
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
    /// or a dial slot), at most the timeout for a dial, and exchanges the
    /// request and reply within the timeout plus their bytes at
    /// `min-transfer-rate`. A call whose pooled connection turns out stale
    /// (closed before any reply byte) is retried once on a new one. So a
    /// call ends within six timeouts plus two of the largest requests and
    /// the largest reply at that rate (plus two handshake timeouts on a
    /// secure channel); a call to a peer that merely stops answering fails
    /// after about one timeout.
    pub fn call_bound(&self, rpc_type: crate::RpcType) -> Duration {
        let timeout = self.timeout_for(rpc_type);
        let bytes = (2 * self.max_request_size + self.max_reply_size) as f64;
        let handshakes = match self.secure {
            true => self.handshake_timeout * 2,
            false => Duration::ZERO,
        };
        timeout * 6 + handshakes + Duration::from_secs_f64(bytes / self.min_transfer_rate as f64)
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
