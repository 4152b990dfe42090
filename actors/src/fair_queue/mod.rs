//! Fair service: the queue between a transport's connections and the node.
//!
//! Every incoming RPC waits here, in the queue of its [`Source`], until the
//! node takes it. The node is handed RPCs from the sources in turn: each
//! address with RPCs waiting gets one per round, and within an address each
//! verified key gets its turn. So a peer holding hundreds of connections
//! gets one share of the node, not hundreds, while a source alone gets all
//! of it (nobody waits for a turn nobody else wants).
//!
//! Each source (address and key) has room for `per_source` RPCs; a
//! connection whose source is full waits before queueing, so it reads no
//! further request, and the pressure stays with that source. The queue
//! holds at most `per_source` RPCs per source. A source with neither RPCs
//! nor connections waiting keeps its (empty) entry, so that its next
//! request, often microseconds after its last, finds it made, until the
//! sources known number more than 64 plus twice those in use (held by a
//! connection or an RPC) at the last count: then the next connection to
//! look its source up has the idle ones forgotten.
//!
//! An RPC whose caller has gone (its connection shed or closed) while it
//! waited is dropped rather than handed to the node.
//!
//! # Threads
//!
//! Connections push from wherever they are served (an I/O thread, or the
//! node's), and the receiver takes on the node's thread; the two sides
//! share no lock on an RPC's way. A connection finds its source's room
//! when it starts ([`FairQueue::sender`]: the senders share the map of
//! rooms under a lock the receiver never takes; a QUIC stream, which
//! carries one call, is a connection here), then takes a place in the
//! room with an atomic counter and hands the RPC over a lock-free
//! channel. The receiver alone sorts what arrived into the sources'
//! turns, and gives the place back with the counter again. Only a sender
//! whose source is full waits on a list the place's return touches, and
//! the receiver never waits for a sender: an RPC still being handed over
//! is taken on the next poll.

mod room;
mod turns;

