//! Where QUIC's own work runs. A layer has one lane per I/O thread (one,
//! on the node's thread, when it has none): each lane's endpoints and
//! their connections' drivers (packets in and out, timers, loss recovery,
//! crypto) run on its thread, whichever thread makes the calls. Their
//! streams are served and called on that thread too, so a burst of
//! packets never stalls the node's thread, a slow node thread never
//! delays acknowledgements, and no connection's state is shared between
//! two threads.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_rt::ArbiterHandle;
use quinn::{AsyncTimer, AsyncUdpSocket, Runtime, TokioRuntime};
use tokio::runtime::Handle;

use super::socket::ClosableSocket;

/// A quinn runtime that runs everything on one tokio runtime (an I/O
/// arbiter's), from whichever thread quinn is called.
#[derive(Debug)]
pub(super) struct IoRuntime {
    handle: Handle,
}

impl IoRuntime {
    /// On this thread's tokio runtime. Must be called inside one.
    pub(super) fn here() -> IoRuntime {
        IoRuntime {
            handle: Handle::current(),
        }
    }

    /// On the runtime of `arbiter`, an I/O thread.
    pub(super) fn on(arbiter: &ArbiterHandle) -> io::Result<IoRuntime> {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = arbiter.spawn_fn(move || {
            let _ = tx.send(Handle::current());
        });
        // Another thread answers at once: this wait is only for its
        // message to arrive.
        let handle = match sent {
            true => rx.recv_timeout(Duration::from_secs(5)).ok(),
            false => None,
        };
        handle
            .map(|handle| IoRuntime { handle })
            .ok_or_else(|| io::Error::other("the I/O threads have stopped"))
    }

    /// `socket`, driven by this runtime's reactor, and closable while
    /// quinn still holds it.
    pub(super) fn closable_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<ClosableSocket>> {
        let _inside = self.handle.enter();
        ClosableSocket::new(socket)
    }

    /// Runs `future` on the runtime.
    pub(super) fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.handle.spawn(future);
    }
}

impl Runtime for IoRuntime {
    fn new_timer(&self, at: Instant) -> Pin<Box<dyn AsyncTimer>> {
        let _inside = self.handle.enter();
        TokioRuntime.new_timer(at)
    }

    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) {
        self.handle.spawn(future);
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        // Registered with the I/O runtime's reactor, where the drivers
        // poll it.
        let _inside = self.handle.enter();
        TokioRuntime.wrap_udp_socket(socket)
    }
}
