//! The one error type of every transport.

use std::io;
use std::time::Duration;

use crate::codec::CodecError;
use crate::secure::HandshakeError;

/// What a caller is told when the node took its request and dropped it
/// without answering.
pub const DROPPED_WITHOUT_ANSWER: &str = "the node dropped the request without answering";
/// What a caller is told when the node does not take RPCs (its consumer
/// is gone).
pub const NOT_CONSUMING: &str = "the node is not consuming RPCs";
/// What a caller is told when the node's transport is closing.
pub const SHUTTING_DOWN: &str = "transport shutdown";
/// What a caller is told when the node's replies waiting to be written
/// fill its outbound buffer budget for longer than the timeout.
pub const REPLIES_BACKED_UP: &str = "the node's outbound buffer budget is exhausted";

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
    /// The remote node answered with this error (its text verbatim, and
    /// its kind: see [`RemoteError`]).
    #[error("remote node answered with an error: {0}")]
    Remote(RemoteError),
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
    /// A request could not be encoded as a frame (a value Go's JSON
    /// cannot carry).
    #[error("cannot encode a request to {peer}: {reason}")]
    Encode {
        /// The peer it was for.
        peer: String,
        /// What was wrong.
        reason: String,
    },
    /// The peer sent something that is not a valid frame, or a reply of
    /// another type than the request's.
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

/// What kind of error a remote node answered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RemoteKind {
    /// Its handler answered with an error (a Go node's, or a Rust node's
    /// `Rpc::respond(Err(..))`).
    Handler,
    /// It took the request but dropped it without answering.
    Unanswered,
    /// Its transport refused the request: closing, not consuming RPCs, or
    /// its replies waiting to be written fill its outbound budget.
    Refused,
}

/// An error a remote node answered with: the text it sent, verbatim, and
/// its [`RemoteKind`].
///
/// Go Babble's wire carries an error as text only; the refusals of a
/// babble-net node are recognised once, when the reply is read
/// ([`RemoteError::from_wire`]), and from then on the kind says what
/// happened. It compares equal to its text.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RemoteError {
    message: String,
    kind: RemoteKind,
}

impl RemoteError {
    /// The error a reply carried, `message`, with its kind.
    pub fn from_wire(message: String) -> RemoteError {
        let kind = match message.as_str() {
            DROPPED_WITHOUT_ANSWER => RemoteKind::Unanswered,
            NOT_CONSUMING | SHUTTING_DOWN | REPLIES_BACKED_UP => RemoteKind::Refused,
            _ => RemoteKind::Handler,
        };
        RemoteError { message, kind }
    }

    /// Its kind.
    pub fn kind(&self) -> RemoteKind {
        self.kind
    }

    /// The text the remote node sent.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl std::fmt::Display for RemoteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RemoteError {}

impl From<String> for RemoteError {
    fn from(message: String) -> RemoteError {
        RemoteError::from_wire(message)
    }
}

impl From<&str> for RemoteError {
    fn from(message: &str) -> RemoteError {
        RemoteError::from_wire(message.to_owned())
    }
}

impl PartialEq<str> for RemoteError {
    fn eq(&self, other: &str) -> bool {
        self.message == other
    }
}

impl std::ops::Deref for RemoteError {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

/// A copy of the same variant and fields, for a failure shared by several
/// callers (calls waiting on one dial): an I/O source is copied as its
/// kind and text.
impl Clone for TransportError {
    fn clone(&self) -> TransportError {
        let copy = |source: &io::Error| io::Error::new(source.kind(), source.to_string());
        match self {
            TransportError::Shutdown => TransportError::Shutdown,
            TransportError::Timeout { peer, after } => TransportError::Timeout {
                peer: peer.clone(),
                after: *after,
            },
            TransportError::UnknownPeer(peer) => TransportError::UnknownPeer(peer.clone()),
            TransportError::Remote(error) => TransportError::Remote(error.clone()),
            TransportError::Connect { peer, source } => TransportError::Connect {
                peer: peer.clone(),
                source: copy(source),
            },
            TransportError::Io { peer, source } => TransportError::Io {
                peer: peer.clone(),
                source: copy(source),
            },
            TransportError::Encode { peer, reason } => TransportError::Encode {
                peer: peer.clone(),
                reason: reason.clone(),
            },
            TransportError::Decode { peer, reason } => TransportError::Decode {
                peer: peer.clone(),
                reason: reason.clone(),
            },
            TransportError::FrameTooLarge { peer, max } => TransportError::FrameTooLarge {
                peer: peer.clone(),
                max: *max,
            },
            TransportError::Config(why) => TransportError::Config(why.clone()),
            TransportError::Handshake { peer, source } => TransportError::Handshake {
                peer: peer.clone(),
                source: source.clone(),
            },
        }
    }
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
        matches!(self, TransportError::Remote(e) if e.kind() == RemoteKind::Unanswered)
    }

