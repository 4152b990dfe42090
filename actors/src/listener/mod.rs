//! The Listener actor: accepts connections and serves the requests that
//! arrive on them.
//!
//! Each accepted connection gets its own reader task: it reads one
//! request, hands it to the node (through the transport's [`FairQueue`]
//! and the [`Dispatcher`](crate::dispatcher)), waits for the answer
//! and writes it back, then reads the next one, so replies go out in order.
//! A connection that sends something undecodable, or breaks a limit, is
//! closed and the event logged; other connections are not affected.
//!
//! Connections are served on the Listener's own arbiter (the transport's),
//! where the accept loop and the Dispatcher also run: a small request is
//! read, parsed and answered there with no hand-off to another thread. A
//! layer that drives its connections on I/O threads (QUIC, WebRTC:
//! [`StreamLayer::take_where_driven`]) hands each in on the thread that
//! drives it, where it is served: only the decoded request crosses to the
//! Dispatcher's thread, through the fair queue, and its answer back. A
//! request larger than `large_frame` is parsed, and a reply larger than it
//! encoded, on the transport's I/O arbiters ([`IoArbiters`]) while the
//! connection waits, so a large frame never stalls the node's thread.
//!
//! The Listener never stops accepting: at `max_inbound` connections (or
//! `max_inbound_per_ip` from one address) a newcomer is still served, and
//! a connection of the source holding the most is evicted for it
//! ([`crate::places`]), so nobody can lock honest peers out by holding
//! connections open, busy or not. Requests wait for the node in the transport's
//! [`FairQueue`], sources in turn. Accept errors (such
//! as running out of file descriptors) are retried after a pause that
//! grows up to a second, never in a hot loop.

mod budget;
mod connection;
mod stalled;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use slog::{debug, info, warn, Logger};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::call_metrics::{CallMetrics, Role};
use crate::fair_queue::FairQueue;
use crate::io_arbiters::IoArbiters;
use crate::places::{Places, Shed};
use crate::stream::{Inbound, StreamLayer, TakeInbound};
use budget::Budget;
use connection::Ended;

/// Limits of a Listener.
#[derive(Clone, Debug)]
pub struct ListenerLimits {
    /// Connections served at once (more shed idle or slow ones).
    pub max_inbound: usize,
    /// Connections from one source (IP address, or peer ID) at once.
    pub max_inbound_per_ip: usize,
    /// Close a connection with no request for this long.
    pub idle_timeout: Duration,
    /// A request must progress every `timeout`, and arrive within it plus
    /// its size at `min_rate`; the same for writing a reply.
    pub timeout: Duration,
    /// Bytes per second, see `timeout`.
    pub min_rate: u64,
    /// Largest request accepted.
    pub max_request_size: usize,
    /// Bytes all connections together may buffer for requests beyond
    /// 64 KiB each.
    pub buffer_budget: usize,
    /// Bytes all connections together may hold in encoded replies waiting
    /// to be written, beyond 64 KiB each.
    pub outbound_budget: usize,
    /// Time a stream layer's handshake may take (see
    /// [`StreamLayer::upgrade`]).
    pub handshake_timeout: Duration,
    /// Requests and replies larger than this (in bytes) are parsed and
    /// encoded on the I/O arbiters.
    pub large_frame: usize,
    /// The `transport` label of this Listener's metrics.
    pub transport: &'static str,
}

/// Live counts of a Listener, readable without a message round trip.
#[derive(Debug, Default)]
pub struct ListenerCounters {
    open: AtomicUsize,
    accepted: AtomicU64,
    dropped: AtomicU64,
    shed: AtomicU64,
    refused: AtomicU64,
    /// Budget bytes held by connections reading large requests.
    buffered: Arc<AtomicUsize>,
    /// Budget bytes held by connections writing large replies.
    outbound: Arc<AtomicUsize>,
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

    /// Connections closed because of bad input, a broken limit or an I/O
    /// error.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Connections evicted to make room for newcomers.
    pub fn shed(&self) -> u64 {
        self.shed.load(Ordering::Relaxed)
    }

