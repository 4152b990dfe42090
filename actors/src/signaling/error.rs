//! Why a signaling operation failed.

use std::time::Duration;

/// Why a signaling operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The router could not be reached or the WebSocket/TLS handshake failed.
    #[error("cannot reach the signaling server: {0}")]
    Connect(String),
    /// No session with the router could be opened within the connect
    /// timeout (the client keeps trying in the background).
    #[error("no session with the signaling server {address} within {after:?}: {why}")]
    Unreachable {
        /// The router's URL.
        address: String,
        /// The connect timeout.
        after: Duration,
        /// Why the last attempt failed.
        why: String,
    },
    /// The router refused the session (unknown realm, ...).
    #[error("the signaling server refused the session: {reason}{}", detail(.message))]
    Aborted {
        /// The reason URI.
        reason: String,
        /// The router's message, if any.
        message: String,
    },
    /// Another session already registered our ID in this realm.
    #[error("the ID {0} is already registered on the signaling server")]
    AlreadyRegistered(String),
    /// Nobody registered the target ID.
    #[error("no peer {0} on the signaling server")]
    UnknownPeer(String),
    /// No answer in time; the call was canceled.
    #[error("no answer from {target} within {after:?}")]
    Timeout {
        /// The target of the offer.
        target: String,
        /// The timeout.
        after: Duration,
    },
    /// A limit was reached (too many offers in flight, the callee busy):
    /// try again later.
    #[error("signaling busy: {0}")]
    Busy(String),
    /// The target (or the router) answered with an error.
    #[error("the offer failed: {uri}{}", detail(.message))]
    Remote {
        /// The error URI, such as `io.babble.processing_offer`.
        uri: String,
        /// The first error argument, if any.
        message: String,
    },
    /// Not connected to the router right now (it reconnects by itself).
    #[error("not connected to the signaling server")]
    Disconnected,
    /// The signal was closed.
    #[error("signal closed")]
    Closed,
    /// With authentication on: an answer unsigned, signed by another key,
    /// stale or replayed; or the router refused our credentials.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// The router broke the protocol.
    #[error("signaling protocol error: {0}")]
    Protocol(String),
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}
