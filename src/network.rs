//! The network transport: a facade over the Listener and PeerPool actors,
//! on any [`StreamLayer`].

use std::sync::{Arc, Mutex};

use actix::{Actor, Addr, Recipient};
use async_trait::async_trait;
use babble_net_actors::codec::encode_request;
use babble_net_actors::dispatcher::DispatchStats;
use babble_net_actors::io_arbiters::IoArbiters;
use babble_net_actors::listener::{Listener, ListenerCounters, ListenerLimits, StopListener};
use babble_net_actors::peer_pool::{Call, PeerPools, PoolSettings, PoolStats};
use babble_net_actors::stream::StreamLayer;
use bytes::BytesMut;
use slog::{o, Logger};

use crate::consumer::Consumer;
use crate::endpoint::Endpoint;
use crate::transport::reply_to_result;
use crate::{Command, Config, Response, Rpc, Transport, TransportError};

/// A transport over a network [`StreamLayer`] (TCP or WebRTC).
///
/// Outgoing calls go to the PeerPool actor of their target, which reuses
/// or dials connections; incoming connections are served by the Listener
/// actor once [`listen`](Transport::listen) is called. Connections are
/// read, written and decoded on I/O arbiters of their own (`io-threads`,
/// shared by the transports of one actix system): the arbiter that
/// created the transport only receives finished RPCs and answers. Create one with
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
    /// Where connections are served and calls made.
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
        let settings = PoolSettings {
            max_pool: config.max_pool,
            max_idle: config.idle_timeout / 2,
            max_reply_size: config.max_reply_size,
            max_dials: config.max_dials_per_peer,
            min_rate: config.min_transfer_rate,
            transport: layer.transport(),
        };
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

    /// Inbound connections shed to make room for newcomers at the
    /// connection caps, and newcomers refused because every connection
    /// was being answered.
    pub fn inbound_shed(&self) -> (u64, u64) {
        let counters = &self.inner.listener_counters;
        (counters.shed(), counters.refused())
    }

    /// Bytes of the inbound buffer budget held now by connections reading
    /// large requests; never more than `inbound-buffer-budget`.
    pub fn inbound_buffered_bytes(&self) -> usize {
        self.inner.listener_counters.buffered()
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
            let limits = ListenerLimits {
                max_inbound: config.max_inbound,
                max_inbound_per_ip: config.max_inbound_per_ip,
                idle_timeout: config.idle_timeout,
                timeout: config.timeout,
                min_rate: config.min_transfer_rate,
                max_request_size: config.max_request_size,
                buffer_budget: config.inbound_buffer_budget,
                handshake_timeout: config.handshake_timeout,
                transport: self.inner.layer.transport(),
            };
            let io = self.inner.io.clone();
            let (layer, dispatcher, counters, shutdown, log) = (
                self.inner.layer.clone(),
                endpoint.inbox.dispatcher().clone(),
                self.inner.listener_counters.clone(),
                endpoint.shutdown.clone(),
                endpoint.log.clone(),
            );
            *listener = Some(Listener::start_in_arbiter(&self.inner.arbiter, move |_| {
                Listener::new(layer, io, dispatcher, limits, counters, shutdown, log)
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
        let exchange = async {
            let mut frame = BytesMut::new();
            encode_request(&command, &mut frame).map_err(|err| TransportError::Decode {
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
        };
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
