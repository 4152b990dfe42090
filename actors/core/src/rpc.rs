//! An incoming RPC and the means to answer it.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::codec::Reply;
use crate::error::DROPPED_WITHOUT_ANSWER;
use crate::identity::PeerKey;
use crate::wire::{Command, Response, RpcType};

/// An RPC received from a peer, to be answered exactly once.
///
/// Answer with [`Rpc::respond`]. Dropping an `Rpc` (or its [`Responder`])
/// unanswered is safe: the caller gets an error saying so
/// ([`TransportError::is_unanswered`](crate::error::TransportError::is_unanswered))
/// instead of waiting for its timeout.
///
/// ```
/// # use babble_net_core::rpc::Rpc;
/// # use babble_net_core::wire::{Command, Response, SyncResponse};
/// fn handle(rpc: Rpc) {
///     match &rpc.command {
///         Command::Sync(request) => {
///             let known = request.known.clone();
///             rpc.respond(Ok(Response::Sync(SyncResponse { from_id: 1, events: None, known })));
///         }
///         _ => rpc.respond(Err("not supported here".into())),
///     }
/// }
/// ```
pub struct Rpc {
    /// The request.
    pub command: Command,
    /// Where it came from: the peer's address when the transport knows it.
    pub from: Option<String>,
    /// The sender's key, verified by a secure channel's handshake; `None`
    /// on a plaintext transport.
    pub peer_key: Option<PeerKey>,
    responder: Responder,
}

#[cfg(feature = "actix")]
impl actix::Message for Rpc {
    type Result = ();
}

impl fmt::Debug for Rpc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rpc")
            .field("rpc", &self.command.rpc_type())
            .field("from", &self.from)
            .field("peer_key", &self.peer_key)
            .finish_non_exhaustive()
    }
}

impl Rpc {
    /// An RPC for `command` and the future its answer will complete.
    pub fn new(command: Command, from: Option<String>) -> (Rpc, PendingReply) {
        let (tx, rx) = oneshot::channel();
        let responder = Responder {
            rpc_type: command.rpc_type(),
            tx,
        };
        let rpc = Rpc {
            command,
            from,
            peer_key: None,
            responder,
        };
        (rpc, PendingReply { rx })
    }

    /// Which RPC this is.
    pub fn rpc_type(&self) -> RpcType {
        self.command.rpc_type()
    }

    /// Answers the RPC: a response of the same kind as the command, or an
    /// error message for the caller.
    pub fn respond(self, result: Result<Response, String>) {
        self.responder.respond(result)
    }

    /// Whether the caller has stopped waiting for the answer: it hung up
    /// (its connection closed) or gave up. Answering is still harmless;
    /// a node may skip expensive work.
    pub fn is_abandoned(&self) -> bool {
        self.responder.is_abandoned()
    }

    /// Resolves once the caller has stopped waiting for the answer; see
    /// [`Rpc::is_abandoned`].
    pub async fn abandoned(&mut self) {
        self.responder.abandoned().await
    }

    /// Splits the RPC, so the command can be moved out and answered later.
    pub fn into_parts(self) -> (Command, Responder) {
        (self.command, self.responder)
    }
}

/// The answering half of an [`Rpc`].
pub struct Responder {
    rpc_type: RpcType,
    tx: oneshot::Sender<Reply>,
}

impl fmt::Debug for Responder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("rpc", &self.rpc_type)
            .finish_non_exhaustive()
    }
}

impl Responder {
    /// Answers the RPC, see [`Rpc::respond`].
    ///
    /// A response of the wrong kind (a Join response to a Sync) is not
    /// sent; the caller gets an error naming the mismatch instead.
    pub fn respond(self, result: Result<Response, String>) {
        let reply = match result {
            Ok(response) if response.rpc_type() == self.rpc_type => Reply::ok(response),
            Ok(response) => Reply::error(format!(
                "the node answered a {} request with a {} response",
                self.rpc_type,
                response.rpc_type()
            )),
            Err(message) => Reply::error(message),
        };
        self.respond_with(reply);
    }

    /// Sends `reply` as it is, error and response both, the way a Go
    /// handler may.
    pub fn respond_with(self, reply: Reply) {
        // The caller may have given up already; nothing is left to tell.
        let _ = self.tx.send(reply);
    }

    /// Whether the caller has stopped waiting for the answer.
    pub fn is_abandoned(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves once the caller has stopped waiting for the answer.
    pub async fn abandoned(&mut self) {
        self.tx.closed().await
    }
}

/// The answer to an [`Rpc`], as seen by whoever delivered it.
///
/// Resolves to a reply saying the request was dropped when the [`Rpc`] is
/// dropped unanswered.
#[must_use = "a pending reply does nothing unless awaited"]
pub struct PendingReply {
    rx: oneshot::Receiver<Reply>,
}

impl Future for PendingReply {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|result| result.unwrap_or_else(|_| Reply::error(DROPPED_WITHOUT_ANSWER)))
    }
}
