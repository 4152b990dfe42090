//! The Listener actor: accepts connections and serves the requests that
//! arrive on them.
//!
//! Each accepted connection gets its own reader task: it decodes one
//! request, hands it to the [`Dispatcher`], waits for the answer and writes
//! it back, then reads the next one, so replies go out in order. A
//! connection that sends something undecodable, or no byte for the idle
//! timeout (idle, or stuck half-way through a request), is closed and the
//! event logged; other connections are not affected.
//!
//! At most `max_inbound` connections are served at once; beyond that the
//! Listener stops accepting and new peers wait in the kernel's backlog.
//! Accept errors (such as running out of file descriptors) are retried
//! after a pause that grows up to a second, never in a hot loop.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::{SinkExt, StreamExt};
use slog::{debug, info, warn, Logger};
use tokio::sync::{oneshot, Semaphore};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, Reply, ServerCodec};
use crate::deadline::DeadlineStream;
use crate::dispatcher::{Dispatch, Dispatcher};
use crate::error::SHUTTING_DOWN;
use crate::rpc::Rpc;
use crate::stream::{BoxConnection, StreamLayer};

/// Limits of a Listener.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Connections served at once.
    pub max_inbound: usize,
    /// Close a connection when no byte moves for this long.
    pub idle_timeout: Duration,
    /// Largest request accepted.
    pub max_frame_size: usize,
}

/// Live counts of a Listener, readable without a message round trip.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    open: AtomicUsize,
    accepted: AtomicU64,
    dropped: AtomicU64,
}

impl ListenerCounters {
    /// Inbound connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Inbound connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed because of bad input, idleness or I/O errors.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// See the [module docs](self).
pub struct Listener {
    layer: Arc<dyn StreamLayer>,
    dispatcher: Addr<Dispatcher>,
    limits: ListenerLimits,
    counters: Arc<ListenerCounters>,
    /// Cancelled to stop accepting and close every inbound connection.
    shutdown: CancellationToken,
    /// Fires once the accept loop has ended (and released the layer).
    accept_done: Option<oneshot::Receiver<()>>,
    log: Logger,
}

impl Listener {
    /// A Listener accepting from `layer` and delivering to `dispatcher`.
    /// It stops when `shutdown` is cancelled.
    pub fn new(
        layer: Arc<dyn StreamLayer>,
        dispatcher: Addr<Dispatcher>,
        limits: ListenerLimits,
        counters: Arc<ListenerCounters>,
        shutdown: CancellationToken,
        log: Logger,
    ) -> Self {
        Listener {
            layer,
            dispatcher,
            limits,
            counters,
            shutdown,
            accept_done: None,
            log,
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        info!(self.log, "listening"; "addr" => self.layer.local_addr());
        let (done_tx, done_rx) = oneshot::channel();
        self.accept_done = Some(done_rx);
        let accept = accept_loop(
            self.layer.clone(),
            self.limits.max_inbound,
            self.shutdown.clone(),
            ctx.address(),
            self.log.clone(),
        );
        actix_rt::spawn(async move {
            accept.await;
            let _ = done_tx.send(());
        });
    }
}

/// Accepts until shut down, waiting for a free slot before each accept.
async fn accept_loop(
    layer: Arc<dyn StreamLayer>,
    max_inbound: usize,
    shutdown: CancellationToken,
    listener: Addr<Listener>,
    log: Logger,
) {
    const FIRST_PAUSE: Duration = Duration::from_millis(5);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    let slots = Arc::new(Semaphore::new(max_inbound));
    let mut pause = FIRST_PAUSE;
    loop {
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot.expect("never closed"),
            _ = shutdown.cancelled() => return,
        };
        let accepted = tokio::select! {
            accepted = layer.accept() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok((connection, remote)) => {
                pause = FIRST_PAUSE;
                listener.do_send(Accepted {
                    connection,
                    remote,
                    slot,
                });
            }
            Err(err) => {
                warn!(log, "accept failed, retrying"; "error" => %err, "pause" => ?pause);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.cancelled() => return,
                }
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// A new inbound connection, holding one of the `max_inbound` slots until
/// it closes.
#[derive(Message)]
#[rtype(result = "()")]
struct Accepted {
    connection: BoxConnection,
    remote: String,
    slot: tokio::sync::OwnedSemaphorePermit,
}

impl Handler<Accepted> for Listener {
    type Result = ();

    fn handle(&mut self, accepted: Accepted, _: &mut Context<Self>) {
        let counters = self.counters.clone();
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.open.fetch_add(1, Ordering::Relaxed);
        let log = self.log.new(slog::o!("peer" => accepted.remote.clone()));
        debug!(log, "connection accepted");
        let reader = serve_connection(
            accepted.connection,
            accepted.remote,
            self.dispatcher.clone(),
            self.limits.clone(),
            self.shutdown.clone(),
            log.clone(),
        );
        actix_rt::spawn(async move {
            let result = reader.await;
            if let Err(err) = &result {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                // Bad input is the peer's problem, not ours: a warning, so
                // that an operator can see who misbehaves.
                warn!(log, "closing inbound connection"; "reason" => %err);
            } else {
                debug!(log, "inbound connection closed");
            }
            counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(accepted.slot);
        });
    }
}

/// Stops the Listener; resolves once the accept loop has released the
/// stream layer. Inbound connections close through the shutdown token.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopListener;

impl Handler<StopListener> for Listener {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: StopListener, ctx: &mut Context<Self>) -> Self::Result {
        self.shutdown.cancel();
        self.layer.close();
        ctx.stop();
        let done = self.accept_done.take();
        Box::pin(async move {
            if let Some(done) = done {
                let _ = done.await;
            }
        })
    }
}

type ServerFramed = Framed<DeadlineStream<BoxConnection>, ServerCodec>;

/// Serves requests on one connection until the peer closes it (`Ok`) or
/// something goes wrong (`Err`, logged by the caller).
async fn serve_connection(
    connection: BoxConnection,
    remote: String,
    dispatcher: Addr<Dispatcher>,
    limits: ListenerLimits,
    shutdown: CancellationToken,
    log: Logger,
) -> Result<(), CodecError> {
    let mut stream = DeadlineStream::new(connection);
    stream.restart(Some(limits.idle_timeout));
    let mut framed: ServerFramed = Framed::new(stream, ServerCodec::new(limits.max_frame_size));
    loop {
        let command = tokio::select! {
            next = framed.next() => match next {
                None => return Ok(()),
                Some(command) => command?,
            },
            _ = shutdown.cancelled() => return Ok(()),
        };
        let rpc_type = command.rpc_type();
        let (rpc, reply) = Rpc::new(command, Some(remote.clone()));
        let exchange = async {
            // A stopped Dispatcher drops the RPC, which answers `reply`.
            let _ = dispatcher.send(Dispatch(rpc)).await;
            reply.await
        };
        let reply: Reply = tokio::select! {
            reply = exchange => reply,
            _ = shutdown.cancelled() => Reply::error(SHUTTING_DOWN),
        };
        debug!(log, "answering"; "rpc" => %rpc_type, "error" => &reply.error);
        framed.send(&reply).await?;
        if shutdown.is_cancelled() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::Mutex;

    use futures::future::BoxFuture;
    use futures::FutureExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use super::*;
    use crate::dispatcher::Delivery;
    use crate::wire::{Response, SyncResponse};

    /// Fails its first `failures` accepts, then hands out `connection`.
    struct FlakyLayer {
        failures: Mutex<u32>,
        attempts: Mutex<Vec<Instant>>,
        connection: Mutex<Option<BoxConnection>>,
    }

    impl StreamLayer for FlakyLayer {
        fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
            self.attempts.lock().unwrap().push(Instant::now());
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return futures::future::ready(Err(io::Error::other("too many open files")))
                    .boxed();
            }
            match self.connection.lock().unwrap().take() {
                Some(connection) => futures::future::ready(Ok((connection, "test".into()))).boxed(),
                None => futures::future::pending().boxed(),
            }
        }

        fn dial(&self, _: &str, _: Duration) -> BoxFuture<'static, io::Result<BoxConnection>> {
            futures::future::ready(Err(io::Error::other("this layer only accepts"))).boxed()
        }

        fn local_addr(&self) -> String {
            "flaky".into()
        }

        fn advertise_addr(&self) -> String {
            "flaky".into()
        }

        fn close(&self) {}
    }

