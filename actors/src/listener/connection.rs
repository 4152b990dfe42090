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
//! * a reply being written, like a request being answered, can be evicted
//!   for a newcomer (see [`crate::places`]).
//!
//! Bytes held beyond a connection's first 64 KiB are charged to the
//! Listener's budgets ([`super::budget`]) before they are held: to the
//! inbound one, a request's buffer as it grows (twice its capacity: the
//! bytes and what they decode into), then the decoded request until it is
//! answered; to the outbound one, the reply the node handed over and its
//! frame until the frame is written. A reply the outbound budget has no
//! room for closes a connection of another address whose reply nobody
//! reads, if there is one ([`super::stalled`]); otherwise it is dropped
//! at once and the caller told so ([`REPLIES_BACKED_UP`]).

use std::sync::Arc;

use bytes::BytesMut;
use futures::future::BoxFuture;
use slog::{debug, Logger};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::budget::{Budget, Reservation};
use super::stalled::StalledWriters;
use super::ListenerLimits;
use crate::call_metrics::{CallMetrics, Direction};
use crate::codec::{reply_capacity, write_reply, CodecError, RawRequest, Reply, ServerCodec};
use crate::deadline::DeadlineStream;
use crate::error::{REPLIES_BACKED_UP, SHUTTING_DOWN};
use crate::fair_queue::FairQueue;
use crate::io_arbiters::IoArbiters;
use crate::places::Activity;
use crate::rpc::Rpc;
use crate::source::Source;
use crate::stream::{BoxConnection, Upgraded};
use crate::wire::Command;

/// A reader yields to the thread's other tasks after each this many bytes
/// of a request.
const YIELD_EVERY: usize = 1024 * 1024;

/// The most an idle connection's buffer keeps between requests.
const IDLE_BUFFER: usize = 8 * 1024;
/// Bytes a caller may send while its request is being answered (Go sends
/// one newline after a request; a client never pipelines).
const MAX_WHILE_SERVING: usize = 1024;

