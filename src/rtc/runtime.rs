//! The WebRTC stack's runtime: tokio, with UDP sockets whose kernel
//! buffers hold a whole SCTP receive window.
//!
//! A peer may have [`RECEIVE_WINDOW`](super::channel::RECEIVE_WINDOW)
//! bytes in flight towards a node. When they arrive faster than the
//! connection's task reads them (a busy machine), the kernel queues them in
//! the socket's receive buffer; Linux's default (`net.core.rmem_default`,
//! 208 KiB, of which a datagram takes about twice its size) holds far less
//! than a window, drops the rest, and each drop costs SCTP a retransmission
//! timeout of at least a second. So every socket asks for
//! [`SOCKET_BUFFER`] bytes each way. The kernel caps the request at
//! `net.core.rmem_max` / `wmem_max` without failing.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// The receive and send buffer each UDP socket asks the kernel for.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// See the [module docs](self).
pub struct TokioWithLargeBuffers(TokioRuntime);

impl TokioWithLargeBuffers {
    /// The runtime.
    pub fn new() -> Arc<dyn Runtime> {
        Arc::new(TokioWithLargeBuffers(TokioRuntime))
    }
}

impl fmt::Debug for TokioWithLargeBuffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokioWithLargeBuffers")
    }
}

impl Runtime for TokioWithLargeBuffers {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let raw = socket2::SockRef::from(&socket);
        // Best effort: a smaller buffer only means more retransmissions.
        let _ = raw.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = raw.set_send_buffer_size(SOCKET_BUFFER);
        self.0.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.0.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sockets_get_a_larger_receive_buffer_than_the_default() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let default = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
        let wrapped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = wrapped.try_clone().unwrap();
        let _async = TokioWithLargeBuffers::new()
            .wrap_udp_socket(wrapped)
            .unwrap();
        let enlarged = socket2::SockRef::from(&probe).recv_buffer_size().unwrap();
        let rmem_max: usize = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|max| max.trim().parse().ok())
            .unwrap_or(0);
        if rmem_max > default {
            assert!(enlarged > default, "{enlarged} <= default {default}");
        }
    }
}
