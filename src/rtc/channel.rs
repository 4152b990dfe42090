//! A WebRTC data channel as a byte stream for the frame codec.
//!
//! Writes are cut into messages of at most [`CHUNK`] bytes, or the
//! peer's SDP `max-message-size` if smaller, and the ordered, reliable
//! channel hands them back in order, so concatenating what is read gives
//! the byte stream back: any RPC size works.
//!
//! A write copies one message and hands it to the WebRTC stack; the next
//! write, or a flush, waits until the stack has taken it. The stack takes a
//! message only while fewer than [`SEND_BUFFER`] bytes of the channel are
//! not yet acknowledged by the peer, so a large reply never piles up in
//! memory and a peer that stops acknowledging stops the writer (whose RPC
//! deadline then ends the call). Writers must flush, as the transport
//! does after every frame.
//!
//! On the receiving side, every channel of a peer connection shares one
//! SCTP receive window of [`RECEIVE_WINDOW`] bytes; the stack queues at
//! most 256 messages of at most [`MAX_MESSAGE`] bytes per channel for the
//! reader, and while one channel's queue is full it stops taking data for
//! the whole peer connection, which closes the window and slows the
//! sender. Honest peers never get there: a connection carries one RPC at a
//! time and its reader reads every frame as it arrives.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::task::{ready, Context, Poll};

use bytes::BytesMut;
use futures::future::BoxFuture;
use rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use webrtc::data_channel::{DataChannel, DataChannelEvent};

use super::gate::ChannelGate;
use super::read_ahead::{Account, End, Next};
use babble_net_core::places::Activity;

/// Largest message written (RFC 8841's default `max-message-size`, which
/// every peer that announces none accepts).
pub const CHUNK: usize = 64 * 1024;
/// Smallest message size used, whatever the peer announces: a peer asking
/// for tiny messages would turn a large reply into millions of sends (and
/// the stack's bookkeeping for each). Every WebRTC stack in use accepts
/// this much; one that refuses it fails the call instead.
pub const MIN_CHUNK: usize = 16 * 1024;
/// Largest message accepted from a peer (the SDP `max-message-size` we
/// announce, RFC 8841's default).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Bytes of one channel handed to the stack and not yet acknowledged by the
/// peer, beyond which a write waits.
pub const SEND_BUFFER: usize = 1024 * 1024;
/// The SCTP receive window of one peer connection, shared by its channels.
pub const RECEIVE_WINDOW: u32 = 1024 * 1024;

pub(super) fn max_message_size() -> SctpMaxMessageSize {
    SctpMaxMessageSize::Bounded(MAX_MESSAGE as u32)
}

/// The data channels a peer opened on one answering link, at most the
/// layer's `max_channels`: at the cap, the channel least recently used by
/// a reply is closed for the newcomer (whether or not a request is being
/// answered on it: the node sees that RPC abandoned).
pub(super) struct LinkChannels {
    base: std::time::Instant,
    next_id: u64,
    held: Vec<HeldChannel>,
}

struct HeldChannel {
    id: u64,
    channel: Arc<dyn DataChannel>,
    /// Microseconds after `base` when it last wrote a reply (or opened).
    last_used: Arc<AtomicU64>,
}

impl LinkChannels {
    pub(super) fn new() -> LinkChannels {
        LinkChannels {
            base: std::time::Instant::now(),
            next_id: 0,
            held: Vec::new(),
        }
    }

    /// Takes `channel` in, closing the least recently used one first when
    /// `max` are held; returns its place's ID, its use stamp and the base
    /// the stamps count from.
    pub(super) fn admit(
        &mut self,
        channel: Arc<dyn DataChannel>,
        max: usize,
    ) -> (u64, Arc<AtomicU64>, std::time::Instant) {
        if self.held.len() >= max {
            let victim = (0..self.held.len())
                .min_by_key(|&at| self.held[at].last_used.load(Ordering::Relaxed));
            if let Some(at) = victim {
                close_later(self.held.remove(at).channel);
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        let last_used = Arc::new(AtomicU64::new(self.micros()));
        self.held.push(HeldChannel {
            id,
            channel,
            last_used: last_used.clone(),
        });
        (id, last_used, self.base)
    }

    fn micros(&self) -> u64 {
        self.base.elapsed().as_micros() as u64
    }

    fn release(&mut self, id: u64) {
        self.held.retain(|held| held.id != id);
    }
}

/// One of the data channels a peer connection may carry; its place is
/// given back when the channel's stream is dropped.
pub(super) struct ChannelSlot {
    /// The link's channels.
    pub(super) channels: Arc<std::sync::Mutex<LinkChannels>>,
    pub(super) id: u64,
    /// When this channel last wrote a reply, in microseconds after
    /// `base` (the link's, copied: a write takes no lock).
    pub(super) last_used: Arc<AtomicU64>,
    pub(super) base: std::time::Instant,
    /// When the link last wrote a reply: the layer's cap evicts the least
    /// recently used (see `super::inbound`).
    pub(super) used: Arc<Activity>,
}

impl ChannelSlot {
    /// A reply is being written on this channel.
    fn touch(&self) {
        let now = std::time::Instant::now();
        let micros = now.saturating_duration_since(self.base).as_micros() as u64;
        self.last_used.store(micros, Ordering::Relaxed);
        self.used.completed(now);
    }
}

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.channels
            .lock()
            .expect("channels lock")
            .release(self.id);
    }
}

