//! An in-memory transport, for tests and simulations.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, RwLock};

use actix::Recipient;
use async_trait::async_trait;
use babble_net_actors::call_metrics::Direction;
use babble_net_actors::fair_queue::FairQueue;
use babble_net_core::source::Source;
use babble_net_core::stats::DispatchStats;
use slog::{o, Logger};
use tokio_util::sync::CancellationToken;

use crate::codec::Reply;
use crate::consumer::Consumer;
use crate::endpoint::Endpoint;
use crate::transport::reply_to_result;
use crate::{logging, Command, Config, Response, Rpc, Transport, TransportError};
use tokio_util::codec::Encoder;

/// Transport between nodes of one process: RPCs go straight to the target's
/// Dispatcher, through the same consumer path as on the network, so a node
/// behaves the same on every transport.
///
/// Peers are wired explicitly with [`connect`](InmemTransport::connect).
/// Clones share the same transport.
///
/// ```
/// use babble_net::{InmemTransport, SyncRequest, Transport};
///
/// # actix_rt::System::new().block_on(async {
/// let a = InmemTransport::new(None);
/// let b = InmemTransport::new(None);
/// a.connect(b.local_addr(), &b);
/// let mut rpcs = b.consumer();
/// actix_rt::spawn(async move {
///     while let Some(rpc) = rpcs.recv().await {
///         rpc.respond(Err("busy".into()));
///     }
/// });
/// let err = a.sync(&b.local_addr(), SyncRequest::default()).await.unwrap_err();
/// assert_eq!(err.to_string(), "remote node answered with an error: busy");
/// # });
/// ```
#[derive(Clone)]
pub struct InmemTransport {
    inner: Arc<Inner>,
}

struct Inner {
    addr: String,
    /// This transport as a source of RPCs, for its peers' fair service.
    source: Source,
    endpoint: Endpoint,
    peers: RwLock<HashMap<String, Route>>,
    /// The simulated network this transport is on, if any: it routes to
    /// every node of the network and carries each request and reply.
    network: Option<Arc<dyn Network>>,
}

/// A network the transport's messages cross (the simulated one of
/// [`crate::sim`]): it routes to every node on it and carries each
/// request and reply, late or never.
pub(crate) trait Network: Send + Sync {
    /// The route to the node at `addr`, if there is one.
    fn route(&self, addr: &str) -> Option<Route>;

    /// Carries a message from `from` to `to`: resolves once it arrives,
    /// `false` at once if it never will. `size` gives its bytes, asked
    /// only when the link limits its bandwidth.
    fn carry<'a>(
        &'a self,
        from: &'a str,
        to: &'a str,
        size: &'a (dyn Fn() -> usize + Sync),
    ) -> futures::future::BoxFuture<'a, bool>;
}

/// What a transport keeps of a connected peer: no strong reference to the
/// peer itself, so that two connected transports can still be dropped.
#[derive(Clone)]
pub(crate) struct Route {
    queue: Arc<FairQueue>,
    shutdown: CancellationToken,
}

impl Route {
    /// The way to `transport`.
    pub(crate) fn to(transport: &InmemTransport) -> Route {
        let endpoint = &transport.inner.endpoint;
        Route {
            queue: endpoint.inbox.queue().clone(),
            shutdown: endpoint.shutdown.clone(),
        }
    }
}

impl InmemTransport {
    /// A transport at `addr`, or at a random UUID when `None`, with the
    /// default configuration and no logging.
    pub fn new(addr: Option<String>) -> InmemTransport {
        InmemTransport::with_config(addr, &Config::default(), logging::discard())
    }

    /// A transport using `config`'s timeouts and consumer buffer.
    pub fn with_config(addr: Option<String>, config: &Config, log: Logger) -> InmemTransport {
        let addr = addr.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        InmemTransport::start(addr, config, log, None)
    }

    /// A transport at `addr` on a simulated network (see [`crate::sim`]).
    pub(crate) fn on_network(
        addr: String,
        config: &Config,
        log: Logger,
        network: Arc<dyn Network>,
    ) -> InmemTransport {
        InmemTransport::start(addr, config, log, Some(network))
    }

    fn start(
        addr: String,
        config: &Config,
        log: Logger,
        network: Option<Arc<dyn Network>>,
    ) -> InmemTransport {
        let log = log.new(o!("transport" => "inmem", "local" => addr.clone()));
        InmemTransport {
            inner: Arc::new(Inner {
                source: Source::new(&addr, None),
                addr,
                endpoint: Endpoint::new(config, "inmem", log),
                peers: RwLock::new(HashMap::new()),
                network,
            }),
        }
    }

