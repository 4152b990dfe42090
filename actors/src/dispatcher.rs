//! The Dispatcher actor: hands every incoming RPC, from any transport, to
//! the application.
//!
//! RPCs reach the application through the transport's [`FairQueue`]
//! (sources served in turn). The application takes them as a stream (a
//! [`QueueReceiver`]) or through an actix [`Recipient`]: then the
//! Dispatcher feeds the recipient one RPC at a time, in the queue's order,
//! so that the actor's mailbox never holds a flood's RPCs ahead of an
//! honest one. When the application falls behind, senders wait: a network
//! reader stops reading from its socket, so the pressure reaches the peer.
//! An RPC that cannot be delivered (transport closed, consumer gone) is
//! answered with an error at once, so no caller hangs. Counts and closing
//! are the queue's own ([`FairQueue::stats`], [`FairQueue::close`]).

use std::sync::Arc;

use actix::prelude::*;
use slog::{debug, Logger};

use crate::error::NOT_CONSUMING;
pub use crate::fair_queue::DispatchStats;
use crate::fair_queue::{FairQueue, QueueReceiver};
use crate::rpc::Rpc;

/// See the [module docs](self).
pub struct Dispatcher {
    queue: Arc<FairQueue>,
    log: Logger,
}

impl Dispatcher {
    /// A Dispatcher for the RPCs of `queue`.
    pub fn new(queue: Arc<FairQueue>, log: Logger) -> Self {
        Dispatcher { queue, log }
    }
}

impl Actor for Dispatcher {
    type Context = Context<Self>;
}

/// Delivers RPCs to an actor of the application from now on, through
/// `receiver` (the queue's current receiver: RPCs already waiting go to the
/// actor too).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DeliverTo {
    /// The application's actor.
    pub recipient: Recipient<Rpc>,
    /// Where the RPCs come from.
    pub receiver: QueueReceiver,
}

impl Handler<DeliverTo> for Dispatcher {
    type Result = ();

    fn handle(&mut self, deliver: DeliverTo, _: &mut Context<Self>) {
        let DeliverTo {
            recipient,
            mut receiver,
        } = deliver;
        let (log, queue) = (self.log.clone(), self.queue.clone());
        actix_rt::spawn(async move {
            while let Some(rpc) = receiver.recv().await {
                if !recipient.connected() {
                    debug!(log, "the consumer actor is gone");
                    // Dropping the receiver refuses the rest too.
                    return queue.refuse(rpc, NOT_CONSUMING);
                }
                // One at a time: the queue, not the mailbox, decides the
                // order. If the actor dies first, the RPC is dropped with
                // the message and the caller told so.
                let _ = recipient.send(rpc).await;
            }
        });
    }
}