use std::collections::HashMap;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{fence, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::room::{AddressCount, Room};
use self::turns::{Queued, Turns};
use crate::error::{NOT_CONSUMING, SHUTTING_DOWN};
use crate::metrics::QueueGauges;
use crate::rpc::Rpc;
use crate::source::Source;
use crate::wire::RpcType;

/// A receiver taking RPCs one after another while more wait lets the
/// thread's other tasks run at least this often (see
/// [`QueueReceiver::poll_recv`]): a newly arrived source's request waits
/// about this long, plus the RPC being handled, before it is read.
const YIELD_AFTER: Duration = Duration::from_micros(200);

/// Idle sources (nobody holds their room) kept beyond twice the busy ones
/// before the queue forgets them (see the module docs).
const IDLE_SOURCES_KEPT: usize = 64;

pub use babble_net_core::stats::DispatchStats;

#[derive(Default)]
struct Counters {
    by_type: [AtomicU64; 4],
    refused: AtomicU64,
}

impl Counters {
    /// Counts are indexed by the RPC type's wire byte.
    fn count(&self, rpc_type: RpcType) {
        self.by_type[rpc_type as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DispatchStats {
        let load = |rpc_type: RpcType| self.by_type[rpc_type as usize].load(Ordering::Relaxed);
        DispatchStats {
            sync: load(RpcType::Sync),
            eager_sync: load(RpcType::EagerSync),
            fast_forward: load(RpcType::FastForward),
            join: load(RpcType::Join),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// What the senders hand the receiver.
enum Arrival {
    Rpc(Queued),
    /// The mode or the current receiver changed: look again.
    Wake,
}

/// A receiver takes RPCs.
const RECEIVING: u8 = 0;
/// The receiver was dropped: RPCs are refused until a new one comes.
const NOT_CONSUMING_MODE: u8 = 1;
/// The transport is closing: RPCs are refused; those queued are still
/// handed out.
const CLOSED: u8 = 2;

/// The sources' rooms, shared by the senders (never by the receiver).
struct Rooms {
    addresses: HashMap<Arc<str>, AddressRooms>,
    /// Rooms known, in use or idle.
    count: usize,
    /// `count` beyond which idle rooms are forgotten.
    prune_above: usize,
    next_id: u64,
}

struct AddressRooms {
    counted: Arc<AddressCount>,
    keys: HashMap<Option<Arc<str>>, Arc<Room>>,
}

impl Rooms {
    fn room_of(&mut self, source: &Source, per_source: usize, gauges: &QueueGauges) -> Arc<Room> {
        if self.count > self.prune_above {
            self.prune();
        }
        let next_id = &mut self.next_id;
        let address = self
            .addresses
            .entry(source.address.clone())
            .or_insert_with(|| {
                *next_id += 1;
                AddressRooms {
                    counted: Arc::new(AddressCount::new(*next_id, gauges.clone())),
                    keys: HashMap::new(),
                }
            });
        if let Some(room) = address.keys.get(&source.key) {
            return room.clone();
        }
        self.next_id += 1;
        self.count += 1;
        let room = Arc::new(Room::new(self.next_id, per_source, address.counted.clone()));
        address.keys.insert(source.key.clone(), room.clone());
        room
    }

    /// Forgets the rooms nobody holds; the next prune comes when the idle
    /// ones outnumber twice the busy ones again.
    fn prune(&mut self) {
        self.addresses.retain(|_, address| {
            address.keys.retain(|_, room| room.in_use());
            !address.keys.is_empty()
        });
        self.count = self.addresses.values().map(|a| a.keys.len()).sum();
        self.prune_above = 2 * self.count + IDLE_SOURCES_KEPT;
    }
}

/// The receiving side: what arrived, sorted into turns.
struct Core {
    inbox: mpsc::UnboundedReceiver<Arrival>,
    turns: Turns,
    /// Which receiver is current; older ones end.
    generation: u64,
    /// No receiver takes what arrives: the current one was dropped, or
    /// ended on a closed queue. A sender then refuses its own RPC.
    ended: bool,
}

impl Core {
    /// Sorts everything that arrived into the turns, without waiting and
    /// whatever the task's budget: a receiver whose budget ran out would
    /// otherwise leave a newcomer's request unsorted. (The channel's
    /// `try_recv` would park the thread while a sender is in the middle of
    /// its hand-off; polled, the channel just says nothing more is ready,
    /// and that sender's hand-off wakes the receiver, or settles its RPC,
    /// once done.) The waker given is a no-op: only a receiver about to
    /// wait asks to be woken ([`Core::wait_for_arrivals`]).
    fn take_arrivals(&mut self) {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        loop {
            let polled = {
                let inbox = &mut self.inbox;
                let next = tokio::task::coop::unconstrained(poll_fn(|cx| inbox.poll_recv(cx)));
                pin!(next).poll(&mut cx)
            };
            match polled {
                Poll::Ready(Some(arrival)) => self.sort(arrival),
                _ => return,
            }
        }
    }

    /// With nothing in turn: registers `cx` to be woken by the next
    /// arrival, or sorts one that came meanwhile (`true`).
    ///
    /// Only a receiver about to wait asks to be woken: one woken by every
    /// arrival while it still has turns to hand out would be polled again
    /// at once after its yield (see [`QueueReceiver::poll_recv`]), before
    /// the runtime looks for I/O, and a newcomer's request would not be
    /// read until the runtime's own interval came round.
    fn wait_for_arrivals(&mut self, cx: &mut Context<'_>) -> bool {
        match self.inbox.poll_recv(cx) {
            Poll::Ready(Some(arrival)) => {
                self.sort(arrival);
                true
            }
            _ => false,
        }
    }

    fn sort(&mut self, arrival: Arrival) {
        match arrival {
            Arrival::Rpc(queued) => self.turns.enqueue(queued),
            Arrival::Wake => {}
        }
    }

    /// Everything waiting, arrived or in turn, taken out.
    fn drain(&mut self) -> Vec<Queued> {
        self.take_arrivals();
        std::iter::from_fn(|| self.turns.pop()).collect()
    }
}

/// See the [module docs](self).
pub struct FairQueue {
    inbox: mpsc::UnboundedSender<Arrival>,
    mode: AtomicU8,
    rooms: Mutex<Rooms>,
    core: Mutex<Core>,
    per_source: usize,
    counters: Counters,
    gauges: QueueGauges,
}

/// A source's way into a [`FairQueue`]: its room, found once. A
/// connection takes one when it starts, and pushes each of its RPCs
/// through it.
#[derive(Clone)]
pub struct SourceSender {
    queue: Arc<FairQueue>,
    room: Arc<Room>,
}

impl std::fmt::Debug for SourceSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceSender")
            .field("source", &self.room.key)
            .finish_non_exhaustive()
    }
}

impl SourceSender {
    /// Queues `rpc`, waiting while the source's queue is full. An RPC that
    /// cannot be delivered (the queue is closed, nobody consumes) is
    /// answered with an error at once.
    pub async fn push(&self, rpc: Rpc) {
        self.queue.push_into(&self.room, rpc).await
    }
}

impl FairQueue {
    /// An empty queue with room for `per_source` RPCs per source, and its
    /// first receiver; no metrics.
    pub fn new(per_source: usize) -> (Arc<FairQueue>, QueueReceiver) {
        Self::with_gauges(per_source, QueueGauges::none())
    }

    /// An empty queue with room for `per_source` RPCs per source, whose
    /// depth the `gauges` show, and its first receiver.
    pub fn with_gauges(per_source: usize, gauges: QueueGauges) -> (Arc<FairQueue>, QueueReceiver) {
        gauges.requests.increment(0.0);
        gauges.sources.increment(0.0);
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(FairQueue {
            inbox: tx,
            mode: AtomicU8::new(RECEIVING),
            rooms: Mutex::new(Rooms {
                addresses: HashMap::new(),
                count: 0,
                prune_above: IDLE_SOURCES_KEPT,
                next_id: 0,
            }),
            core: Mutex::new(Core {
                inbox: rx,
                turns: Turns::new(),
                generation: 0,
                ended: false,
            }),
            per_source: per_source.max(1),
            counters: Counters::default(),
            gauges,
        });
        let receiver = QueueReceiver::new(queue.clone(), 0);
        (queue, receiver)
    }

    fn core(&self) -> MutexGuard<'_, Core> {
        self.core.lock().expect("fair queue receiving side")
    }

    /// Counts of the RPCs pushed so far.
    pub fn stats(&self) -> DispatchStats {
        self.counters.snapshot()
    }

    /// `source`'s way into the queue. Finding the source's room takes the
    /// senders' shared map, so a connection takes its sender once and
    /// pushes every RPC through it.
    pub fn sender(self: &Arc<Self>, source: &Source) -> SourceSender {
        let room = (self.rooms.lock()).expect("fair queue rooms").room_of(
            source,
            self.per_source,
            &self.gauges,
        );
        SourceSender {
            queue: self.clone(),
            room,
        }
    }

    /// Queues `rpc` from `source`, as [`SourceSender::push`] does; finds
    /// the source's room first.
    pub async fn push(self: &Arc<Self>, source: &Source, rpc: Rpc) {
        self.sender(source).push(rpc).await
    }

    fn refusal(&self) -> Option<&'static str> {
        match self.mode.load(Ordering::SeqCst) {
            RECEIVING => None,
            NOT_CONSUMING_MODE => Some(NOT_CONSUMING),
            _ => Some(SHUTTING_DOWN),
        }
    }

    async fn push_into(&self, room: &Arc<Room>, rpc: Rpc) {
        self.counters.count(rpc.rpc_type());
        if let Some(why) = self.refusal() {
            return self.refuse(rpc, why);
        }
        let place = room.enter().await;
        if let Some(why) = self.refusal() {
            return self.refuse(rpc, why);
        }
        // The receiving side lives as long as the queue, which this
        // sender holds: the send cannot fail.
        let _ = self.inbox.send(Arrival::Rpc(Queued { rpc, place }));
        // A receiver dropped (or ended on a closed queue) while this RPC
        // went in may have drained the inbox before it got there: then
        // nobody would ever take it. The mode is written before any such
        // drain, so one side or the other sees the RPC.
        fence(Ordering::SeqCst);
        if self.mode.load(Ordering::SeqCst) != RECEIVING {
            self.settle();
        }
    }

    /// Refuses what waits in the inbox when nobody will take it.
    fn settle(&self) {
        let mut core = self.core();
        if !core.ended {
            // A receiver still takes what arrives (a closed queue is
            // drained before its receiver ends).
            return;
        }
        let why = match self.mode.load(Ordering::SeqCst) {
            RECEIVING => return,
            NOT_CONSUMING_MODE => NOT_CONSUMING,
            _ => SHUTTING_DOWN,
        };
        let left = core.drain();
        drop(core);
        for queued in left {
            self.refuse(queued.rpc, why);
        }
    }

    /// Answers `rpc` with the error `why` and counts it as refused.
    pub(crate) fn refuse(&self, rpc: Rpc, why: &str) {
        self.counters.refused.fetch_add(1, Ordering::Relaxed);
        rpc.respond(Err(why.to_owned()));
    }

    /// A new receiver; the current one ends, and RPCs waiting go to the
    /// new one.
    pub fn receiver(self: &Arc<Self>) -> QueueReceiver {
        let mut core = self.core();
        core.generation += 1;
        core.ended = false;
        let _ = self.mode.compare_exchange(
            NOT_CONSUMING_MODE,
            RECEIVING,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        let generation = core.generation;
        drop(core);
        // The older receiver, if it waits, looks again and ends.
        let _ = self.inbox.send(Arrival::Wake);
        QueueReceiver::new(self.clone(), generation)
    }

    /// Refuses further RPCs; the receiver still gets those queued, then
    /// ends.
    pub fn close(&self) {
        self.mode.store(CLOSED, Ordering::SeqCst);
        let _ = self.inbox.send(Arrival::Wake);
    }

    /// Whether RPCs are waiting.
    fn has_waiting(&self) -> bool {
        let core = self.core();
        core.turns.waiting() > 0 || !core.inbox.is_empty()
    }

    fn poll_recv(&self, generation: u64, cx: &mut Context<'_>) -> Poll<Option<Rpc>> {
        let mut core = self.core();
        if core.generation != generation {
            return Poll::Ready(None);
        }
        core.take_arrivals();
        loop {
            while let Some(queued) = core.turns.pop() {
                // Nobody waits for an abandoned RPC's answer: spare the node.
                if !queued.rpc.is_abandoned() {
                    return Poll::Ready(Some(queued.rpc));
                }
            }
            if self.mode.load(Ordering::SeqCst) == CLOSED {
                // Closed: end once nothing is left, and say so first, so
                // that a sender racing the close refuses its own RPC
                // (`settle`).
                core.ended = true;
                fence(Ordering::SeqCst);
                core.take_arrivals();
                if core.turns.waiting() == 0 {
                    return Poll::Ready(None);
                }
                // Late arrivals to hand out: not ended after all.
                core.ended = false;
            } else if !core.wait_for_arrivals(cx) {
                return Poll::Pending;
            }
        }
    }

    fn receiver_dropped(&self, generation: u64) {
        let mut core = self.core();
        if core.generation != generation {
            return;
        }
        // From here nobody takes what arrives, until a new receiver: a
        // sender whose RPC arrives later refuses it itself (`settle`),
        // whatever the mode becomes meanwhile (a close, say).
        core.ended = true;
        let why = match self.mode.compare_exchange(
            RECEIVING,
            NOT_CONSUMING_MODE,
            Ordering::SeqCst,
            Ordering::SeqCst,
        ) {
            Ok(_) | Err(NOT_CONSUMING_MODE) => NOT_CONSUMING,
            Err(_) => SHUTTING_DOWN,
        };
        fence(Ordering::SeqCst);
        let left = core.drain();
        drop(core);
        for queued in left {
            self.refuse(queued.rpc, why);
        }
    }
}

/// Takes RPCs from a [`FairQueue`], sources in turn. Ends when the queue
/// is closed and empty, or when a newer receiver replaces it. Dropping the
/// current receiver refuses the RPCs waiting and those that come until a
/// new receiver is made.
pub struct QueueReceiver {
    queue: Arc<FairQueue>,
    generation: u64,
    /// The last poll handed out an RPC.
    handed: bool,
    /// A yield to the thread's other tasks in progress.
    yielding: Option<Pin<Box<dyn Future<Output = ()> + Send + Sync>>>,
    /// When the receiver last yielded.
    last_yield: Instant,
}

impl std::fmt::Debug for QueueReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueReceiver")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl QueueReceiver {
    fn new(queue: Arc<FairQueue>, generation: u64) -> QueueReceiver {
        QueueReceiver {
            queue,
            generation,
            handed: false,
            yielding: None,
            last_yield: Instant::now(),
        }
    }

    /// The next RPC; `None` once the queue is closed and drained, or this
    /// receiver was replaced.
    pub async fn recv(&mut self) -> Option<Rpc> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// Polls for the next RPC; see [`QueueReceiver::recv`].
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Rpc>> {
        // A receiver that comes back for more while RPCs wait yields to
        // the thread's other tasks first, after the runtime has looked for
        // I/O: on a node's thread those are the connections that read the
        // next requests, and without the yield a busy node would take a
        // whole burst before a newly arrived source's request is even read
        // (a runtime polls for I/O only every few dozen tasks otherwise).
        // Cheap RPCs in a burst yield only every YIELD_AFTER of the
        // receiver's time, so a yield costs them little.
        if std::mem::take(&mut self.handed)
            && self.last_yield.elapsed() >= YIELD_AFTER
            && self.queue.has_waiting()
        {
            self.yielding = Some(Box::pin(tokio::task::yield_now()));
            self.last_yield = Instant::now();
        }
        if let Some(yielding) = &mut self.yielding {
            ready!(yielding.as_mut().poll(cx));
            self.yielding = None;
        }
        let polled = self.queue.poll_recv(self.generation, cx);
        self.handed = matches!(polled, Poll::Ready(Some(_)));
        polled
    }
}

impl Drop for QueueReceiver {
    fn drop(&mut self) {
        self.queue.receiver_dropped(self.generation);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Command, SyncRequest};

    fn source(address: &str, key: Option<&str>) -> Source {
        Source {
            address: address.into(),
            key: key.map(Into::into),
        }
    }

    fn rpc(id: u32) -> (Rpc, crate::rpc::PendingReply) {
        Rpc::new(
            Command::Sync(SyncRequest {
                from_id: id,
                ..Default::default()
            }),
            None,
        )
    }

    fn id(rpc: &Rpc) -> u32 {
        match &rpc.command {
            Command::Sync(request) => request.from_id,
            _ => unreachable!(),
        }
    }

    async fn ids(receiver: &mut QueueReceiver, n: usize) -> Vec<u32> {
        let mut out = Vec::new();
        for _ in 0..n {
            out.push(id(&receiver.recv().await.unwrap()));
        }
        out
    }

    #[tokio::test]
    async fn sources_are_served_in_turn_not_in_arrival_order() {
        let (queue, mut receiver) = FairQueue::new(64);
        let mut pending = Vec::new();
        let flood = source("10.0.0.2", None);
        for i in 0..10 {
            let (rpc, reply) = rpc(100 + i);
            queue.push(&flood, rpc).await;
            pending.push(reply);
        }
        let (honest, reply) = rpc(1);
        queue.push(&source("10.0.0.3", None), honest).await;
        pending.push(reply);
        // The honest RPC, queued last, is the second one out.
        assert_eq!(ids(&mut receiver, 3).await, vec![100, 1, 101]);
    }

    #[tokio::test]
    async fn keys_share_their_address_turn() {
        let (queue, mut receiver) = FairQueue::new(64);
        let mut pending = Vec::new();
        // One address with three keys, another with none.
        for (i, key) in ["a", "b", "c"].into_iter().enumerate() {
            for j in 0..2 {
                let (rpc, reply) = rpc(10 * (i as u32 + 1) + j);
                queue.push(&source("10.0.0.2", Some(key)), rpc).await;
                pending.push(reply);
            }
        }
        for j in 0..3 {
            let (rpc, reply) = rpc(90 + j);
            queue.push(&source("10.0.0.3", None), rpc).await;
            pending.push(reply);
        }
        // The other address gets every second turn: minting keys buys
        // nothing against it.
        assert_eq!(ids(&mut receiver, 6).await, vec![10, 90, 20, 91, 30, 92]);
    }

    #[tokio::test]
    async fn a_full_source_waits_and_others_do_not() {
        let (queue, mut receiver) = FairQueue::new(2);
        let flood = source("10.0.0.2", None);
        let mut pending = Vec::new();
        for i in 0..2 {
            let (rpc, reply) = rpc(i);
            queue.push(&flood, rpc).await;
            pending.push(reply);
        }
        // A third from the full source waits for room.
        let (third, _reply) = rpc(2);
        let mut blocked = Box::pin(queue.push(&flood, third));
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        // Another source is not held up.
        let (honest, _honest_reply) = rpc(7);
        queue.push(&source("10.0.0.3", None), honest).await;
        assert_eq!(ids(&mut receiver, 2).await, vec![0, 7]);
        // Room made: the waiting one gets in.
        blocked.await;
        assert_eq!(ids(&mut receiver, 2).await, vec![1, 2]);
    }

    #[tokio::test]
    async fn abandoned_rpcs_are_skipped() {
        let (queue, mut receiver) = FairQueue::new(4);
        let (gone, reply) = rpc(1);
        queue.push(&source("10.0.0.2", None), gone).await;
        drop(reply);
        let (kept, _reply) = rpc(2);
        queue.push(&source("10.0.0.3", None), kept).await;
        assert_eq!(ids(&mut receiver, 1).await, vec![2]);
        assert!(futures::poll!(Box::pin(receiver.recv())).is_pending());
    }

    #[tokio::test]
    async fn idle_sources_are_forgotten_past_the_bound() {
        let (queue, mut receiver) = FairQueue::new(4);
        let known = |queue: &FairQueue| {
            let rooms = queue.rooms.lock().unwrap().count;
            (rooms, queue.core().turns.known().1)
        };
        // Idle sources keep their entries, up to the bound...
        let bound = IDLE_SOURCES_KEPT as u32 + 1;
        for i in 0..bound {
            let (rpc, _reply) = rpc(10 + i);
            queue.push(&source(&format!("10.1.0.{i}"), None), rpc).await;
            ids(&mut receiver, 1).await;
        }
        assert_eq!(known(&queue), (bound as usize, bound as usize));
        // ...and are forgotten when a new source comes past it, on both
        // sides of the queue.
        let (next, _reply) = rpc(3);
        queue.push(&source("10.0.0.4", None), next).await;
        assert_eq!(ids(&mut receiver, 1).await, vec![3]);
        assert_eq!(known(&queue), (1, 1));
    }

    #[tokio::test]
    async fn an_address_minting_keys_leaves_a_bounded_trail() {
        let (queue, mut receiver) = FairQueue::new(4);
        for i in 0..1000u32 {
            let (rpc, _reply) = rpc(i);
            let key = format!("minted-{i}");
            queue.push(&source("10.0.0.2", Some(&key)), rpc).await;
            ids(&mut receiver, 1).await;
        }
        let rooms = queue.rooms.lock().unwrap().count;
        let (addresses, lines) = queue.core().turns.known();
        assert!(rooms <= IDLE_SOURCES_KEPT + 1, "{rooms} rooms kept");
        assert!(lines <= IDLE_SOURCES_KEPT + 1, "{lines} lines kept");
        assert_eq!(addresses, 1);
    }

    #[tokio::test]
    async fn a_connection_finds_its_room_once_and_shares_it() {
        let (queue, mut receiver) = FairQueue::new(1);
        let first = queue.sender(&source("10.0.0.2", Some("k")));
        let second = queue.sender(&source("10.0.0.2", Some("k")));
        let (rpc_a, _a) = rpc(1);
        first.push(rpc_a).await;
        // The same source's other connection waits for the one place.
        let (rpc_b, _b) = rpc(2);
        let mut blocked = Box::pin(second.push(rpc_b));
        assert!(futures::poll!(blocked.as_mut()).is_pending());
        assert_eq!(ids(&mut receiver, 1).await, vec![1]);
        blocked.await;
        assert_eq!(ids(&mut receiver, 1).await, vec![2]);
    }

    /// A receiver with turns still to hand out is not woken by arrivals:
    /// woken, it would be polled again right after yielding, before the
    /// runtime reads a newcomer's request (the fairness runs of
    /// docs/PERFORMANCE.md measure what that costs).
    #[tokio::test]
    async fn arrivals_wake_only_a_receiver_that_waits() {
        struct Count(std::sync::atomic::AtomicUsize);
        impl futures::task::ArcWake for Count {
            fn wake_by_ref(count: &Arc<Self>) {
                count.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let count = Arc::new(Count(Default::default()));
        let waker = futures::task::waker(count.clone());
        let mut cx = Context::from_waker(&waker);
        let (queue, receiver) = FairQueue::new(8);
        let mut pending = Vec::new();
        let flood = source("10.0.0.2", None);
        for i in 0..2 {
            let (rpc, reply) = rpc(i);
            queue.push(&flood, rpc).await;
            pending.push(reply);
        }
        // Handed one, with another in turn: an arrival leaves it be. (The
        // queue is polled as the receiver polls it, without its yields.)
        assert!(queue.poll_recv(0, &mut cx).is_ready());
        let (honest, _reply) = rpc(7);
        queue.push(&source("10.0.0.3", None), honest).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        // Waiting with nothing in turn, it is woken by the next arrival.
        while let Poll::Ready(Some(_)) = queue.poll_recv(0, &mut cx) {}
        assert_eq!(count.0.load(Ordering::SeqCst), 0);
        let (late, _late_reply) = rpc(8);
        queue.push(&flood, late).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        drop(receiver);
    }

    #[test]
    fn senders_on_other_threads_reach_the_receiver() {
        let (queue, mut receiver) = FairQueue::new(8);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let queue = queue.clone();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    runtime.block_on(async {
                        let sender = queue.sender(&source(&format!("10.0.0.{t}"), None));
                        let mut replies = Vec::new();
                        for i in 0..100 {
                            let (rpc, reply) = rpc(t * 1000 + i);
                            sender.push(rpc).await;
                            replies.push(reply);
                        }
                        for reply in replies {
                            assert!(reply.await.error.is_empty());
                        }
                    })
                })
            })
            .collect();
        runtime.block_on(async {
            for _ in 0..400 {
                let rpc = receiver.recv().await.unwrap();
                rpc.respond(Ok(crate::wire::Response::Sync(Default::default())));
            }
        });
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(queue.stats().sync, 400);
    }

    #[tokio::test]
    async fn without_a_receiver_rpcs_are_refused_and_a_new_one_takes_over() {
        let (queue, receiver) = FairQueue::new(4);
        let (waiting, reply) = rpc(1);
        queue.push(&source("a", None), waiting).await;
        drop(receiver);
        assert_eq!(reply.await.error, NOT_CONSUMING);
        let (late, reply) = rpc(2);
        queue.push(&source("a", None), late).await;
        assert_eq!(reply.await.error, NOT_CONSUMING);
        let mut receiver = queue.receiver();
        let (taken, _reply) = rpc(3);
        queue.push(&source("a", None), taken).await;
        assert_eq!(ids(&mut receiver, 1).await, vec![3]);
        // A newer receiver ends the older one; what waits goes to it.
        let (moved, _reply) = rpc(4);
        queue.push(&source("a", None), moved).await;
        let mut newer = queue.receiver();
        assert!(receiver.recv().await.is_none());
        drop(receiver);
        assert_eq!(ids(&mut newer, 1).await, vec![4]);
        assert_eq!(queue.stats().refused, 2);
    }

    /// A sender past its checks when the receiver went, and then the
    /// queue closed, hands its RPC over to nobody: it refuses it itself.
    #[tokio::test]
    async fn an_rpc_handed_over_after_the_receiver_went_and_the_queue_closed_is_refused() {
        let (queue, receiver) = FairQueue::new(4);
        let sender = queue.sender(&source("a", None));
        let place = sender.room.enter().await;
        drop(receiver);
        queue.close();
        let (late, reply) = rpc(1);
        let _ = queue.inbox.send(Arrival::Rpc(Queued { rpc: late, place }));
        queue.settle();
        let answered = futures::poll!(Box::pin(reply));
        match answered {
            Poll::Ready(reply) => assert_eq!(reply.error, SHUTTING_DOWN),
            Poll::Pending => panic!("the RPC was left unanswered"),
        }
    }

    #[tokio::test]
    async fn closing_refuses_newcomers_and_drains_the_rest() {
        let (queue, mut receiver) = FairQueue::new(4);
        let (queued, _reply) = rpc(1);
        queue.push(&source("a", None), queued).await;
        queue.close();
        let (late, reply) = rpc(2);
        queue.push(&source("a", None), late).await;
        assert_eq!(reply.await.error, SHUTTING_DOWN);
        assert_eq!(ids(&mut receiver, 1).await, vec![1]);
        assert!(receiver.recv().await.is_none());
    }
}
