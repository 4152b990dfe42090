//! A byte stream encrypted with the keys of a finished handshake, and the
//! handshake itself over a byte stream.
//!
//! Writes are gathered into messages of at most [`MAX_PLAINTEXT`] bytes,
//! sealed when full or on flush; reads open one message at a time. A
//! message that does not decrypt fails the stream: nobody can inject,
//! change or replay a byte.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::HandshakeError;
use crate::identity::{NodeKey, PeerKey};
use babble_net_core::secure::handshake::{Acceptance, Handshake, MAX_HANDSHAKE_MESSAGE};

/// Largest Noise message.
const MAX_MESSAGE: usize = 65535;
/// Largest plaintext in one message (the tag takes 16 bytes).
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - 16;
/// Sealed bytes a writer may have queued before it waits for the socket.
const MAX_QUEUED: usize = 2 * (MAX_MESSAGE + 2);
/// Bytes of empty buffer a quiet stream keeps (see
/// `NoiseStream::release_idle_buffers`).
const IDLE_KEEP: usize = 16 * 1024;

/// See the [module docs](self).
pub struct NoiseStream<S> {
    inner: S,
    noise: snow::TransportState,
    /// Bytes read, not yet opened (length prefixes and ciphertext).
    sealed_in: BytesMut,
    /// Opened bytes not yet handed out.
    plain_in: BytesMut,
    /// Bytes written, not yet sealed.
    plain_out: Vec<u8>,
    /// Sealed bytes not yet written.
    sealed_out: BytesMut,
}

impl<S> NoiseStream<S> {
    fn new(inner: S, noise: snow::TransportState) -> NoiseStream<S> {
        NoiseStream {
            inner,
            noise,
            sealed_in: BytesMut::new(),
            plain_in: BytesMut::new(),
            plain_out: Vec::new(),
            sealed_out: BytesMut::new(),
        }
    }

    /// Frees the buffers that hold nothing and are larger than a small
    /// message's, so that an idle connection costs little: a busy one
    /// holds at most about four messages' worth (the reading and writing
    /// sides each keep one message sealed and one open, and the writer up
    /// to [`MAX_QUEUED`] sealed bytes).
    fn release_idle_buffers(&mut self) {
        if self.sealed_in.is_empty() && self.sealed_in.capacity() > IDLE_KEEP {
            self.sealed_in = BytesMut::new();
        }
        if self.plain_in.is_empty() && self.plain_in.capacity() > IDLE_KEEP {
            self.plain_in = BytesMut::new();
        }
        if self.sealed_out.is_empty() && self.sealed_out.capacity() > IDLE_KEEP {
            self.sealed_out = BytesMut::new();
        }
        if self.plain_out.is_empty() && self.plain_out.capacity() > IDLE_KEEP {
            self.plain_out = Vec::new();
        }
    }

    /// Bytes of buffers held now.
    #[cfg(test)]
    fn buffered_capacity(&self) -> usize {
        self.sealed_in.capacity()
            + self.plain_in.capacity()
            + self.sealed_out.capacity()
            + self.plain_out.capacity()
    }

    /// Seals what was written into one message.
    fn seal(&mut self) -> io::Result<()> {
        if self.plain_out.is_empty() {
            return Ok(());
        }
        let start = self.sealed_out.len();
        self.sealed_out
            .resize(start + 2 + self.plain_out.len() + 16, 0);
        let len = self
            .noise
            .write_message(&self.plain_out, &mut self.sealed_out[start + 2..])
            .map_err(|e| io::Error::other(format!("cannot seal a message: {e}")))?;
        self.sealed_out[start..start + 2].copy_from_slice(&(len as u16).to_be_bytes());
        self.sealed_out.truncate(start + 2 + len);
        self.plain_out.clear();
        Ok(())
    }

