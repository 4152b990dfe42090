//! Where incoming RPCs reach the application.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use std::sync::Arc;

use actix::{Actor, Addr, Recipient};
use babble_net_actors::dispatcher::{DeliverTo, DispatchStats, Dispatcher};
use babble_net_actors::fair_queue::{FairQueue, QueueReceiver};
use futures::Stream;
use slog::Logger;

use crate::{Rpc, TransportError};

/// The stream of RPCs received by a transport; see
/// [`Transport::consumer`](crate::Transport::consumer).
///
/// ```no_run
/// # async fn serve(transport: &dyn babble_net::Transport) {
/// use futures::StreamExt;
/// let mut rpcs = transport.consumer();
/// while let Some(rpc) = rpcs.next().await {
///     rpc.respond(Err("this node answers nothing".into()));
/// }
/// # }
/// ```
#[derive(Debug)]
pub struct Consumer {
    rx: QueueReceiver,
}

impl Consumer {
    /// Waits for the next RPC; `None` once the transport is closed (or
    /// another consumer took over: RPCs go to the newest).
    pub async fn recv(&mut self) -> Option<Rpc> {
        self.rx.recv().await
    }
}

impl Stream for Consumer {
    type Item = Rpc;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Rpc>> {
        self.rx.poll_recv(cx)
    }
}

/// A transport's side of the Dispatcher: starts it, hands out consumers,
/// and the queue RPCs arrive in.
pub(crate) struct Inbox {
    dispatcher: Addr<Dispatcher>,
    queue: Arc<FairQueue>,
    /// The first consumer, queueing RPCs until the application takes it.
    first: Mutex<Option<Consumer>>,
}

impl Inbox {
    /// Starts a Dispatcher on the current arbiter, with room for
    /// `per_source` RPCs per source; the queue's gauges are labelled
    /// `transport`.
    pub(crate) fn start(per_source: usize, transport: &'static str, log: Logger) -> Inbox {
        let gauges = babble_net_actors::metrics::QueueGauges::of(transport);
        let (queue, rx) = FairQueue::with_gauges(per_source, gauges);
        let dispatcher = Dispatcher::new(queue.clone(), log).start();
        Inbox {
            dispatcher,
            queue,
            first: Mutex::new(Some(Consumer { rx })),
        }
    }

    /// Where the transport's connections queue their RPCs.
    pub(crate) fn queue(&self) -> &Arc<FairQueue> {
        &self.queue
    }

    pub(crate) fn consumer(&self) -> Consumer {
        if let Some(first) = self.first.lock().expect("consumer lock").take() {
            return first;
        }
        Consumer {
            rx: self.queue.receiver(),
        }
    }

    pub(crate) fn consume_with(&self, recipient: Recipient<Rpc>) {
        // The new receiver takes over first, so RPCs that arrived before
        // anyone consumed them go to the recipient rather than being
        // refused when the first consumer is dropped.
        let receiver = self.queue.receiver();
        drop(self.first.lock().expect("consumer lock").take());
        self.dispatcher.do_send(DeliverTo {
            recipient,
            receiver,
        });
    }

    pub(crate) async fn stats(&self) -> Result<DispatchStats, TransportError> {
        Ok(self.queue.stats())
    }

    pub(crate) fn close(&self) {
        self.queue.close();
        self.first.lock().expect("consumer lock").take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumers_transports_and_rpcs_can_be_sent_and_shared_between_threads() {
        fn send_and_sync<T: Send + Sync>() {}
        send_and_sync::<Consumer>();
        send_and_sync::<crate::NetworkTransport>();
        send_and_sync::<crate::InmemTransport>();
        send_and_sync::<Rpc>();
    }
}
