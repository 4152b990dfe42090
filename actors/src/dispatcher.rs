//! The Dispatcher actor: hands every incoming RPC, from any transport, to
//! the application.
//!
//! The application takes RPCs as a stream (a bounded channel) or through an
//! actix [`Recipient`]. When it falls behind, the Dispatcher makes senders
//! wait: a network reader stops reading from its socket, so the pressure
//! reaches the peer. An RPC that cannot be delivered (transport closed,
//! consumer gone) is answered with an error at once, so no caller hangs.

use actix::prelude::*;
use slog::{debug, Logger};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;

use crate::error::{NOT_CONSUMING, SHUTTING_DOWN};
use crate::rpc::Rpc;
use crate::wire::RpcType;

/// Where the Dispatcher delivers RPCs.
pub enum Delivery {
    /// The sending half of the channel behind a consumer stream.
    Stream(mpsc::Sender<Rpc>),
    /// An actor of the application.
    Actor(Recipient<Rpc>),
}

/// Counts of RPCs seen by a Dispatcher.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DispatchStats {
    /// Sync requests received.
    pub sync: u64,
    /// EagerSync requests received.
    pub eager_sync: u64,
    /// FastForward requests received.
    pub fast_forward: u64,
    /// Join requests received.
    pub join: u64,
    /// RPCs answered with an error because nobody could take them.
    pub refused: u64,
}

impl DispatchStats {
    /// All RPCs received.
    pub fn total(&self) -> u64 {
        self.sync + self.eager_sync + self.fast_forward + self.join
    }

    fn count(&mut self, rpc_type: RpcType) {
        match rpc_type {
            RpcType::Sync => self.sync += 1,
            RpcType::EagerSync => self.eager_sync += 1,
            RpcType::FastForward => self.fast_forward += 1,
            RpcType::Join => self.join += 1,
        }
    }
}

/// See the [module docs](self).
pub struct Dispatcher {
    delivery: Option<Delivery>,
    stats: DispatchStats,
    log: Logger,
}

impl Dispatcher {
    /// A Dispatcher delivering to `delivery`.
    pub fn new(delivery: Delivery, log: Logger) -> Self {
        Dispatcher {
            delivery: Some(delivery),
            stats: DispatchStats::default(),
            log,
        }
    }

    fn refuse(&mut self, rpc: Rpc, why: &'static str) {
        self.stats.refused += 1;
        debug!(self.log, "refusing RPC"; "rpc" => %rpc.rpc_type(), "peer" => ?rpc.from, "why" => why);
        rpc.respond(Err(why.to_owned()));
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;
}

/// Delivers an RPC to the application. Resolves once the application has
/// taken it (or it was refused); the answer comes through the RPC itself.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Dispatch(pub Rpc);

impl Handler<Dispatch> for Dispatcher {
    type Result = actix::Response<()>;

    fn handle(&mut self, Dispatch(rpc): Dispatch, _: &mut Context<Self>) -> Self::Result {
        self.stats.count(rpc.rpc_type());
        match &self.delivery {
            None => self.refuse(rpc, SHUTTING_DOWN),
            Some(Delivery::Stream(tx)) => match tx.try_send(rpc) {
                Ok(()) => {}
                Err(TrySendError::Full(rpc)) => {
                    // The consumer is behind: the sender waits with us.
                    let tx = tx.clone();
                    return actix::Response::fut(async move {
                        if let Err(mpsc::error::SendError(rpc)) = tx.send(rpc).await {
                            rpc.respond(Err(NOT_CONSUMING.to_owned()));
                        }
                    });
                }
                Err(TrySendError::Closed(rpc)) => self.refuse(rpc, NOT_CONSUMING),
            },
            Some(Delivery::Actor(recipient)) => match recipient.try_send(rpc) {
                Ok(()) => {}
                Err(SendError::Full(rpc)) => {
                    let recipient = recipient.clone();
                    // If the actor dies first, the RPC is dropped with the
                    // message and the caller told so.
                    return actix::Response::fut(async move {
                        let _ = recipient.send(rpc).await;
                    });
                }
                Err(SendError::Closed(rpc)) => {
                    debug!(self.log, "the consumer actor is gone");
                    self.refuse(rpc, NOT_CONSUMING)
                }
            },
        }
        actix::Response::reply(())
    }
}

/// Replaces where RPCs are delivered. RPCs already queued for the previous
/// consumer stay there.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetDelivery(pub Delivery);

impl Handler<SetDelivery> for Dispatcher {
    type Result = ();

    fn handle(&mut self, SetDelivery(delivery): SetDelivery, _: &mut Context<Self>) {
        if self.delivery.is_some() {
            self.delivery = Some(delivery);
        }
    }
}

/// Returns the counts so far.
#[derive(Message)]
#[rtype(result = "DispatchStats")]
pub struct GetStats;

impl Handler<GetStats> for Dispatcher {
    type Result = MessageResult<GetStats>;

    fn handle(&mut self, _: GetStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.stats)
    }
}

/// Stops delivering: later RPCs are refused with "transport shutdown" and
/// the consumer stream ends once drained.
#[derive(Message)]
#[rtype(result = "()")]
pub struct CloseDispatcher;

impl Handler<CloseDispatcher> for Dispatcher {
    type Result = ();

    fn handle(&mut self, _: CloseDispatcher, _: &mut Context<Self>) {
        self.delivery = None;
    }
}
