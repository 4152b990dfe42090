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
//! nor connections waiting keeps its (empty) entry until idle sources
//! number more than 64 plus twice the sources with RPCs waiting, when the
//! next RPC to arrive has them forgotten: a source's next request, often
//! microseconds after its last, finds its entry made.
//!
//! An RPC whose caller has gone (its connection shed or closed) while it
//! waited is dropped rather than handed to the node.

use std::collections::{HashMap, VecDeque};
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

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

/// Idle sources (nothing waiting) kept beyond twice the busy ones before
/// the queue forgets them (see the module docs).
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

/// An RPC waiting, with the place it takes in its source's room.
struct Queued {
    rpc: Rpc,
    _room: OwnedSemaphorePermit,
}

/// One key's (or an anonymous address's) RPCs.
struct KeyQueue {
    rpcs: VecDeque<Queued>,
    /// `per_source` places; each queued RPC or waiting sender holds a
    /// clone of this `Arc`, so a count of one means nobody uses it.
    room: Arc<Semaphore>,
}

#[derive(Default)]
struct AddressQueue {
    keys: HashMap<Option<Arc<str>>, KeyQueue>,
    /// Keys with RPCs waiting, in turn.
    turn: VecDeque<Option<Arc<str>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// A receiver takes RPCs.
    Receiving,
    /// The receiver was dropped: RPCs are refused until a new one comes.
    NotConsuming,
    /// The transport is closing: RPCs are refused; those queued are still
    /// handed out.
    Closed,
}

struct State {
    addresses: HashMap<Arc<str>, AddressQueue>,
    /// Addresses with RPCs waiting, in turn.
    turn: VecDeque<Arc<str>>,
    /// Which receiver is current; older ones end.
    generation: u64,
    mode: Mode,
    waker: Option<Waker>,
    /// RPCs waiting, all sources together.
    waiting: usize,
    gauges: QueueGauges,
}

