//! One call's bidirectional QUIC stream as a byte stream the Listener
//! and the PeerPool can use like any other connection.
//!
//! What a stream adds to bytes, and how it is told:
//! * The caller finishes its side after the request; the callee reads
//!   that as one end of stream. A caller that gives up stops reading (its
//!   stream is dropped): the callee reads a second end of stream, which
//!   the Listener takes for a hang-up (the RPC is abandoned).
//! * A caller whose connection is lost before the peer acknowledged its
//!   whole request, on a connection that was already open before the
//!   call, reads an error carrying [`NotDelivered`]: most likely the peer
//!   restarted, and an idempotent call can be sent again on a new
//!   connection.
//! * A stream dropped before it was finished is reset, not finished: a
//!   half-written request or reply is never mistaken for a whole one.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use babble_net_core::places::Activity;
use babble_net_core::stream::NotDelivered;
use quinn::{ConnectionError, ReadError, RecvStream, SendStream, StoppedError, VarInt, WriteError};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The error code of a stream reset because its call was given up.
pub(super) const CANCELLED: VarInt = VarInt::from_u32(1);

type Stopped = Pin<Box<dyn Future<Output = Result<Option<VarInt>, StoppedError>> + Send + Sync>>;

/// Which end of the call a stream is.
enum End {
    /// The caller; `reused`: its connection was open before the call.
    Caller { reused: bool, acknowledged: bool },
    /// The callee; `finished`: the caller's end of stream was read;
    /// `activity`: its connection's, marked when the reply is finished.
    Callee {
        finished: bool,
        activity: Arc<Activity>,
    },
}

/// See the [module docs](self).
pub(crate) struct QuicStream {
    send: SendStream,
    recv: RecvStream,
    /// Resolves when the peer stops reading, or has acknowledged every
    /// byte sent once the stream is finished; `None` once it resolved.
    stopped: Option<Stopped>,
    end: End,
    /// Bytes read so far.
    read: u64,
    /// The send side was finished.
    finished: bool,
}

impl QuicStream {
    /// The caller's end of a stream it opened.
    pub(super) fn caller(send: SendStream, recv: RecvStream, reused: bool) -> QuicStream {
        QuicStream::new(
            send,
            recv,
            End::Caller {
                reused,
                acknowledged: false,
            },
        )
    }

    /// The callee's end of a stream the peer opened, on a connection whose
    /// place's `activity` counts the calls it answered.
    pub(super) fn callee(
        send: SendStream,
        recv: RecvStream,
        activity: Arc<Activity>,
    ) -> QuicStream {
        QuicStream::new(
            send,
            recv,
            End::Callee {
                finished: false,
                activity,
            },
        )
    }

    fn new(send: SendStream, recv: RecvStream, end: End) -> QuicStream {
        let stopped = Some(Box::pin(send.stopped()) as Stopped);
        QuicStream {
            send,
            recv,
            stopped,
            end,
            read: 0,
            finished: false,
        }
    }

    /// Polls `stopped`; `Ready` once it resolved (now or before), with
    /// whether the peer acknowledged everything (rather than stopping the
    /// stream or losing the connection).
    fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let Some(stopped) = self.stopped.as_mut() else {
            return Poll::Ready(false);
        };
        match stopped.as_mut().poll(cx) {
            Poll::Ready(outcome) => {
                self.stopped = None;
                Poll::Ready(matches!(outcome, Ok(None)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    /// `error` of a lost connection, as a caller sees it: [`NotDelivered`]
    /// when the request never reached the peer (see the module docs).
    fn lost(&self, error: ConnectionError) -> io::Error {
        let undelivered = matches!(
            self.end,
            End::Caller {
                reused: true,
                acknowledged: false
            }
        ) && self.read == 0
            && !matches!(error, ConnectionError::LocallyClosed);
        match undelivered {
            true => io::Error::new(io::ErrorKind::ConnectionReset, NotDelivered),
            false => connection_error(error),
        }
    }
}

/// A lost connection as an I/O error of a fitting kind.
pub(super) fn connection_error(error: ConnectionError) -> io::Error {
    if let ConnectionError::ApplicationClosed(close) = &error {
        if let Some(refusal) = super::Closed::refusal(close.error_code) {
            return babble_net_core::secure::HandshakeError::RefusedByPeer(refusal.into())
                .into_io();
        }
    }
    let kind = match &error {
        ConnectionError::TimedOut => io::ErrorKind::TimedOut,
        ConnectionError::Reset => io::ErrorKind::ConnectionReset,
        ConnectionError::ApplicationClosed(_) | ConnectionError::ConnectionClosed(_) => {
            io::ErrorKind::ConnectionAborted
        }
        ConnectionError::LocallyClosed => io::ErrorKind::NotConnected,
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, error)
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.end {
            // Learn whether the request arrived (see `lost`) while waiting
            // for the reply.
            End::Caller {
                acknowledged: false,
                ..
            } if this.finished => {
                if let Poll::Ready(true) = this.poll_stopped(cx) {
                    if let End::Caller { acknowledged, .. } = &mut this.end {
                        *acknowledged = true;
                    }
                }
            }
            // After the caller's end of stream, only its giving up (or the
            // connection's loss) ends a read: a second end of stream.
            End::Callee { finished: true, .. } => {
                return this.poll_stopped(cx).map(|_| Ok(()));
            }
            _ => {}
        }
        let before = buf.filled().len();
        match this.recv.poll_read_buf(cx, buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(())) => {
                let read = buf.filled().len() - before;
                this.read += read as u64;
                if read == 0 && buf.remaining() > 0 {
                    if let End::Callee { finished, .. } = &mut this.end {
                        *finished = true;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(ReadError::ConnectionLost(error))) => {
                Poll::Ready(Err(this.lost(error)))
            }
            Poll::Ready(Err(ReadError::Reset(code))) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                format!("the peer reset the stream (code {code})"),
            ))),
            Poll::Ready(Err(error)) => Poll::Ready(Err(io::Error::other(error))),
        }
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.send).poll_write(cx, buf) {
            Poll::Ready(Err(WriteError::ConnectionLost(error))) => {
                Poll::Ready(Err(this.lost(error)))
            }
            Poll::Ready(Err(WriteError::Stopped(code))) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                format!("the peer stopped reading the stream (code {code})"),
            ))),
            Poll::Ready(Err(error)) => Poll::Ready(Err(io::Error::other(error))),
            Poll::Ready(Ok(written)) => Poll::Ready(Ok(written)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Written bytes are the connection's to send; nothing is held here.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.finished {
            this.finished = true;
            this.send.finish().map_err(io::Error::other)?;
        }
        if !matches!(this.end, End::Callee { .. }) {
            return Poll::Ready(Ok(()));
        }
        // A callee's reply is done once the caller has acknowledged all of
        // it: until then QUIC's send buffer holds it, which the Listener
        // keeps charged to its outbound budget meanwhile (within the
        // reply's deadline). The connection was then used by a completed
        // call.
        match std::task::ready!(this.poll_stopped(cx)) {
            true => {
                if let End::Callee { activity, .. } = &this.end {
                    activity.completed(std::time::Instant::now());
                }
                Poll::Ready(Ok(()))
            }
            false => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the caller did not take the whole reply",
            ))),
        }
    }
}

impl Drop for QuicStream {
    fn drop(&mut self) {
        if !self.finished {
            let _ = self.send.reset(CANCELLED);
        }
        // The receive side stops on its own drop (STOP_SENDING) unless it
        // was read to its end.
    }
}