    /// Routes calls for `peer` to `transport`. On a simulated network
    /// ([`crate::sim`]) every node is already reachable; a route set here is
    /// used instead, still over the network's links.
    pub fn connect(&self, peer: impl Into<String>, transport: &InmemTransport) {
        self.peers().insert(peer.into(), Route::to(transport));
    }

    /// Forgets the route to `peer`; calls to it fail with
    /// [`TransportError::UnknownPeer`].
    pub fn disconnect(&self, peer: &str) {
        self.peers().remove(peer);
    }

    /// Forgets every route.
    pub fn disconnect_all(&self) {
        self.peers().clear();
    }

    /// Counts of the RPCs this transport has received.
    pub async fn stats(&self) -> Result<DispatchStats, TransportError> {
        self.inner.endpoint.inbox.stats().await
    }

    fn peers(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Route>> {
        self.inner.peers.write().expect("peer table lock")
    }

    async fn deliver(&self, target: &str, command: Command) -> Result<Response, TransportError> {
        let connected = self
            .inner
            .peers
            .read()
            .expect("peer table lock")
            .get(target)
            .cloned();
        let network = self.inner.network.as_deref();
        let link = connected
            .or_else(|| network.and_then(|network| network.route(target)))
            .ok_or_else(|| TransportError::UnknownPeer(target.to_owned()))?;
        let refused = || TransportError::Connect {
            peer: target.to_owned(),
            source: io::Error::new(io::ErrorKind::ConnectionRefused, "peer transport is closed"),
        };
        if network.is_none() && link.shutdown.is_cancelled() {
            return Err(refused());
        }
        let rpc_type = command.rpc_type();
        let after = self.inner.endpoint.config.timeout_for(rpc_type);
        let from = self.inner.addr.as_str();
        let exchange = async {
            // A message the network loses never arrives: the call waits
            // for its timeout, as on a real network.
            if let Some(network) = network {
                if !network
                    .carry(from, target, &|| request_size(&command))
                    .await
                {
                    std::future::pending::<()>().await;
                }
                // A crashed node refuses the request once it gets there
                // (behind a partition, the caller only sees a timeout).
                if link.shutdown.is_cancelled() {
                    return Err(refused());
                }
            }
            let (rpc, reply) = Rpc::new(command, Some(self.inner.addr.clone()));
            // Fair service by the sender's address; a closed queue
            // answers the RPC itself.
            let served = std::time::Instant::now();
            link.queue.push(&self.inner.source, rpc).await;
            let reply = reply.await;
            // The peer's side of the exchange, as its Listener would count
            // it on a network transport.
            self.inner.endpoint.metrics.rpc_done(
                Direction::In,
                rpc_type,
                reply.error.is_empty(),
                served.elapsed(),
            );
            if let Some(network) = network {
                if !network.carry(target, from, &|| reply_size(&reply)).await {
                    std::future::pending::<()>().await;
                }
            }
            Ok(reply)
        };
        let reply = tokio::time::timeout(after, exchange).await.map_err(|_| {
            TransportError::Timeout {
                peer: target.to_owned(),
                after,
            }
        })??;
        reply_to_result(reply, rpc_type)
    }
}

/// The bytes `command` takes on the wire.
fn request_size(command: &Command) -> usize {
    let mut bytes = bytes::BytesMut::new();
    match crate::codec::encode_request(command, &mut bytes) {
        Ok(()) => bytes.len(),
        Err(_) => 0,
    }
}

/// The bytes `reply` takes on the wire.
fn reply_size(reply: &Reply) -> usize {
    let mut bytes = bytes::BytesMut::new();
    match crate::codec::ServerCodec::new(usize::MAX).encode(reply, &mut bytes) {
        Ok(()) => bytes.len(),
        Err(_) => 0,
    }
}

#[async_trait]
impl Transport for InmemTransport {
    fn listen(&self) -> Result<(), TransportError> {
        Ok(())
    }

    fn consumer(&self) -> Consumer {
        self.inner.endpoint.consumer()
    }

    fn consume_with(&self, recipient: Recipient<Rpc>) {
        self.inner.endpoint.consume_with(recipient)
    }

    fn local_addr(&self) -> String {
        self.inner.addr.clone()
    }

    fn advertise_addr(&self) -> String {
        self.inner.addr.clone()
    }

    async fn call(&self, target: &str, command: Command) -> Result<Response, TransportError> {
        let rpc_type = command.rpc_type();
        let exchange = self.deliver(target, command);
        self.inner.endpoint.call(target, rpc_type, exchange).await
    }

    async fn close(&self) -> Result<(), TransportError> {
        self.inner.endpoint.close();
        Ok(())
    }

    fn is_shutdown(&self) -> bool {
        self.inner.endpoint.is_shutdown()
    }
}
