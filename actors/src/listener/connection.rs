//! Serving one inbound connection: read a request, hand it to the
//! Dispatcher, write the answer, again, within the Listener's limits.
//!
//! Deadlines, all from the configuration:
//! * between requests, the connection is closed `idle_timeout` after its
//!   last reply (or after it opened): whitespace does not move that;
//! * a request must keep moving (a byte every `timeout`) and arrive whole
//!   within `timeout` plus its size at `min_rate`, from its first byte, so
//!   a stalled request gives its share of the buffer budget back after
//!   `timeout`;
//! * a reply is written within `timeout` plus its size at `min_rate`;
//! * while the node answers, the socket is watched: a caller that hangs up
//!   abandons its request (the [`Rpc`] sees it) and frees the slot.
//!
//! Bytes buffered beyond a connection's first 64 KiB are taken from the
//! Listener's shared budget, and given back once the request is decoded.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use bytes::BytesMut;
use futures::future::BoxFuture;
use slog::{debug, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::codec::{Decoder, Encoder};
use tokio_util::sync::CancellationToken;

use super::slots::Activity;
use super::{ListenerCounters, ListenerLimits};
use crate::codec::{CodecError, Reply, ServerCodec};
use crate::deadline::DeadlineStream;
use crate::dispatcher::{Dispatch, Dispatcher};
use crate::error::SHUTTING_DOWN;
use crate::rpc::Rpc;
use crate::stream::{BoxConnection, Upgraded};

/// Bytes a connection may buffer outside the shared budget.
const FREE_BUFFER: usize = 64 * 1024;

/// The most an idle connection's buffer keeps between requests.
const IDLE_BUFFER: usize = 8 * 1024;
/// The budget is counted in units of this many bytes.
const BUDGET_UNIT: usize = 1024;
/// Bytes a caller may send while its request is being answered (Go sends
/// one newline after a request; a client never pipelines).
const MAX_WHILE_SERVING: usize = 1024;

/// What serving a connection needs from its Listener.
pub(super) struct Context {
    pub(super) remote: String,
    pub(super) activity: Arc<Activity>,
    /// Cancelled when the connection is shed or the Listener stops.
    pub(super) kick: CancellationToken,
    pub(super) dispatcher: Addr<Dispatcher>,
    pub(super) limits: ListenerLimits,
    pub(super) budget: Arc<Semaphore>,
    pub(super) counters: Arc<ListenerCounters>,
    pub(super) shutdown: CancellationToken,
    pub(super) log: Logger,
}

/// How a connection ended without error.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// The peer closed it between requests.
    Closed,
    /// No request for `idle_timeout`.
    Idle,
    /// Shed for a newcomer, or the Listener is stopping.
    Kicked,
    /// The caller hung up while its request was being answered.
    Abandoned,
}

/// Serves requests on one connection until it ends (`Ok`) or something
/// goes wrong (`Err`, logged by the caller). `upgrading` completes the
/// connection first (a secure layer's handshake).
pub(super) async fn serve(
    upgrading: BoxFuture<'static, std::io::Result<Upgraded>>,
    cx: Context,
) -> Result<Ended, CodecError> {
    let upgraded = tokio::select! {
        upgraded = upgrading => upgraded?,
        _ = cx.kick.cancelled() => return Ok(Ended::Kicked),
    };
    let peer_key = upgraded.peer_key;
    let mut stream = DeadlineStream::new(upgraded.connection);
    let mut buf = BytesMut::new();
    let mut codec = ServerCodec::new(cx.limits.max_request_size);
    let mut reserved = Reservation {
        permits: None,
        counters: cx.counters.clone(),
    };
    // Bytes read before the current request (for the bytes metric).
    let mut read_before = 0;
    loop {
        let idle_until = Instant::now() + cx.limits.idle_timeout;
        let command = tokio::select! {
            read = read_request(&mut stream, &mut buf, &mut codec, &mut reserved, idle_until, &cx) => match read? {
                Read::Request(command) => command,
                Read::Ended(ended) => return Ok(ended),
            },
            _ = cx.kick.cancelled() => return Ok(Ended::Kicked),
        };
        reserved.fit(buf.len());
        cx.activity.serving();
        let decoded = std::time::Instant::now();
        let read_total = stream.read_total();
        crate::metrics::bytes(
            cx.limits.transport,
            "in",
            (read_total - read_before) as usize,
        );
        read_before = read_total;
        let rpc_type = command.rpc_type();
        let (mut rpc, pending) = Rpc::new(command, Some(cx.remote.clone()));
        rpc.peer_key = peer_key;
        let answered = async {
            // A stopped Dispatcher drops the RPC, which answers `pending`.
            let _ = cx.dispatcher.send(Dispatch(rpc)).await;
            pending.await
        };
        // Nothing bounds the node's own answer time here; a caller that
        // gives up closes its connection, which ends the wait.
        stream.restart(None);
        let reply: Reply = tokio::select! {
            reply = answered => reply,
            gone = caller_gone(&mut stream, &mut buf) => {
                gone?;
                debug!(cx.log, "the caller hung up before the answer"; "rpc" => %rpc_type);
                return Ok(Ended::Abandoned);
            }
            _ = cx.kick.cancelled() => match cx.shutdown.is_cancelled() {
                true => Reply::error(SHUTTING_DOWN),
                false => return Ok(Ended::Kicked),
            },
        };
        debug!(cx.log, "answering"; "rpc" => %rpc_type, "error" => &reply.error);
        let mut out = BytesMut::new();
        codec.encode(&reply, &mut out)?;
        stream.restart_with_rate(cx.limits.timeout, cx.limits.min_rate);
        stream.write_all(&out).await?;
        stream.flush().await?;
        let transport = cx.limits.transport;
        crate::metrics::bytes(transport, "out", out.len());
        let ok = reply.error.is_empty();
        crate::metrics::rpc_done(transport, "in", rpc_type, ok, decoded.elapsed());
        if cx.shutdown.is_cancelled() {
            return Ok(Ended::Kicked);
        }
        cx.activity.idle(std::time::Instant::now());
        // An idle connection keeps no more than a small request's buffer.
        if buf.is_empty() && buf.capacity() > IDLE_BUFFER {
            buf = BytesMut::new();
        }
        reserved.fit(buf.len());
    }
}