/// What serving a connection needs from its Listener.
pub(super) struct Context {
    pub(super) remote: String,
    /// Where the connection comes from, when `remote` does not say it.
    pub(super) address: Option<std::net::SocketAddr>,
    /// The peer's key, when the layer verified it while accepting.
    pub(super) peer_key: Option<crate::identity::PeerKey>,
    /// The connection carries one call (a QUIC stream, see
    /// [`crate::stream::StreamLayer::one_call_per_connection`]).
    pub(super) one_call: bool,
    pub(super) activity: Arc<Activity>,
    /// Cancelled when the connection is shed or the Listener stops.
    pub(super) kick: CancellationToken,
    /// Where requests wait for the node, by source.
    pub(super) queue: Arc<FairQueue>,
    pub(super) limits: ListenerLimits,
    /// The budget for requests being read.
    pub(super) inbound: Budget,
    /// The budget for encoded replies waiting to be written.
    pub(super) outbound: Budget,
    /// The Listener's connections writing replies, for room in `outbound`.
    pub(super) stalled: Arc<StalledWriters>,
    /// The Listener's places, by source: who may wait for room first.
    pub(super) places: Arc<std::sync::Mutex<crate::places::Places>>,
    /// Where large requests are parsed and large replies encoded.
    pub(super) io: Arc<IoArbiters>,
    /// The Listener's series, recorded for each request.
    pub(super) metrics: Arc<CallMetrics>,
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
    let peer_key = upgraded.peer_key.or(cx.peer_key);
    let source = Source::of(&cx.remote, cx.address, peer_key.as_ref());
    // The source's room is found once per connection (a QUIC stream,
    // which carries one call, is a connection here); each request then
    // only takes a place in it.
    let queue = cx.queue.sender(&source);
    let mut stream = DeadlineStream::new(upgraded.connection);
    let mut buf = BytesMut::new();
    let mut codec = ServerCodec::new(cx.limits.max_request_size);
    let mut reserved = cx.inbound.share();
    let mut sending = cx.outbound.share();
    // Bytes read before the current request (for the bytes metric).
    let mut read_before = 0;
    // One wait for a kick for the whole connection, not one per request.
    let kicked = cx.kick.cancelled();
    tokio::pin!(kicked);
    loop {
        // A connection of one call is that call: its request is due
        // within the timeout of its opening, as a request is from its
        // first byte.
        let idle_until = Instant::now()
            + match cx.one_call {
                true => cx.limits.timeout,
                false => cx.limits.idle_timeout,
            };
        let raw = tokio::select! {
            biased;
            read = read_request(&mut stream, &mut buf, &mut codec, &mut reserved, idle_until, &cx) => match read? {
                Read::Request(raw) => raw,
                Read::Ended(ended) => return Ok(ended),
            },
            _ = &mut kicked => return Ok(Ended::Kicked),
        };
        // The request's buffer goes with it: a connection being answered
        // keeps at most a small buffer of its own (a small one may still
        // share the frame's allocation, within the free allowance).
        if buf.capacity() + raw.len() > IDLE_BUFFER {
            buf = BytesMut::from(&buf[..]);
        }
        let (command, decoded) = tokio::select! {
            biased;
            decoded = decode_request(raw, &mut reserved, &cx) => decoded?,
            _ = &mut kicked => return Ok(Ended::Kicked),
        };
        // The decoded request stays charged until it is answered.
        reserved
            .try_grow(buf.capacity() + decoded)
            .map_err(CodecError::Io)?;
        reserved.fit(buf.capacity() + decoded);
        let decoded_at = std::time::Instant::now();
        let read_total = stream.read_total();
        cx.metrics
            .bytes(Direction::In, (read_total - read_before) as usize);
        read_before = read_total;
        let rpc_type = command.rpc_type();
        let (mut rpc, pending) = Rpc::new(command, Some(cx.remote.clone()));
        rpc.peer_key = peer_key;
        let answered = async {
            // A closed queue answers the RPC itself.
            queue.push(rpc).await;
            pending.await
        };
        // Nothing bounds the node's own answer time here; a caller that
        // gives up closes its connection, which ends the wait.
        stream.restart(None);
        let reply: Reply = tokio::select! {
            biased;
            reply = answered => reply,
            gone = caller_gone(&mut stream, &mut buf, cx.one_call) => {
                gone?;
                debug!(cx.log, "the caller hung up before the answer"; "rpc" => %rpc_type);
                return Ok(Ended::Abandoned);
            }
            _ = &mut kicked => match cx.shutdown.is_cancelled() {
                true => Reply::error(SHUTTING_DOWN),
                false => return Ok(Ended::Kicked),
            },
        };
        // Answered: the request is no longer held.
        reserved.fit(buf.capacity());
        debug!(cx.log, "answering"; "rpc" => %rpc_type, "error" => &reply.error);
        // While the node is closing, the refusal above is still written.
        let evictable = !cx.shutdown.is_cancelled();
        let (reply, capacity) = tokio::select! {
            biased;
            _ = &mut kicked, if evictable => return Ok(Ended::Kicked),
            charged = charge_reply(reply, &mut sending, &source, &cx, rpc_type) => charged,
        };
        // From here the reply holds outbound budget: while it does, this
        // address is being served (another of its replies does not wait
        // for room), and once its write stalls, the connection can be
        // closed for another address's reply, as can one that never
        // reads, which would hold its slot and budget until the deadline.
        let writing = cx.stalled.writing(&source.address, &cx.kick, &sending);
        let ok = reply.error.is_empty();
        let encoded = tokio::select! {
            biased;
            _ = &mut kicked, if evictable => return Ok(Ended::Kicked),
            encoded = encode_reply(reply, capacity, &mut sending, &cx) => encoded?,
        };
        let (out, ok) = match encoded {
            Some(frame) => (frame, ok),
            // The estimate fell short and the budget has no room for the
            // rest: the caller is told, in a frame within the allowance.
            None => {
                debug!(cx.log, "no outbound budget for a reply"; "rpc" => %rpc_type);
                let refusal = Reply::error(REPLIES_BACKED_UP);
                (encode_small(&refusal)?, false)
            }
        };
        stream.restart_with_rate(cx.limits.timeout, cx.limits.min_rate);
        let mut watched = super::stalled::watch(&mut stream, writing.as_ref());
        tokio::select! {
            biased;
            _ = &mut kicked, if evictable => return Ok(Ended::Kicked),
            written = crate::deadline::write_frame(&mut watched, &out) => match written {
                Ok(()) => {}
                // The caller went away while its answer was written: it
                // gave up, as a hang-up while the node answers.
                Err(e) if is_reset(&e) || e.kind() == std::io::ErrorKind::BrokenPipe => {
                    debug!(cx.log, "the caller hung up during the answer"; "rpc" => %rpc_type);
                    return Ok(Ended::Abandoned);
                }
                Err(e) => return Err(e.into()),
            },
        }
        drop(writing);
        // The caller's next request may follow within microseconds.
        crate::spin::expect_io();
        cx.metrics.bytes(Direction::Out, out.len());
        cx.metrics
            .rpc_done(Direction::In, rpc_type, ok, decoded_at.elapsed());
        drop(out);
        if cx.one_call {
            // The reply is the stream's last byte: finishing is how the
            // caller knows it is whole. The layer may hold the reply until
            // the caller has it all (QUIC's send buffer): it stays charged
            // until then.
            let finished = tokio::select! {
                biased;
                _ = &mut kicked => return Ok(Ended::Kicked),
                finished = stream.shutdown() => finished,
            };
            finished?;
            cx.activity.completed(std::time::Instant::now());
            return Ok(Ended::Closed);
        }
        sending.fit(0);
        if cx.shutdown.is_cancelled() {
            return Ok(Ended::Kicked);
        }
        cx.activity.completed(std::time::Instant::now());
    }
}

