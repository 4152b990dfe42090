//! A toy gossip node shared by the cluster examples.
//!
//! Each node is an actix actor that receives RPCs from its transport as
//! messages, creates one event per tick, pulls what it misses from a random
//! peer (Sync) and pushes back what that peer misses (EagerSync). A
//! newcomer first joins through a sponsor (Join) and starts from the
//! sponsor's state (FastForward).
//!
//! Like a real node it bounds its own work: at most `max_syncs` syncs in
//! flight (a tick that finds them all busy creates its event and skips the
//! sync, as Go Babble's node bounds its sync routines), and at most
//! `max_events` events kept ([`store`]).
#![allow(dead_code)]

pub mod cluster;
pub mod store;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use babble_net::wire::{
    go_json, Frame, InternalTransaction, Peer, TransactionType, WireBody, WireEvent,
};
use babble_net::{
    Command, EagerSyncRequest, EagerSyncResponse, FastForwardRequest, FastForwardResponse,
    JoinRequest, JoinResponse, Rpc, SyncRequest, SyncResponse, Transport, TransportError,
};
use rand::seq::IndexedRandom;

/// How long a newcomer keeps trying to reach its sponsor.
const JOIN_RETRY: Duration = Duration::from_secs(10);

/// How many times as long as its last answered sync took a node stays
/// quiet before the next: a node then has a sync in flight at most a
/// quarter of the time, so on a saturated machine the calls in flight (and
/// the queues every call waits in) shrink to a quarter of what `max-syncs`
/// allows, keeping them far from the 1 s timeout. On an idle machine a
/// sync takes about a millisecond, well under the gossip period.
const QUIET_PER_SYNC: u32 = 3;

/// Counters of a whole cluster, printed once a second and at the end.
#[derive(Default)]
pub struct Stats {
    pub syncs: AtomicU64,
    pub eager_syncs: AtomicU64,
    pub fast_forwards: AtomicU64,
    pub joins: AtomicU64,
    /// Calls that failed although their target was up.
    pub errors: AtomicU64,
    /// Calls that failed because their target was down on purpose.
    pub unreachable: AtomicU64,
    pub events: AtomicU64,
    /// Ticks that skipped their sync because `max_syncs` were in flight.
    pub skipped: AtomicU64,
    /// Addresses of nodes that are down on purpose (for the counts above).
    pub down: Mutex<HashSet<String>>,
    /// When each node taken down came back: a call made before then that
    /// fails (its dial began while the node was down) is not an error.
    pub came_back: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Set when the run is over: failures caused by the shutdown itself
    /// are not counted.
    pub finished: AtomicBool,
    /// Told of every call when it ends, if set.
    pub on_call: std::sync::OnceLock<CallObserver>,
    /// Calls in flight: when each was made.
    in_flight: Mutex<std::collections::HashMap<u64, std::time::Instant>>,
    next_call: AtomicU64,
}

/// What is told of every call as it ends.
pub type CallObserver = Box<dyn Fn(&CallRecord<'_>) + Send + Sync>;

/// One call of a toy node, as it ended.
pub struct CallRecord<'a> {
    /// The caller's address.
    pub from: &'a str,
    pub target: &'a str,
    /// "sync", "eager_sync", "fast_forward" or "join".
    pub rpc: &'static str,
    /// When it was made.
    pub made: std::time::Instant,
    /// How long it took.
    pub took: Duration,
    /// Events it carried, or how it failed.
    pub outcome: Result<usize, &'a TransportError>,
}

/// A call in flight, known to [`Stats`] until it is dropped (ended or
/// cancelled).
pub struct CallTimer {
    stats: Arc<Stats>,
    id: u64,
    made: std::time::Instant,
}

impl CallTimer {
    /// When the call was made.
    pub fn made(&self) -> std::time::Instant {
        self.made
    }
}

