//! The layer's UDP sockets, which closing the layer lets go of at once,
//! and the kernel buffers each asks for.
//!
//! quinn gives its socket to every connection, and a connection keeps it
//! while any handle to it lives (a stream some task still holds, a
//! connection still draining): the port would stay taken after the
//! transport closed, until the last of them is dropped, and a node
//! restarted on its address could not bind it. This socket closes its
//! descriptor when the layer says, whoever still holds it; from then on
//! nothing is sent (an error) or received (never ready).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{ready, Context, Poll};

use quinn::udp::{RecvMeta, Transmit, UdpSocketState};
use quinn::{AsyncUdpSocket, UdpPoller};
use slog::Logger;
use tokio::io::Interest;

/// See the [module docs](self).
#[derive(Debug)]
pub(super) struct ClosableSocket {
    /// The socket, until closed.
    io: RwLock<Option<tokio::net::UdpSocket>>,
    state: UdpSocketState,
    local: SocketAddr,
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the QUIC socket is closed")
}

impl ClosableSocket {
    /// Wraps `socket`, registered with the reactor of the tokio runtime
    /// this is called in.
    pub(super) fn new(socket: std::net::UdpSocket) -> io::Result<Arc<ClosableSocket>> {
        let state = UdpSocketState::new((&socket).into())?;
        let local = socket.local_addr()?;
        socket.set_nonblocking(true)?;
        let io = tokio::net::UdpSocket::from_std(socket)?;
        Ok(Arc::new(ClosableSocket {
            io: RwLock::new(Some(io)),
            state,
            local,
        }))
    }

    /// Closes the descriptor: the port is free when this returns.
    pub(super) fn close(&self) {
        let socket = self.io.write().expect("socket lock").take();
        drop(socket);
    }
}

impl AsyncUdpSocket for ClosableSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(Writable(self))
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let io = self.io.read().expect("socket lock");
        let io = io.as_ref().ok_or_else(closed)?;
        io.try_io(Interest::WRITABLE, || self.state.send(io.into(), transmit))
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [io::IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let io = self.io.read().expect("socket lock");
        // Closed: nothing will arrive, and the endpoint need not hear more.
        let Some(io) = io.as_ref() else {
            return Poll::Pending;
        };
        loop {
            ready!(io.poll_recv_ready(cx))?;
            if let Ok(read) = io.try_io(Interest::READABLE, || {
                self.state.recv(io.into(), bufs, meta)
            }) {
                return Poll::Ready(Ok(read));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }

    fn may_fragment(&self) -> bool {
        self.state.may_fragment()
    }

    fn max_transmit_segments(&self) -> usize {
        self.state.max_gso_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.state.gro_segments()
    }
}

/// Whether the socket can take a packet (a connection asks before it
/// sends); a closed socket says so at once.
#[derive(Debug)]
struct Writable(Arc<ClosableSocket>);

impl UdpPoller for Writable {
    fn poll_writable(self: Pin<&mut Self>, cx: &mut Context) -> Poll<io::Result<()>> {
        let io = self.0.io.read().expect("socket lock");
        match io.as_ref() {
            Some(io) => io.poll_send_ready(cx),
            None => Poll::Ready(Err(closed())),
        }
    }
}

/// The kernel buffer asked for each way of the UDP socket.
///
/// QUIC sends a window of packets at once; when they arrive faster than
/// the driver reads them, a full receive buffer drops them, and each drop
/// costs a loss-detection delay (tens of milliseconds). The system's
/// default (about 208 KiB on Linux) is less than one inbound connection's
/// window; the kernel grants at most `net.core.rmem_max` /
/// `net.core.wmem_max`.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Asks for [`SOCKET_BUFFER`] each way, and says at debug level what the
/// kernel granted (a node works with less, but loses packets under load).
pub(super) fn socket_buffers(socket: &UdpSocket, log: &Logger) {
    let socket = socket2::SockRef::from(socket);
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    slog::debug!(log, "QUIC socket buffers";
        "receive" => socket.recv_buffer_size().unwrap_or(0),
        "send" => socket.send_buffer_size().unwrap_or(0));
}
