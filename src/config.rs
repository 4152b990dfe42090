//! Transport configuration, with Go Babble's names and defaults.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

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
    /// this long (so a large transfer that keeps flowing does not).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The same deadline for Join, which waits on consensus.
    #[serde(with = "humantime_serde")]
    pub join_timeout: Duration,
    /// Use the WebRTC transport instead of TCP.
    pub webrtc: bool,
    /// Address of the WebRTC signaling server.
    pub signal_addr: String,
    /// Realm (routing domain) on the signaling server.
    pub signal_realm: String,
    /// Accept any TLS certificate from the signaling server (tests only).
    pub signal_skip_verify: bool,
    /// Trust the signaling server certificates in this PEM file (a CA, or
    /// the server's self-signed certificate) instead of the system's roots.
    pub signal_ca_file: Option<std::path::PathBuf>,
    /// STUN/TURN server for WebRTC, such as `stun:stun.l.google.com:19302`.
    pub ice_addr: Option<String>,
    /// Username for the TURN server.
    pub ice_username: Option<String>,
    /// Password for the TURN server.
    pub ice_password: Option<String>,
    /// WebRTC: peer connections other peers may hold to this node (two per
    /// peer at most); offers beyond it are refused.
    pub webrtc_max_peers: usize,
    /// WebRTC: data channels one peer may have open on its peer connection
    /// to this node; more are closed as they open.
    pub webrtc_max_channels: usize,
    /// Largest frame accepted in either direction, in bytes.
    pub max_frame_size: usize,
    /// Most inbound connections served at once; more wait to be accepted.
    pub max_inbound: usize,
    /// An inbound connection on which no byte arrives for this long is
    /// closed, whether it is idle or stopped half-way through a request.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// RPCs queued for the application before senders have to wait.
    pub consumer_buffer: usize,
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
            signal_ca_file: None,
            ice_addr: None,
            ice_username: None,
            ice_password: None,
            webrtc_max_peers: 256,
            webrtc_max_channels: 64,
            max_frame_size: babble_net_actors::codec::DEFAULT_MAX_FRAME_SIZE,
            max_inbound: 512,
            idle_timeout: Duration::from_secs(60),
            consumer_buffer: 64,
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

    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), TransportError> {
        let fail = |what: &str| Err(TransportError::Config(what.to_owned()));
        if self.timeout.is_zero() {
            return fail("timeout must be greater than zero");
        }
        if self.join_timeout.is_zero() {
            return fail("join-timeout must be greater than zero");
        }
        if self.idle_timeout.is_zero() {
            return fail("idle-timeout must be greater than zero");
        }
        if self.max_frame_size < 64 {
            return fail("max-frame-size must be at least 64 bytes");
        }
        if self.max_inbound == 0 {
            return fail("max-inbound must be at least 1");
        }
        if self.consumer_buffer == 0 {
            return fail("consumer-buffer must be at least 1");
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
}

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
}
