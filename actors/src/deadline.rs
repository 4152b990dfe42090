//! A progress-aware deadline on a byte stream, with an overall bound.
//!
//! A read or write fails with [`io::ErrorKind::TimedOut`] once no byte has
//! moved for the timeout, so a large transfer that keeps flowing is never
//! cut short while a silent peer is detected in time. With a minimum rate
//! ([`DeadlineStream::restart_with_rate`]) it also fails once the whole
//! exchange has taken longer than the timeout plus its bytes at that rate,
//! so a peer trickling a byte just often enough cannot hold it for long:
//! moving `n` bytes always ends within `timeout + n / min_rate`.
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

/// Most bytes one read takes from the stream below: the kernel's copy of a
/// large frame into fresh memory then never holds a thread for more than
/// a fraction of a millisecond at a time.
const MAX_READ: usize = 256 * 1024;

/// Writes `frame` and flushes, letting the thread's other tasks run after
/// each megabyte: a stream accepts bytes as long as its peer reads them,
/// so writing a large frame could otherwise hold the thread to the end.
///
/// A frame up to a megabyte goes out in one write. A larger one's last
/// write is never shorter than 4 KiB, so the end of its JSON and the
/// newline after it are written together (a Go server that gets the
/// newline in a later read takes it for the next request's type byte).
pub async fn write_frame<S: AsyncWrite + Unpin>(stream: &mut S, frame: &[u8]) -> io::Result<()> {
    use tokio::io::AsyncWriteExt;
    const SLICE: usize = 1024 * 1024;
    const LAST_AT_LEAST: usize = 4096;
    let mut rest = frame;
    while rest.len() > SLICE + LAST_AT_LEAST {
        let (slice, after) = rest.split_at(SLICE);
        stream.write_all(slice).await?;
        rest = after;
        tokio::task::yield_now().await;
    }
    stream.write_all(rest).await?;
    stream.flush().await
}

/// A stream whose reads and writes fail after `timeout` without progress,
/// or, with a minimum rate, when they fall behind it.
#[derive(Debug)]
pub struct DeadlineStream<S> {
    inner: S,
    timeout: Option<Duration>,
    last_progress: Instant,
    /// Bytes per second below which the exchange fails (`None`: no bound).
    min_rate: Option<u64>,
    /// A fixed deadline, whatever moves (`None`: none).
    absolute: Option<Instant>,
    started: Instant,
    /// Bytes read and written since `started`.
    moved: u64,
    /// Bytes read since the stream was wrapped.
    read_total: u64,
    /// Armed at some point no later than the deadline.
    timer: Option<Pin<Box<Sleep>>>,
}

impl<S> DeadlineStream<S> {
    /// Wraps `inner`; no deadline until [`DeadlineStream::restart`].
    pub fn new(inner: S) -> Self {
        let now = Instant::now();
        DeadlineStream {
            inner,
            timeout: None,
            last_progress: now,
            min_rate: None,
            absolute: None,
            started: now,
            moved: 0,
            read_total: 0,
            timer: None,
        }
    }

    /// Fails reads and writes from `deadline` on, whatever moves (an idle
    /// connection's deadline: bytes that are not a request do not count).
    pub fn until(&mut self, deadline: Instant) {
        self.timeout = None;
        self.min_rate = None;
        self.absolute = Some(deadline);
    }

    /// Starts counting `timeout` without progress from now (`None`: no
    /// deadline), with no bound on the whole exchange.
    pub fn restart(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.min_rate = None;
        self.absolute = None;
        self.last_progress = Instant::now();
    }

    /// Starts an exchange that must see progress every `timeout` and end
    /// within `timeout` plus its bytes at `min_rate` bytes per second.
    pub fn restart_with_rate(&mut self, timeout: Duration, min_rate: u64) {
        let now = Instant::now();
        self.timeout = Some(timeout);
        self.min_rate = Some(min_rate.max(1));
        self.absolute = None;
        self.last_progress = now;
        self.started = now;
        self.moved = 0;
    }

    /// Bytes read since the stream was wrapped.
    pub fn read_total(&self) -> u64 {
        self.read_total
    }

    /// The wrapped stream, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// When the current deadline falls, and what to say then.
    fn deadline(&self, timeout: Duration) -> (Instant, &'static str) {
        let stalled = self.last_progress + timeout;
        let Some(rate) = self.min_rate else {
            return (stalled, "no progress");
        };
        let allowance = Duration::from_secs_f64(self.moved as f64 / rate as f64);
        let slow = self.started.checked_add(timeout.saturating_add(allowance));
        match slow {
            Some(slow) if slow < stalled => (slow, "slower than the minimum rate"),
            _ => (stalled, "no progress"),
        }
    }

