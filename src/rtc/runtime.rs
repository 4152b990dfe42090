//! The WebRTC stack's runtime, one per peer connection: tokio, with UDP
//! sockets whose kernel buffers hold a whole SCTP receive window, and a
//! connection driver that takes two quick turns after each wake-up.
//!
//! **Socket buffers.** A peer may have [`RECEIVE_WINDOW`](super::channel::RECEIVE_WINDOW)
//! bytes in flight towards a node. When they arrive faster than the
//! connection's task reads them (a busy machine), the kernel queues them in
//! the socket's receive buffer; Linux's default (`net.core.rmem_default`,
//! 208 KiB, of which a datagram takes about twice its size) holds far less
//! than a window, drops the rest, and each drop costs SCTP a retransmission
//! timeout of at least a second. So every socket asks for
//! [`SOCKET_BUFFER`] bytes each way. The kernel caps the request at
//! `net.core.rmem_max` / `wmem_max` without failing.
//!
//! **Quick turns.** The stack's connection driver (webrtc 0.21.1) sends
//! some packets only on the turn of its loop after the one that produced
//! them: every packet relayed through TURN (the relay's send queue is
//! emptied before the connection's new packets are put in it), and the
//! first DTLS and SCTP handshake messages (sent when timers are handled).
//! A turn only comes with the next packet, API call or timer, which can be
//! the 200 ms ICE tick: connecting took 0.6 s on loopback, and every
//! relayed request, reply and acknowledgement waited up to 200 ms. The
//! driver task asks this runtime for one timer per turn, so after any turn
//! that did something (its timer was cancelled by other work, or fired at
//! its deadline) the driver's next [`QUICK_TURNS`] timers last at most
//! [`QUICK_TURN`]. An idle connection takes those few turns per tick and
//! sleeps again. Timers asked for by other tasks (the stack's wait for its
//! driver to stop on close, its back-pressure backstop) are left alone.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

/// The receive and send buffer each UDP socket asks the kernel for.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// Timers after a turn that did something, see the [module docs](self).
pub const QUICK_TURNS: u8 = 2;
/// The longest of those timers.
pub const QUICK_TURN: Duration = Duration::from_millis(1);

/// See the [module docs](self).
pub struct DriverRuntime {
    tokio: TokioRuntime,
    /// Quick timers left.
    quick_turns: Arc<AtomicU8>,
}

impl DriverRuntime {
    /// A runtime for one peer connection.
    pub fn for_connection() -> Arc<dyn Runtime> {
        Arc::new(DriverRuntime {
            tokio: TokioRuntime,
            quick_turns: Arc::new(AtomicU8::new(0)),
        })
    }
}

impl fmt::Debug for DriverRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DriverRuntime")
    }
}

tokio::task_local! {
    /// Set while a connection's driver task is being polled.
    static DRIVER_TASK: ();
}

/// A timer that, once done with (fired or cancelled), grants the quick
/// turns again, unless it was one of them and fired.
struct Timer {
    sleep: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
    quick: bool,
    fired: bool,
    quick_turns: Arc<AtomicU8>,
}

impl Future for Timer {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        ready!(self.sleep.as_mut().poll(cx));
        self.fired = true;
        Poll::Ready(())
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !(self.quick && self.fired) {
            self.quick_turns.store(QUICK_TURNS, Ordering::Relaxed);
        }
    }
}

impl Runtime for DriverRuntime {
    /// The stack spawns only its connection driver here (and TCP dials,
    /// which babble-net does not use).
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.tokio.spawn(Box::pin(DRIVER_TASK.scope((), future)))
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.tokio
            .spawn_reactor(reactor_pool_size, Box::pin(DRIVER_TASK.scope((), future)))
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let raw = socket2::SockRef::from(&socket);
        // Best effort: a smaller buffer only means more retransmissions.
        let _ = raw.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = raw.set_send_buffer_size(SOCKET_BUFFER);
        self.tokio.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.tokio.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.tokio.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.tokio.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.tokio.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        if DRIVER_TASK.try_with(|_| ()).is_err() {
            return self.tokio.sleep(duration);
        }
        let quick = self
            .quick_turns
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                left.checked_sub(1)
            })
            .is_ok();
        let duration = if quick {
            duration.min(QUICK_TURN)
        } else {
            duration
        };
        Box::pin(Timer {
            sleep: self.tokio.sleep(duration),
            quick,
            fired: false,
            quick_turns: self.quick_turns.clone(),
        })
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.tokio.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.tokio.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.tokio.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `runtime`'s next timer of an hour fires within `QUICK_TURN`.
    async fn next_timer_is_quick(runtime: &Arc<dyn Runtime>) -> bool {
        let timer = runtime.sleep(Duration::from_secs(3600));
        tokio::time::timeout(QUICK_TURN + Duration::from_micros(1), timer)
            .await
            .is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_timer_grants_the_driver_two_quick_turns_then_timers_are_long_again() {
        let runtime = DriverRuntime::for_connection();
        DRIVER_TASK
            .scope((), async {
                assert!(
                    !next_timer_is_quick(&runtime).await,
                    "no quick turn at first"
                );
                // The timer above was cancelled (dropped unfired): work happened.
                assert!(next_timer_is_quick(&runtime).await);
                assert!(next_timer_is_quick(&runtime).await);
                // Both quick turns fired without other work: back to sleeping.
                assert!(!next_timer_is_quick(&runtime).await);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fires_at_its_deadline_grants_the_driver_quick_turns() {
        let runtime = DriverRuntime::for_connection();
        DRIVER_TASK
            .scope((), async {
                runtime.sleep(Duration::from_millis(200)).await;
                assert!(next_timer_is_quick(&runtime).await);
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn timers_of_other_tasks_are_never_shortened() {
        let runtime = DriverRuntime::for_connection();
        // The driver did something: it has quick turns in hand.
        DRIVER_TASK
            .scope((), async { assert!(!next_timer_is_quick(&runtime).await) })
            .await;
        // A task waiting for the driver to stop still waits its full time.
        let stop_wait = runtime.sleep(Duration::from_millis(100));
        let waited = tokio::time::timeout(Duration::from_millis(99), stop_wait).await;
        assert!(waited.is_err(), "a close's wait was cut short");
    }

    /// Linux grants `min(asked, <sysctl>_max)` and reports twice that (its
    /// bookkeeping overhead); a socket left alone keeps `<sysctl>_default`,
    /// which is at most the max: so the figures below differ from the
    /// untouched socket's on any kernel, stock settings included.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn sockets_ask_for_a_window_of_kernel_buffer_each_way() {
        let sysctl = |name: &str| -> usize {
            let path = format!("/proc/sys/net/core/{name}");
            std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{path}: {e}"))
                .trim()
                .parse()
                .unwrap_or_else(|e| panic!("{path}: {e}"))
        };
        let wrapped = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let probe = socket2::SockRef::from(&wrapped).try_clone().unwrap();
        let _async = DriverRuntime::for_connection()
            .wrap_udp_socket(wrapped)
            .unwrap();
        let receive = probe.recv_buffer_size().unwrap();
        let send = probe.send_buffer_size().unwrap();
        assert_eq!(receive, 2 * SOCKET_BUFFER.min(sysctl("rmem_max")));
        assert_eq!(send, 2 * SOCKET_BUFFER.min(sysctl("wmem_max")));
        // An untouched socket has the default, half of the above or less.
        let untouched = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let untouched = socket2::SockRef::from(&untouched);
        assert!(untouched.recv_buffer_size().unwrap() < receive);
    }
}