/// What a request's buffer is charged to the inbound budget: its bytes,
/// and as much again for what they decode into (a frame written by Go
/// Babble or by this crate decodes into less than its own length, see
/// [`crate::wire::bounded`]), so that a request never waits for budget
/// between being read and being decoded.
fn request_charge(capacity: usize) -> usize {
    capacity.saturating_mul(2)
}

/// Parses a request, on an I/O arbiter when it is large. Returns the
/// command and at most how many bytes of memory it holds. Work handed to
/// an I/O arbiter takes what `reserved` holds for the request with it and
/// brings it back with the result, so work left behind by a connection
/// that ended still holds its charge until it is dropped.
async fn decode_request(
    raw: RawRequest,
    reserved: &mut Reservation,
    cx: &Context,
) -> Result<(Command, usize), CodecError> {
    if raw.len() <= cx.limits.large_frame {
        return raw.decode_measured();
    }
    let charge = reserved.take();
    let (decoded, charge) = cx
        .io
        .run(true, move || (raw.decode_measured(), charge))
        .await?;
    reserved.absorb(charge);
    decoded
}

/// Charges a reply the node handed over to the outbound budget, the reply
/// as it is ([`Response::memory_hint`](crate::wire::Response::memory_hint))
/// and its frame ([`reply_capacity`]): it is already in memory, so it
/// does not wait for room, except while connections of other addresses
/// whose replies nobody reads are closed for it ([`super::stalled`]). A
/// reply that gets no room is dropped, and the caller told why. Returns
/// what is to be encoded and its estimated size.
async fn charge_reply(
    reply: Reply,
    sending: &mut Reservation,
    source: &Source,
    cx: &Context,
    rpc_type: crate::wire::RpcType,
) -> (Reply, usize) {
    let capacity = reply_capacity(&reply);
    let held = (reply.response.as_ref()).map_or(0, crate::wire::Response::memory_hint);
    let bytes = capacity.saturating_add(held);
    if sending.try_grow(bytes).is_ok() {
        return (reply, capacity);
    }
    let transport = cx.limits.transport;
    let closed = || {
        debug!(cx.log, "closing a connection whose reply nobody reads, for this reply"; "rpc" => %rpc_type);
        crate::metrics::inbound_shed(transport, "unread_reply");
    };
    let places = (cx.places.lock())
        .map(|places| places.held_by(&source.address))
        .unwrap_or(usize::MAX);
    let room = cx
        .stalled
        .make_room(&source.address, places, sending, bytes, closed)
        .await;
    match room {
        true => (reply, capacity),
        false => {
            debug!(cx.log, "no outbound budget for a reply"; "rpc" => %rpc_type, "bytes" => capacity);
            drop(reply);
            // The budget is full: the refused reply's memory goes back to
            // the system, so what the process keeps follows what the
            // budget holds ([`crate::allocator`]).
            if bytes >= crate::allocator::LARGE_REPLY {
                crate::allocator::give_back_freed_memory();
            }
            let refusal = Reply::error(REPLIES_BACKED_UP);
            let capacity = reply_capacity(&refusal);
            (refusal, capacity)
        }
    }
}