/// Closes `channel` in the background (nothing to do outside a runtime:
/// the process is ending).
pub(super) fn close_later(channel: Arc<dyn DataChannel>) {
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let _ = channel.close().await;
        });
    }
}

/// A data channel as a byte stream: writes cut into messages of at most
/// [`CHUNK`] bytes (less if the peer says so), reads joined again, at most
/// 1 MiB unacknowledged.
pub struct ChannelStream {
    channel: Arc<dyn DataChannel>,
    _slot: Option<ChannelSlot>,
    /// The link's gate, for channels it dialled (see [`super::gate`]).
    gate: Option<ChannelGate>,
    /// Largest message written.
    message_size: usize,
    /// The rest of the last message read.
    unread: BytesMut,
    /// The stack's next event, being waited for. Kept across polls, never
    /// dropped half-way: an event taken is never lost.
    next_event: Option<BoxFuture<'static, Option<DataChannelEvent>>>,
    end_of_stream: bool,
    /// The stack said the channel is closed: nothing left to close.
    closed: bool,
    /// The message being handed to the stack.
    sending: Option<BoxFuture<'static, webrtc::error::Result<()>>>,
    /// Its account, whose inbox holds
    /// what its pump took from the stack ahead of this reader (see
    /// [`super::read_ahead`]).
    ahead: Option<Arc<Account>>,
    /// Bytes taken since the writer last let other tasks run.
    written_since_yield: usize,
    /// The writer's turn being given to the thread's other tasks.
    turn: Option<BoxFuture<'static, ()>>,
}

/// Bytes a writer hands to the stack before it lets the thread's other
/// tasks run: the peer connection's driver runs on the thread that serves
/// its channels, so a reply is sent while the rest of it is written
/// rather than after (measured on a 1.4 MB FastForward reply: 1 MiB
/// between turns was slower than this).
const YIELD_EVERY: usize = 256 * 1024;

/// How long a pump keeps emptying the stack's queue of a channel nobody
/// reads any more (closed to make room, or its reader gone) while the
/// channel closes: until then the peer may still send, and the stack
/// would queue it.
const DISCARD_WHILE_CLOSING: std::time::Duration = std::time::Duration::from_secs(10);

/// Takes every event of `channel` from the stack as it arrives into
/// `account`'s inbox (each message charged first), until the channel
/// closes. Once the channel is closed to make room or its reader is gone,
/// it drops what still arrives until the stack says the channel closed,
/// for at most [`DISCARD_WHILE_CLOSING`].
async fn pump(channel: Arc<dyn DataChannel>, account: Weak<Account>) {
    let mut discarding = false;
    let give_up = tokio::time::sleep(DISCARD_WHILE_CLOSING);
    tokio::pin!(give_up);
    loop {
        let event = tokio::select! {
            biased;
            () = &mut give_up, if discarding => return,
            event = channel.poll() => event,
        };
        let end = match event {
            Some(DataChannelEvent::OnClose) | None => End::Finished { closed: true },
            _ if discarding => continue,
            Some(DataChannelEvent::OnMessage(message)) if message.data.is_empty() => continue,
            Some(DataChannelEvent::OnMessage(message)) => {
                let taken = account.upgrade().map(|account| account.push(message.data));
                if taken != Some(true) {
                    // Closed to make room (or its reader is gone).
                    close_later(channel.clone());
                    discarding = true;
                    give_up
                        .as_mut()
                        .reset(tokio::time::Instant::now() + DISCARD_WHILE_CLOSING);
                }
                continue;
            }
            Some(DataChannelEvent::OnClosing) => End::Finished { closed: false },
            Some(DataChannelEvent::OnError) => End::Failed("the data channel failed"),
            // Open, buffered amounts: nothing for the reader.
            Some(_) => continue,
        };
        if let Some(account) = account.upgrade() {
            account.finish(end);
        }
        if matches!(end, End::Finished { closed: true }) {
            return;
        }
        discarding = true;
        give_up
            .as_mut()
            .reset(tokio::time::Instant::now() + DISCARD_WHILE_CLOSING);
    }
}