/// What reading a request came to.
enum Read {
    Request(crate::wire::Command),
    Ended(Ended),
}

/// Reads until a whole request is decoded, the peer closes the
/// connection between requests, or none begins before `idle_until`.
async fn read_request(
    stream: &mut DeadlineStream<BoxConnection>,
    buf: &mut BytesMut,
    codec: &mut ServerCodec,
    reserved: &mut Reservation,
    idle_until: Instant,
    cx: &Context,
) -> Result<Read, CodecError> {
    // Between requests the idle deadline applies, whatever arrives; from a
    // request's first byte, the request's own.
    stream.until(idle_until);
    let mut reading = false;
    loop {
        if let Some(command) = codec.decode(buf)? {
            return Ok(Read::Request(command));
        }
        if codec.is_mid_frame() {
            if !reading {
                stream.restart_with_rate(cx.limits.timeout, cx.limits.min_rate);
                cx.activity.reading(std::time::Instant::now());
                reading = true;
            }
            cx.activity.read(stream.moved());
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(buf.len().clamp(4096, FREE_BUFFER));
        }
        // Waiting for budget is part of the request's time, not a pause
        // outside it.
        let wait = stream.time_left().unwrap_or(cx.limits.timeout);
        reserved
            .grow(buf.capacity(), &cx.budget, wait)
            .await
            .map_err(CodecError::Io)?;
        let read = match stream.read_buf(buf).await {
            Ok(read) => read,
            Err(e) if !reading && e.kind() == std::io::ErrorKind::TimedOut => {
                return Ok(Read::Ended(Ended::Idle))
            }
            // A caller dropping its idle pooled connection may reset it
            // rather than close it: between requests, that is a close.
            Err(e) if !reading && is_reset(&e) => return Ok(Read::Ended(Ended::Closed)),
            Err(e) => return Err(e.into()),
        };
        if read == 0 {
            return match codec.decode_eof(buf)? {
                Some(command) => Ok(Read::Request(command)),
                None => Ok(Read::Ended(Ended::Closed)),
            };
        }
    }
}

/// Whether `error` says the peer reset or aborted the connection.
fn is_reset(error: &std::io::Error) -> bool {
    matches!(
        error.kind(),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted
    )
}

/// Resolves when the caller closes the connection (or breaks the
/// protocol) while its request is being answered; stays pending otherwise.
async fn caller_gone(
    stream: &mut DeadlineStream<BoxConnection>,
    buf: &mut BytesMut,
) -> Result<(), CodecError> {
    let limit = buf.len() + MAX_WHILE_SERVING;
    loop {
        buf.reserve(64);
        if stream.read_buf(buf).await? == 0 {
            return Ok(());
        }
        if buf.len() > limit {
            return Err(CodecError::Syntax(
                "the caller sent more while its request was being answered".into(),
            ));
        }
    }
}

/// The share of the Listener's buffer budget a connection holds.
struct Reservation {
    permits: Option<OwnedSemaphorePermit>,
    counters: Arc<ListenerCounters>,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.fit(0);
    }
}

impl Reservation {
    fn held(&self) -> usize {
        self.permits.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Makes sure a buffer of `capacity` bytes is covered, waiting at most
    /// `wait` for the budget.
    async fn grow(
        &mut self,
        capacity: usize,
        budget: &Arc<Semaphore>,
        wait: Duration,
    ) -> std::io::Result<()> {
        let needed = units(capacity);
        let held = self.held();
        if needed <= held {
            return Ok(());
        }
        let more = u32::try_from(needed - held).unwrap_or(u32::MAX);
        let acquire = budget.clone().acquire_many_owned(more);
        let permit = tokio::time::timeout(wait, acquire)
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the inbound buffer budget stayed exhausted",
                )
            })?
            .expect("the budget is never closed");
        self.counters
            .buffered
            .fetch_add(permit.num_permits() * BUDGET_UNIT, Ordering::Relaxed);
        match &mut self.permits {
            Some(permits) => permits.merge(permit),
            None => self.permits = Some(permit),
        }
        Ok(())
    }

    /// Gives back what a buffer of `len` bytes does not need.
    fn fit(&mut self, len: usize) {
        let needed = units(len);
        let held = self.held();
        if needed >= held {
            return;
        }
        self.counters
            .buffered
            .fetch_sub((held - needed) * BUDGET_UNIT, Ordering::Relaxed);
        if let Some(permits) = &mut self.permits {
            if needed == 0 {
                self.permits = None;
            } else {
                drop(permits.split(held - needed));
            }
        }
    }
}

/// Budget units for a buffer of `bytes`, beyond the free allowance.
fn units(bytes: usize) -> usize {
    bytes.saturating_sub(FREE_BUFFER).div_ceil(BUDGET_UNIT)
}
