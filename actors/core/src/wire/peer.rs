use serde::{Deserialize, Serialize};

/// A member of a Babble group (Go `peers.Peer`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Peer {
    /// The address other nodes dial: `host:port` on TCP, the signaling ID
    /// on WebRTC.
    #[serde(rename = "NetAddr")]
    pub net_addr: String,
    /// The peer's public key, hex encoded with a `0X` prefix.
    #[serde(rename = "PubKeyHex")]
    pub pub_key_hex: String,
    /// A human-readable name.
    #[serde(rename = "Moniker")]
    pub moniker: String,
}

impl Peer {
    /// A peer with the given address, public key and moniker.
    pub fn new(
        net_addr: impl Into<String>,
        pub_key_hex: impl Into<String>,
        moniker: impl Into<String>,
    ) -> Self {
        Peer {
            net_addr: net_addr.into(),
            pub_key_hex: pub_key_hex.into(),
            moniker: moniker.into(),
        }
    }
}