impl Drop for CallTimer {
    fn drop(&mut self) {
        self.stats.in_flight.lock().unwrap().remove(&self.id);
    }
}

impl Stats {
    fn count(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Starts timing a call.
    pub fn call_started(self: &Arc<Self>) -> CallTimer {
        let id = self.next_call.fetch_add(1, Ordering::Relaxed);
        let made = std::time::Instant::now();
        self.in_flight.lock().unwrap().insert(id, made);
        CallTimer {
            stats: self.clone(),
            id,
            made,
        }
    }

    /// Calls in flight for longer than `age`.
    pub fn in_flight_longer_than(&self, age: Duration) -> usize {
        let now = std::time::Instant::now();
        let calls = self.in_flight.lock().unwrap();
        calls.values().filter(|made| now - **made > age).count()
    }

    /// Tells the observer, if any, of a call that ended.
    fn record(&self, record: &CallRecord<'_>) {
        if let Some(observe) = self.on_call.get() {
            observe(record);
        }
    }

    /// A call to `target`, made at `made`, failed.
    fn failed(
        &self,
        target: &str,
        err: &TransportError,
        made: std::time::Instant,
        log: &slog::Logger,
    ) {
        if self.finished.load(Ordering::Relaxed) {
            return;
        }
        let was_down = self
            .came_back
            .lock()
            .unwrap()
            .get(target)
            .is_some_and(|back| *back > made);
        if was_down || self.down.lock().unwrap().contains(target) {
            self.count(&self.unreachable);
        } else {
            slog::warn!(log, "call failed"; "peer" => target, "error" => %err);
            self.count(&self.errors);
        }
    }

    /// One line of progress.
    pub fn progress(&self, secs: u64) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "t={secs}s syncs={} eager_syncs={} fast_forwards={} joins={} events_created={} errors={} unreachable={} skipped={} peak_rss_mb={}",
            get(&self.syncs),
            get(&self.eager_syncs),
            get(&self.fast_forwards),
            get(&self.joins),
            get(&self.events),
            get(&self.errors),
            get(&self.unreachable),
            get(&self.skipped),
            peak_rss_kib() / 1024,
        )
    }

    /// The final JSON line; `extra` adds fields such as `"restarts"`.
    pub fn summary(&self, transport: &str, nodes: usize, extra: &[(&str, u64)]) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut line = format!(
            r#"{{"transport":"{transport}","nodes":{nodes},"syncs":{},"eager_syncs":{},"fast_forwards":{},"joins":{},"errors":{}"#,
            get(&self.syncs),
            get(&self.eager_syncs),
            get(&self.fast_forwards),
            get(&self.joins),
            get(&self.errors),
        );
        for (key, value) in extra {
            line.push_str(&format!(r#","{key}":{value}"#));
        }
        line.push_str(&format!(
            r#","skipped":{},"peak_rss_mb":{}}}"#,
            get(&self.skipped),
            peak_rss_kib() / 1024
        ));
        line
    }
}

/// This process's peak resident memory (`VmHWM`), in KiB; 0 where the
/// system does not say.
pub fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            line.split_whitespace().nth(1)?.parse().ok()
        })
        .unwrap_or(0)
}

/// How a node gossips.
#[derive(Clone, Debug)]
pub struct Gossip {
    /// Time between two ticks (one event, and a sync unless busy).
    pub period: Duration,
    /// Syncs (each with its EagerSync) in flight at most.
    pub max_syncs: usize,
    /// Events kept at most.
    pub max_events: usize,
}

/// How toy nodes gossip, from the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct GossipArgs {
    /// Milliseconds between two gossip rounds of a node (0: 20 ms, or
    /// longer for clusters over 20 nodes, so that the cluster makes about
    /// 1000 syncs a second).
    #[arg(long, default_value_t = 0)]
    pub period_ms: u64,
    /// Peers each node gossips with.
    #[arg(long, default_value_t = 8)]
    pub fanout: usize,
    /// Syncs a node has in flight at most.
    #[arg(long, default_value_t = 2)]
    pub max_syncs: usize,
    /// Events a node keeps at most.
    #[arg(long, default_value_t = 256)]
    pub max_events: usize,
}