impl ChannelStream {
    /// Wraps an open data channel, counted against its peer connection's
    /// limit when `slot` is given, and closed through its link's `gate`
    /// when given; writes at most `message_size` bytes a message. With an
    /// `account`, a pump takes what arrives from the stack at once,
    /// charged to it (see [`super::read_ahead`]).
    pub(super) async fn open(
        channel: Arc<dyn DataChannel>,
        slot: Option<ChannelSlot>,
        gate: Option<ChannelGate>,
        message_size: usize,
        account: Option<Account>,
    ) -> Result<ChannelStream, webrtc::error::Error> {
        // The stack queues a "buffered amount low" event for the reader each
        // time the send buffer drains below this threshold (0 at first).
        // Writes wait inside the stack instead, so nobody needs the event,
        // and a threshold the buffer can never exceed keeps such events from
        // filling the queue of a channel whose reader is busy writing.
        channel.set_buffered_amount_low_threshold(u32::MAX).await?;
        let ahead = account.map(|account| {
            let account = Arc::new(account);
            // Weak: the reader owns the account, and dropping the reader
            // empties its inbox at once.
            tokio::spawn(pump(channel.clone(), Arc::downgrade(&account)));
            account
        });
        Ok(ChannelStream {
            channel,
            _slot: slot,
            gate,
            message_size: message_size.clamp(MIN_CHUNK, CHUNK),
            unread: BytesMut::new(),
            next_event: None,
            end_of_stream: false,
            closed: false,
            sending: None,
            ahead,
            written_since_yield: 0,
            turn: None,
        })
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        // Dropping the handle alone would leave the channel open on the
        // peer connection (and its slot taken on the peer's side).
        let channel = self.channel.clone();
        match &self.gate {
            Some(gate) => gate.close(channel, self.closed),
            None if self.closed => {}
            None => close_later(channel),
        }
    }
}

fn io_error(error: webrtc::error::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, error.to_string())
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.unread.is_empty() {
                let n = self.unread.len().min(out.remaining());
                out.put_slice(&self.unread.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if self.end_of_stream {
                return Poll::Ready(Ok(()));
            }
            if let Some(account) = self.ahead.as_ref() {
                match ready!(account.poll_next(cx)) {
                    // The reader holds at most this one message.
                    Next::Data(data) => self.unread = data,
                    Next::End(End::Finished { closed }) => {
                        self.end_of_stream = true;
                        self.closed |= closed;
                    }
                    Next::End(End::Failed(why)) => {
                        self.end_of_stream = true;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::ConnectionReset,
                            why,
                        )));
                    }
                }
                continue;
            }
            let channel = self.channel.clone();
            let next = self
                .next_event
                .get_or_insert_with(|| Box::pin(async move { channel.poll().await }));
            let event = ready!(next.as_mut().poll(cx));
            self.next_event = None;
            match event {
                // An empty message is not the end of the stream.
                Some(DataChannelEvent::OnMessage(message)) => self.unread = message.data,
                Some(DataChannelEvent::OnClosing) => self.end_of_stream = true,
                Some(DataChannelEvent::OnClose) | None => {
                    self.end_of_stream = true;
                    self.closed = true;
                }
                Some(DataChannelEvent::OnError) => {
                    self.end_of_stream = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        "the data channel failed",
                    )));
                }
                // Open, buffered amounts: nothing for the reader.
                Some(_) => {}
            }
        }
    }
}

impl ChannelStream {
    /// Drives the message being handed to the stack until the stack has
    /// taken it (it waits while too much is unacknowledged).
    fn poll_sent(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(sending) = self.sending.as_mut() {
            let result = ready!(sending.as_mut().poll(cx));
            self.sending = None;
            result.map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ChannelStream {
    /// Once the previous message is in the stack, copies at most one
    /// message of `data` and reports it written; the stack takes it on the
    /// next write or flush. So at most one message is held here.
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        ready!(self.poll_sent(cx))?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if self.written_since_yield >= YIELD_EVERY {
            // A turn for the driver (see `YIELD_EVERY`), after the runtime
            // polled its I/O (the peer's acknowledgements open the window).
            let turn = self
                .turn
                .get_or_insert_with(|| Box::pin(tokio::task::yield_now()));
            ready!(turn.as_mut().poll(cx));
            self.turn = None;
            self.written_since_yield = 0;
        }
        // An answering channel writes replies: its link is in use.
        if let Some(slot) = &self._slot {
            slot.touch();
        }
        let message = BytesMut::from(&data[..data.len().min(self.message_size)]);
        let len = message.len();
        self.written_since_yield += len;
        let channel = self.channel.clone();
        self.sending = Some(Box::pin(async move { channel.send(message).await }));
        // Started now: most messages are taken at once.
        if let Poll::Ready(Err(err)) = self.poll_sent(cx) {
            return Poll::Ready(Err(err));
        }
        Poll::Ready(Ok(len))
    }

    /// Waits until the stack has taken every message written; it sends
    /// them on its own.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_sent(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
