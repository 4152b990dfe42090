//! The outgoing path, from a call to its reply, and the PeerPool actor
//! that keeps the connections to one peer. Read top to bottom:
//!
//! 1. [`PeerPools`] finds the pool of a target, starting it on first use
//!    (supervised: a pool that fails restarts empty).
//! 2. [`PeerPools::call`] leases a connection from that pool (one message,
//!    `Checkout`) or dials a new one, then writes the request and reads
//!    the reply in the caller's own future, outside the actor's mailbox,
//!    so a slow peer never holds up the pool.
//! 3. The `Lease` gives the connection back when it is dropped (one
//!    message, `GiveBack`) if the exchange ended cleanly, or tells the pool
//!    it failed; no path can forget it. A connection whose exchange was cut
//!    short (the caller gave up) is closed.
//! 4. The [`PeerPool`] actor keeps at most `max_pool` idle connections,
//!    newest first, and counts dials and restarts.
//!
//! Deadlines are progress-aware: a call fails when no byte moves for the
//! timeout, so a large reply that keeps flowing is not cut short, while a
//! silent peer is detected within the timeout.
//!
//! A Sync, EagerSync or FastForward that fails on a pooled connection
//! before any byte of the reply arrived is retried once on a fresh
//! connection: the peer most likely closed the idle connection (these RPCs
//! are idempotent; Join is not retried). When a connection fails
//! otherwise, the pool restarts empty: its other idle connections are most
//! likely dead as well.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_rt::ArbiterHandle;
use bytes::Bytes;
use futures::StreamExt;
use slog::{debug, warn, Logger};
use tokio::io::AsyncWriteExt;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::codec::{ClientCodec, CodecError, Reply};
use crate::deadline::DeadlineStream;
use crate::error::TransportError;
use crate::stream::{BoxConnection, StreamLayer};
use crate::wire::RpcType;

type ClientFramed = Framed<DeadlineStream<BoxConnection>, ClientCodec>;

/// Settings of every PeerPool of a transport.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Idle connections kept per peer.
    pub max_pool: usize,
    /// Idle connections older than this are closed rather than reused
    /// (the peer would likely have closed them).
    pub max_idle: Duration,
    /// Largest reply accepted.
    pub max_frame_size: usize,
}

/// Counts of a PeerPool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Idle connections now.
    pub idle: usize,
    /// Connections dialled so far.
    pub dials: u64,
    /// Times the pool was restarted after a failure.
    pub restarts: u64,
}

/// One encoded request to send.
#[derive(Clone, Debug)]
pub struct Call {
    /// The request frame, as written by
    /// [`encode_request`](crate::codec::encode_request).
    pub frame: Bytes,
    /// Its RPC type.
    pub rpc_type: RpcType,
    /// The deadline for each step of the exchange.
    pub timeout: Duration,
}

// ---------------------------------------------------------------------
// 1. The pools of a transport

/// What a call needs to know about its peer, shared by the pool and its
/// callers.
struct PeerInfo {
    target: String,
    layer: Arc<dyn StreamLayer>,
    max_frame_size: usize,
    log: Logger,
}

/// A pool and what dialling its peer takes.
#[derive(Clone)]
struct PoolHandle {
    pool: Addr<PeerPool>,
    peer: Arc<PeerInfo>,
}

/// The PeerPool of every target a transport calls.
pub struct PeerPools {
    layer: Arc<dyn StreamLayer>,
    settings: PoolSettings,
    arbiter: ArbiterHandle,
    pools: Mutex<HashMap<String, PoolHandle>>,
    shutdown: CancellationToken,
    log: Logger,
}

impl PeerPools {
    /// Pools dialling through `layer`, whose actors run on `arbiter`.
    pub fn new(
        layer: Arc<dyn StreamLayer>,
        settings: PoolSettings,
        arbiter: ArbiterHandle,
        shutdown: CancellationToken,
        log: Logger,
    ) -> PeerPools {
        PeerPools {
            layer,
            settings,
            arbiter,
            pools: Mutex::new(HashMap::new()),
            shutdown,
            log,
        }
    }

    /// The pool of `target`, started on first use.
    fn get(&self, target: &str) -> PoolHandle {
        let mut pools = self.pools.lock().expect("pool table lock");
        if let Some(handle) = pools.get(target).filter(|h| h.pool.connected()) {
            return handle.clone();
        }
        let peer = Arc::new(PeerInfo {
            target: target.to_owned(),
            layer: self.layer.clone(),
            max_frame_size: self.settings.max_frame_size,
            log: self.log.new(slog::o!("peer" => target.to_owned())),
        });
        let (settings, shutdown, log) = (
            self.settings.clone(),
            self.shutdown.clone(),
            peer.log.clone(),
        );
        let pool = Supervisor::start_in_arbiter(&self.arbiter, move |_| PeerPool {
            settings,
            idle: Vec::new(),
            stats: PoolStats::default(),
            shutdown,
            log,
        });
        let handle = PoolHandle { pool, peer };
        pools.insert(target.to_owned(), handle.clone());
        handle
    }

