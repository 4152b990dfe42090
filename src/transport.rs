//! The interface every transport offers a node.

use actix::Recipient;
use async_trait::async_trait;

use crate::codec::Reply;
use crate::consumer::Consumer;
use crate::{
    Command, EagerSyncRequest, EagerSyncResponse, FastForwardRequest, FastForwardResponse,
    JoinRequest, JoinResponse, RemoteError, Response, Rpc, RpcType, SyncRequest, SyncResponse,
    TransportError,
};

/// How a node talks to its peers, whatever carries the bytes.
///
/// Object safe: a node can hold an `Arc<dyn Transport>` and switch between
/// the in-memory, TCP and WebRTC transports. Transports start actors, so
/// they must be created inside an actix system (`#[actix_rt::main]`,
/// `actix_rt::System::new().block_on(..)`); their methods can then be
/// called from any task.
///
/// A transport only needs [`Transport::call`]; the typed methods wrap it.
/// After [`Transport::close`] every call fails with
/// [`TransportError::Shutdown`].
#[async_trait]
pub trait Transport: Send + Sync {
    /// Starts serving incoming RPCs (for network transports, accepting
    /// connections). Calling it again does nothing.
    fn listen(&self) -> Result<(), TransportError>;

    /// The stream of incoming RPCs. The first call returns the stream that
    /// has been queueing RPCs since the transport was created; a later call
    /// returns a new stream that receives the RPCs from then on.
    fn consumer(&self) -> Consumer;

    /// Delivers incoming RPCs to an actor instead of a stream.
    fn consume_with(&self, recipient: Recipient<Rpc>);

    /// The address this transport is bound to.
    fn local_addr(&self) -> String;

    /// The address peers should use to reach this transport.
    fn advertise_addr(&self) -> String;

    /// Sends `command` to `target` and waits for the answer.
    async fn call(&self, target: &str, command: Command) -> Result<Response, TransportError>;

    /// Stops the transport: no more accepting, in-flight and later calls
    /// fail with [`TransportError::Shutdown`], every connection is closed.
    /// Closing twice is harmless.
    async fn close(&self) -> Result<(), TransportError>;

    /// Whether [`Transport::close`] has been called.
    fn is_shutdown(&self) -> bool;

    /// Pull gossip: asks `target` for the events we do not know.
    async fn sync(
        &self,
        target: &str,
        request: SyncRequest,
    ) -> Result<SyncResponse, TransportError> {
        typed(target, self.call(target, request.into()).await)
    }

    /// Push gossip: gives `target` the events it does not know.
    async fn eager_sync(
        &self,
        target: &str,
        request: EagerSyncRequest,
    ) -> Result<EagerSyncResponse, TransportError> {
        typed(target, self.call(target, request.into()).await)
    }

    /// Asks `target` for a block, frame and snapshot to start from.
    async fn fast_forward(
        &self,
        target: &str,
        request: FastForwardRequest,
    ) -> Result<FastForwardResponse, TransportError> {
        typed(target, self.call(target, request.into()).await)
    }

    /// Asks `target` to let us join the group. Uses the join timeout.
    async fn join(
        &self,
        target: &str,
        request: JoinRequest,
    ) -> Result<JoinResponse, TransportError> {
        typed(target, self.call(target, request.into()).await)
    }
}

/// The response as the type asked for; a reply of another type is the
/// peer breaking the protocol.
fn typed<T: TryFrom<Response, Error = Response>>(
    target: &str,
    response: Result<Response, TransportError>,
) -> Result<T, TransportError> {
    response?
        .try_into()
        .map_err(|other: Response| TransportError::Decode {
            peer: target.to_owned(),
            reason: format!("a {} response to another request", other.rpc_type()),
        })
}

/// Turns what came back for a request of type `rpc_type` into the call's
/// result: a non-empty error string wins (as in Go Babble), and a `null`
/// response with no error is the zero response, as a Go client sees it.
pub(crate) fn reply_to_result(reply: Reply, rpc_type: RpcType) -> Result<Response, TransportError> {
    if !reply.error.is_empty() {
        return Err(TransportError::Remote(RemoteError::from_wire(reply.error)));
    }
    Ok(reply.response.unwrap_or_else(|| Response::zero(rpc_type)))
}