impl GossipArgs {
    /// How each node of a cluster of `nodes` gossips.
    pub fn gossip(&self, nodes: usize) -> Gossip {
        Gossip {
            period: match self.period_ms {
                0 => Gossip::period_for(nodes, Duration::from_millis(20), 1000),
                ms => Duration::from_millis(ms),
            },
            max_syncs: self.max_syncs.max(1),
            max_events: self.max_events,
        }
    }
}

impl Gossip {
    /// The period for `nodes` nodes: `base` for small clusters, longer for
    /// large ones so that the whole cluster makes about `per_sec` syncs a
    /// second.
    pub fn period_for(nodes: usize, base: Duration, per_sec: u64) -> Duration {
        let spread = Duration::from_secs_f64(nodes as f64 / per_sec.max(1) as f64);
        base.max(spread)
    }
}

/// The peers node `index` of `count` gossips with: the ones 1, 2, 4, 8...
/// places after it, `fanout` of them (all the others when `fanout` is at
/// least `count - 1`). Every node reaches every other within a few hops,
/// and each knows only a few peers, as in a large real cluster.
pub fn peers_of(index: usize, count: usize, fanout: usize) -> Vec<usize> {
    if fanout + 1 >= count {
        return (0..count).filter(|i| *i != index).collect();
    }
    let mut peers = Vec::new();
    let mut step = 1;
    while peers.len() < fanout {
        let peer = (index + step) % count;
        if peer != index && !peers.contains(&peer) {
            peers.push(peer);
        }
        step = if step * 2 < count { step * 2 } else { step + 1 };
    }
    peers
}

/// Threads to spread a cluster's nodes over, one per core, so that the
/// nodes' own work (answering, creating events) runs in parallel.
pub struct NodeThreads {
    arbiters: Vec<actix_rt::Arbiter>,
}

impl NodeThreads {
    /// One arbiter per core.
    pub fn per_core() -> NodeThreads {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        NodeThreads {
            arbiters: (0..cores).map(|_| actix_rt::Arbiter::new()).collect(),
        }
    }

    /// Starts node `index` on its arbiter.
    pub fn start(&self, index: usize, node: ToyNode) -> Addr<ToyNode> {
        let arbiter = self.arbiters[index % self.arbiters.len()].handle();
        ToyNode::start_in_arbiter(&arbiter, move |_| node)
    }
}

