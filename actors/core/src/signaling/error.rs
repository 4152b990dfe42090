//! Why a signaling operation failed.

use std::time::Duration;

/// Why a signaling operation failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignalError {
    /// The router could not be reached or the WebSocket handshake failed.
    #[error("cannot reach the signaling server: {0}")]
    Connect(String),
    /// The TLS handshake with the router failed; `failure` says how, so a
    /// wrong name or an expired certificate can be told apart in code.
    #[error("TLS handshake with {host} failed: {detail}")]
    Tls {
        /// The host name the certificate was checked against.
        host: String,
        /// The kind of failure.
        failure: TlsFailure,
        /// What the TLS library reported.
        detail: String,
    },
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

/// How a TLS handshake with the signaling server failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsFailure {
    /// The certificate does not name the host dialled.
    NotValidForName,
    /// The certificate has expired (or is not valid yet).
    Expired,
    /// The certificate does not chain to a trusted authority: its issuer
    /// is unknown, or a signature in the chain does not verify (a pinned
    /// certificate that is not the server's).
    Untrusted,
    /// Another certificate problem (bad signature, revoked, ...).
    BadCertificate,
    /// Not a certificate problem: the connection failed during the
    /// handshake or the peer broke the TLS protocol.
    Other,
}

impl TlsFailure {
    /// Classifies what the TLS connector reported.
    pub fn of(error: &std::io::Error) -> TlsFailure {
        use rustls::CertificateError as C;
        let Some(rustls::Error::InvalidCertificate(cert)) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsFailure::Other;
        };
        match cert {
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsFailure::NotValidForName,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => TlsFailure::Expired,
            C::UnknownIssuer | C::BadSignature => TlsFailure::Untrusted,
            _ => TlsFailure::BadCertificate,
        }
    }
}

fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(" ({message})")
    }
}