    /// The remote node's transport refused the request: it is closing, the
    /// node takes no RPCs, or its replies waiting to be written fill its
    /// outbound budget. Another peer may answer.
    pub fn is_refused(&self) -> bool {
        matches!(self, TransportError::Remote(e) if e.kind() == RemoteKind::Refused)
    }

    /// Maps a codec failure on a connection with `peer`. An I/O timeout
    /// becomes [`TransportError::Timeout`] with the deadline `after`.
    pub fn from_codec(error: CodecError, peer: &str, after: Duration) -> TransportError {
        let peer = peer.to_owned();
        match error {
            CodecError::Io(source) if source.kind() == io::ErrorKind::TimedOut => {
                TransportError::Timeout { peer, after }
            }
            CodecError::Io(source) => match crate::secure::HandshakeError::from_io(&source) {
                // A refusal the layer learnt of only once the call began.
                Some(refusal) => TransportError::Handshake {
                    peer,
                    source: refusal.clone(),
                },
                None => TransportError::Io { peer, source },
            },
            CodecError::FrameTooLarge { max, .. } => TransportError::FrameTooLarge { peer, max },
            other => TransportError::Decode {
                peer,
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_error_is_read_once_into_its_kind() {
        let refused = RemoteError::from_wire(REPLIES_BACKED_UP.to_owned());
        assert_eq!(refused.kind(), RemoteKind::Refused);
        let unanswered = RemoteError::from_wire(DROPPED_WITHOUT_ANSWER.to_owned());
        assert_eq!(unanswered.kind(), RemoteKind::Unanswered);
        // A handler's text is the handler's, whatever it says.
        let handler = RemoteError::from_wire("boom: the node is not consuming RPCs".into());
        assert_eq!(handler.kind(), RemoteKind::Handler);
        assert!(!TransportError::Remote(handler.clone()).is_refused());
        assert!(TransportError::Remote(refused).is_refused());
        assert!(TransportError::Remote(unanswered).is_unanswered());
        assert_eq!(handler, *"boom: the node is not consuming RPCs");
        // Made from text, as a handler's answer is: the kind comes along.
        let made: RemoteError = NOT_CONSUMING.into();
        assert!(TransportError::Remote(made).is_refused());
    }

    #[test]
    fn a_shared_failure_keeps_its_variant_and_kind() {
        let handshake = TransportError::Handshake {
            peer: "p".into(),
            source: HandshakeError::Timeout(Duration::from_secs(1)),
        };
        assert!(handshake.clone().is_handshake());
        let connect = TransportError::Connect {
            peer: "p".into(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "refused"),
        };
        let TransportError::Connect { source, .. } = connect.clone() else {
            panic!("another variant");
        };
        assert_eq!(source.kind(), io::ErrorKind::ConnectionRefused);
        assert_eq!(source.to_string(), "refused");
    }
}