impl Drop for NodeThreads {
    fn drop(&mut self) {
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

/// How a node enters the cluster.
#[derive(Clone)]
pub enum Start {
    /// A founding member gossiping with these addresses.
    Member { peers: Vec<String> },
    /// A newcomer joining through `sponsor`, then fast-forwarding from it.
    Newcomer { sponsor: String },
}

/// See the module docs.
pub struct ToyNode {
    id: u32,
    me: Peer,
    transport: Arc<dyn Transport>,
    start: Start,
    peers: Vec<String>,
    events: store::EventStore,
    /// Syncs in flight now.
    syncing: usize,
    /// No new sync starts before then: a node waits [`QUIET_PER_SYNC`]
    /// times as long as its last answered sync took, so that a cluster whose machine is saturated (a
    /// large cluster on a slow or debug build) slows its gossip down
    /// instead of queueing calls until they time out. (A failed call adds
    /// no wait: a node calls again as soon as a partition heals.)
    quiet_until: std::time::Instant,
    stats: Arc<Stats>,
    gossip: Gossip,
    log: slog::Logger,
}

impl ToyNode {
    pub fn new(
        id: u32,
        transport: Arc<dyn Transport>,
        start: Start,
        stats: Arc<Stats>,
        gossip: Gossip,
        log: slog::Logger,
    ) -> Self {
        let me = Peer::new(
            transport.advertise_addr(),
            format!("0X{:04X}", id),
            format!("node{id}"),
        );
        ToyNode {
            id,
            me,
            transport,
            start,
            peers: Vec::new(),
            events: store::EventStore::new(gossip.max_events),
            syncing: 0,
            quiet_until: std::time::Instant::now(),
            stats,
            gossip,
            log,
        }
    }

    fn insert(&mut self, events: Option<Vec<WireEvent>>) {
        for event in events.into_iter().flatten() {
            self.events.insert(event);
        }
    }

    /// The events a node that knows `known` is missing, oldest first.
    fn missing_for(&self, known: &BTreeMap<u32, i64>, limit: usize) -> Option<Vec<WireEvent>> {
        self.events.missing_for(known, limit)
    }

    fn create_event(&mut self) {
        let index = self.events.last(self.id) + 1;
        let event = WireEvent {
            body: WireBody {
                transactions: Some(vec![Some(
                    format!("tx {} of node {}", index, self.id).into_bytes(),
                )]),
                creator_id: self.id,
                index,
                self_parent_index: index - 1,
                timestamp: 1_700_000_000 + index,
                ..Default::default()
            },
            signature: format!("{:064x}", u64::from(self.id) << 32 | index as u64),
        };
        self.stats.count(&self.stats.events);
        self.insert(Some(vec![event]));
    }

    fn answer(&mut self, command: &Command) -> Result<babble_net::Response, String> {
        Ok(match command {
            Command::Sync(request) => {
                let known = request.known.clone().unwrap_or_default();
                SyncResponse {
                    from_id: self.id,
                    events: self.missing_for(&known, request.sync_limit.max(0) as usize),
                    known: Some(self.events.known().clone()),
                }
                .into()
            }
            Command::EagerSync(request) => {
                self.insert(request.events.clone());
                EagerSyncResponse {
                    from_id: self.id,
                    success: true,
                }
                .into()
            }
            Command::FastForward(_) => FastForwardResponse {
                from_id: self.id,
                frame: Frame {
                    round: self.events.len() as i64,
                    peers: Some(self.peers_with_me()),
                    ..Default::default()
                },
                snapshot: Some(go_json::to_vec(&self.events.all()).map_err(|e| e.to_string())?),
                ..Default::default()
            }
            .into(),
            Command::Join(request) => {
                let newcomer = request.internal_transaction.body.peer.clone();
                if !self.peers.contains(&newcomer.net_addr) {
                    self.peers.push(newcomer.net_addr.clone());
                }
                JoinResponse {
                    from_id: self.id,
                    accepted: true,
                    accepted_round: self.events.len() as i64,
                    peers: Some(self.peers_with_me()),
                }
                .into()
            }
        })
    }

    fn peers_with_me(&self) -> Vec<Option<Peer>> {
        let mut peers: Vec<Option<Peer>> = self
            .peers
            .iter()
            .map(|addr| Some(Peer::new(addr.clone(), "", "")))
            .collect();
        peers.push(Some(self.me.clone()));
        peers
    }

    fn gossip(&mut self, ctx: &mut Context<Self>) {
        if self.stats.finished.load(Ordering::Relaxed) {
            return;
        }
        self.create_event();
        let Some(target) = self.peers.choose(&mut rand::rng()).cloned() else {
            return;
        };
        if self.syncing >= self.gossip.max_syncs || std::time::Instant::now() < self.quiet_until {
            self.stats.count(&self.stats.skipped);
            return;
        }
        self.syncing += 1;
        let transport = self.transport.clone();
        let request = SyncRequest {
            from_id: self.id,
            known: Some(self.events.known().clone()),
            sync_limit: 100,
        };
        let stats = self.stats.clone();
        let sync = async move {
            let timer = stats.call_started();
            let result = transport.sync(&target, request).await;
            (target, result, timer.made(), timer.made().elapsed())
        };
        ctx.spawn(
            sync.into_actor(self)
                .map(move |(target, result, made, took), node, ctx| {
                    let events = |r: &SyncResponse| r.events.as_ref().map_or(0, Vec::len);
                    node.record(&target, "sync", made, took, result.as_ref().map(events));
                    if result.is_ok() {
                        node.quiet_until = node
                            .quiet_until
                            .max(std::time::Instant::now() + took * QUIET_PER_SYNC);
                    }
                    match result {
                        Ok(response) => {
                            node.stats.count(&node.stats.syncs);
                            node.insert(response.events);
                            node.push(target, response.known.unwrap_or_default(), ctx);
                        }
                        Err(err) => {
                            node.syncing -= 1;
                            node.stats.failed(&target, &err, made, &node.log)
                        }
                    }
                }),
        );
    }

    /// Tells the cluster's observer of a call of ours that ended.
    fn record(
        &self,
        target: &str,
        rpc: &'static str,
        made: std::time::Instant,
        took: Duration,
        outcome: Result<usize, &TransportError>,
    ) {
        self.stats.record(&CallRecord {
            from: &self.me.net_addr,
            target,
            rpc,
            made,
            took,
            outcome,
        });
    }

    /// EagerSync: hands `target` what it told us it is missing; the sync
    /// that started it ends with it.
    fn push(&mut self, target: String, known: BTreeMap<u32, i64>, ctx: &mut Context<Self>) {
        let Some(events) = self.missing_for(&known, 100) else {
            self.syncing -= 1;
            return;
        };
        let transport = self.transport.clone();
        let pushed = events.len();
        let request = EagerSyncRequest {
            from_id: self.id,
            events: Some(events),
        };
        let stats = self.stats.clone();
        let push = async move {
            let timer = stats.call_started();
            let result = transport.eager_sync(&target, request).await;
            (target, result, timer.made(), timer.made().elapsed())
        };
        ctx.spawn(
            push.into_actor(self)
                .map(move |(target, result, made, took), node, _| {
                    node.syncing -= 1;
                    node.record(
                        &target,
                        "eager_sync",
                        made,
                        took,
                        result.as_ref().map(|_| pushed),
                    );
                    match result {
                        Ok(_) => node.stats.count(&node.stats.eager_syncs),
                        Err(err) => node.stats.failed(&target, &err, made, &node.log),
                    }
                }),
        );
    }

    fn start_gossip(&mut self, ctx: &mut Context<Self>) {
        ctx.run_interval(self.gossip.period, |node, ctx| node.gossip(ctx));
    }

    /// Join through `sponsor`, fast-forward from it, then gossip.
    fn join_then_fast_forward(&mut self, sponsor: String, ctx: &mut Context<Self>) {
        let transport = self.transport.clone();
        let join = JoinRequest {
            internal_transaction: InternalTransaction::new(
                TransactionType::PEER_ADD,
                self.me.clone(),
            ),
        };
        let id = self.id;
        let steps = async move {
            // A sponsor started at the same moment may not listen yet (or,
            // on another thread, not consume its RPCs yet): a node retries
            // for a while, as Go Babble's does.
            let started = std::time::Instant::now();
            let joined = loop {
                match transport.join(&sponsor, join.clone()).await {
                    Err(err)
                        if (err.is_connect() || err.is_unanswered())
                            && started.elapsed() < JOIN_RETRY =>
                    {
                        tokio::time::sleep(Duration::from_millis(200)).await
                    }
                    joined => break joined,
                }
            };
            let state = match &joined {
                Ok(_) => Some(
                    transport
                        .fast_forward(&sponsor, FastForwardRequest { from_id: id })
                        .await,
                ),
                Err(_) => None,
            };
            (sponsor, joined, state)
        };
        let made = std::time::Instant::now();
        ctx.spawn(
            steps
                .into_actor(self)
                .map(move |(sponsor, joined, state), node, ctx| {
                    match joined {
                        Ok(response) if response.accepted => {
                            node.stats.count(&node.stats.joins);
                            node.peers = response
                                .peers
                                .into_iter()
                                .flatten()
                                .flatten()
                                .map(|p| p.net_addr)
                                .filter(|addr| *addr != node.me.net_addr)
                                .collect();
                        }
                        Ok(_) => slog::warn!(node.log, "join refused"),
                        Err(err) => node.stats.failed(&sponsor, &err, made, &node.log),
                    }
                    match state {
                        Some(Ok(response)) => {
                            node.stats.count(&node.stats.fast_forwards);
                            let events: Vec<WireEvent> = response
                                .snapshot
                                .and_then(|bytes| serde_json::from_slice(&bytes).ok())
                                .unwrap_or_default();
                            node.insert(Some(events));
                        }
                        Some(Err(err)) => node.stats.failed(&sponsor, &err, made, &node.log),
                        None => {}
                    }
                    node.start_gossip(ctx);
                }),
        );
    }
}

impl Actor for ToyNode {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.transport.consume_with(ctx.address().recipient());
    }
}

/// Starts gossiping (or joining). Sent once every node of the process has
/// started, so that no node calls a peer whose actor is still waiting for
/// its thread to start it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Begin;

impl Handler<Begin> for ToyNode {
    type Result = ();