    /// Opens the next whole message in `sealed_in`, if there is one.
    fn open(&mut self) -> io::Result<bool> {
        if self.sealed_in.len() < 2 {
            return Ok(false);
        }
        let len = usize::from(u16::from_be_bytes([self.sealed_in[0], self.sealed_in[1]]));
        if self.sealed_in.len() < 2 + len {
            return Ok(false);
        }
        let start = self.plain_in.len();
        self.plain_in.resize(start + len, 0);
        let opened = self
            .noise
            .read_message(&self.sealed_in[2..2 + len], &mut self.plain_in[start..])
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a message failed authentication",
                )
            })?;
        self.plain_in.truncate(start + opened);
        self.sealed_in.advance(2 + len);
        Ok(true)
    }
}

impl<S: AsyncWrite + Unpin> NoiseStream<S> {
    /// Writes out sealed bytes until none is left.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.sealed_out.is_empty() {
            let written = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.sealed_out))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sealed_out.advance(written);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for NoiseStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if !this.plain_in.is_empty() {
                let n = this.plain_in.len().min(out.remaining());
                out.put_slice(&this.plain_in[..n]);
                this.plain_in.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.open()? {
                continue;
            }
            if this.sealed_in.capacity() - this.sealed_in.len() < 4096 {
                this.sealed_in.reserve(16 * 1024);
            }
            let spare = this.sealed_in.spare_capacity_mut();
            let mut read = ReadBuf::uninit(spare);
            let polled = Pin::new(&mut this.inner).poll_read(cx, &mut read);
            let Poll::Ready(result) = polled else {
                // Waiting on the socket: a stream that has gone quiet
                // keeps no large buffers.
                this.release_idle_buffers();
                return Poll::Pending;
            };
            result?;
            let n = read.filled().len();
            if n == 0 {
                if this.sealed_in.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the connection closed in the middle of a message",
                )));
            }
            // SAFETY: `n` bytes of the spare capacity were just initialised
            // by the read.
            unsafe { this.sealed_in.set_len(this.sealed_in.len() + n) };
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for NoiseStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.sealed_out.len() >= MAX_QUEUED {
            ready!(this.poll_drain(cx))?;
        }
        let n = data.len().min(MAX_PLAINTEXT - this.plain_out.len());
        this.plain_out.extend_from_slice(&data[..n]);
        if this.plain_out.len() == MAX_PLAINTEXT {
            this.seal()?;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.seal()?;
        ready!(this.poll_drain(cx))?;
        // Everything written went out: the writing side holds nothing.
        this.release_idle_buffers();
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Runs the handshake as the dialler over `io`, within `timeout`,
/// expecting the responder to be `expect`.
pub async fn connect<S>(
    io: S,
    key: &NodeKey,
    expect: PeerKey,
    timeout: Duration,
) -> Result<(NoiseStream<S>, PeerKey), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async move {
        let mut io = io;
        let (mut handshake, first) = Handshake::initiate(key, expect)?;
        write_message(&mut io, &first).await?;
        while !handshake.is_finished() {
            let message = read_message(&mut io).await?;
            if let Some(reply) = handshake.receive(&message)? {
                write_message(&mut io, &reply).await?;
            }
        }
        let established = handshake.finish()?;
        Ok((
            NoiseStream::new(io, established.transport),
            established.remote,
        ))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
}

/// Runs the handshake as the listener over `io`, within `timeout`,
/// accepting initiators as `accept` says.
pub async fn accept<S>(
    io: S,
    key: &NodeKey,
    accept: Acceptance,
    timeout: Duration,
) -> Result<(NoiseStream<S>, PeerKey), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let exchange = async move {
        let mut io = io;
        let mut handshake = Handshake::respond(key, accept)?;
        while !handshake.is_finished() {
            let message = read_message(&mut io).await?;
            if let Some(reply) = handshake.receive(&message)? {
                write_message(&mut io, &reply).await?;
            }
        }
        let established = handshake.finish()?;
        Ok((
            NoiseStream::new(io, established.transport),
            established.remote,
        ))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
}

fn io_error(error: io::Error) -> HandshakeError {
    HandshakeError::Io(error.to_string())
}

/// Writes one length-prefixed handshake message, in one write.
async fn write_message<S: AsyncWrite + Unpin>(
    io: &mut S,
    message: &[u8],
) -> Result<(), HandshakeError> {
    let mut framed = Vec::with_capacity(2 + message.len());
    framed.extend_from_slice(&(message.len() as u16).to_be_bytes());
    framed.extend_from_slice(message);
    io.write_all(&framed).await.map_err(io_error)?;
    io.flush().await.map_err(io_error)
}

/// Reads one length-prefixed handshake message, refusing large ones
/// before reading them.
async fn read_message<S: AsyncRead + Unpin>(io: &mut S) -> Result<Vec<u8>, HandshakeError> {
    let mut len = [0u8; 2];
    io.read_exact(&mut len).await.map_err(io_error)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len > MAX_HANDSHAKE_MESSAGE {
        return Err(HandshakeError::Malformed(format!(
            "a handshake message of {len} bytes"
        )));
    }
    let mut message = vec![0u8; len];
    io.read_exact(&mut message).await.map_err(io_error)?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair() -> (
        NoiseStream<tokio::io::DuplexStream>,
        NoiseStream<tokio::io::DuplexStream>,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let expect = kb.public();
        let second = Duration::from_secs(5);
        let (dialled, accepted) = tokio::join!(
            connect(a, &ka, expect, second),
            accept(b, &kb, Acceptance::AnyKey, second)
        );
        let (dialled, seen_b) = dialled.unwrap();
        let (accepted, seen_a) = accepted.unwrap();
        assert_eq!((seen_a, seen_b), (ka.public(), kb.public()));
        (dialled, accepted)
    }

    #[tokio::test]
    async fn bytes_of_any_size_cross_in_both_directions() {
        let (mut a, mut b) = pair().await;
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.write_all(b"tail").await.unwrap();
            a.flush().await.unwrap();
            a
        });
        let mut got = vec![0u8; big.len() + 4];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"tail");
        let mut a = writer.await.unwrap();
        b.write_all(b"back").await.unwrap();
        b.flush().await.unwrap();
        let mut back = [0u8; 4];
        a.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"back");
    }

    #[tokio::test]
    async fn a_quiet_stream_keeps_no_large_buffers() {
        let (mut a, mut b) = pair().await;
        let big = vec![7u8; 300_000];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.flush().await.unwrap();
            a
        });
        let mut got = vec![0u8; big.len()];
        b.read_exact(&mut got).await.unwrap();
        let a = writer.await.unwrap();
        assert!(a.buffered_capacity() <= 2 * IDLE_KEEP, "writer");
        let mut more = [0u8; 1];
        let wait = tokio::time::timeout(Duration::from_millis(10), b.read(&mut more)).await;
        assert!(wait.is_err(), "nothing more was sent");
        assert!(b.buffered_capacity() <= 2 * IDLE_KEEP, "reader");
    }

    #[tokio::test]
    async fn a_tampered_message_fails_the_stream() {
        let (ka, kb) = (NodeKey::generate(), NodeKey::generate());
        let (mut initiator, first) = Handshake::initiate(&ka, kb.public()).unwrap();
        let mut responder = Handshake::respond(&kb, Acceptance::AnyKey).unwrap();
        let second = responder.receive(&first).unwrap().unwrap();
        let third = initiator.receive(&second).unwrap().unwrap();
        responder.receive(&third).unwrap();
        let mut sender = initiator.finish().unwrap().transport;
        let (mut wire, end) = tokio::io::duplex(1024);
        let mut stream = NoiseStream::new(end, responder.finish().unwrap().transport);
        let mut sealed = [0u8; 64];
        let len = sender.write_message(b"pay 10", &mut sealed).unwrap();
        sealed[3] ^= 1;
        wire.write_all(&(len as u16).to_be_bytes()).await.unwrap();
        wire.write_all(&sealed[..len]).await.unwrap();
        let mut got = [0u8; 6];
        let err = stream.read_exact(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_silent_peer_times_out_the_handshake() {
        let (a, _b) = tokio::io::duplex(1024);
        let key = NodeKey::generate();
        let err = connect(
            a,
            &key,
            NodeKey::generate().public(),
            Duration::from_millis(50),
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err, HandshakeError::Timeout(Duration::from_millis(50)));
    }
}
