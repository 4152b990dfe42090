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

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use babble_net_actors::secure::stream;
use babble_net_actors::stream::{BoxConnection, StreamLayer, Upgraded};
use futures::future::BoxFuture;
use futures::FutureExt;

pub use babble_net_actors::identity::{KeyError, NodeKey, PeerKey};
pub use babble_net_actors::secure::{Acceptance, HandshakeError};

/// See the [module docs](self).
pub struct SecureStreamLayer {
    inner: Arc<dyn StreamLayer>,
    key: NodeKey,
    /// The key expected at each peer address.
    expected: Arc<HashMap<String, PeerKey>>,
    accept: Acceptance,
    handshake_timeout: Duration,
}

impl SecureStreamLayer {
    /// Wraps `inner`: this node is `key`; `peers` are its peers' addresses
    /// and keys (the dialler expects them; the listener accepts only them
    /// unless `accept_any_key`). An address that is itself a key (a WebRTC
    /// ID) needs no entry.
    pub fn new(
        inner: Arc<dyn StreamLayer>,
        key: NodeKey,
        peers: impl IntoIterator<Item = (String, PeerKey)>,
        accept_any_key: bool,
    ) -> SecureStreamLayer {
        let expected: HashMap<String, PeerKey> = peers.into_iter().collect();
        let accept = if accept_any_key {
            Acceptance::AnyKey
        } else {
            let keys: HashSet<PeerKey> = expected.values().copied().collect();
            Acceptance::Only(Arc::new(keys))
        };
        SecureStreamLayer {
            inner,
            key,
            expected: Arc::new(expected),
            accept,
            handshake_timeout: Duration::from_secs(5),
        }
    }

    /// How long a dialler's handshake may take (5 s by default); on the
    /// listener's side, `handshake-timeout` of the transport's config.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> SecureStreamLayer {
        self.handshake_timeout = timeout;
        self
    }

    /// The key expected at `address`.
    fn expected_at(&self, address: &str) -> Result<PeerKey, HandshakeError> {
        if let Some(key) = self.expected.get(address) {
            return Ok(*key);
        }
        PeerKey::parse(address).map_err(|_| HandshakeError::UnknownKey(address.to_owned()))
    }
}

impl StreamLayer for SecureStreamLayer {
    fn transport(&self) -> &'static str {
        self.inner.transport()
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        self.inner.accept()
    }

    fn upgrade(
        &self,
        connection: BoxConnection,
        remote: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<Upgraded>> {
        let inner = self.inner.upgrade(connection, remote, timeout);
        let (key, accept) = (self.key.clone(), self.accept.clone());
        async move {
            let upgraded = inner.await?;
            let (secured, peer_key) = stream::accept(upgraded.connection, &key, accept, timeout)
                .await
                .map_err(HandshakeError::into_io)?;
            Ok(Upgraded {
                connection: Box::new(secured),
                peer_key: Some(peer_key),
            })
        }
        .boxed()
    }

    fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let expect = self.expected_at(address);
        let dialling = self.inner.dial(address, timeout);
        let (key, handshake_timeout) = (self.key.clone(), self.handshake_timeout);
        async move {
            let expect = expect.map_err(HandshakeError::into_io)?;
            let connection = dialling.await?;
            let (secured, _) = stream::connect(connection, &key, expect, handshake_timeout)
                .await
                .map_err(HandshakeError::into_io)?;
            Ok(Box::new(secured) as BoxConnection)
        }
        .boxed()
    }

    fn local_addr(&self) -> String {
        self.inner.local_addr()
    }

    fn advertise_addr(&self) -> String {
        self.inner.advertise_addr()
    }

    fn close(&self) {
        self.inner.close()
    }
}

/// `layer` as it is, or secured as `config` says (`secure`, `key-file`,
/// the peers, `accept-any-key`).
pub(crate) fn wrap_if_secure(
    layer: Arc<dyn StreamLayer>,
    config: &crate::Config,
) -> Result<Arc<dyn StreamLayer>, crate::TransportError> {
    if !config.secure {
        return Ok(layer);
    }
    let key = config.node_key()?;
    let peers = config.peer_key_map()?;
    let secured = SecureStreamLayer::new(layer, key, peers, config.accept_any_key)
        .with_handshake_timeout(config.handshake_timeout);
    Ok(Arc::new(secured))
}
