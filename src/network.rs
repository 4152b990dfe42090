//! The network transport: a facade over the Listener and PeerPool actors,
//! on any [`StreamLayer`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::{Actor, Addr, Recipient, Supervisor};
use actix_rt::ArbiterHandle;
use async_trait::async_trait;
use babble_net_actors::codec::encode_request;
use babble_net_actors::dispatcher::DispatchStats;
use babble_net_actors::listener::{Listener, ListenerCounters, ListenerLimits, StopListener};
use babble_net_actors::peer_pool::{
    self, Call, ClosePool, GetPoolStats, PeerPool, PoolSettings, PoolStats,
};
use babble_net_actors::stream::StreamLayer;
use bytes::BytesMut;
use slog::{debug, o, Logger};
use tokio_util::sync::CancellationToken;

use crate::consumer::{Consumer, Inbox};
use crate::transport::reply_to_result;
use crate::{Command, Config, Response, Rpc, Transport, TransportError};

/// A transport over a network [`StreamLayer`] (TCP or WebRTC).
///
/// Outgoing calls go to the [`PeerPool`] actor of their target, which
/// reuses or dials connections; incoming connections are served by the
/// [`Listener`] actor once [`listen`](Transport::listen) is called. Create
/// one with [`NetworkTransport::tcp`], or [`NetworkTransport::new`] for
/// another stream layer. Clones share the same transport.
#[derive(Clone)]
pub struct NetworkTransport {
    inner: Arc<Inner>,
}

struct Inner {
    layer: Arc<dyn StreamLayer>,
    config: Config,
    inbox: Inbox,
    /// Where the actors live: the arbiter that created the transport.
    arbiter: ArbiterHandle,
    listener: Mutex<Option<Addr<Listener>>>,
    listener_counters: Arc<ListenerCounters>,
    pools: Mutex<HashMap<String, Addr<PeerPool>>>,
    shutdown: CancellationToken,
    log: Logger,
}

impl NetworkTransport {
    /// A transport over `layer`. Must be called inside an actix system; the
    /// transport's actors run on the current arbiter.
    pub fn new(layer: Arc<dyn StreamLayer>, config: &Config, log: Logger) -> NetworkTransport {
        let log = log.new(o!("local" => layer.advertise_addr()));
        NetworkTransport {
            inner: Arc::new(Inner {
                inbox: Inbox::start(config.consumer_buffer, log.clone()),
                layer,
                config: config.clone(),
                arbiter: actix_rt::Arbiter::current(),
                listener: Mutex::new(None),
                listener_counters: Arc::default(),
                pools: Mutex::new(HashMap::new()),
                shutdown: CancellationToken::new(),
                log,
            }),
        }
    }

    /// The PeerPool of `target`, started on first use.
    fn pool(&self, target: &str) -> Addr<PeerPool> {
        let mut pools = self.inner.pools.lock().expect("pool table lock");
        if let Some(pool) = pools.get(target).filter(|pool| pool.connected()) {
            return pool.clone();
        }
        let config = &self.inner.config;
        let settings = PoolSettings {
            max_pool: config.max_pool,
            max_idle: config.idle_timeout / 2,
            max_frame_size: config.max_frame_size,
        };
        let (target_owned, layer, shutdown, log) = (
            target.to_owned(),
            self.inner.layer.clone(),
            self.inner.shutdown.clone(),
            self.inner.log.clone(),
        );
        let pool = Supervisor::start_in_arbiter(&self.inner.arbiter, move |_| {
            PeerPool::new(target_owned, layer, settings, shutdown, log)
        });
        pools.insert(target.to_owned(), pool.clone());
        pool
    }

    /// Counts of the connections to `peer`: idle ones, dials, restarts.
    /// Zero everywhere for a peer never called.
    pub async fn pool_stats(&self, peer: &str) -> PoolStats {
        let pool = self
            .inner
            .pools
            .lock()
            .expect("pool table lock")
            .get(peer)
            .cloned();
        match pool {
            Some(pool) => pool.send(GetPoolStats).await.unwrap_or_default(),
            None => PoolStats::default(),
        }
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

    /// Counts of the RPCs received.
    pub async fn stats(&self) -> Result<DispatchStats, TransportError> {
        self.inner.inbox.stats().await
    }
}

#[async_trait]
impl Transport for NetworkTransport {
    fn listen(&self) -> Result<(), TransportError> {
        if self.is_shutdown() {
            return Err(TransportError::Shutdown);
        }
        let mut listener = self.inner.listener.lock().expect("listener lock");
        if listener.is_none() {
            let config = &self.inner.config;
            let limits = ListenerLimits {
                max_inbound: config.max_inbound,
                idle_timeout: config.idle_timeout,
                max_frame_size: config.max_frame_size,
            };
            let (layer, dispatcher, counters, shutdown, log) = (
                self.inner.layer.clone(),
                self.inner.inbox.dispatcher().clone(),
                self.inner.listener_counters.clone(),
                self.inner.shutdown.clone(),
                self.inner.log.clone(),
            );
            *listener = Some(Listener::start_in_arbiter(&self.inner.arbiter, move |_| {
                Listener::new(layer, dispatcher, limits, counters, shutdown, log)
            }));
        }
        Ok(())
    }

    fn consumer(&self) -> Consumer {
        self.inner.inbox.consumer()
    }

    fn consume_with(&self, recipient: Recipient<Rpc>) {
        self.inner.inbox.consume_with(recipient)
    }

    fn local_addr(&self) -> String {
        self.inner.layer.local_addr()
    }

    fn advertise_addr(&self) -> String {
        self.inner.layer.advertise_addr()
    }

    async fn call(&self, target: &str, command: Command) -> Result<Response, TransportError> {
        if self.is_shutdown() {
            return Err(TransportError::Shutdown);
        }
        let rpc_type = command.rpc_type();
        let timeout = self.inner.config.timeout_for(rpc_type);
        let mut frame = BytesMut::new();
        encode_request(&command, &mut frame).map_err(|err| TransportError::Decode {
            peer: target.to_owned(),
            reason: err.to_string(),
        })?;
        let call = Call {
            frame: frame.freeze(),
            rpc_type,
            timeout,
        };
        let started = Instant::now();
        let pool = self.pool(target);
        let reply = tokio::select! {
            reply = peer_pool::call(&pool, call) => reply,
            _ = self.inner.shutdown.cancelled() => Err(TransportError::Shutdown),
        };
        debug!(self.inner.log, "call";
            "peer" => target, "rpc" => %rpc_type, "duration" => ?started.elapsed(), "ok" => reply.is_ok());
        reply_to_result(reply?, rpc_type)
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.shutdown.cancel();
        self.inner.inbox.close();
        let listener = self.inner.listener.lock().expect("listener lock").take();
        match listener {
            Some(listener) => {
                let _ = listener.send(StopListener).await;
            }
            None => self.inner.layer.close(),
        }
        let pools: Vec<_> = self
            .inner
            .pools
            .lock()
            .expect("pool table lock")
            .drain()
            .map(|(_, pool)| pool)
            .collect();
        for pool in pools {
            let _ = pool.send(ClosePool).await;
        }
        Ok(())
    }

    fn is_shutdown(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }
}
