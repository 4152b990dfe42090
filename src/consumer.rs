//! Where incoming RPCs reach the application.

use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use actix::{Actor, Addr, Recipient};
use babble_net_actors::dispatcher::{
    CloseDispatcher, Delivery, DispatchStats, Dispatcher, GetStats, SetDelivery,
};
use futures::Stream;
use slog::Logger;
use tokio::sync::mpsc;

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
    rx: mpsc::Receiver<Rpc>,
}

impl Consumer {
    /// Waits for the next RPC; `None` once the transport is closed.
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
/// delivers RPCs to it.
pub(crate) struct Inbox {
    dispatcher: Addr<Dispatcher>,
    /// The first consumer, queueing RPCs until the application takes it.
    first: Mutex<Option<Consumer>>,
    buffer: usize,
}

impl Inbox {
    /// Starts a Dispatcher on the current arbiter.
    pub(crate) fn start(buffer: usize, log: Logger) -> Inbox {
        let (tx, rx) = mpsc::channel(buffer);
        let dispatcher = Dispatcher::new(Delivery::Stream(tx), log).start();
        Inbox {
            dispatcher,
            first: Mutex::new(Some(Consumer { rx })),
            buffer,
        }
    }

    pub(crate) fn dispatcher(&self) -> &Addr<Dispatcher> {
        &self.dispatcher
    }

    pub(crate) fn consumer(&self) -> Consumer {
        if let Some(first) = self.first.lock().expect("consumer lock").take() {
            return first;
        }
        let (tx, rx) = mpsc::channel(self.buffer);
        self.dispatcher.do_send(SetDelivery(Delivery::Stream(tx)));
        Consumer { rx }
    }

    pub(crate) fn consume_with(&self, recipient: Recipient<Rpc>) {
        let first = self.first.lock().expect("consumer lock").take();
        let (Some(mut first), Ok(_)) = (first, tokio::runtime::Handle::try_current()) else {
            self.dispatcher
                .do_send(SetDelivery(Delivery::Actor(recipient)));
            return;
        };
        // RPCs that arrived before anyone consumed them wait in the first
        // stream: once the Dispatcher delivers to the recipient, they are
        // handed over too rather than dropped unanswered.
        let switched = self
            .dispatcher
            .send(SetDelivery(Delivery::Actor(recipient.clone())));
        actix_rt::spawn(async move {
            let _ = switched.await;
            while let Ok(rpc) = first.rx.try_recv() {
                recipient.do_send(rpc);
            }
        });
    }

    pub(crate) async fn stats(&self) -> Result<DispatchStats, TransportError> {
        self.dispatcher
            .send(GetStats)
            .await
            .map_err(|_| TransportError::Shutdown)
    }

    pub(crate) fn close(&self) {
        self.first.lock().expect("consumer lock").take();
        self.dispatcher.do_send(CloseDispatcher);
    }
}
