//! The network transport: a facade over the Listener and PeerPool actors,
//! on any [`StreamLayer`].

use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, Recipient};
use async_trait::async_trait;
use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_actors::listener::{Listener, ListenerCounters, StopListener};
use babble_net_actors::peer_pool::{Call, PeerPools, PoolStats};
use babble_net_core::codec::encode_request;
use babble_net_core::stats::DispatchStats;
use babble_net_core::stream::StreamLayer;
use bytes::BytesMut;
use slog::{o, Logger};

use crate::consumer::Consumer;
use crate::endpoint::Endpoint;
use crate::transport::reply_to_result;
use crate::{Command, Config, Response, Rpc, Transport, TransportError};

/// A transport over a network [`StreamLayer`] (TCP, WebRTC or QUIC).
///
/// Outgoing calls go to the PeerPool actor of their target, which reuses
/// or dials connections; incoming connections are served by the Listener
/// actor once [`listen`](Transport::listen) is called.
///
/// Threads: a call is written, read and parsed on the thread (actix
/// arbiter) that makes it, over connections of that thread's own pool;
/// inbound connections are served on the arbiter that created the
/// transport. Only frames larger than `large-frame` are parsed or encoded
/// on the I/O arbiters (`io-threads`, shared by the transports of one
/// actix system) while the node's thread awaits the result. A thread
/// waiting for a reply, or that has just sent one, polls for its next
/// I/O for a few tens of microseconds before it sleeps
/// ([`babble_net_actors::spin`]). Create one with
/// [`NetworkTransport::tcp`], [`NetworkTransport::webrtc`], or
/// [`NetworkTransport::new`] for another stream layer. Clones share the
/// same transport.
#[derive(Clone)]
pub struct NetworkTransport {
    inner: Arc<Inner>,
}

struct Inner {
    endpoint: Endpoint,
    layer: Arc<dyn StreamLayer>,
    /// Where the Listener and Dispatcher live: the arbiter that created
    /// the transport.
    arbiter: actix_rt::ArbiterHandle,
    /// Where large frames are parsed and encoded.
    io: Arc<IoArbiters>,
    listener: Mutex<Option<Addr<Listener>>>,
    listener_counters: Arc<ListenerCounters>,
    pools: PeerPools,
}

impl NetworkTransport {
    /// A transport over `layer`. Must be called inside an actix system; the
    /// transport's actors run on the current arbiter.
    pub fn new(layer: Arc<dyn StreamLayer>, config: &Config, log: Logger) -> NetworkTransport {
        let log = log.new(o!("local" => layer.advertise_addr()));
        let endpoint = Endpoint::new(config, layer.transport(), log.clone());
        let arbiter = actix_rt::Arbiter::current();
        let io = IoArbiters::shared(config.io_threads);
        let settings = crate::limits::pool(config, layer.transport());
        let pools = PeerPools::new(
            layer.clone(),
            settings,
            io.clone(),
            endpoint.shutdown.clone(),
            log,
        );
        NetworkTransport {
            inner: Arc::new(Inner {
                endpoint,
                layer,
                arbiter,
                io,
                listener: Mutex::new(None),
                listener_counters: Arc::default(),
                pools,
            }),
        }
    }

    /// A TCP transport bound to `config.bind_addr`, advertising
    /// `config.advertise` (or the bound address). See
    /// [`crate::stream::TcpStreamLayer::bind`] for the errors.
    ///
    /// ```
    /// use babble_net::{logging, Config, NetworkTransport, Transport};
    ///
    /// # actix_rt::System::new().block_on(async {
    /// let config = Config { bind_addr: "127.0.0.1:0".into(), ..Config::default() };
    /// let transport = NetworkTransport::tcp(&config, logging::discard()).unwrap();
    /// transport.listen().unwrap();
    /// assert_ne!(transport.local_addr(), "127.0.0.1:0");
    /// transport.close().await.unwrap();
    /// # });
    /// ```
    ///
    /// With `secure`, every connection is a Noise channel keyed to
    /// `key-file`, with the peers of `peers-file` and `peer-keys`
    /// ([`crate::secure`]).
    pub fn tcp(config: &Config, log: Logger) -> Result<NetworkTransport, TransportError> {
        config.validate()?;
        let layer =
            crate::tcp::TcpStreamLayer::bind(&config.bind_addr, config.advertise.as_deref())?;
        let log = log.new(slog::o!("transport" => "tcp"));
        let layer = crate::secure::wrap_if_secure(Arc::new(layer), config)?;
        Ok(NetworkTransport::new(layer, config, log))
    }

