//! Authenticated, encrypted connections between nodes: the libp2p Noise
//! handshake keyed to each node's Babble key, as a [`StreamLayer`] that
//! wraps any other (TCP, WebRTC, your own).
//!
//! The dialler checks that the node it reaches holds the key it expects
//! for that address; the listener accepts only its peers' keys (or any
//! key that proves itself, if told so); every incoming [`Rpc`](crate::Rpc)
//! carries its sender's verified key in `peer_key`. Inside the channel the
//! bytes are Go Babble's frames, unchanged. Go Babble speaks plaintext
//! only, so a network is secure or plaintext as a whole.
//!
//! ```
//! use std::sync::Arc;
//! use babble_net::secure::{NodeKey, SecureStreamLayer};
//! use babble_net::stream::{StreamLayer, TcpStreamLayer};
//! use babble_net::{logging, Config, NetworkTransport, Response, SyncRequest, SyncResponse, Transport};
//! use futures::StreamExt;
//!
//! # actix_rt::System::new().block_on(async {
//! let (alice_key, bob_key) = (NodeKey::generate(), NodeKey::generate());
//! let alice_public = alice_key.public();
//! let secure = |tcp: TcpStreamLayer, key: &NodeKey, peer: (String, _)| {
//!     let layer = SecureStreamLayer::new(Arc::new(tcp), key.clone(), [peer], false);
//!     NetworkTransport::new(Arc::new(layer), &Config::default(), logging::discard())
//! };
//!
//! // Bob accepts Alice only, and learns who called.
//! let bob_tcp = TcpStreamLayer::bind("127.0.0.1:0", None).unwrap();
//! let bob_addr = bob_tcp.advertise_addr();
//! let bob = secure(bob_tcp, &bob_key, ("alice".into(), alice_public));
//! bob.listen().unwrap();
//! let mut rpcs = bob.consumer();
//! actix_rt::spawn(async move {
//!     while let Some(rpc) = rpcs.next().await {
//!         assert_eq!(rpc.peer_key, Some(alice_public));
//!         rpc.respond(Ok(Response::Sync(SyncResponse::default())));
//!     }
//! });
//!
//! // Alice expects Bob's key at Bob's address.
//! let alice_tcp = TcpStreamLayer::bind("127.0.0.1:0", None).unwrap();
//! let alice = secure(alice_tcp, &alice_key, (bob_addr.clone(), bob_key.public()));
//! alice.sync(&bob_addr, SyncRequest::default()).await.unwrap();
//! # });
//! ```

#[cfg(feature = "secure")]
mod layer;

use std::sync::Arc;

use babble_net_core::stream::StreamLayer;

pub use babble_net_core::identity::{KeyError, NodeKey, PeerKey};
pub use babble_net_core::secure::Acceptance;
pub use babble_net_core::secure::HandshakeError;
#[cfg(feature = "secure")]
pub use layer::SecureStreamLayer;

/// `layer` as it is, or secured as `config` says (`secure`, `key-file`,
/// the peers, `accept-any-key`).
pub(crate) fn wrap_if_secure(
    layer: Arc<dyn StreamLayer>,
    config: &crate::Config,
) -> Result<Arc<dyn StreamLayer>, crate::TransportError> {
    if !config.secure {
        return Ok(layer);
    }
    secure_layer(layer, config)
}

#[cfg(feature = "secure")]
fn secure_layer(
    layer: Arc<dyn StreamLayer>,
    config: &crate::Config,
) -> Result<Arc<dyn StreamLayer>, crate::TransportError> {
    let key = config.node_key()?;
    let peers = config.peer_key_map()?;
    let secured = SecureStreamLayer::new(layer, key, peers, config.accept_any_key)
        .with_handshake_timeout(config.handshake_timeout);
    Ok(Arc::new(secured))
}

#[cfg(not(feature = "secure"))]
fn secure_layer(
    _: Arc<dyn StreamLayer>,
    _: &crate::Config,
) -> Result<Arc<dyn StreamLayer>, crate::TransportError> {
    Err(crate::TransportError::Config(
        "secure = true needs the feature `secure` (babble-net was built without it)".into(),
    ))
}