    #[actix_rt::test]
    async fn accept_errors_are_retried_with_growing_pauses() {
        let (client, server) = tokio::io::duplex(4096);
        let layer = Arc::new(FlakyLayer {
            failures: Mutex::new(5),
            attempts: Mutex::new(Vec::new()),
            connection: Mutex::new(Some(Box::new(server))),
        });
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Rpc>(4);
        let log = Logger::root(slog::Discard, slog::o!());
        let dispatcher = Dispatcher::new(Delivery::Stream(tx), log.clone()).start();
        let limits = ListenerLimits {
            max_inbound: 4,
            idle_timeout: Duration::from_secs(5),
            max_frame_size: 1024,
        };
        let shutdown = CancellationToken::new();
        let listener = Listener::new(
            layer.clone(),
            dispatcher,
            limits,
            Arc::default(),
            shutdown.clone(),
            log,
        )
        .start();

        // The sixth accept succeeds and the connection is served.
        let mut client = client;
        client
            .write_all(b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":1}\n")
            .await
            .unwrap();
        let rpc = rx.recv().await.unwrap();
        rpc.respond(Ok(Response::Sync(SyncResponse::default())));
        let mut reply = [0u8; 43];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(
            &reply,
            b"\"\"\n{\"FromID\":0,\"Events\":null,\"Known\":null}\n"
        );

        let attempts = layer.attempts.lock().unwrap().clone();
        assert!(attempts.len() >= 6);
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, gap) in gaps.iter().take(5).enumerate() {
            let pause = Duration::from_millis(5) * 2u32.pow(i as u32);
            assert!(
                *gap >= pause,
                "retry {i} came after {gap:?}, before the {pause:?} pause"
            );
        }
        listener.send(StopListener).await.unwrap();
    }
}