    fn handle(&mut self, _: Begin, ctx: &mut Context<Self>) {
        match self.start.clone() {
            Start::Member { peers } => {
                self.peers = peers;
                self.start_gossip(ctx);
            }
            Start::Newcomer { sponsor } => self.join_then_fast_forward(sponsor, ctx),
        }
    }
}

/// Sends [`Begin`] to every node, once each has started.
pub async fn begin_all<'a>(nodes: impl IntoIterator<Item = &'a Addr<ToyNode>>) {
    futures::future::join_all(nodes.into_iter().map(|node| node.send(Begin))).await;
}

impl Handler<Rpc> for ToyNode {
    type Result = ();

    fn handle(&mut self, rpc: Rpc, _: &mut Context<Self>) {
        let answer = self.answer(&rpc.command);
        rpc.respond(answer);
    }
}

/// Stops a node: its timers and calls in flight end with it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopNode;

impl Handler<StopNode> for ToyNode {
    type Result = ();

    fn handle(&mut self, _: StopNode, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}

/// Stops every node at once (one by one, a busy cluster would go on
/// gossiping while it waits for each) and the transports after them.
pub async fn stop_all<'a>(
    stats: &Stats,
    nodes: impl IntoIterator<Item = &'a Addr<ToyNode>>,
    transports: impl IntoIterator<Item = &'a dyn Transport>,
) {
    stats.finished.store(true, Ordering::Relaxed);
    futures::future::join_all(nodes.into_iter().map(|node| node.send(StopNode))).await;
    futures::future::join_all(transports.into_iter().map(|t| t.close())).await;
}

/// Serves Prometheus metrics at `addr` when given (`--metrics-addr`);
/// exits with a message if it cannot.
pub fn serve_metrics(addr: Option<std::net::SocketAddr>) {
    if let Some(addr) = addr {
        if let Err(err) = babble_net::metrics::serve_prometheus(addr) {
            eprintln!("{err}");
            std::process::exit(2);
        }
        println!("metrics on http://{addr}/metrics");
    }
}

/// Runs `tick` once a second for `secs` seconds, printing progress.
pub async fn report_every_second(stats: &Stats, secs: u64, mut tick: impl FnMut(u64)) {
    let mut interval = tokio::time::interval(Duration::from_secs(1));
    interval.tick().await;
    for second in 1..=secs {
        interval.tick().await;
        println!("{}", stats.progress(second));
        tick(second);
    }
}
