//! The secure channel as a [`StreamLayer`] over any other.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::time::Duration;

use babble_net_actors::secure::stream;
use babble_net_core::stream::{BoxConnection, Inbound, StreamLayer, Upgraded};
use futures::future::BoxFuture;
use futures::FutureExt;

use babble_net_core::identity::{NodeKey, PeerKey};
use babble_net_core::secure::{Acceptance, HandshakeError};

/// See the [module docs](crate::secure).
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

    fn accept_inbound(&self) -> BoxFuture<'_, io::Result<Inbound>> {
        self.inner.accept_inbound()
    }

    fn upgrade(
        &self,
        connection: BoxConnection,
        remote: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<Upgraded>> {
        let inner = self.inner.upgrade(connection, remote, timeout);
        let (key, accept) = (self.key.clone(), self.accept.clone());
        // A remote named by a key (a WebRTC peer's ID, the offer's `from`)
        // must be the key the handshake proves: nobody takes another
        // key's places under its name.
        let named = PeerKey::parse(remote).ok();
        let remote = remote.to_owned();
        async move {
            let upgraded = inner.await?;
            let (secured, peer_key) = stream::accept(upgraded.connection, &key, accept, timeout)
                .await
                .map_err(HandshakeError::into_io)?;
            if named.is_some_and(|named| named != peer_key) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!("the peer named {remote} proved another key, {peer_key}"),
                ));
            }
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