/// See the [module docs](self).
pub struct FairQueue {
    state: Mutex<State>,
    per_source: usize,
    counters: Counters,
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
        let queue = Arc::new(FairQueue {
            state: Mutex::new(State {
                addresses: HashMap::new(),
                turn: VecDeque::new(),
                generation: 0,
                mode: Mode::Receiving,
                waker: None,
                waiting: 0,
                gauges,
            }),
            per_source: per_source.max(1),
            counters: Counters::default(),
        });
        let receiver = QueueReceiver {
            queue: queue.clone(),
            generation: 0,
            handed: false,
            yielding: None,
            last_yield: Instant::now(),
        };
        (queue, receiver)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fair queue lock")
    }

    /// Counts of the RPCs pushed so far.
    pub fn stats(&self) -> DispatchStats {
        self.counters.snapshot()
    }

    /// Queues `rpc` from `source`, waiting while the source's queue is
    /// full. An RPC that cannot be delivered (the queue is closed, nobody
    /// consumes) is answered with an error at once.
    pub async fn push(&self, source: &Source, rpc: Rpc) {
        self.counters.count(rpc.rpc_type());
        let room = {
            let mut state = self.lock();
            if let Some(why) = state.refusal() {
                drop(state);
                return self.refuse(rpc, why);
            }
            state.room_of(source, self.per_source)
        };
        let place = match room.clone().try_acquire_owned() {
            Ok(place) => place,
            Err(_) => room
                .acquire_owned()
                .await
                .expect("a source's room is never closed"),
        };
        let waker = {
            let mut state = self.lock();
            if let Some(why) = state.refusal() {
                drop(state);
                return self.refuse(rpc, why);
            }
            state.enqueue(source, Queued { rpc, _room: place })
        };
        if let Some(waker) = waker {
            waker.wake();
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
        let mut state = self.lock();
        state.generation += 1;
        if state.mode == Mode::NotConsuming {
            state.mode = Mode::Receiving;
        }
        let old = state.waker.take();
        let generation = state.generation;
        drop(state);
        if let Some(waker) = old {
            waker.wake();
        }
        QueueReceiver {
            queue: self.clone(),
            generation,
            handed: false,
            yielding: None,
            last_yield: Instant::now(),
        }
    }

    /// Refuses further RPCs; the receiver still gets those queued, then
    /// ends.
    pub fn close(&self) {
        let mut state = self.lock();
        state.mode = Mode::Closed;
        let waker = state.waker.take();
        drop(state);
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Whether RPCs are waiting.
    fn has_waiting(&self) -> bool {
        !self.lock().turn.is_empty()
    }

    fn poll_recv(&self, generation: u64, cx: &mut Context<'_>) -> Poll<Option<Rpc>> {
        let mut state = self.lock();
        if state.generation != generation {
            return Poll::Ready(None);
        }
        while let Some(queued) = state.pop() {
            // Nobody waits for an abandoned RPC's answer: spare the node.
            if !queued.rpc.is_abandoned() {
                return Poll::Ready(Some(queued.rpc));
            }
        }
        if state.mode == Mode::Closed {
            return Poll::Ready(None);
        }
        if !state
            .waker
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    fn receiver_dropped(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation {
            return;
        }
        let why = match state.mode {
            Mode::Closed => SHUTTING_DOWN,
            _ => {
                state.mode = Mode::NotConsuming;
                NOT_CONSUMING
            }
        };
        let mut left = Vec::new();
        while let Some(queued) = state.pop() {
            left.push(queued);
        }
        drop(state);
        for queued in left {
            self.refuse(queued.rpc, why);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        // A queue dropped with RPCs in it (they are refused as they drop)
        // takes them out of the gauges.
        self.gauges.requests.decrement(self.waiting as f64);
        self.gauges.sources.decrement(self.turn.len() as f64);
    }
}

impl State {
    fn refusal(&self) -> Option<&'static str> {
        match self.mode {
            Mode::Receiving => None,
            Mode::NotConsuming => Some(NOT_CONSUMING),
            Mode::Closed => Some(SHUTTING_DOWN),
        }
    }

    /// The room of `source`'s queue, made if new.
    fn room_of(&mut self, source: &Source, per_source: usize) -> Arc<Semaphore> {
        if self.addresses.len() > 2 * self.turn.len() + IDLE_SOURCES_KEPT {
            self.prune();
        }
        let address = self.addresses.entry(source.address.clone()).or_default();
        address
            .keys
            .entry(source.key.clone())
            .or_insert_with(|| KeyQueue {
                rpcs: VecDeque::new(),
                room: Arc::new(Semaphore::new(per_source)),
            })
            .room
            .clone()
    }

    /// Forgets the sources nobody uses any more: nothing waits in their
    /// queue or for room in it.
    fn prune(&mut self) {
        self.addresses.retain(|_, address| {
            address
                .keys
                .retain(|_, key| !key.rpcs.is_empty() || Arc::strong_count(&key.room) > 1);
            !address.keys.is_empty()
        });
    }

    /// Queues `queued`; returns the receiver's waker when it has to be
    /// woken.
    fn enqueue(&mut self, source: &Source, queued: Queued) -> Option<Waker> {
        let address = self
            .addresses
            .get_mut(&source.address)
            .expect("a source with a sender waiting is kept");
        let key = address
            .keys
            .get_mut(&source.key)
            .expect("a source with a sender waiting is kept");
        if key.rpcs.is_empty() {
            if address.turn.is_empty() {
                self.turn.push_back(source.address.clone());
                self.gauges.sources.increment(1.0);
            }
            address.turn.push_back(source.key.clone());
        }
        key.rpcs.push_back(queued);
        self.waiting += 1;
        self.gauges.requests.increment(1.0);
        self.waker.take()
    }

    /// The next RPC in turn.
    fn pop(&mut self) -> Option<Queued> {
        let name = self.turn.pop_front()?;
        let address = self
            .addresses
            .get_mut(&name)
            .expect("an address in turn is kept");
        let key_name = address
            .turn
            .pop_front()
            .expect("an address in turn has a key in turn");
        let key = address
            .keys
            .get_mut(&key_name)
            .expect("a key in turn is kept");
        let queued = key.rpcs.pop_front().expect("a key in turn has an RPC");
        // A source left with nothing waiting keeps its entry (its next
        // request, often microseconds away, finds it made); `room_of`
        // prunes the idle ones when they outnumber the busy ones.
        if !key.rpcs.is_empty() {
            address.turn.push_back(key_name);
        }
        if !address.turn.is_empty() {
            self.turn.push_back(name);
        } else {
            self.gauges.sources.decrement(1.0);
        }
        self.waiting -= 1;
        self.gauges.requests.decrement(1.0);
        Some(queued)
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
    async fn abandoned_rpcs_are_skipped_and_idle_sources_forgotten_past_the_bound() {
        let (queue, mut receiver) = FairQueue::new(4);
        let (gone, reply) = rpc(1);
        queue.push(&source("10.0.0.2", None), gone).await;
        drop(reply);
        let (kept, _reply) = rpc(2);
        queue.push(&source("10.0.0.3", None), kept).await;
        assert_eq!(ids(&mut receiver, 1).await, vec![2]);
        assert!(futures::poll!(Box::pin(receiver.recv())).is_pending());
        // Idle sources keep their entries, up to the bound...
        let mut replies = Vec::new();
        for i in 0..IDLE_SOURCES_KEPT as u32 {
            let (rpc, reply) = rpc(10 + i);
            queue.push(&source(&format!("10.1.0.{i}"), None), rpc).await;
            replies.push(reply);
        }
        ids(&mut receiver, IDLE_SOURCES_KEPT).await;
        assert_eq!(queue.lock().addresses.len(), IDLE_SOURCES_KEPT + 2);
        // ...and are forgotten when the next RPC comes past it.
        let (next, _next_reply) = rpc(3);
        queue.push(&source("10.0.0.4", None), next).await;
        let state = queue.lock();
        assert_eq!(state.addresses.len(), 1);
        assert!(state.addresses.contains_key("10.0.0.4"));
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
