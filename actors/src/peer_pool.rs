//! The PeerPool actor: the connections to one peer.
//!
//! There is one PeerPool per target, created on first use and supervised.
//! A [`call`] leases an idle connection from the pool (or dials a new one
//! when there is none), then writes the request and reads the reply in the
//! caller's own future, outside the actor's mailbox, so a slow peer never
//! holds up the pool. A connection goes back to the pool only after a
//! clean, complete reply, and at most `max_pool` idle connections are kept.
//!
//! When a connection fails, the pool stops and its supervisor restarts it
//! empty: its other idle connections are most likely dead as well.
//!
//! Deadlines are progress-aware: a call fails when no byte moves for the
//! timeout, so a large reply that keeps flowing is not cut short, while a
//! silent peer is detected within the timeout.
//!
//! A Sync, EagerSync or FastForward that fails on a pooled connection
//! before any byte of the reply arrived is retried once on a fresh
//! connection: the peer most likely closed the idle connection (these RPCs
//! are idempotent; Join is not retried).

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
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

/// An idle connection and when it was last used.
struct PooledConnection {
    framed: ClientFramed,
    idle_since: Instant,
}

/// Settings of a PeerPool.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Idle connections kept.
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

/// What a call needs to know about its peer; shared, so that leasing a
/// connection costs one reference count.
struct PeerInfo {
    target: String,
    layer: Arc<dyn StreamLayer>,
    max_frame_size: usize,
    log: Logger,
}

/// See the [module docs](self).
pub struct PeerPool {
    peer: Arc<PeerInfo>,
    settings: PoolSettings,
    idle: Vec<PooledConnection>,
    stats: PoolStats,
    shutdown: CancellationToken,
}

impl PeerPool {
    /// A pool for `target`, dialling through `layer`.
    pub fn new(
        target: String,
        layer: Arc<dyn StreamLayer>,
        settings: PoolSettings,
        shutdown: CancellationToken,
        log: Logger,
    ) -> Self {
        let log = log.new(slog::o!("peer" => target.clone()));
        let peer = Arc::new(PeerInfo {
            target,
            layer,
            max_frame_size: settings.max_frame_size,
            log,
        });
        PeerPool {
            peer,
            settings,
            idle: Vec::new(),
            stats: PoolStats::default(),
            shutdown,
        }
    }

    /// The most recently used idle connection still young enough.
    fn take_idle(&mut self) -> Option<ClientFramed> {
        while let Some(pooled) = self.idle.pop() {
            if pooled.idle_since.elapsed() < self.settings.max_idle {
                return Some(pooled.framed);
            }
        }
        None
    }
}

impl Actor for PeerPool {
    type Context = Context<Self>;
}

impl Supervised for PeerPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.idle.clear();
        self.stats.restarts += 1;
        debug!(self.peer.log, "pool restarted empty");
    }
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

/// Sends `call` to the pool's peer and returns the reply.
pub async fn call(pool: &Addr<PeerPool>, call: Call) -> Result<Reply, TransportError> {
    let lease = pool
        .send(Checkout)
        .await
        .map_err(|_| TransportError::Shutdown)?;
    let exchange = Exchange {
        peer: lease.peer,
        pool: pool.clone(),
    };
    exchange.run(call, lease.connection).await
}

/// Asks for an idle connection.
struct Checkout;

impl Message for Checkout {
    type Result = Lease;
}

/// An idle connection if there was one, and what is needed to dial.
struct Lease {
    peer: Arc<PeerInfo>,
    connection: Option<ClientFramed>,
}

impl<A, M> actix::dev::MessageResponse<A, M> for Lease
where
    A: Actor,
    M: Message<Result = Lease>,
{
    fn handle(self, _: &mut A::Context, tx: Option<actix::dev::OneshotSender<Lease>>) {
        if let Some(tx) = tx {
            let _ = tx.send(self);
        }
    }
}

impl Handler<Checkout> for PeerPool {
    type Result = Lease;

    fn handle(&mut self, _: Checkout, _: &mut Context<Self>) -> Lease {
        Lease {
            peer: self.peer.clone(),
            connection: self.take_idle(),
        }
    }
}

/// One call, in the caller's future.
struct Exchange {
    peer: Arc<PeerInfo>,
    pool: Addr<PeerPool>,
}

/// How one attempt ended badly.
struct Failure {
    error: CodecError,
    /// Nothing of the reply had arrived: the connection may just be stale.
    before_reply: bool,
}