    /// Newcomers refused. Always zero: at a cap a connection is evicted
    /// for the newcomer instead (kept so that dashboards reading it keep
    /// working).
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Bytes of the inbound buffer budget held now (beyond each
    /// connection's free 64 KiB).
    pub fn buffered(&self) -> usize {
        self.buffered.load(Ordering::Relaxed)
    }

    /// Bytes of the outbound buffer budget held now by encoded replies
    /// (beyond each connection's free 64 KiB).
    pub fn outbound(&self) -> usize {
        self.outbound.load(Ordering::Relaxed)
    }
}

/// See the [module docs](self).
pub struct Listener {
    intake: Arc<Intake>,
    /// Fires once the accept loop has ended (and released the layer).
    accept_done: Option<oneshot::Receiver<()>>,
}

/// What taking in a connection needs: the Listener's limits, places and
/// budgets, shared with the thread that accepts (see [`Listener`]'s
/// `started`).
struct Intake {
    layer: Arc<dyn StreamLayer>,
    /// Where large frames are parsed and encoded.
    io: Arc<IoArbiters>,
    queue: Arc<FairQueue>,
    limits: ListenerLimits,
    counters: Arc<ListenerCounters>,
    slots: Arc<Mutex<Places>>,
    inbound: Budget,
    outbound: Budget,
    /// Connections writing replies, which a reply with no room may close.
    stalled: Arc<stalled::StalledWriters>,
    /// The series recorded for every connection and request.
    metrics: Arc<CallMetrics>,
    /// Cancelled to stop accepting and close every inbound connection.
    shutdown: CancellationToken,
    log: Logger,
}

impl Listener {
    /// A Listener accepting from `layer`, parsing and encoding large frames
    /// on `io` and queueing requests for the node in `queue`. It stops when
    /// `shutdown` is cancelled.
    pub fn new(
        layer: Arc<dyn StreamLayer>,
        io: Arc<IoArbiters>,
        queue: Arc<FairQueue>,
        limits: ListenerLimits,
        counters: Arc<ListenerCounters>,
        shutdown: CancellationToken,
        log: Logger,
    ) -> Self {
        let slots = Places::new(limits.max_inbound, limits.max_inbound_per_ip);
        crate::metrics::listener_started(limits.transport);
        let inbound = Budget::new(
            limits.buffer_budget,
            counters.buffered.clone(),
            "the inbound buffer budget stayed exhausted",
            (limits.transport, "inbound"),
        );
        let outbound = Budget::new(
            limits.outbound_budget,
            counters.outbound.clone(),
            "the outbound buffer budget is exhausted",
            (limits.transport, "outbound"),
        );
        let intake = Intake {
            layer,
            io,
            queue,
            counters,
            slots: Arc::new(Mutex::new(slots)),
            inbound,
            outbound,
            stalled: stalled::StalledWriters::new(),
            metrics: Arc::new(CallMetrics::new(limits.transport)),
            limits,
            shutdown,
            log,
        };
        Listener {
            intake: Arc::new(intake),
            accept_done: None,
        }
    }
}

impl Actor for Listener {
    type Context = Context<Self>;

