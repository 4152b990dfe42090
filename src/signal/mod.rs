//! WebRTC signaling: the [`Signal`] a WebRTC transport uses to exchange
//! offers and answers with other peers before a direct link exists, its
//! WAMP client ([`WampSignal`]), and the router ([`router`], feature
//! `signal-server`) shipped as the `babble-signal` binary.

mod client;
#[cfg(feature = "signal-server")]
pub mod router;

use async_trait::async_trait;

pub use babble_net_core::signaling::tls::{client_config, Trust};
pub use babble_net_core::signaling::wamp::CALLER_ADDRESS;
pub use babble_net_core::signaling::{
    Offer, SignalError, SignalSettings, SignalStatus, TlsFailure,
};
pub use client::{Offers, WampSignal};

/// How WebRTC peers find each other: each registers under its ID; an offer
/// to an ID comes back with the target's answer.
#[async_trait]
pub trait Signal: Send + Sync {
    /// Our ID: where other peers send their offers.
    fn id(&self) -> String;

    /// Starts taking offers addressed to our ID; resolves once the
    /// signaling server has accepted the registration.
    async fn listen(&self) -> Result<(), SignalError>;

    /// The offers other peers make to us. The stream is handed out once;
    /// later calls return an empty stream.
    fn consumer(&self) -> Offers;

    /// Sends `sdp` (our offer, as SDP JSON) to `target` and returns its
    /// answer (SDP JSON).
    async fn offer(&self, target: &str, sdp: String) -> Result<String, SignalError>;

    /// Leaves the signaling server. Later offers fail with
    /// [`SignalError::Closed`].
    async fn close(&self) -> Result<(), SignalError>;
}