/// Encodes `reply` into a buffer of `capacity` bytes (see
/// [`reply_capacity`]), on an I/O arbiter when it is large. `sending`
/// pays for the reply and its frame (work handed to an I/O arbiter takes
/// the charge with it and brings it back); once the reply is encoded and
/// dropped, the charge is fitted to the frame alone. `None`: the frame
/// outgrew its estimate and the budget has no room for it.
async fn encode_reply(
    reply: Reply,
    capacity: usize,
    sending: &mut Reservation,
    cx: &Context,
) -> Result<Option<BytesMut>, CodecError> {
    if capacity <= cx.limits.large_frame {
        return encode_charged(reply, capacity, sending);
    }
    let mut charge = sending.take();
    let (encoded, charge) = cx
        .io
        .run(true, move || {
            (encode_charged(reply, capacity, &mut charge), charge)
        })
        .await?;
    sending.absorb(charge);
    encoded
}

/// [`encode_reply`]'s work, on whichever thread runs it.
fn encode_charged(
    reply: Reply,
    capacity: usize,
    charge: &mut Reservation,
) -> Result<Option<BytesMut>, CodecError> {
    let mut frame = BytesMut::with_capacity(capacity);
    let written = write_reply(&reply, &mut frame);
    drop(reply);
    written?;
    if charge.try_grow(frame.capacity()).is_err() {
        return Ok(None);
    }
    charge.fit(frame.capacity());
    Ok(Some(frame))
}

/// Encodes a small reply (a refusal) on this thread.
fn encode_small(reply: &Reply) -> Result<BytesMut, CodecError> {
    let mut frame = BytesMut::with_capacity(reply_capacity(reply));
    write_reply(reply, &mut frame)?;
    Ok(frame)
}

/// What reading a request came to.
enum Read {
    Request(RawRequest),
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
    // Bytes of the request buffered when the reader last yielded.
    let mut yielded_at = 0;
    loop {
        if let Some(raw) = codec.decode_raw(buf)? {
            return Ok(Read::Request(raw));
        }
        if buf.len() > yielded_at + YIELD_EVERY {
            // A reader reads on while its socket has data: let the node's
            // other tasks run between the megabytes of a large request.
            yielded_at = buf.len();
            tokio::task::yield_now().await;
        }
        if codec.is_mid_frame() && !reading {
            stream.restart_with_rate(cx.limits.timeout, cx.limits.min_rate);
            reading = true;
        }
        if buf.capacity() - buf.len() < 1024 {
            // Waiting for budget is part of the request's time, not a
            // pause outside it.
            let wait = stream.time_left().unwrap_or(cx.limits.timeout);
            let capacity = grown_capacity(buf.len());
            // Charged before it is made, the old buffer too while its
            // bytes are copied.
            reserved
                .grow(request_charge(capacity) + buf.capacity(), wait)
                .await
                .map_err(CodecError::Io)?;
            // A copy beyond a few MiB would stall the node's thread: it
            // moves to an I/O thread.
            cx.io.grow_to(buf, capacity).await.map_err(CodecError::Io)?;
            reserved.fit(request_charge(buf.capacity()));
        }
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
            return match codec.decode_raw_eof(buf)? {
                Some(raw) => Ok(Read::Request(raw)),
                None => Ok(Read::Ended(Ended::Closed)),
            };
        }
    }
}

/// The capacity a request's buffer holding `len` bytes grows to: twice
/// that, and at least 4 KiB more (a new request starts in 4 KiB).
fn grown_capacity(len: usize) -> usize {
    len.saturating_mul(2).max(len + 4096)
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
/// On a connection of `one_call`, the caller finishing its side after the
/// request is not a hang-up: the layer reports one end of stream for it,
/// and a second one when the caller stops reading (gives up).
async fn caller_gone(
    stream: &mut DeadlineStream<BoxConnection>,
    buf: &mut BytesMut,
    one_call: bool,
) -> Result<(), CodecError> {
    let limit = buf.len() + MAX_WHILE_SERVING;
    let mut finished = false;
    loop {
        buf.reserve(64);
        if stream.read_buf(buf).await? == 0 {
            if one_call && !finished {
                finished = true;
                continue;
            }
            return Ok(());
        }
        if buf.len() > limit {
            return Err(CodecError::Syntax(
                "the caller sent more while its request was being answered".into(),
            ));
        }
    }
}
