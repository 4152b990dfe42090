//! The outgoing path, from a call to its reply, and the PeerPool actor
//! that keeps the connections to one peer. Read top to bottom:
//!
//! 1. [`PeerPools`] finds the pool of a target, starting it on first use
//!    (supervised), and retires pools not called for a while.
//! 2. [`PeerPools::call`] asks that pool for a connection (one message,
//!    `Checkout`): an idle one, or leave to dial one (at most
//!    `max_dials` at once per peer; beyond, the call waits for whichever
//!    comes first, a returned connection or a dial slot; a failed dial
//!    fails every call made before it began). It then writes
//!    the request and reads the reply in the caller's own future, outside
//!    the actor's mailbox, so a slow peer never holds up the pool.
//! 3. The `Lease` gives the connection back when it is dropped (one
//!    message, `GiveBack`) if the exchange ended cleanly, or tells the pool
//!    it failed; no path can forget it. A connection whose exchange was cut
//!    short (the caller gave up) is closed.
//! 4. The [`PeerPool`] actor keeps at most `max_pool` idle connections,
//!    newest first, closes those idle longer than `max_idle`, and counts
//!    dials and restarts.
//!
//! A layer that gives each call a connection of its own (QUIC streams,
//! see [`StreamLayer::one_call_per_connection`]) has no pool: each call
//! opens its stream (the layer keeps one QUIC connection per peer),
//! finishes its side after the request, and closes the stream after the
//! reply. Such a call is retried once, a Sync, EagerSync or FastForward
//! only (Join is not idempotent), when the layer says its connection,
//! open before the call, was lost before any byte of the reply came
//! ([`NotDelivered`]): most likely the peer restarted.
//!
//! Deadlines: a call fails when no byte moves for the timeout (a large
//! reply that keeps flowing is not cut short), and in any case once the
//! exchange has taken the timeout plus its bytes at `min_rate`, so a peer
//! trickling its reply cannot hold a call for long.
//!
//! A Sync, EagerSync or FastForward that fails on a pooled connection
//! before any byte of the reply arrived is retried once on a fresh
//! connection: the peer most likely closed the idle connection (these RPCs
//! are idempotent; Join is not retried). Which failures empty the pool is
//! decided by what they say about the peer: a refused dial or a reset or
//! closed connection mean the peer went away, and its other idle
//! connections are most likely dead too ("restart"); a timeout, a bad
//! frame or an error answer concern only that connection, which is
//! closed.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::StreamExt;
use slog::{debug, warn, Logger};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::call_metrics::{CallMetrics, Direction, Role};
use crate::codec::{ClientCodec, CodecError, RawReply, Reply};
use crate::deadline::DeadlineStream;
use crate::error::TransportError;
use crate::io_arbiters::IoArbiters;
use crate::secure::HandshakeError;
use crate::stream::{BoxConnection, NotDelivered, StreamLayer};
use crate::wire::RpcType;

/// A connection to a peer: replies are cut from the stream by the codec
/// (and parsed by the call, on an I/O thread when large); requests, already
/// encoded, are written to the stream directly (so no write buffer).
type ClientFramed = FramedRead<DeadlineStream<BoxConnection>, ReplyFrames>;

/// Cuts replies from a connection without parsing them.
#[derive(Debug)]
struct ReplyFrames {
    codec: ClientCodec,
    /// Bytes beyond which a reply is large (see [`ReplyPart::Grow`]).
    large_frame: usize,
    /// Bytes of the reply buffered when the call last yielded.
    yielded_at: usize,
}

/// A call reading a large reply lets its thread's other tasks run after
/// each this many bytes read (and scanned): a thread reads on while a
/// socket has data, so a fast sender could otherwise hold it for the
/// whole frame.
const YIELD_EVERY: usize = 1024 * 1024;

/// What reading a connection gives.
enum ReplyPart {
    /// A whole reply.
    Reply(RawReply),
    /// A large reply has filled the read buffer: the call grows it off its
    /// thread ([`IoArbiters::grow`]) and reads on.
    Grow,
    /// Another [`YIELD_EVERY`] bytes of a reply arrived: the call yields.
    Progress,
}

