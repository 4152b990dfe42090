//! A WebRTC data channel as a byte stream for the frame codec.
//!
//! Writes are cut into messages of at most [`CHUNK`] bytes (what browsers
//! accept everywhere) and the ordered, reliable channel hands them back in
//! order, so concatenating what is read gives the byte stream back: any
//! RPC size works. Reads use one buffer sized for the largest message a
//! peer may send, allocated once. Writes wait while more than
//! [`HIGH_WATER`] bytes are queued in the channel, until it drains below
//! [`LOW_WATER`]: a large reply never piles up in memory.
//!
//! The queue is kept short on purpose. All channels of a peer connection
//! share one SCTP association whose receiver buffers 1 MiB; when several
//! large frames flow at once and the receiver's buffer overflows, the
//! WebRTC stack drops a chunk and waits for a retransmission timeout (a
//! second or more). With at most 128 KiB queued per channel, several
//! channels fit in the receiver's window; measured on loopback, this also
//! raised one channel's throughput by about half compared with 1 MiB.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use webrtc::data::data_channel::DataChannel;

/// Largest message written.
pub const CHUNK: usize = 16 * 1024;
/// Largest message accepted on read: the SCTP default maximum.
pub const MAX_MESSAGE: usize = 256 * 1024;
/// Writes wait when this much is queued...
pub const HIGH_WATER: usize = 128 * 1024;
/// ...until the queue drains below this.
pub const LOW_WATER: usize = 32 * 1024;

type ReadFuture =
    Pin<Box<dyn Future<Output = (Vec<u8>, Result<usize, webrtc::data::Error>)> + Send>>;
type WriteFuture = Pin<Box<dyn Future<Output = Result<usize, webrtc::data::Error>> + Send>>;
type DrainFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

enum Reading {
    /// The buffer, holding `data[start..end]` not yet handed out.
    Idle {
        buffer: Vec<u8>,
        start: usize,
        end: usize,
    },
    Pending(ReadFuture),
}

/// One of the data channels a peer connection may carry; freed when the
/// channel's stream is dropped.
pub(super) struct ChannelSlot(pub(super) Arc<AtomicUsize>);

impl Drop for ChannelSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A data channel as a byte stream: writes cut into messages of at most
/// [`CHUNK`] bytes, reads joined again, at most 128 KiB queued.
pub struct ChannelStream {
    channel: Arc<DataChannel>,
    _slot: Option<ChannelSlot>,
    reading: Reading,
    writing: Option<WriteFuture>,
    draining: Option<DrainFuture>,
    drained: Arc<Notify>,
}

impl ChannelStream {
    /// Wraps a detached, open data channel.
    pub fn new(channel: Arc<DataChannel>) -> ChannelStream {
        ChannelStream::in_slot(channel, None)
    }

    /// Wraps a channel counted against its peer connection's limit.
    pub(super) fn in_slot(channel: Arc<DataChannel>, slot: Option<ChannelSlot>) -> ChannelStream {
        let drained = Arc::new(Notify::new());
        channel.set_buffered_amount_low_threshold(LOW_WATER);
        let notify = drained.clone();
        channel.on_buffered_amount_low(Box::new(move || {
            notify.notify_waiters();
            Box::pin(async {})
        }));
        ChannelStream {
            channel,
            _slot: slot,
            reading: Reading::Idle {
                buffer: vec![0; MAX_MESSAGE],
                start: 0,
                end: 0,
            },
            writing: None,
            draining: None,
            drained,
        }
    }
}

impl Drop for ChannelStream {
    fn drop(&mut self) {
        let channel = self.channel.clone();
        // Closing may fail harmlessly ("sending reset packet in
        // non-Established state") when the association is already gone.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = channel.close().await;
            });
        }
    }
}

fn io_error(error: webrtc::data::Error) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, error.to_string())
}

impl AsyncRead for ChannelStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // A reader waiting for an answer needs its own last message out:
        // drive a write still in progress even if nobody flushes. Left
        // parked, it would also keep the peer connection's send queue
        // locked for every other channel.
        if let Some(writing) = self.writing.as_mut() {
            if let Poll::Ready(result) = writing.as_mut().poll(cx) {
                self.writing = None;
                result.map_err(io_error)?;
            }
        }
        loop {
            match &mut self.reading {
                Reading::Idle { buffer, start, end } if *start < *end => {
                    let n = (*end - *start).min(out.remaining());
                    out.put_slice(&buffer[*start..*start + n]);
                    *start += n;
                    return Poll::Ready(Ok(()));
                }
                Reading::Idle { buffer, .. } => {
                    let mut buffer = std::mem::take(buffer);
                    let channel = self.channel.clone();
                    self.reading = Reading::Pending(Box::pin(async move {
                        let result = channel.read(&mut buffer).await;
                        (buffer, result)
                    }));
                }
                Reading::Pending(future) => {
                    let (buffer, result) = match future.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        Poll::Ready(done) => done,
                    };
                    match result {
                        Ok(n) => {
                            self.reading = Reading::Idle {
                                buffer,
                                start: 0,
                                end: n,
                            }
                        }
                        // The channel was closed by the other side: end of stream.
                        Err(webrtc::data::Error::Sctp(webrtc::sctp::Error::ErrEof)) => {
                            self.reading = Reading::Idle {
                                buffer,
                                start: 0,
                                end: 0,
                            };
                            return Poll::Ready(Ok(()));
                        }
                        Err(webrtc::data::Error::Sctp(webrtc::sctp::Error::ErrTryAgain)) => {
                            self.reading = Reading::Idle {
                                buffer,
                                start: 0,
                                end: 0,
                            };
                        }
                        Err(err) => {
                            self.reading = Reading::Idle {
                                buffer,
                                start: 0,
                                end: 0,
                            };
                            return Poll::Ready(Err(io_error(err)));
                        }
                    }
                    if let Reading::Idle { start, end, .. } = &self.reading {
                        if start == end {
                            // A zero-length read is the end of the stream.
                            return Poll::Ready(Ok(()));
                        }
                    }
                }
            }
        }
    }
}

impl AsyncWrite for ChannelStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        // Finish the previous message first: one in flight at a time.
        if let Some(writing) = self.writing.as_mut() {
            match writing.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    self.writing = None;
                    result.map_err(io_error)?;
                }
            }
        }
        // Backpressure: wait while too much is queued in the channel.
        loop {
            if let Some(draining) = self.draining.as_mut() {
                if draining.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.draining = None;
            }
            if self.channel.buffered_amount() <= HIGH_WATER {
                break;
            }
            let drained = self.drained.clone();
            let channel = self.channel.clone();
            self.draining = Some(Box::pin(async move {
                let notified = drained.notified();
                tokio::pin!(notified);
                // Registered before the check, so a wake-up between the
                // two is not lost.
                notified.as_mut().enable();
                if channel.buffered_amount() > LOW_WATER {
                    notified.await;
                }
            }));
        }
        let chunk = Bytes::copy_from_slice(&data[..data.len().min(CHUNK)]);
        let len = chunk.len();
        let channel = self.channel.clone();
        let mut writing: WriteFuture = Box::pin(async move { channel.write(&chunk).await });
        match writing.as_mut().poll(cx) {
            Poll::Ready(result) => {
                result.map_err(io_error)?;
            }
            // Queued: it completes on a later poll (write or flush).
            Poll::Pending => self.writing = Some(writing),
        }
        Poll::Ready(Ok(len))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Some(writing) = self.writing.as_mut() {
            let result = std::task::ready!(writing.as_mut().poll(cx));
            self.writing = None;
            result.map_err(io_error)?;
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}