impl Exchange {
    async fn run(self, call: Call, pooled: Option<ClientFramed>) -> Result<Reply, TransportError> {
        let reused = pooled.is_some();
        let framed = match pooled {
            Some(framed) => framed,
            None => self.dial(call.timeout).await?,
        };
        match self.attempt(framed, &call).await {
            Ok(reply) => Ok(reply),
            Err(failure) if reused && failure.before_reply && call.rpc_type != RpcType::Join => {
                debug!(self.peer.log, "pooled connection was stale, retrying on a new one";
                    "rpc" => %call.rpc_type, "error" => %failure.error);
                let framed = self.dial(call.timeout).await?;
                self.attempt(framed, &call)
                    .await
                    .map_err(|failure| self.fail(failure, call.timeout))
            }
            Err(failure) => Err(self.fail(failure, call.timeout)),
        }
    }

    async fn dial(&self, timeout: Duration) -> Result<ClientFramed, TransportError> {
        self.pool.do_send(Dialled);
        let peer = &self.peer;
        let connection =
            peer.layer
                .dial(&peer.target, timeout)
                .await
                .map_err(|source| match source.kind() {
                    io::ErrorKind::TimedOut => TransportError::Timeout {
                        peer: peer.target.clone(),
                        after: timeout,
                    },
                    // The stream layer knows no such address (on WebRTC:
                    // nobody registered that ID).
                    io::ErrorKind::NotFound => TransportError::UnknownPeer(peer.target.clone()),
                    _ => TransportError::Connect {
                        peer: peer.target.clone(),
                        source,
                    },
                })?;
        let stream = DeadlineStream::new(connection);
        Ok(Framed::new(stream, ClientCodec::new(peer.max_frame_size)))
    }

    /// Writes the request and reads the reply on `framed`; gives the
    /// connection back to the pool if it is fit for another call.
    async fn attempt(&self, mut framed: ClientFramed, call: &Call) -> Result<Reply, Failure> {
        let started = Instant::now();
        framed.get_mut().restart(Some(call.timeout));
        framed.codec_mut().expect(call.rpc_type);
        let before_reply = |error: CodecError| Failure {
            error,
            before_reply: true,
        };
        // One write for the whole frame; see `encode_request`.
        let stream = framed.get_mut();
        stream
            .write_all(&call.frame)
            .await
            .map_err(|e| before_reply(e.into()))?;
        // Streams may hold back what was written until flushed (a WebRTC
        // channel finishes its last message then).
        stream.flush().await.map_err(|e| before_reply(e.into()))?;
        let reply = match framed.next().await {
            Some(Ok(reply)) => reply,
            Some(Err(error)) => {
                let before_reply = framed.read_buffer().iter().all(u8::is_ascii_whitespace)
                    && matches!(&error, CodecError::Io(e) if is_stale(e));
                return Err(Failure {
                    error,
                    before_reply,
                });
            }
            None => {
                let eof = io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection without answering",
                );
                let before_reply = framed.read_buffer().iter().all(u8::is_ascii_whitespace);
                return Err(Failure {
                    error: eof.into(),
                    before_reply,
                });
            }
        };
        debug!(self.peer.log, "rpc done"; "rpc" => %call.rpc_type, "duration" => ?started.elapsed());
        // Anything after the reply but whitespace means the peer is out of
        // step with us: do not reuse the connection.
        if framed.read_buffer().iter().all(u8::is_ascii_whitespace) {
            framed.read_buffer_mut().clear();
            self.pool.do_send(GiveBack(framed));
        }
        Ok(reply)
    }

    fn fail(&self, failure: Failure, timeout: Duration) -> TransportError {
        let error = TransportError::from_codec(failure.error, &self.peer.target, timeout);
        if !error.is_timeout() {
            warn!(self.peer.log, "connection failed"; "error" => %error);
        }
        self.pool.do_send(ConnectionFailed);
        error
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

#[derive(Message)]
#[rtype(result = "()")]
struct Dialled;

impl Handler<Dialled> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: Dialled, _: &mut Context<Self>) {
        self.stats.dials += 1;
    }
}

/// Returns the pool's counts.
#[derive(Message)]
#[rtype(result = "PoolStats")]
pub struct GetPoolStats;

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
pub struct ClosePool;

impl Handler<ClosePool> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: ClosePool, _: &mut Context<Self>) {
        self.idle.clear();
    }
}