impl tokio_util::codec::Decoder for ReplyFrames {
    type Item = ReplyPart;
    type Error = CodecError;

    fn decode(&mut self, src: &mut bytes::BytesMut) -> Result<Option<ReplyPart>, CodecError> {
        if let Some(reply) = self.codec.decode_raw(src)? {
            self.yielded_at = 0;
            return Ok(Some(ReplyPart::Reply(reply)));
        }
        if src.len() > self.yielded_at + YIELD_EVERY {
            self.yielded_at = src.len();
            return Ok(Some(ReplyPart::Progress));
        }
        let full = src.capacity() - src.len() < 1024;
        Ok((full && src.len() > self.large_frame).then_some(ReplyPart::Grow))
    }

    fn decode_eof(&mut self, src: &mut bytes::BytesMut) -> Result<Option<ReplyPart>, CodecError> {
        Ok(self.codec.decode_raw_eof(src)?.map(ReplyPart::Reply))
    }
}

/// Read buffer of a new connection, and the most an idle pooled one keeps:
/// a ping's reply fits, and a thousand idle connections cost a few MiB.
const READ_BUFFER: usize = 4096;

/// Settings of every PeerPool of a transport.
#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// Idle connections kept per peer.
    pub max_pool: usize,
    /// Idle connections older than this are closed rather than reused
    /// (the peer would likely have closed them).
    pub max_idle: Duration,
    /// Largest reply accepted.
    pub max_reply_size: usize,
    /// Connections dialled at once to one peer.
    pub max_dials: usize,
    /// Bytes per second below which an exchange fails (see the module
    /// docs).
    pub min_rate: u64,
    /// Replies larger than this are parsed on an I/O arbiter, not on the
    /// caller's thread.
    pub large_frame: usize,
    /// The `transport` label of the pools' metrics.
    pub transport: &'static str,
}

pub use babble_net_core::stats::PoolStats;

/// Calls waiting for a connection to one peer; more fail at once.
const MAX_WAITERS: usize = 4096;

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
    /// The pools' series (shared by every pool of the transport).
    metrics: Arc<CallMetrics>,
    layer: Arc<dyn StreamLayer>,
    max_reply_size: usize,
    min_rate: u64,
    large_frame: usize,
    /// Each call has a connection of its own (see the module docs).
    one_call: bool,
    io: Arc<IoArbiters>,
    log: Logger,
}

/// A pool, what dialling its peer takes, and how busy it is.
#[derive(Clone)]
struct PoolHandle {
    pool: Addr<PeerPool>,
    peer: Arc<PeerInfo>,
    /// Calls using the pool now; a pool in use is never retired.
    in_flight: Arc<AtomicUsize>,
    /// When it was last called, in milliseconds after the pools' start.
    last_used: Arc<AtomicU64>,
}