    /// A WebRTC transport whose address is `signal`'s ID: registers it with
    /// the signaling server and answers offers from then on. `config` gives
    /// the pool size, timeouts and limits (its bind and advertise addresses
    /// are not used; dials get at least `webrtc-connect-timeout`; see
    /// [`crate::limits::rtc`]); `ice` the STUN/TURN servers
    /// ([`crate::limits::ice`] makes them from the configuration).
    ///
    /// Fails with [`TransportError::Connect`] when the signaling server
    /// cannot be reached within the signal's connect timeout.
    ///
    /// With `secure`, every data channel also carries the Noise channel of
    /// [`crate::secure`], keyed to `key-file`; a peer's address is its
    /// `PubKeyHex`, so the key to expect is the address itself.
    #[cfg(feature = "webrtc")]
    pub async fn webrtc(
        signal: Arc<dyn crate::signal::Signal>,
        ice: &crate::rtc::IceOptions,
        config: &Config,
        log: Logger,
    ) -> Result<NetworkTransport, TransportError> {
        // Checked as WebRTC's, whether or not the file says `webrtc`.
        Config {
            webrtc: true,
            ..config.clone()
        }
        .validate()?;
        let log = log.new(o!("transport" => "webrtc"));
        crate::limits::warn_carried_over(config, &log);
        let limits = crate::limits::rtc(config);
        let layer = crate::rtc::WebRtcStreamLayer::start(signal, ice, limits, log.clone()).await?;
        let layer = crate::secure::wrap_if_secure(Arc::new(layer), config)?;
        Ok(NetworkTransport::new(layer, config, log))
    }

    /// A QUIC transport bound to `config.bind_addr` (UDP), advertising
    /// `config.advertise` (or the bound address), keyed to `key-file`,
    /// expecting the peers of `peers-file` and `peer-keys` at their
    /// addresses and accepting only their keys (unless `accept-any-key`).
    /// See [`crate::quic`] and docs/QUIC.md; the limits are
    /// [`crate::limits::quic`]'s. `config.quic` need not be set.
    ///
    /// ```
    /// use babble_net::{logging, secure::NodeKey, Config, NetworkTransport, Transport};
    ///
    /// # actix_rt::System::new().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let key_file = dir.path().join("priv_key");
    /// NodeKey::generate().save(&key_file).unwrap();
    /// let config = Config {
    ///     bind_addr: "127.0.0.1:0".into(),
    ///     key_file: Some(key_file),
    ///     quic: true,
    ///     ..Config::default()
    /// };
    /// let transport = NetworkTransport::quic(&config, logging::discard()).unwrap();
    /// transport.listen().unwrap();
    /// assert_ne!(transport.local_addr(), "127.0.0.1:0");
    /// transport.close().await.unwrap();
    /// # });
    /// ```
    #[cfg(feature = "quic")]
    pub fn quic(config: &Config, log: Logger) -> Result<NetworkTransport, TransportError> {
        config.validate()?;
        let key = config.node_key()?;
        let keys = crate::quic::QuicKeys {
            key,
            peers: config.peer_key_map()?.into_iter().collect(),
            accept_any_key: config.accept_any_key,
        };
        let log = log.new(o!("transport" => "quic"));
        let layer = crate::quic::QuicStreamLayer::bind(
            &config.bind_addr,
            config.advertise.as_deref(),
            keys,
            crate::limits::quic(config),
            config.io_threads,
            log.clone(),
        )?;
        Ok(NetworkTransport::new(Arc::new(layer), config, log))
    }

    /// Counts of the connections to `peer`: idle ones, dials, restarts.
    /// Zero everywhere for a peer never called.
    pub async fn pool_stats(&self, peer: &str) -> PoolStats {
        self.inner.pools.stats(peer).await
    }

    /// Idle pooled connections to `peer`.
    pub async fn idle_connections(&self, peer: &str) -> usize {
        self.pool_stats(peer).await.idle
    }

    /// Inbound connections open now.
    pub fn inbound_connections(&self) -> usize {
        self.inner.listener_counters.open()
    }

