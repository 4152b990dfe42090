//! The signaling protocol without sockets: the WAMP messages a node and
//! the router exchange ([`wamp`]), signed offers and answers ([`signed`])
//! and the replay memory that takes each once, the node's session as a
//! state machine ([`client::SignalClient`]) that babble-net-actors drives
//! over a WebSocket, the offers it hands the node ([`Offer`]), and the
//! TLS settings of the connection ([`tls`]).

mod answering;
pub mod client;
mod error;
mod offer;
mod replay;
mod settings;
pub mod signed;
pub mod tls;
pub mod wamp;

pub use client::SignalClient;
pub use error::{SignalError, TlsFailure};
pub use offer::Offer;
pub use settings::SignalSettings;

/// Where a signaling session stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignalStatus {
    /// The router's session ID, when connected.
    pub session: Option<u64>,
    /// Whether our ID is registered.
    pub registered: bool,
    /// Why the last attempt to open a session failed, if it did.
    pub last_error: Option<SignalError>,
}