/// Marks a call in flight on its pool until dropped.
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The pools, by target and the thread they run on (looked up by the
/// target without allocating on every call).
type PoolTable = Arc<Mutex<HashMap<String, HashMap<ThreadId, PoolHandle>>>>;

/// Milliseconds since `base`.
fn millis_since(base: Instant) -> u64 {
    base.elapsed().as_millis() as u64
}

/// The PeerPool of every target a transport calls, on every thread that
/// calls it.
///
/// A connection belongs to the runtime of the thread that dialled it (its
/// readiness events are that runtime's), so each calling thread has a pool
/// of its own for each target: a call made on an actix arbiter is written,
/// read and parsed on that arbiter's thread, with no hand-off to another
/// thread and back. Only a reply larger than `large_frame` is parsed on an
/// I/O arbiter while the call waits. A call made outside any arbiter is
/// made on the I/O arbiter of its target. So `max_pool` and `max_dials`
/// hold per peer and calling thread. A layer that drives its connection
/// to a peer on the I/O thread of the peer's address (QUIC,
/// [`StreamLayer::calls_where_driven`]) has every call to it made there,
/// where its stream's bytes are: the caller's thread sends the call and
/// receives the decoded reply, one hop each way.
#[derive(Clone)]
pub struct PeerPools {
    layer: Arc<dyn StreamLayer>,
    /// Whether calls are made on the I/O thread of their target, where the
    /// layer drives the connection to it.
    where_driven: bool,
    settings: PoolSettings,
    /// Where large replies are parsed, and calls from outside any arbiter
    /// made.
    io: Arc<IoArbiters>,
    /// The series of every pool's calls and connections.
    metrics: Arc<CallMetrics>,
    pools: PoolTable,
    /// When the pools started: `last_used` counts from it.
    base: Instant,
    shutdown: CancellationToken,
    log: Logger,
}

impl PeerPools {
    /// Pools dialling through `layer`; each peer's pool actor and calls
    /// run on the calling thread (see the type's docs). A pool not called
    /// for `settings.max_idle` is retired (checked every half of it).
    pub fn new(
        layer: Arc<dyn StreamLayer>,
        settings: PoolSettings,
        io: Arc<IoArbiters>,
        shutdown: CancellationToken,
        log: Logger,
    ) -> PeerPools {
        let pools = PoolTable::default();
        let base = Instant::now();
        actix_rt::spawn(retire_unused(
            pools.clone(),
            base,
            settings.max_idle,
            shutdown.clone(),
        ));
        let where_driven = layer.calls_where_driven() && !io.is_empty();
        PeerPools {
            layer,
            where_driven,
            metrics: Arc::new(CallMetrics::new(settings.transport)),
            settings,
            io,
            pools,
            base,
            shutdown,
            log,
        }
    }

    /// The pool of `target` on this thread, started on first use, and
    /// this call's mark on it. Must be called on an actix arbiter.
    fn get(&self, target: &str) -> (PoolHandle, InFlight) {
        let thread = std::thread::current().id();
        let mut pools = self.pools.lock().expect("pool table lock");
        let found = pools
            .get(target)
            .and_then(|threads| threads.get(&thread))
            .filter(|h| h.pool.connected())
            .cloned();
        let handle = match found {
            Some(handle) => handle,
            None => {
                let handle = self.start(target);
                pools
                    .entry(target.to_owned())
                    .or_default()
                    .insert(thread, handle.clone());
                handle
            }
        };
        handle.in_flight.fetch_add(1, Ordering::Relaxed);
        handle
            .last_used
            .store(millis_since(self.base), Ordering::Relaxed);
        let mark = InFlight(handle.in_flight.clone());
        (handle, mark)
    }

    fn start(&self, target: &str) -> PoolHandle {
        let peer = Arc::new(PeerInfo {
            target: target.to_owned(),
            metrics: self.metrics.clone(),
            layer: self.layer.clone(),
            max_reply_size: self.settings.max_reply_size,
            min_rate: self.settings.min_rate,
            large_frame: self.settings.large_frame,
            one_call: self.layer.one_call_per_connection(),
            io: self.io.clone(),
            log: self.log.new(slog::o!("peer" => target.to_owned())),
        });
        let (settings, metrics, shutdown, log) = (
            self.settings.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
            peer.log.clone(),
        );
        let target = target.to_owned();
        let pool = Supervisor::start(move |_| PeerPool {
            target,
            settings,
            idle: Vec::new(),
            dialing: 0,
            waiters: VecDeque::new(),
            failed_dial: None,
            counted_idle: 0,
            stats: PoolStats::default(),
            metrics,
            shutdown,
            log,
        });
        PoolHandle {
            pool,
            peer,
            in_flight: Arc::default(),
            last_used: Arc::new(AtomicU64::new(millis_since(self.base))),
        }
    }

    /// Sends `call` to `target` and returns its reply; see the module docs.
    /// The exchange runs on the caller's thread when that is an actix
    /// arbiter, else on the target's I/O arbiter, and there always when
    /// the layer drives its connection to the target there
    /// ([`StreamLayer::calls_where_driven`]: QUIC); the caller waits for
    /// the reply.
    pub async fn call(&self, target: &str, call: Call) -> Result<Reply, TransportError> {
        let issued = Instant::now();
        if !self.where_driven && actix_rt::Arbiter::try_current().is_some() {
            let (handle, in_flight) = self.get(target);
            let reply = exchange_call(handle, call, issued).await;
            drop(in_flight);
            return reply;
        }
        let (tx, mut rx) = oneshot::channel();
        let (pools, target_owned) = (self.clone(), target.to_owned());
        let running = self.io.for_key(target).spawn(async move {
            let mut tx = tx;
            let (handle, in_flight) = pools.get(&target_owned);
            let reply = tokio::select! {
                reply = exchange_call(handle, call, issued) => reply,
                // The caller gave up (or the transport closed): the lease
                // is dropped, cut short, and its connection closed.
                _ = tx.closed() => return,
                _ = pools.shutdown.cancelled() => Err(TransportError::Shutdown),
            };
            drop(in_flight);
            let _ = tx.send(reply);
        });
        if !running {
            return Err(TransportError::Shutdown);
        }
        (&mut rx).await.unwrap_or(Err(TransportError::Shutdown))
    }

    /// Counts of the connections to `target`, from every calling thread;
    /// zero for a peer never called.
    pub async fn stats(&self, target: &str) -> PoolStats {
        let pools: Vec<Addr<PeerPool>> = self
            .pools
            .lock()
            .expect("pool table lock")
            .get(target)
            .map(|threads| threads.values().map(|h| h.pool.clone()).collect())
            .unwrap_or_default();
        let mut total = PoolStats::default();
        for pool in pools {
            let stats = pool.send(GetPoolStats).await.unwrap_or_default();
            total.idle += stats.idle;
            total.dials += stats.dials;
            total.restarts += stats.restarts;
        }
        total
    }

    /// Pools alive now (one per peer called recently, and calling thread).
    pub fn len(&self) -> usize {
        let pools = self.pools.lock().expect("pool table lock");
        pools.values().map(HashMap::len).sum()
    }

    /// Whether no pool is alive.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every idle connection for good (the transport is closing).
    pub async fn close(&self) {
        let pools: Vec<_> = self
            .pools
            .lock()
            .expect("pool table lock")
            .drain()
            .flat_map(|(_, threads)| threads.into_values().map(|h| h.pool))
            .collect();
        for pool in pools {
            let _ = pool.send(ClosePool).await;
        }
    }
}

/// Every half `unused_for`, retires the pools not called for `unused_for`
/// and with no call in flight: their idle connections close and the actor
/// stops (nothing holds its address any more, so it is not restarted).
async fn retire_unused(
    pools: PoolTable,
    base: Instant,
    unused_for: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(unused_for / 2);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let retired: Vec<Addr<PeerPool>> = {
            let mut pools = pools.lock().expect("pool table lock");
            let now = millis_since(base);
            let mut retired = Vec::new();
            for threads in pools.values_mut() {
                threads.retain(|_, h| {
                    let idle_ms = now.saturating_sub(h.last_used.load(Ordering::Relaxed));
                    let unused = h.in_flight.load(Ordering::Relaxed) == 0
                        && Duration::from_millis(idle_ms) >= unused_for;
                    if unused {
                        retired.push(h.pool.clone());
                    }
                    !unused
                });
            }
            pools.retain(|_, threads| !threads.is_empty());
            retired
        };
        for pool in retired {
            pool.do_send(Retire);
        }
    }
}