    /// Inbound connections accepted so far, and how many of them were
    /// closed for bad input, idleness or I/O errors.
    pub fn inbound_totals(&self) -> (u64, u64) {
        let counters = &self.inner.listener_counters;
        (counters.accepted(), counters.dropped())
    }

    /// Inbound connections evicted to make room for newcomers at the
    /// connection caps, and newcomers refused (always zero: a newcomer is
    /// let in by evicting; kept for compatibility).
    pub fn inbound_shed(&self) -> (u64, u64) {
        let counters = &self.inner.listener_counters;
        (counters.shed(), counters.refused())
    }

    /// Bytes of the inbound buffer budget held now by connections reading
    /// large requests; never more than `inbound-buffer-budget`.
    pub fn inbound_buffered_bytes(&self) -> usize {
        self.inner.listener_counters.buffered()
    }

    /// Bytes of the outbound buffer budget held now by encoded replies
    /// waiting to be written; never more than `outbound-buffer-budget`.
    pub fn outbound_buffered_bytes(&self) -> usize {
        self.inner.listener_counters.outbound()
    }

    /// Peers with a connection pool now (pools not called for
    /// `idle-timeout / 2` are retired).
    pub fn peer_pools(&self) -> usize {
        self.inner.pools.len()
    }

    /// Counts of the RPCs received.
    pub async fn stats(&self) -> Result<DispatchStats, TransportError> {
        self.inner.endpoint.inbox.stats().await
    }
}

#[async_trait]
impl Transport for NetworkTransport {
    fn listen(&self) -> Result<(), TransportError> {
        let endpoint = &self.inner.endpoint;
        if endpoint.is_shutdown() {
            return Err(TransportError::Shutdown);
        }
        let mut listener = self.inner.listener.lock().expect("listener lock");
        if listener.is_none() {
            let config = &endpoint.config;
            let limits = crate::limits::listener(config, self.inner.layer.transport());
            let io = self.inner.io.clone();
            let (layer, queue, counters, shutdown, log) = (
                self.inner.layer.clone(),
                endpoint.inbox.queue().clone(),
                self.inner.listener_counters.clone(),
                endpoint.shutdown.clone(),
                endpoint.log.clone(),
            );
            *listener = Some(Listener::start_in_arbiter(&self.inner.arbiter, move |_| {
                Listener::new(layer, io, queue, limits, counters, shutdown, log)
            }));
        }
        Ok(())
    }

    fn consumer(&self) -> Consumer {
        self.inner.endpoint.consumer()
    }

    fn consume_with(&self, recipient: Recipient<Rpc>) {
        self.inner.endpoint.consume_with(recipient)
    }

    fn local_addr(&self) -> String {
        self.inner.layer.local_addr()
    }

    fn advertise_addr(&self) -> String {
        self.inner.layer.advertise_addr()
    }

    async fn call(&self, target: &str, command: Command) -> Result<Response, TransportError> {
        let rpc_type = command.rpc_type();
        let endpoint = &self.inner.endpoint;
        let large = command.size_hint() > endpoint.config.large_frame;
        // Pinned where it is made: the exchange's future is kilobytes, and
        // handing it to `endpoint.call` by value would copy it there and
        // again into its `select!`, on every call.
        let exchange = std::pin::pin!(async {
            let encode = move || {
                let mut frame = BytesMut::new();
                encode_request(&command, &mut frame).map(|()| frame)
            };
            let frame = (self.inner.io.run(large, encode).await)
                .map_err(|_| TransportError::Shutdown)?
                .map_err(|err| TransportError::Encode {
                    peer: target.to_owned(),
                    reason: err.to_string(),
                })?;
            let call = Call {
                frame: frame.freeze(),
                rpc_type,
                timeout: endpoint.config.timeout_for(rpc_type),
            };
            let reply = self.inner.pools.call(target, call).await?;
            reply_to_result(reply, rpc_type)
        });
        endpoint.call(target, rpc_type, exchange).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.endpoint.close();
        let listener = self.inner.listener.lock().expect("listener lock").take();
        match listener {
            Some(listener) => {
                let _ = listener.send(StopListener).await;
            }
            None => self.inner.layer.close(),
        }
        self.inner.pools.close().await;
        Ok(())
    }

    fn is_shutdown(&self) -> bool {
        self.inner.endpoint.is_shutdown()
    }
}
