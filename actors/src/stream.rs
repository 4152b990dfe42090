//! The byte streams a network transport runs on.

use std::io;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::identity::PeerKey;

/// A connection: any bidirectional byte stream.
pub trait Connection: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Connection for T {}

/// A boxed [`Connection`], so that TCP sockets and WebRTC data channels
/// travel through the same actors.
pub type BoxConnection = Box<dyn Connection>;

/// An accepted connection, ready to serve.
pub struct Upgraded {
    /// The connection (decrypted, on a secure layer).
    pub connection: BoxConnection,
    /// The peer's verified key, when the layer authenticates peers.
    pub peer_key: Option<PeerKey>,
}

/// What a network transport needs from the network below it: accept
/// connections, dial peers, and say where it can be reached.
///
/// TCP and WebRTC implement it, and `NetworkTransport` runs on either.
pub trait StreamLayer: Send + Sync + 'static {
    /// Waits for the next inbound connection; returns it with a name for
    /// the remote end (for logs). Errors are retried by the caller after a
    /// pause, so a transient one (out of file descriptors) must not be
    /// permanent. After [`close`](StreamLayer::close) it fails for good.
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>>;

    /// Completes an accepted connection before its first request is read:
    /// a secure layer runs its handshake here, in the connection's own
    /// task (a slow handshake holds only its own slot), within `timeout`.
    /// Returns the connection to serve and, when the layer verified it,
    /// the peer's key. By default the connection as it is.
    fn upgrade(
        &self,
        connection: BoxConnection,
        remote: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<Upgraded>> {
        let _ = (remote, timeout);
        Box::pin(futures::future::ready(Ok(Upgraded {
            connection,
            peer_key: None,
        })))
    }

    /// Opens a connection to `address`, giving up after `timeout`.
    fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<BoxConnection>>;

    /// The address this layer is bound to.
    fn local_addr(&self) -> String;

    /// The `transport` label of the metrics of a transport on this layer
    /// (`tcp`, `webrtc`; `custom` unless the layer says).
    fn transport(&self) -> &'static str {
        "custom"
    }

    /// The address peers should dial to reach it.
    fn advertise_addr(&self) -> String;

    /// Stops accepting and releases the listening resources (the port, the
    /// signaling session). Idempotent.
    fn close(&self);
}