/// One call, made at `issued`, on the connections of its pool: a lease,
/// the exchange, and a retry on a new connection when a pooled one turns
/// out stale.
async fn exchange_call(
    handle: PoolHandle,
    call: Call,
    issued: Instant,
) -> Result<Reply, TransportError> {
    let PoolHandle { pool, peer, .. } = handle;
    if peer.one_call {
        // Boxed: this path's future is kilobytes, and carrying it inline
        // would make every pooled call's future (moved as it is made and
        // awaited) as large.
        return Box::pin(call_on_own_connection(&peer, &pool, &call)).await;
    }
    let (lease, reused) = checkout(&peer, &pool, &call, issued, false).await?;
    match exchange(lease, &call).await {
        Ok(reply) => Ok(reply),
        Err(failure) if reused && failure.before_reply && call.rpc_type != RpcType::Join => {
            debug!(peer.log, "pooled connection was stale, retrying on a new one";
                "rpc" => %call.rpc_type, "error" => %failure.error);
            let (lease, _) = checkout(&peer, &pool, &call, issued, true).await?;
            exchange(lease, &call)
                .await
                .map_err(|failure| failed(&peer, failure, call.timeout))
        }
        Err(failure) => Err(failed(&peer, failure, call.timeout)),
    }
}

/// One call on a connection of its own (see the module docs): opened,
/// used once, closed; made again once if the peer never received it.
async fn call_on_own_connection(
    peer: &PeerInfo,
    pool: &Addr<PeerPool>,
    call: &Call,
) -> Result<Reply, TransportError> {
    let open = || async {
        let opened = dial(peer, pool, call.timeout).await;
        peer.metrics.dialled(opened.is_ok());
        opened
    };
    match exchange(open().await?, call).await {
        Ok(reply) => Ok(reply),
        // Only an idempotent call: a lost connection proves nothing about
        // whether the peer processed the request.
        Err(failure) if failure.not_delivered && call.rpc_type != RpcType::Join => {
            debug!(peer.log, "the peer never received the request, sending it again";
                "rpc" => %call.rpc_type, "error" => %failure.error);
            exchange(open().await?, call)
                .await
                .map_err(|failure| failed(peer, failure, call.timeout))
        }
        Err(failure) => Err(failed(peer, failure, call.timeout)),
    }
}