    fn started(&mut self, _: &mut Context<Self>) {
        let intake = &self.intake;
        info!(intake.log, "listening"; "addr" => intake.layer.local_addr());
        let (done_tx, done_rx) = oneshot::channel();
        self.accept_done = Some(done_rx);
        let (layer, shutdown, log) = (
            intake.layer.clone(),
            intake.shutdown.clone(),
            intake.log.clone(),
        );
        // A layer whose connections are driven on I/O threads (QUIC,
        // WebRTC) hands each to the Listener itself, on the thread that
        // drives it, where it is served: what crosses to this thread is
        // the decoded request, through the fair queue (DESIGN.md,
        // "Threads"). Weak: the layer keeps the hand, and the Listener the
        // layer.
        let weak = Arc::downgrade(intake);
        let take: TakeInbound = Arc::new(move |inbound| {
            if let Some(intake) = weak.upgrade() {
                intake.take(inbound);
            }
        });
        if !intake.io.is_empty() {
            intake.layer.take_where_driven(take);
        }
        // The accept loop runs here, and takes each connection in before
        // it accepts the next: all of them, or, where the layer hands them
        // in itself, those it accepted before it was given the hand.
        let intake = intake.clone();
        actix_rt::spawn(async move {
            accept_loop(layer, shutdown, intake, log).await;
            let _ = done_tx.send(());
        });
    }
}

/// Accepts until shut down.
async fn accept_loop(
    layer: Arc<dyn StreamLayer>,
    shutdown: CancellationToken,
    intake: Arc<Intake>,
    log: Logger,
) {
    const FIRST_PAUSE: Duration = Duration::from_millis(5);
    const LONGEST_PAUSE: Duration = Duration::from_secs(1);
    let mut pause = FIRST_PAUSE;
    loop {
        let accepted = tokio::select! {
            accepted = layer.accept_inbound() => accepted,
            _ = shutdown.cancelled() => return,
        };
        match accepted {
            Ok(inbound) => {
                pause = FIRST_PAUSE;
                intake.take(inbound);
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

impl Intake {
    /// Takes `accepted` in (a place for it, evicting another if need be)
    /// and serves it on this thread.
    fn take(&self, accepted: Inbound) {
        if self.shutdown.is_cancelled() {
            // Closing: a connection handed over now is dropped (closed).
            return;
        }
        let counters = self.counters.clone();
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let log = self.log.new(slog::o!("peer" => accepted.remote.clone()));
        // Named as the connection will be served (see `Source::of`); its
        // places count by address.
        let source = crate::source::Source::of(
            &accepted.remote,
            accepted.address,
            accepted.peer_key.as_ref(),
        )
        .address;
        let kick = self.shutdown.child_token();
        let admission =
            self.slots
                .lock()
                .expect("slots lock")
                .admit(&source, std::time::Instant::now(), kick);
        let transport = self.limits.transport;
        let Some((id, kick, activity)) = admission.slot else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            crate::metrics::inbound_shed(transport, "refused");
            debug!(
                log,
                "refusing a connection: every connection is being answered"
            );
            return;
        };
        if let Some(reason) = admission.shed {
            counters.shed.fetch_add(1, Ordering::Relaxed);
            let cap = match reason {
                Shed::Cap => "max-inbound",
                Shed::SourceCap => "max-inbound-per-ip",
            };
            crate::metrics::inbound_shed(
                transport,
                match reason {
                    Shed::Cap => "cap",
                    Shed::SourceCap => "per_ip",
                },
            );
            debug!(log, "shed a connection for a newcomer"; "cap" => cap, "source" => &*source);
        }
        counters.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections(Role::Inbound, 1.0);
        debug!(log, "connection accepted");
        let (slots, metrics) = (self.slots.clone(), self.metrics.clone());
        let cx = connection::Context {
            remote: accepted.remote,
            address: accepted.address,
            peer_key: accepted.peer_key,
            one_call: self.layer.one_call_per_connection(),
            activity,
            kick,
            queue: self.queue.clone(),
            limits: self.limits.clone(),
            inbound: self.inbound.clone(),
            outbound: self.outbound.clone(),
            stalled: self.stalled.clone(),
            places: self.slots.clone(),
            io: self.io.clone(),
            metrics: self.metrics.clone(),
            shutdown: self.shutdown.clone(),
            log: log.clone(),
        };
        let upgrading = self.layer.upgrade(
            accepted.connection,
            &cx.remote,
            self.limits.handshake_timeout,
        );
        // Boxed where it is made: the connection's future is kilobytes,
        // and a QUIC node makes one per call; spawning then moves a
        // pointer, not the future.
        let reader = Box::pin(connection::serve(upgrading, cx));
        // Served here, on the node's side (see the module docs).
        actix_rt::spawn(async move {
            match reader.await {
                Err(err) => {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                    // Bad input is the peer's problem, not ours: a warning,
                    // so that an operator can see who misbehaves.
                    warn!(log, "closing inbound connection"; "reason" => %err);
                }
                Ok(Ended::Idle) => debug!(log, "inbound connection closed: idle"),
                Ok(ended) => debug!(log, "inbound connection closed"; "why" => ?ended),
            }
            slots.lock().expect("slots lock").release(id);
            counters.open.fetch_sub(1, Ordering::Relaxed);
            metrics.connections(Role::Inbound, -1.0);
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
        self.intake.shutdown.cancel();
        self.intake.layer.close();
        ctx.stop();
        let done = self.accept_done.take();
        Box::pin(async move {
            if let Some(done) = done {
                let _ = done.await;
            }
        })
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
    use crate::stream::BoxConnection;
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
        let (queue, mut rx) = FairQueue::new(4);
        let log = Logger::root(slog::Discard, slog::o!());
        let limits = ListenerLimits {
            max_inbound: 4,
            max_inbound_per_ip: 4,
            idle_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(1),
            min_rate: 1024,
            max_request_size: 1024,
            buffer_budget: 1 << 20,
            outbound_budget: 1 << 20,
            handshake_timeout: Duration::from_secs(1),
            large_frame: 1 << 20,
            transport: "test",
        };
        let shutdown = CancellationToken::new();
        let listener = Listener::new(
            layer.clone(),
            IoArbiters::shared(0),
            queue,
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
