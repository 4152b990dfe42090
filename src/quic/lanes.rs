//! A QUIC layer's lanes: one per I/O thread (one, on the node's thread,
//! when the transport has none). Everything of a lane runs on its thread:
//! its endpoints, their sockets' packets, their connections' drivers, and
//! the streams of those connections, served and called there. So no
//! packet and no connection's state crosses between threads; only decoded
//! requests and replies reach the node's thread (DESIGN.md, "Threads").
//!
//! * Accepting: on Linux, every lane has an endpoint on the one listening
//!   port (`SO_REUSEPORT`). The kernel hands each datagram to one of them
//!   by a hash of the peer's address and port, keyed with a secret of its
//!   own: all of a connection's packets reach one lane, and peers cannot
//!   choose theirs. A peer whose address changes mid-connection (a NAT
//!   rebinding) may reach another lane, which does not know the
//!   connection: it is reset, and the peer's next call dials anew.
//!   Elsewhere the first lane alone accepts.
//! * Dialling: a connection to a peer address is made on the lane the
//!   transport's I/O threads pick for that address
//!   ([`IoArbiters::index_for_key`]), where the pools make their calls to
//!   it. With more than one lane, each dials from an endpoint of its own
//!   on a port of its own (peers see the node's calls come from it, as TCP
//!   calls come from ports of their own); with one, the listening endpoint
//!   dials too.

use std::io;
use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::Arc;

use babble_net_actors::io_arbiters::IoArbiters;
use quinn::{Endpoint, EndpointConfig};
use slog::Logger;

use super::runtime::IoRuntime;
use super::socket::{socket_buffers, ClosableSocket};

/// See the [module docs](self).
pub(super) struct Lane {
    /// Where the lane's endpoints and connections run.
    pub(super) runtime: Arc<IoRuntime>,
    /// The endpoint peers' connections arrive on (on Linux, every lane's
    /// shares the listening port), if this lane accepts.
    pub(super) accepting: Option<Endpoint>,
    /// The endpoint this lane's calls dial from.
    pub(super) dialling: Endpoint,
    /// Whether `dialling` is an endpoint of its own.
    dials_apart: bool,
    /// The lane's sockets, closed with the layer.
    sockets: Vec<Arc<ClosableSocket>>,
}

impl Lane {
    /// The lane's sockets, to close when the layer closes.
    pub(super) fn sockets(&self) -> Vec<Arc<ClosableSocket>> {
        self.sockets.clone()
    }

    /// The lane's endpoints.
    pub(super) fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        let dialling = Some(&self.dialling).filter(|_| self.dials_apart);
        self.accepting.iter().chain(dialling)
    }
}

/// How the lanes' endpoints are made.
pub(super) struct LaneConfig<'a> {
    pub(super) server: quinn::ServerConfig,
    /// Made anew for each endpoint.
    pub(super) endpoint: &'a dyn Fn() -> EndpointConfig,
    pub(super) log: &'a Logger,
}

/// The lanes of a layer bound to `bind_addr`, one per I/O thread of `io`,
/// and the address they listen on. Must be called inside a tokio runtime.
pub(super) fn bind(
    bind_addr: &str,
    io: &IoArbiters,
    config: LaneConfig,
) -> io::Result<(Vec<Lane>, SocketAddr)> {
    let (addr, accepting) = bind_first(bind_addr, accepting_lanes(io))?;
    let runtimes = match io.is_empty() {
        true => vec![IoRuntime::here()],
        false => (io.arbiters().iter())
            .map(IoRuntime::on)
            .collect::<io::Result<_>>()?,
    };
    let local = accepting[0].local_addr()?;
    let mut accepting = accepting.into_iter();
    let mut lanes = Vec::with_capacity(runtimes.len());
    let alone = runtimes.len() == 1;
    for runtime in runtimes {
        let runtime = Arc::new(runtime);
        let endpoint = |socket: UdpSocket, server: Option<quinn::ServerConfig>| {
            socket_buffers(&socket, config.log);
            let socket = runtime.closable_socket(socket)?;
            let endpoint = Endpoint::new_with_abstract_socket(
                (config.endpoint)(),
                server,
                socket.clone(),
                runtime.clone(),
            )?;
            Ok::<_, io::Error>((endpoint, socket))
        };
        let mut sockets = Vec::with_capacity(2);
        let listening = match accepting.next() {
            Some(socket) => {
                let (endpoint, socket) = endpoint(socket, Some(config.server.clone()))?;
                sockets.push(socket);
                Some(endpoint)
            }
            None => None,
        };
        let (dialling, dials_apart) = match (&listening, alone) {
            (Some(listening), true) => (listening.clone(), false),
            _ => {
                let (endpoint, socket) = endpoint(UdpSocket::bind((addr.ip(), 0))?, None)?;
                sockets.push(socket);
                (endpoint, true)
            }
        };
        lanes.push(Lane {
            runtime,
            accepting: listening,
            dialling,
            dials_apart,
            sockets,
        });
    }
    Ok((lanes, local))
}

/// How many lanes accept, on `io`'s threads.
pub(super) fn accepting_lanes(io: &IoArbiters) -> usize {
    match cfg!(target_os = "linux") {
        true => io.len().max(1),
        false => 1,
    }
}

/// The accepting sockets, bound to the first address `bind_addr` names
/// (a host name may name several) where they can be, and that address.
fn bind_first(bind_addr: &str, count: usize) -> io::Result<(SocketAddr, Vec<UdpSocket>)> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no address to bind");
    for addr in bind_addr.to_socket_addrs()? {
        match accepting_sockets(addr, count) {
            Ok(sockets) => return Ok((addr, sockets)),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// `count` sockets bound to `addr`, sharing its port when more than one
/// (see [`accepting_lanes`]).
fn accepting_sockets(addr: SocketAddr, count: usize) -> io::Result<Vec<UdpSocket>> {
    if count < 2 {
        return Ok(vec![UdpSocket::bind(addr)?]);
    }
    let first = shared_port(addr)?;
    // Bound to port 0, the first took a free port: the rest join it.
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(shared_port(local)?);
    }
    Ok(sockets)
}

/// A UDP socket bound to `addr` that other sockets of this user may bind
/// too: the kernel then spreads datagrams over them by peer.
#[cfg(target_os = "linux")]
fn shared_port(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

#[cfg(not(target_os = "linux"))]
fn shared_port(addr: SocketAddr) -> io::Result<UdpSocket> {
    UdpSocket::bind(addr)
}