/// Gets a connection from `pool` (or leave to dial one, and dials), within
/// the call's timeout. `fresh` skips idle connections. Returns the lease
/// and whether it is a pooled connection.
async fn checkout(
    peer: &PeerInfo,
    pool: &Addr<PeerPool>,
    call: &Call,
    issued: Instant,
    fresh: bool,
) -> Result<(Lease, bool), TransportError> {
    let timeout = call.timeout;
    let grant = tokio::time::timeout(timeout, pool.send(Checkout { fresh, issued }))
        .await
        .map_err(|_| TransportError::Timeout {
            peer: peer.target.clone(),
            after: timeout,
        })?
        .map_err(|_| TransportError::Shutdown)?;
    match grant {
        Grant::Connection(framed) => Ok((Lease::of(framed, pool, peer), true)),
        Grant::Dial => {
            let began = Instant::now();
            let dialled = dial(peer, pool, timeout).await;
            peer.metrics.dialled(dialled.is_ok());
            let failure = dialled.as_ref().err().cloned();
            pool.do_send(Dialled { began, failure });
            Ok((dialled?, false))
        }
        Grant::Refused(error) => Err(error),
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
            _ if HandshakeError::from_io(&source).is_some() => TransportError::Handshake {
                peer: peer.target.clone(),
                source: HandshakeError::from_io(&source)
                    .cloned()
                    .expect("checked above"),
            },
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
    let framed = FramedRead::with_capacity(
        DeadlineStream::new(connection),
        ReplyFrames {
            codec: ClientCodec::new(peer.max_reply_size),
            large_frame: peer.large_frame,
            yielded_at: 0,
        },
        READ_BUFFER,
    );
    let mut lease = Lease::of(framed, pool, peer);
    lease.reusable = !peer.one_call;
    Ok(lease)
}

/// How one attempt ended badly.
struct Failure {
    error: CodecError,
    /// Nothing of the reply had arrived: the connection may just be stale.
    before_reply: bool,
    /// The layer says the peer never received the request.
    not_delivered: bool,
}

impl Failure {
    fn new(error: CodecError, before_reply: bool) -> Failure {
        let not_delivered = matches!(&error, CodecError::Io(e) if NotDelivered::is(e));
        Failure {
            error,
            before_reply,
            not_delivered,
        }
    }
}

/// Writes the request and reads the reply on the leased connection. The
/// lease goes back to the pool if the exchange ended cleanly.
async fn exchange(mut lease: Lease, call: &Call) -> Result<Reply, Failure> {
    let framed = lease.framed.as_mut().expect("a lease holds its connection");
    framed
        .get_mut()
        .restart_with_rate(call.timeout, lease.min_rate);
    framed.decoder_mut().codec.expect(call.rpc_type);
    let before_reply = |error: CodecError| Failure::new(error, true);
    // A write that fails leaves the lease cut short: the connection is
    // closed, and the pool hears of it only if the retry fails too.
    // One write for the whole frame; see `encode_request`. Streams may
    // hold back what was written until flushed (a WebRTC channel finishes
    // its last message then).
    crate::deadline::write_frame(framed.get_mut(), &call.frame)
        .await
        .map_err(|e| before_reply(e.into()))?;
    if !lease.reusable {
        // The request is the stream's last byte (not a hang-up).
        framed
            .get_mut()
            .shutdown()
            .await
            .map_err(|e| before_reply(e.into()))?;
    }
    crate::spin::expect_io();
    lease.metrics.bytes(Direction::Out, call.frame.len());
    let read_before = framed.get_ref().read_total();
    let reply = loop {
        match framed.next().await {
            Some(Ok(ReplyPart::Grow)) => {
                if let Err(error) = lease.io.grow(framed.read_buffer_mut()).await {
                    break Some(Err(CodecError::Io(error)));
                }
            }
            Some(Ok(ReplyPart::Progress)) => tokio::task::yield_now().await,
            Some(Ok(ReplyPart::Reply(raw))) => break Some(Ok(raw)),
            Some(Err(error)) => break Some(Err(error)),
            None => break None,
        }
    };
    let read = framed.get_ref().read_total() - read_before;
    lease.metrics.bytes(Direction::In, read as usize);
    // Anything after the reply but whitespace means the peer is out of
    // step with us (or the reply never came): the connection is not reused.
    let nothing_after = framed.read_buffer().iter().all(u8::is_ascii_whitespace);
    match reply {
        Some(Ok(raw)) => {
            if nothing_after {
                framed.read_buffer_mut().clear();
                lease.outcome = Outcome::Clean;
            }
            // The connection is free again; a reply that fails to parse is
            // this call's error, not the connection's.
            let large = raw.len() > lease.large_frame;
            let parsed = match lease.io.run(large, move || raw.decode()).await {
                Ok(parsed) => parsed,
                Err(stopped) => Err(CodecError::Io(stopped)),
            };
            parsed.map_err(|error| {
                lease.outcome = Outcome::Failed { peer_gone: false };
                Failure::new(error, false)
            })
        }
        Some(Err(error)) => {
            let stale = matches!(&error, CodecError::Io(e) if is_stale(e));
            // Only a peer that went away empties the pool (module docs).
            lease.outcome = Outcome::Failed { peer_gone: stale };
            Err(Failure::new(error, nothing_after && stale))
        }
        None => {
            lease.outcome = Outcome::Failed { peer_gone: true };
            let eof = io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the peer closed the connection without answering",
            );
            Err(Failure::new(eof.into(), nothing_after))
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
    /// The connection failed; `peer_gone` when the peer reset or closed it.
    Failed { peer_gone: bool },
}

/// A connection on loan from a pool; see the module docs.
struct Lease {
    framed: Option<ClientFramed>,
    pool: Addr<PeerPool>,
    min_rate: u64,
    large_frame: usize,
    io: Arc<IoArbiters>,
    metrics: Arc<CallMetrics>,
    outcome: Outcome,
    /// The connection may carry another call (not a connection of one
    /// call).
    reusable: bool,
}

impl Lease {
    fn of(framed: ClientFramed, pool: &Addr<PeerPool>, peer: &PeerInfo) -> Lease {
        Lease {
            framed: Some(framed),
            pool: pool.clone(),
            min_rate: peer.min_rate,
            large_frame: peer.large_frame,
            io: peer.io.clone(),
            metrics: peer.metrics.clone(),
            outcome: Outcome::Cut,
            reusable: true,
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match (self.outcome, self.framed.take()) {
            (Outcome::Clean, Some(framed)) if self.reusable => self.pool.do_send(GiveBack(framed)),
            (Outcome::Failed { peer_gone: true }, _) => self.pool.do_send(PeerGone),
            // Failed on this connection only, or cut short: the connection
            // is closed, the pool keeps the others.
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

/// What a call gets from its pool. Moved once per call; boxing the
/// connection would cost an allocation per call instead.
#[allow(clippy::large_enum_variant)]
enum Grant {
    /// An idle connection.
    Connection(ClientFramed),
    /// Leave to dial a new one (counted against `max_dials`).
    Dial,
    /// Nothing, and why: the dial that began after the call failed (its
    /// error, as the caller that dialled saw it), too many calls wait
    /// already, or the pool is closed.
    Refused(TransportError),
}

/// A call waiting for a connection or a dial slot.
struct Waiter {
    /// When the call was made.
    issued: Instant,
    grant: oneshot::Sender<Grant>,
}

/// The connections to one peer; see the module docs.
pub struct PeerPool {
    /// The peer's address.
    target: String,
    settings: PoolSettings,
    idle: Vec<PooledConnection>,
    /// Dials in progress.
    dialing: usize,
    /// Calls waiting for a connection or a dial slot, oldest first.
    waiters: VecDeque<Waiter>,
    /// The latest failed dial since the last successful one: when it
    /// began, and why it failed. A call made before it began fails the
    /// same way instead of dialling again: it has waited at least as long
    /// as that dial, and its checkout may only arrive now, from another
    /// thread. A call made after it began dials again (the peer may be
    /// back: a partition that healed while the dial was failing).
    failed_dial: Option<(Instant, TransportError)>,
    /// Idle connections last counted in the `pooled` connections gauge.
    counted_idle: usize,
    stats: PoolStats,
    metrics: Arc<CallMetrics>,
    shutdown: CancellationToken,
    log: Logger,
}

impl PeerPool {
    /// Hands `grant` to the oldest waiter still waiting; gives it back if
    /// there is none.
    fn serve_waiter(&mut self, mut grant: Grant) -> Option<Grant> {
        while let Some(waiter) = self.waiters.pop_front() {
            match waiter.grant.send(grant) {
                Ok(()) => return None,
                Err(back) => grant = back,
            }
        }
        Some(grant)
    }

    /// Lets waiting calls dial while dial slots are free.
    fn grant_dials(&mut self) {
        while self.dialing < self.settings.max_dials && !self.waiters.is_empty() {
            self.dialing += 1;
            self.stats.dials += 1;
            if self.serve_waiter(Grant::Dial).is_some() {
                // Nobody was still waiting after all.
                self.dialing -= 1;
                self.stats.dials -= 1;
            }
        }
    }

    /// Closes idle connections older than `max_idle`.
    fn sweep(&mut self) {
        let max_idle = self.settings.max_idle;
        self.idle
            .retain(|pooled| pooled.idle_since.elapsed() < max_idle);
        self.count_idle();
    }

    /// Brings the `pooled` connections gauge up to date.
    fn count_idle(&mut self) {
        let now = self.idle.len();
        if now != self.counted_idle {
            let delta = now as f64 - self.counted_idle as f64;
            self.metrics.connections(Role::Pooled, delta);
            self.counted_idle = now;
        }
    }

    /// The pool was emptied because its peer seemed gone.
    fn restarted(&mut self) {
        self.idle.clear();
        self.count_idle();
        self.stats.restarts += 1;
        crate::metrics::pool_restarted(self.settings.transport);
    }
}

impl Actor for PeerPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Idle connections a peer has long closed are not kept around
        // until the next call finds them stale.
        ctx.run_interval(self.settings.max_idle / 2, |pool, _| pool.sweep());
    }
}

impl Drop for PeerPool {
    fn drop(&mut self) {
        self.idle.clear();
        self.count_idle();
    }
}

impl Supervised for PeerPool {
    fn restarting(&mut self, _: &mut Context<Self>) {
        self.restarted();
        self.dialing = 0;
        self.waiters.clear();
        self.failed_dial = None;
        debug!(self.log, "pool restarted empty");
    }
}

/// Asks for a connection: the most recently used idle one still young
/// enough (unless `fresh`), else leave to dial, else a place in the queue.
#[derive(Message)]
#[rtype(result = "Grant")]
struct Checkout {
    fresh: bool,
    /// When the call was made.
    issued: Instant,
}

impl Handler<Checkout> for PeerPool {
    type Result = actix::Response<Grant>;

    fn handle(&mut self, checkout: Checkout, _: &mut Context<Self>) -> Self::Result {
        if !checkout.fresh {
            self.sweep();
            if let Some(pooled) = self.idle.pop() {
                self.count_idle();
                return actix::Response::reply(Grant::Connection(pooled.framed));
            }
        }
        if let Some((_, why)) = self
            .failed_dial
            .as_ref()
            .filter(|(failed, _)| checkout.issued <= *failed)
        {
            return actix::Response::reply(Grant::Refused(why.clone()));
        }
        if self.dialing < self.settings.max_dials {
            self.dialing += 1;
            self.stats.dials += 1;
            return actix::Response::reply(Grant::Dial);
        }
        if self.waiters.len() >= MAX_WAITERS {
            return actix::Response::reply(Grant::Refused(TransportError::Connect {
                peer: self.target.clone(),
                source: io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "too many calls waiting for a connection to this peer",
                ),
            }));
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.push_back(Waiter {
            issued: checkout.issued,
            grant: tx,
        });
        actix::Response::fut(
            async move { rx.await.unwrap_or(Grant::Refused(TransportError::Shutdown)) },
        )
    }
}

/// A dial that began at `began` ended; `failure` says why it failed, if
/// it did.
#[derive(Message)]
#[rtype(result = "()")]
struct Dialled {
    began: Instant,
    failure: Option<TransportError>,
}

impl Handler<Dialled> for PeerPool {
    type Result = ();

    fn handle(&mut self, dialled: Dialled, _: &mut Context<Self>) {
        self.dialing = self.dialing.saturating_sub(1);
        match dialled.failure {
            // The peer cannot be reached: the calls waiting for it learn
            // so now rather than at their timeout.
            Some(why) => {
                self.restarted();
                // Calls made before the dial began have waited at least as
                // long as it did; calls made since may find the peer back
                // (a partition healed meanwhile) and dial again.
                let (stale, fresh): (VecDeque<_>, VecDeque<_>) = self
                    .waiters
                    .drain(..)
                    .partition(|waiter| waiter.issued <= dialled.began);
                for waiter in stale {
                    let _ = waiter.grant.send(Grant::Refused(why.clone()));
                }
                self.waiters = fresh;
                if self
                    .failed_dial
                    .as_ref()
                    .is_none_or(|(began, _)| *began < dialled.began)
                {
                    self.failed_dial = Some((dialled.began, why));
                }
                self.grant_dials();
            }
            None => {
                self.failed_dial = None;
                self.grant_dials();
            }
        }
    }
}

/// A connection that completed a call cleanly.
#[derive(Message)]
#[rtype(result = "()")]
struct GiveBack(ClientFramed);

impl Handler<GiveBack> for PeerPool {
    type Result = ();

    fn handle(&mut self, GiveBack(framed): GiveBack, _: &mut Context<Self>) {
        if self.shutdown.is_cancelled() {
            return;
        }
        let Some(Grant::Connection(mut framed)) = self.serve_waiter(Grant::Connection(framed))
        else {
            return;
        };
        // An idle connection does not keep the buffer of a large reply.
        if framed.read_buffer().capacity() > READ_BUFFER {
            *framed.read_buffer_mut() = bytes::BytesMut::with_capacity(READ_BUFFER);
        }
        if self.idle.len() < self.settings.max_pool {
            self.idle.push(PooledConnection {
                framed,
                idle_since: Instant::now(),
            });
            self.count_idle();
        }
    }
}

/// The peer reset or closed a connection: its idle ones most likely died
/// with it.
#[derive(Message)]
#[rtype(result = "()")]
struct PeerGone;

impl Handler<PeerGone> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: PeerGone, _: &mut Context<Self>) {
        self.restarted();
        debug!(self.log, "peer gone: pool emptied");
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
        self.count_idle();
        for waiter in self.waiters.drain(..) {
            let _ = waiter.grant.send(Grant::Refused(TransportError::Shutdown));
        }
    }
}

/// The pool has not been called for a while: close it and stop.
#[derive(Message)]
#[rtype(result = "()")]
struct Retire;

impl Handler<Retire> for PeerPool {
    type Result = ();

    fn handle(&mut self, _: Retire, ctx: &mut Context<Self>) {
        self.idle.clear();
        self.count_idle();
        ctx.stop();
    }
}
