//! TCP as a [`StreamLayer`].

use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener, ToSocketAddrs};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_core::stream::{BoxConnection, StreamLayer};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::net::{TcpListener, TcpStream};

use crate::TransportError;

/// Plain TCP: binds one address, dials `host:port` addresses.
///
/// Nagle's algorithm is off on every connection: RPCs are small request /
/// reply exchanges, and delaying them costs a round trip.
pub struct TcpStreamLayer {
    listener: Mutex<Option<Arc<TcpListener>>>,
    local: SocketAddr,
    advertise: String,
}

impl TcpStreamLayer {
    /// Binds `bind_addr` and works out the address to advertise.
    ///
    /// Fails when the address cannot be bound, when the advertise address
    /// does not resolve, or when `bind_addr` is unspecified (`0.0.0.0`,
    /// `::`) and no advertise address is given: peers could not dial it.
    /// Must be called inside a tokio (actix) runtime.
    pub fn bind(
        bind_addr: &str,
        advertise: Option<&str>,
    ) -> Result<TcpStreamLayer, TransportError> {
        let config_error = |what: String| TransportError::Config(what);
        let std_listener = StdTcpListener::bind(bind_addr)
            .map_err(|err| config_error(format!("cannot bind {bind_addr}: {err}")))?;
        let local = std_listener
            .local_addr()
            .map_err(|err| config_error(format!("cannot bind {bind_addr}: {err}")))?;
        let advertise = advertised(local, advertise)?;
        std_listener
            .set_nonblocking(true)
            .and_then(|()| TcpListener::from_std(std_listener))
            .map(|listener| TcpStreamLayer {
                listener: Mutex::new(Some(Arc::new(listener))),
                local,
                advertise,
            })
            .map_err(|err| config_error(format!("cannot listen on {bind_addr}: {err}")))
    }
}

/// The address to advertise for a socket bound to `local`: `advertise`
/// when it resolves to an address peers can dial, else the bound address
/// unless it is unspecified (`0.0.0.0`, `::`). Shared by the TCP and QUIC
/// layers.
pub(crate) fn advertised(
    local: SocketAddr,
    advertise: Option<&str>,
) -> Result<String, TransportError> {
    let config_error = TransportError::Config;
    match advertise {
        Some(addr) => {
            let resolved = addr
                .to_socket_addrs()
                .map_err(|err| config_error(format!("advertise address {addr}: {err}")))?
                .next()
                .ok_or_else(|| {
                    config_error(format!("advertise address {addr} does not resolve"))
                })?;
            if resolved.ip().is_unspecified() {
                return Err(config_error(format!(
                    "advertise address {addr} is not advertisable"
                )));
            }
            Ok(addr.to_owned())
        }
        None if local.ip().is_unspecified() => Err(config_error(format!(
            "bind address {local} is not advertisable; set an advertise address"
        ))),
        None => Ok(local.to_string()),
    }
}

impl StreamLayer for TcpStreamLayer {
    fn transport(&self) -> &'static str {
        "tcp"
    }

    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        let listener = self.listener.lock().expect("listener lock").clone();
        async move {
            let listener = listener.ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotConnected, "the TCP listener is closed")
            })?;
            let (stream, remote) = listener.accept().await?;
            stream.set_nodelay(true)?;
            Ok((Box::new(stream) as BoxConnection, remote.to_string()))
        }
        .boxed()
    }

    fn dial(
        &self,
        address: &str,
        timeout: Duration,
    ) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let address = address.to_owned();
        async move {
            let stream = tokio::time::timeout(timeout, TcpStream::connect(&address))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
            stream.set_nodelay(true)?;
            Ok(Box::new(stream) as BoxConnection)
        }
        .boxed()
    }

    fn local_addr(&self) -> String {
        self.local.to_string()
    }

    fn advertise_addr(&self) -> String {
        self.advertise.clone()
    }

    fn close(&self) {
        self.listener.lock().expect("listener lock").take();
    }
}