    /// Sends `call` to `target` and returns its reply; see the module docs.
    pub async fn call(&self, target: &str, call: Call) -> Result<Reply, TransportError> {
        let PoolHandle { pool, peer } = self.get(target);
        let idle = pool
            .send(Checkout)
            .await
            .map_err(|_| TransportError::Shutdown)?;
        let reused = idle.is_some();
        let lease = match idle {
            Some(framed) => Lease::of(framed, &pool),
            None => dial(&peer, &pool, call.timeout).await?,
        };
        match exchange(lease, &call).await {
            Ok(reply) => Ok(reply),
            Err(failure) if reused && failure.before_reply && call.rpc_type != RpcType::Join => {
                debug!(peer.log, "pooled connection was stale, retrying on a new one";
                    "rpc" => %call.rpc_type, "error" => %failure.error);
                pool.do_send(Dialling);
                let lease = dial(&peer, &pool, call.timeout).await?;
                exchange(lease, &call)
                    .await
                    .map_err(|failure| failed(&peer, failure, call.timeout))
            }
            Err(failure) => Err(failed(&peer, failure, call.timeout)),
        }
    }

    /// Counts of the connections to `target`; zero for a peer never called.
    pub async fn stats(&self, target: &str) -> PoolStats {
        let pool = self
            .pools
            .lock()
            .expect("pool table lock")
            .get(target)
            .map(|h| h.pool.clone());
        match pool {
            Some(pool) => pool.send(GetPoolStats).await.unwrap_or_default(),
            None => PoolStats::default(),
        }
    }

    /// Closes every idle connection for good (the transport is closing).
    pub async fn close(&self) {
        let pools: Vec<_> = self
            .pools
            .lock()
            .expect("pool table lock")
            .drain()
            .map(|(_, h)| h.pool)
            .collect();
        for pool in pools {
            let _ = pool.send(ClosePool).await;
        }
    }
}

// ---------------------------------------------------------------------
// 2. One call, in the caller's future

/// Opens a new connection to `peer`, leased from `pool`.
async fn dial(
    peer: &PeerInfo,
    pool: &Addr<PeerPool>,
    timeout: Duration,
) -> Result<Lease, TransportError> {
    let connection = peer
        .layer
        .dial(&peer.target, timeout)
        .await
        .map_err(|source| match source.kind() {
            io::ErrorKind::TimedOut => TransportError::Timeout {
                peer: peer.target.clone(),
                after: timeout,
            },
            // The stream layer knows no such address (on WebRTC: nobody
            // registered that ID).
            io::ErrorKind::NotFound => TransportError::UnknownPeer(peer.target.clone()),
            _ => TransportError::Connect {
                peer: peer.target.clone(),
                source,
            },
        })?;
    let framed = Framed::new(
        DeadlineStream::new(connection),
        ClientCodec::new(peer.max_frame_size),
    );
    Ok(Lease::of(framed, pool))
}

/// How one attempt ended badly.
struct Failure {
    error: CodecError,
    /// Nothing of the reply had arrived: the connection may just be stale.
    before_reply: bool,
}

/// Writes the request and reads the reply on the leased connection. The
/// lease goes back to the pool if the exchange ended cleanly.
async fn exchange(mut lease: Lease, call: &Call) -> Result<Reply, Failure> {
    let framed = lease.framed.as_mut().expect("a lease holds its connection");
    framed.get_mut().restart(Some(call.timeout));
    framed.codec_mut().expect(call.rpc_type);
    let before_reply = |error: CodecError| Failure {
        error,
        before_reply: true,
    };
    // One write for the whole frame; see `encode_request`. Streams may
    // hold back what was written until flushed (a WebRTC channel finishes
    // its last message then).
    let stream = framed.get_mut();
    stream
        .write_all(&call.frame)
        .await
        .map_err(|e| before_reply(e.into()))?;
    stream.flush().await.map_err(|e| before_reply(e.into()))?;
    let reply = framed.next().await;
    // Anything after the reply but whitespace means the peer is out of
    // step with us (or the reply never came): the connection is not reused.
    let nothing_after = framed.read_buffer().iter().all(u8::is_ascii_whitespace);
    match reply {
        Some(Ok(reply)) => {
            if nothing_after {
                framed.read_buffer_mut().clear();
                lease.outcome = Outcome::Clean;
            }
            Ok(reply)
        }
        Some(Err(error)) => {
            lease.outcome = Outcome::Failed;
            let stale = matches!(&error, CodecError::Io(e) if is_stale(e));
            Err(Failure {
                error,
                before_reply: nothing_after && stale,
            })
        }
        None => {
            lease.outcome = Outcome::Failed;
            let eof = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without answering",
            );
            Err(Failure {
                error: eof.into(),
                before_reply: nothing_after,
            })
        }
    }
}

