//! The secure channel's protocol: the libp2p Noise handshake keyed to the
//! node's Babble key as a state machine without I/O (`handshake`, feature
//! `secure`), and its errors ([`HandshakeError`], always here, as a kind
//! of [`crate::error::TransportError`]). babble-net-actors runs it over a
//! stream and encrypts every byte after it.
//!
//! Every handshake and transport message travels as a 2-byte big-endian
//! length and the Noise message (at most 65535 bytes, tag included).

#[cfg(feature = "secure")]
pub mod handshake;
#[cfg(any(feature = "secure", feature = "quic"))]
pub(crate) mod payload;

use std::io;
use std::time::Duration;

use crate::identity::PeerKey;

#[cfg(feature = "secure")]
pub use handshake::Handshake;

/// Which peers' keys a listener accepts (the secure channel's responder,
/// the QUIC listener).
#[derive(Clone, Debug)]
pub enum Acceptance {
    /// Any key that proves it holds its private key.
    AnyKey,
    /// Only these keys (the node's peer set).
    Only(std::sync::Arc<std::collections::HashSet<PeerKey>>),
}

impl Acceptance {
    /// Whether `key` is accepted.
    pub fn accepts(&self, key: &PeerKey) -> bool {
        match self {
            Acceptance::AnyKey => true,
            Acceptance::Only(keys) => keys.contains(key),
        }
    }
}

/// Why a secure handshake failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer is not the node expected at that address.
    #[error("the peer is {got}, not the expected {expected}")]
    WrongKey {
        /// The key expected for the address dialled.
        expected: PeerKey,
        /// The key the peer proved it holds.
        got: PeerKey,
    },
    /// The peer's identity signature does not match its key and channel.
    #[error("the identity signature of {key} is not valid")]
    BadSignature {
        /// The key the peer claimed.
        key: PeerKey,
    },
    /// The peer proved its key, but it is not one of this node's peers.
    #[error("{key} is not one of this node's peers")]
    NotAPeer {
        /// The peer's key.
        key: PeerKey,
    },
    /// Nothing says which key to expect at the address dialled.
    #[error("no key is known for {0}: give the node its peers' keys")]
    UnknownKey(String),
    /// The peer completed the handshake and then refused this node (on
    /// QUIC: its key is not one of the peer's peers, or not the key the
    /// peer expected at this node's address).
    #[error("the peer refused this node: {0}")]
    RefusedByPeer(String),
    /// The handshake did not finish in time.
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    /// The peer broke the protocol.
    #[error("malformed handshake: {0}")]
    Malformed(String),
    /// The connection failed during the handshake.
    #[error("the connection failed during the handshake: {0}")]
    Io(String),
}

impl HandshakeError {
    /// As an I/O error of a fitting kind, carrying `self` (see
    /// [`HandshakeError::from_io`]).
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            HandshakeError::Timeout(_) => io::ErrorKind::TimedOut,
            HandshakeError::Malformed(_) => io::ErrorKind::InvalidData,
            HandshakeError::Io(_) => io::ErrorKind::ConnectionAborted,
            _ => io::ErrorKind::PermissionDenied,
        };
        io::Error::new(kind, self)
    }

    /// The handshake error an I/O error carries, if it does.
    pub fn from_io(error: &io::Error) -> Option<&HandshakeError> {
        error.get_ref()?.downcast_ref::<HandshakeError>()
    }
}
