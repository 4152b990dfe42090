//! A progress-aware deadline on a byte stream.
//!
//! A read or write fails with [`io::ErrorKind::TimedOut`] once no byte has
//! moved for the timeout, so a large transfer that keeps flowing is never
//! cut short while a silent peer is detected in time.
//!
//! Arming a timer for every read and write (as a per-operation timeout
//! does) costs several microseconds per RPC on a ping, a tenth of the whole
//! round trip, so the timer here is lazy: progress only records the time,
//! and the single timer, armed when an operation has to wait, is moved
//! forward when it fires early because bytes moved in the meantime. In a
//! busy connection the timer is touched about once per timeout period.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A stream whose reads and writes fail after `timeout` without progress.
#[derive(Debug)]
pub struct DeadlineStream<S> {
    inner: S,
    timeout: Option<Duration>,
    last_progress: Instant,
    /// Armed at some point no later than `last_progress + timeout`.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> DeadlineStream<S> {
    /// Wraps `inner`; no deadline until [`DeadlineStream::restart`].
    pub fn new(inner: S) -> Self {
        DeadlineStream {
            inner,
            timeout: None,
            last_progress: Instant::now(),
            timer: None,
        }
    }

    /// Starts counting `timeout` from now (`None`: no deadline).
    pub fn restart(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.last_progress = Instant::now();
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Fails once the deadline has passed; otherwise makes sure the timer
    /// will wake the task by then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let Some(timeout) = self.timeout else {
            return Ok(());
        };
        let deadline = self.last_progress + timeout;
        loop {
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no progress for {timeout:?}"),
                ));
            }
            // Fired early: bytes moved since it was armed.
            timer.as_mut().reset(deadline);
        }
    }

    fn progressed(&mut self) {
        self.last_progress = Instant::now();
    }
}

use std::future::Future as _;

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(result) => {
                if matches!(result, Ok(n) if n > 0) {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_times_out_after_the_timeout() {
        let (_writer, reader) = tokio::io::duplex(64);
        let mut stream = DeadlineStream::new(reader);
        stream.restart(Some(Duration::from_secs(1)));
        let started = Instant::now();
        let err = stream.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_moves_the_deadline() {
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::spawn(async move {
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_millis(600)).await;
                writer.write_all(b"x").await.unwrap();
            }
            // Stay open, silent.
            std::future::pending::<()>().await;
        });
        let mut stream = DeadlineStream::new(reader);
        stream.restart(Some(Duration::from_secs(1)));
        let started = Instant::now();
        let mut bytes = [0u8; 5];
        stream.read_exact(&mut bytes).await.unwrap();
        // Five bytes 600 ms apart: 3 s in all, well past the 1 s timeout.
        assert_eq!(started.elapsed(), Duration::from_millis(3000));
        let err = stream.read_u8().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_millis(4000));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_time_before_a_restart_does_not_count() {
        let (mut writer, reader) = tokio::io::duplex(64);
        let mut stream = DeadlineStream::new(reader);
        stream.restart(Some(Duration::from_secs(1)));
        writer.write_all(b"a").await.unwrap();
        assert_eq!(stream.read_u8().await.unwrap(), b'a');
        tokio::time::sleep(Duration::from_secs(5)).await;
        stream.restart(Some(Duration::from_secs(1)));
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(900)).await;
            writer.write_all(b"b").await.unwrap();
        });
        assert_eq!(stream.read_u8().await.unwrap(), b'b');
    }
}