    /// Time left before the current deadline falls (`None`: no deadline),
    /// for a wait outside the stream that must not outlive it.
    pub fn time_left(&self) -> Option<Duration> {
        let deadline = match (self.timeout, self.absolute) {
            (Some(timeout), _) => self.deadline(timeout).0,
            (None, Some(deadline)) => deadline,
            (None, None) => return None,
        };
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Fails once the deadline has passed; otherwise makes sure the timer
    /// will wake the task by then.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        let (deadline, why, timeout) = match (self.timeout, self.absolute) {
            (Some(timeout), _) => {
                let (deadline, why) = self.deadline(timeout);
                (deadline, why, timeout)
            }
            (None, Some(deadline)) => (deadline, "idle", Duration::ZERO),
            (None, None) => return Ok(()),
        };
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
                let message = match why {
                    "no progress" => format!("no progress for {timeout:?}"),
                    "idle" => "idle past its deadline".to_owned(),
                    _ => format!(
                        "{why} ({} bytes/s after {timeout:?})",
                        self.min_rate.unwrap_or(0)
                    ),
                };
                return Err(io::Error::new(io::ErrorKind::TimedOut, message));
            }
            // Fired early: bytes moved since it was armed.
            timer.as_mut().reset(deadline);
        }
    }

    fn progressed(&mut self, bytes: usize) {
        self.last_progress = Instant::now();
        self.moved += bytes as u64;
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
        // At most MAX_READ a read: copying a large frame in from the kernel
        // then comes in slices short enough not to stall the thread.
        let mut slice = buf.take(MAX_READ);
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut slice);
        let read = slice.filled().len();
        // SAFETY: the inner stream filled (so initialised) `read` bytes of
        // the unfilled part of `buf` that `slice` is.
        unsafe { buf.assume_init(read) };
        buf.advance(read);
        match polled {
            Poll::Ready(result) => {
                if read > 0 {
                    this.progressed(read);
                    this.read_total += read as u64;
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
                if let Ok(n @ 1..) = result {
                    this.progressed(n);
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
                if let Ok(n @ 1..) = result {
                    this.progressed(n);
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
        // A layer whose shutdown waits for the peer (QUIC: until it has
        // acknowledged the whole reply) waits within the deadline.
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => {
                this.poll_deadline(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
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
    async fn a_trickle_is_cut_at_the_timeout_plus_its_bytes_at_the_minimum_rate() {
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // A byte every 900 ms: progress, but far below 1000 bytes/s.
            loop {
                tokio::time::sleep(Duration::from_millis(900)).await;
                if writer.write_all(b"x").await.is_err() {
                    return;
                }
            }
        });
        let mut stream = DeadlineStream::new(reader);
        stream.restart_with_rate(Duration::from_secs(1), 1000);
        let started = Instant::now();
        let mut sink = Vec::new();
        let err = stream.read_to_end(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(
            err.to_string().contains("slower than the minimum rate"),
            "{err}"
        );
        // One byte arrived (at 900 ms): the bound is 1 s + 1 ms.
        assert_eq!(started.elapsed(), Duration::from_millis(1001));
    }

    #[tokio::test(start_paused = true)]
    async fn a_transfer_at_the_minimum_rate_goes_through() {
        let (mut writer, reader) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // 10 bytes every 10 ms: exactly 1000 bytes/s, for 3 s.
            for _ in 0..300 {
                tokio::time::sleep(Duration::from_millis(10)).await;
                writer.write_all(&[b'y'; 10]).await.unwrap();
            }
        });
        let mut stream = DeadlineStream::new(reader);
        stream.restart_with_rate(Duration::from_secs(1), 1000);
        let mut sink = Vec::new();
        stream.read_to_end(&mut sink).await.unwrap();
        assert_eq!(sink.len(), 3000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_longer_than_the_timeout_fails_even_after_fast_bytes() {
        let mut sink = vec![0u8; 3003];
        let (mut writer, reader) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            writer.write_all(&[b'z'; 3000]).await.unwrap();
            tokio::time::sleep(Duration::from_secs(2)).await;
            let _ = writer.write_all(b"end").await;
        });
        let mut stream = DeadlineStream::new(reader);
        stream.restart_with_rate(Duration::from_secs(1), 1000);
        let started = Instant::now();
        let err = stream.read_exact(&mut sink).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("no progress"), "{err}");
        // The 3000 bytes came at once and earned 3 s at the minimum rate;
        // the pause is cut at the timeout without progress all the same.
        assert_eq!(started.elapsed(), Duration::from_secs(1));
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