/// Errors that mean "the peer had closed this connection".
fn is_stale(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

/// The error a failed attempt gives the caller, logged unless it is a
/// timeout (the caller decides what a timeout means).
fn failed(peer: &PeerInfo, failure: Failure, timeout: Duration) -> TransportError {
    let error = TransportError::from_codec(failure.error, &peer.target, timeout);
    if !error.is_timeout() {
        warn!(peer.log, "connection failed"; "error" => %error);
    }
    error
}

// ---------------------------------------------------------------------
// 3. The lease

/// How the exchange on a leased connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// Not finished: the caller gave up, or it is still running.
    Cut,
    /// A complete reply and nothing after it: fit for another call.
    Clean,
    /// The connection failed.
    Failed,
}

/// A connection on loan from a pool; see the module docs.
struct Lease {
    framed: Option<ClientFramed>,
    pool: Addr<PeerPool>,
    outcome: Outcome,
}

impl Lease {
    fn of(framed: ClientFramed, pool: &Addr<PeerPool>) -> Lease {
        Lease {
            framed: Some(framed),
            pool: pool.clone(),
            outcome: Outcome::Cut,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match (self.outcome, self.framed.take()) {
            (Outcome::Clean, Some(framed)) => self.pool.do_send(GiveBack(framed)),
            (Outcome::Failed, _) => self.pool.do_send(ConnectionFailed),
            // Cut short: the connection's state is unknown, it is closed.
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------
// 4. The PeerPool actor

/// An idle connection and when it was last used.
struct PooledConnection {
    framed: ClientFramed,
    idle_since: Instant,
}

/// The connections to one peer; see the module docs.
pub struct PeerPool {
    settings: PoolSettings,
    idle: Vec<PooledConnection>,
    stats: PoolStats,
    shutdown: CancellationToken,
    log: Logger,
}

impl Actor for PeerPool {
    type Context = Context<Self>;
}

impl Supervised for PeerPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.idle.clear();
        self.stats.restarts += 1;
        debug!(self.log, "pool restarted empty");
    }
}

/// Asks for the most recently used idle connection still young enough;
/// `None` means the caller dials (and the dial is counted).
#[derive(Message)]
#[rtype(result = "Option<ClientFramed>")]
struct Checkout;

impl Handler<Checkout> for PeerPool {
    type Result = MessageResult<Checkout>;

    fn handle(&mut self, _: Checkout, _: &mut Context<Self>) -> Self::Result {
        while let Some(pooled) = self.idle.pop() {
            if pooled.idle_since.elapsed() < self.settings.max_idle {
                return MessageResult(Some(pooled.framed));
            }
        }
        self.stats.dials += 1;
        MessageResult(None)
    }
}

/// A caller dials again (a stale pooled connection is being replaced).
#[derive(Message)]
#[rtype(result = "()")]
struct Dialling;

impl Handler<Dialling> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: Dialling, _: &mut Context<Self>) {
        self.stats.dials += 1;
    }
}

/// A connection that completed a call cleanly.
#[derive(Message)]
#[rtype(result = "()")]
struct GiveBack(ClientFramed);

impl Handler<GiveBack> for PeerPool {
    type Result = ();

    fn handle(&mut self, GiveBack(framed): GiveBack, _: &mut Context<Self>) {
        if self.idle.len() < self.settings.max_pool && !self.shutdown.is_cancelled() {
            self.idle.push(PooledConnection {
                framed,
                idle_since: Instant::now(),
            });
        }
    }
}

/// A connection failed: restart the pool empty.
#[derive(Message)]
#[rtype(result = "()")]
struct ConnectionFailed;

impl Handler<ConnectionFailed> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: ConnectionFailed, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Returns the pool's counts.
#[derive(Message)]
#[rtype(result = "PoolStats")]
struct GetPoolStats;

impl Handler<GetPoolStats> for PeerPool {
    type Result = MessageResult<GetPoolStats>;

    fn handle(&mut self, _: GetPoolStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(PoolStats {
            idle: self.idle.len(),
            ..self.stats
        })
    }
}

/// Closes every idle connection for good (the transport is closing).
#[derive(Message)]
#[rtype(result = "()")]
struct ClosePool;

impl Handler<ClosePool> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: ClosePool, _: &mut Context<Self>) {
        self.idle.clear();
    }
}
