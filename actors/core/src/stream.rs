//! The byte streams a network transport runs on.

use std::io;
use std::net::SocketAddr;
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

/// Takes an inbound connection in, on the thread where it is driven (see
/// [`StreamLayer::take_where_driven`]).
pub type TakeInbound = std::sync::Arc<dyn Fn(Inbound) + Send + Sync>;

/// An inbound connection, as a layer accepts it.
pub struct Inbound {
    /// The connection.
    pub connection: BoxConnection,
    /// A name for the remote end, for logs and [`crate::rpc::Rpc::from`]:
    /// its socket address (TCP), its peer ID (WebRTC).
    pub remote: String,
    /// Where the connection comes from on the network, when `remote` does
    /// not say it (a WebRTC link's remote address, as ICE verified it).
    /// With `remote`, it makes the connection's source for the caps and
    /// fair service (see [`crate::source`]).
    pub address: Option<SocketAddr>,
    /// The peer's key, when the layer verified it while accepting (QUIC
    /// checks it in the TLS handshake of the connection a stream belongs
    /// to). A key from [`StreamLayer::upgrade`] takes precedence.
    pub peer_key: Option<PeerKey>,
}

impl Inbound {
    /// `connection` from `remote`, a name that says where it comes from
    /// (a socket address) or is its own source.
    pub fn new(connection: BoxConnection, remote: String) -> Inbound {
        Inbound {
            connection,
            remote,
            address: None,
            peer_key: None,
        }
    }
}

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
    /// the remote end (its socket address, or a peer ID). Errors are
    /// retried by the caller after a pause, so a transient one (out of
    /// file descriptors) must not be permanent. After
    /// [`close`](StreamLayer::close) it fails for good.
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>>;

    /// [`accept`](StreamLayer::accept), with the network address the
    /// connection comes from when its name does not say it (see
    /// [`Inbound::address`]): what the Listener calls. By default the
    /// name alone; a layer whose names are not addresses (WebRTC) says
    /// where the connection comes from.
    fn accept_inbound(&self) -> BoxFuture<'_, io::Result<Inbound>> {
        Box::pin(async move {
            let (connection, remote) = self.accept().await?;
            Ok(Inbound::new(connection, remote))
        })
    }

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

    /// Whether each call has a connection of its own (QUIC: a connection
    /// here is one stream of a QUIC connection). On such a layer the
    /// caller finishes its side after the request (which is not a
    /// hang-up), the callee finishes after the reply, the connection is
    /// never reused, and a call whose request never reached the peer
    /// ([`NotDelivered`]) is retried once if it is idempotent (not a
    /// Join). By default
    /// `false`: connections carry one call after another and are pooled.
    fn one_call_per_connection(&self) -> bool {
        false
    }

    /// Whether the layer dials and drives its connection to a peer
    /// address on the I/O thread the transport's I/O threads pick for that
    /// address (`IoArbiters::for_key`): calls to it are then made there,
    /// so that a connection's bytes never cross threads and only requests
    /// and decoded replies do (QUIC). `false` (the default): calls are
    /// made on the caller's thread.
    fn calls_where_driven(&self) -> bool {
        false
    }

    /// Lets the layer hand each inbound connection to `take` itself, on
    /// the thread that drives it, instead of through
    /// [`accept_inbound`](Self::accept_inbound): for a layer whose
    /// connections are driven on several I/O threads (WebRTC: each peer
    /// connection on the thread of its peer), so that a connection's bytes
    /// never cross threads and only decoded requests and replies do.
    /// `take` must be called from a task of an actix arbiter (its local
    /// set). Returns whether the layer will; by default `false`, and
    /// connections are accepted through `accept_inbound`. Those a layer
    /// accepted before it was given `take` still come through
    /// `accept_inbound`.
    fn take_where_driven(&self, take: TakeInbound) -> bool {
        let _ = take;
        false
    }

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

/// Carried by the I/O error of a call whose connection, open before the
/// call, was lost before the peer acknowledged the request or sent a byte
/// of the reply: most likely a stale connection to a peer that restarted.
/// A lost acknowledgement proves nothing, so only an idempotent call
/// (Sync, EagerSync, FastForward) is made again, once, on a new
/// connection.
#[derive(Debug)]
pub struct NotDelivered;

impl std::fmt::Display for NotDelivered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the connection was lost before the peer received the request")
    }
}

impl std::error::Error for NotDelivered {}

impl NotDelivered {
    /// Whether `error` carries [`NotDelivered`].
    pub fn is(error: &io::Error) -> bool {
        error
            .get_ref()
            .is_some_and(|inner| inner.is::<NotDelivered>())
    }
}
