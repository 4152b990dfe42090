//! The dialling side of QUIC: one connection per peer address, made once
//! (calls to a peer that arrive while it is made wait for it) from the
//! lane of that address, checked against the key expected there, and a
//! stream per call on it.
//!
//! A connection that closed (idle, the peer went away) is replaced by the
//! next call; the map holds one entry per address called, and entries
//! whose connection closed are dropped whenever a new address is added.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_core::identity::PeerKey;
use babble_net_core::quic::SERVER_NAME;
use babble_net_core::secure::HandshakeError;
use quinn::{ClientConfig, Connection, Endpoint};
use slog::{debug, Logger};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use super::stream::{connection_error, QuicStream};
use super::{refused, tls, Closed};

/// A peer address's connection, once made.
type Slot = Arc<AsyncMutex<Option<Connection>>>;

/// See the [module docs](self).
pub(super) struct Dialer {
    /// Each lane's dialling endpoint.
    endpoints: Vec<Endpoint>,
    /// Which lane a peer address is dialled on.
    io: Arc<IoArbiters>,
    client: ClientConfig,
    /// The key expected at each peer address.
    expected: HashMap<String, PeerKey>,
    connections: Mutex<HashMap<String, Slot>>,
    /// Connections made so far.
    dialled: AtomicU64,
    log: Logger,
}

impl Dialer {
    pub(super) fn new(
        endpoints: Vec<Endpoint>,
        io: Arc<IoArbiters>,
        client: ClientConfig,
        expected: HashMap<String, PeerKey>,
        log: Logger,
    ) -> Dialer {
        Dialer {
            endpoints,
            io,
            client,
            expected,
            connections: Mutex::default(),
            dialled: AtomicU64::new(0),
            log,
        }
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        let connections = self.connections.lock().expect("connections lock");
        connections
            .values()
            .filter(|slot| {
                slot.try_lock()
                    .map(|held| held.as_ref().is_some_and(|c| c.close_reason().is_none()))
                    .unwrap_or(true)
            })
            .count()
    }

    /// Connections made so far.
    pub(super) fn dialled(&self) -> u64 {
        self.dialled.load(Ordering::Relaxed)
    }

    /// Lets go of every connection (the layer is closing): each holds the
    /// endpoint's socket while a handle to it lives.
    pub(super) fn forget_all(&self) {
        self.connections.lock().expect("connections lock").clear();
    }

    /// The key expected at `address`: configured, or the address itself
    /// when it is a key.
    fn expected_at(&self, address: &str) -> Result<PeerKey, HandshakeError> {
        if let Some(key) = self.expected.get(address) {
            return Ok(*key);
        }
        PeerKey::parse(address).map_err(|_| HandshakeError::UnknownKey(address.to_owned()))
    }

    fn slot(&self, address: &str) -> Slot {
        let mut connections = self.connections.lock().expect("connections lock");
        if let Some(slot) = connections.get(address) {
            return slot.clone();
        }
        connections.retain(|_, slot| {
            slot.try_lock()
                .map(|held| held.as_ref().is_some_and(|c| c.close_reason().is_none()))
                .unwrap_or(true)
        });
        connections.entry(address.to_owned()).or_default().clone()
    }

    /// A new stream to `address`, on its connection (made now if needed),
    /// within `timeout`.
    pub(super) async fn open_stream(
        &self,
        address: &str,
        timeout: Duration,
    ) -> io::Result<QuicStream> {
        let deadline = Instant::now() + timeout;
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "QUIC connect timed out");
        let expect = self.expected_at(address).map_err(refused)?;
        let slot = self.slot(address);
        let (connection, reused) = tokio::time::timeout_at(deadline, async {
            let mut held = slot.lock().await;
            if let Some(connection) = held.as_ref().filter(|c| c.close_reason().is_none()) {
                return Ok((connection.clone(), true));
            }
            let connection = self.connect(address, expect).await?;
            self.dialled.fetch_add(1, Ordering::Relaxed);
            *held = Some(connection.clone());
            Ok::<_, io::Error>((connection, false))
        })
        .await
        .map_err(|_| timed_out())??;
        let (send, recv) = tokio::time::timeout_at(deadline, connection.open_bi())
            .await
            .map_err(|_| timed_out())?
            .map_err(connection_error)?;
        Ok(QuicStream::caller(send, recv, reused))
    }

    /// A new connection to `address`, whose peer must prove `expect`.
    async fn connect(&self, address: &str, expect: PeerKey) -> io::Result<Connection> {
        let remote = tokio::net::lookup_host(address)
            .await?
            .next()
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{address} does not resolve"),
                )
            })?;
        // On the lane where calls to `address` are made: the connection
        // is driven where its streams are used.
        let lane = self.io.index_for_key(address) % self.endpoints.len();
        let connecting = self.endpoints[lane]
            .connect_with(self.client.clone(), remote, SERVER_NAME)
            .map_err(io::Error::other)?;
        let connection = connecting.await.map_err(handshake_failed)?;
        let got = match tls::peer_key(&connection) {
            Ok(key) => key,
            Err(err) => {
                Closed::Certificate.close(&connection);
                return Err(refused(err));
            }
        };
        if got != expect {
            Closed::WrongKey.close(&connection);
            return Err(refused(HandshakeError::WrongKey {
                expected: expect,
                got,
            }));
        }
        debug!(self.log, "QUIC connection made"; "peer" => address, "key" => %got);
        Ok(connection)
    }
}

/// A failed QUIC handshake as an I/O error: a TLS failure (either side
/// refusing the other's certificate) is a [`HandshakeError`].
fn handshake_failed(error: quinn::ConnectionError) -> io::Error {
    /// TLS alerts travel as QUIC's "crypto error" codes.
    const TLS_ALERTS: std::ops::RangeInclusive<u64> = 0x100..=0x1ff;
    let tls = match &error {
        quinn::ConnectionError::TransportError(failure) => {
            TLS_ALERTS.contains(&u64::from(failure.code))
        }
        quinn::ConnectionError::ConnectionClosed(close) => {
            TLS_ALERTS.contains(&u64::from(close.error_code))
        }
        _ => false,
    };
    match tls {
        true => refused(HandshakeError::Malformed(format!("TLS: {error}"))),
        false => connection_error(error),
    }
}
