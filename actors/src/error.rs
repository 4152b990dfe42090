//! The one error type of every transport.

use std::io;
use std::time::Duration;

use crate::codec::CodecError;
use crate::secure::HandshakeError;

/// What a caller is told when the node took its request and dropped it
/// without answering.
pub(crate) const DROPPED_WITHOUT_ANSWER: &str = "the node dropped the request without answering";
/// What a caller is told when the node does not take RPCs (its consumer
/// is gone).
pub(crate) const NOT_CONSUMING: &str = "the node is not consuming RPCs";
/// What a caller is told when the node's transport is closing.
pub(crate) const SHUTTING_DOWN: &str = "transport shutdown";

/// Why a transport call failed.
///
/// Match on the variant, or use the predicates ([`is_timeout`],
/// [`is_remote`], ...) when only the kind of failure matters.
///
/// [`is_timeout`]: TransportError::is_timeout
/// [`is_remote`]: TransportError::is_remote
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The transport was closed; it accepts no more calls.
    #[error("transport shutdown")]
    Shutdown,
    /// No answer in time: the deadline passed with no progress.
    #[error("no answer from {peer} within {after:?}")]
    Timeout {
        /// The peer that did not answer.
        peer: String,
        /// The timeout that applied.
        after: Duration,
    },
    /// The target is not a peer this transport can reach (in-memory
    /// transport: not connected; WebRTC: nobody registered under that ID).
    #[error("unknown peer {0}")]
    UnknownPeer(String),
    /// The remote node's handler answered with this error, verbatim.
    #[error("remote node answered with an error: {0}")]
    Remote(String),
    /// No connection to the peer could be made.
    #[error("cannot connect to {peer}: {source}")]
    Connect {
        /// The peer dialled.
        peer: String,
        /// What the dial reported.
        #[source]
        source: io::Error,
    },
    /// Reading or writing a connection failed.
    #[error("I/O error with {peer}: {source}")]
    Io {
        /// The peer at the other end.
        peer: String,
        /// What the socket reported.
        #[source]
        source: io::Error,
    },
    /// The peer sent something that is not a valid frame.
    #[error("malformed frame from {peer}: {reason}")]
    Decode {
        /// The peer that sent it.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// A frame was larger than the configured maximum.
    #[error("frame from {peer} larger than the {max}-byte limit")]
    FrameTooLarge {
        /// The peer that sent it.
        peer: String,
        /// The limit.
        max: usize,
    },
    /// The configuration cannot work (bad address, unresolvable advertise
    /// address, zero limits, ...).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The secure channel's handshake failed: the peer is not who it
    /// should be, or could not prove it.
    #[error("secure handshake with {peer} failed: {source}")]
    Handshake {
        /// The peer dialled.
        peer: String,
        /// What went wrong.
        #[source]
        source: HandshakeError,
    },
}

impl TransportError {
    /// The call ran out of time.
    pub fn is_timeout(&self) -> bool {
        matches!(self, TransportError::Timeout { .. })
    }

    /// The transport is closed.
    pub fn is_shutdown(&self) -> bool {
        matches!(self, TransportError::Shutdown)
    }

    /// The remote handler returned an error.
    pub fn is_remote(&self) -> bool {
        matches!(self, TransportError::Remote(_))
    }

    /// No connection could be made to the peer.
    pub fn is_connect(&self) -> bool {
        matches!(self, TransportError::Connect { .. })
    }

    /// The secure channel's handshake failed (wrong key, bad signature,
    /// not a peer, timeout).
    pub fn is_handshake(&self) -> bool {
        matches!(self, TransportError::Handshake { .. })
    }

    /// The remote node took the request but dropped it without answering
    /// (a Rust node dropped its [`Rpc`](crate::rpc::Rpc) unanswered).
    pub fn is_unanswered(&self) -> bool {
        matches!(self, TransportError::Remote(m) if m == DROPPED_WITHOUT_ANSWER)
    }

    /// The remote node's transport refused the request: it is closing, or
    /// the node takes no RPCs. Another peer may answer.
    pub fn is_refused(&self) -> bool {
        matches!(self, TransportError::Remote(m) if m == NOT_CONSUMING || m == SHUTTING_DOWN)
    }

    /// Maps a codec failure on a connection with `peer`. An I/O timeout
    /// becomes [`TransportError::Timeout`] with the deadline `after`.
    pub fn from_codec(error: CodecError, peer: &str, after: Duration) -> TransportError {
        let peer = peer.to_owned();
        match error {
            CodecError::Io(source) if source.kind() == io::ErrorKind::TimedOut => {
                TransportError::Timeout { peer, after }
            }
            CodecError::Io(source) => TransportError::Io { peer, source },
            CodecError::FrameTooLarge { max, .. } => TransportError::FrameTooLarge { peer, max },
            other => TransportError::Decode {
                peer,
                reason: other.to_string(),
            },
        }
    }
}
