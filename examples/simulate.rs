//! Toy gossip nodes on a simulated network (`babble_net::sim`): every
//! link with the given latency, jitter and loss, and optionally half the
//! nodes cut from the other half for a while.
//!
//! ```text
//! cargo run --release --example simulate -- --nodes 1000 --secs 30 \
//!     --latency-ms 50 --jitter-ms 10 --loss 0.01 --partition-at 10 --heal-at 20 --seed 7
//! ```
//! Prints progress once a second, then one JSON line:
//! `{"nodes":..,"syncs":..,"errors_before_partition":..,"errors_during_partition":..,
//! "errors_after_heal":..,"hung_calls":..,"max_call_ms":..,"recovered_after_ms":..}`.
//!
//! * errors are failed Syncs and EagerSyncs: "during" the partition when
//!   the call was in flight at some point between the partition and the
//!   heal, "after" when made after the heal, "before" otherwise (all of
//!   them without a partition). With loss, every phase has some.
//! * a call is hung if it had not ended one second after its timeout (the
//!   transport promises it ends by then); calls still in flight at the end
//!   count too.
//! * recovered: milliseconds from the heal until both halves have
//!   exchanged events again (a call from each half to the other that
//!   carried events succeeded); `null` without a partition or if that never
//!   happened before the end.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babble_net::sim::{Link, SimNetwork};
use babble_net::{logging, Config, Transport};
use clap::Parser;
use common::{CallRecord, GossipArgs, NodeThreads, Start, Stats, ToyNode};

/// How late after its timeout a call counts as hung: timers and busy
/// threads may deliver a timeout a little late, never a second late.
const HUNG_AFTER_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(about = "Runs toy gossip nodes on a simulated network")]
struct Args {
    /// Number of nodes (at least 2).
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// One-way delay of every message, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Each delay varies by up to this much either way, in milliseconds.
    #[arg(long, default_value_t = 0)]
    jitter_ms: u64,
    /// Chance that a message is lost, as a fraction (0.01 is 1%).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Bytes per second each link carries (unlimited when not given).
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Cut the first half of the nodes from the second at this second.
    #[arg(long)]
    partition_at: Option<u64>,
    /// Heal the partition at this second.
    #[arg(long)]
    heal_at: Option<u64>,
    /// Seed of every random draw of the network.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Timeout of a call, in milliseconds (0: 1 s, or five gossip rounds
    /// when that is longer).
    #[arg(long, default_value_t = 0)]
    timeout_ms: u64,
    #[command(flatten)]
    gossip: GossipArgs,
    /// Log level of the transports (error, warn, info, debug, trace).
    #[arg(long, default_value = "error")]
    log_level: String,
}

fn fail(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2)
}

impl Args {
    /// The partition's start and end, in seconds from the start.
    fn partition(&self) -> Option<(u64, u64)> {
        match (self.partition_at, self.heal_at) {
            (None, None) => None,
            (Some(at), Some(heal)) if at < heal && heal <= self.secs => Some((at, heal)),
            (Some(_), Some(_)) => fail("--partition-at must come before --heal-at, within --secs"),
            (Some(at), None) if at < self.secs => Some((at, u64::MAX)),
            (Some(_), None) => fail("--partition-at must be within --secs"),
            (None, Some(_)) => fail("--heal-at needs --partition-at"),
        }
    }

    fn link(&self) -> Link {
        if !(0.0..=1.0).contains(&self.loss) {
            fail("--loss is a fraction from 0 to 1 (0.01 is 1%)");
        }
        let link = Link::default()
            .latency(Duration::from_millis(self.latency_ms))
            .jitter(Duration::from_millis(self.jitter_ms))
            .loss(self.loss);
        match self.bandwidth {
            Some(rate) => link.bandwidth(rate),
            None => link,
        }
    }
}

/// What the run observed of the calls, phase by phase.
#[derive(Default)]
struct Outcomes {
    errors_before: u64,
    errors_during: u64,
    errors_after: u64,
    hung: u64,
    max_call: Duration,
    /// When each half first got events from the other after the heal:
    /// [first half calling the second, second calling the first].
    exchanged_after_heal: [Option<Instant>; 2],
}

/// The partition's instants, once known.
#[derive(Clone, Copy)]
struct Phases {
    cut: Option<Instant>,
    healed: Option<Instant>,
}

impl Outcomes {
    fn observe(&mut self, call: &CallRecord<'_>, phases: Phases, half: usize, timeout: Duration) {
        self.max_call = self.max_call.max(call.took);
        if call.took > timeout + HUNG_AFTER_TIMEOUT {
            self.hung += 1;
        }
        let ended = call.made + call.took;
        match call.outcome {
            Err(_) => match (phases.cut, phases.healed) {
                (Some(_), Some(healed)) if call.made >= healed => self.errors_after += 1,
                (Some(cut), _) if ended > cut => self.errors_during += 1,
                _ => self.errors_before += 1,
            },
            Ok(events) => {
                let (Some(healed), Some(from), Some(to)) =
                    (phases.healed, index_of(call.from), index_of(call.target))
                else {
                    return;
                };
                let from_first = from < half;
                if events > 0 && ended >= healed && from_first != (to < half) {
                    let side = &mut self.exchanged_after_heal[usize::from(!from_first)];
                    *side = Some(side.map_or(ended, |seen| seen.min(ended)));
                }
            }
        }
    }

    /// Milliseconds from the heal until both halves exchanged events.
    fn recovered_after(&self, healed: Option<Instant>) -> Option<u128> {
        let healed = healed?;
        let [Some(a), Some(b)] = self.exchanged_after_heal else {
            return None;
        };
        Some((a.max(b) - healed).as_millis())
    }
}

/// The index of the node at `addr` ("node12" → 12).
fn index_of(addr: &str) -> Option<usize> {
    addr.strip_prefix("node")?.parse().ok()
}

#[actix_rt::main]
async fn main() {
    let args = Args::parse();
    if args.nodes < 2 {
        fail("--nodes must be at least 2");
    }
    let Some(level) = logging::parse_level(&args.log_level) else {
        fail(&format!("unknown --log-level {}", args.log_level));
    };
    let partition = args.partition();
    let link = args.link();
    let gossip = args.gossip.gossip(args.nodes);
    let timeout = match args.timeout_ms {
        0 => Config::default().timeout.max(gossip.period * 5),
        ms => Duration::from_millis(ms),
    };
    let config = Config {
        timeout,
        ..Config::default()
    };
    let log = logging::terminal(level);
    let net = SimNetwork::new(args.seed)
        .with_link(link)
        .with_config(config)
        .with_log(log.clone());
    let transports = net.nodes(args.nodes);
    println!(
        "{} nodes, {} peers each, a gossip round every {:?}, timeout {:?}, links {:?}, seed {}",
        args.nodes,
        args.gossip.fanout.min(args.nodes - 1),
        gossip.period,
        timeout,
        link,
        args.seed
    );

    let half = args.nodes / 2;
    let phases = Arc::new(Mutex::new(Phases {
        cut: None,
        healed: None,
    }));
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stats = Arc::new(Stats::default());
    {
        let (phases, outcomes) = (phases.clone(), outcomes.clone());
        let observer = move |call: &CallRecord<'_>| {
            let phases = *phases.lock().unwrap();
            outcomes
                .lock()
                .unwrap()
                .observe(call, phases, half, timeout);
        };
        let _ = stats.on_call.set(Box::new(observer));
    }

    let threads = NodeThreads::per_core();
    let nodes: Vec<_> = transports
        .iter()
        .enumerate()
        .map(|(i, transport)| {
            let peers = common::peers_of(i, args.nodes, args.gossip.fanout)
                .into_iter()
                .map(|p| transports[p].local_addr())
                .collect();
            let node = ToyNode::new(
                i as u32,
                Arc::new(transport.clone()),
                Start::Member { peers },
                stats.clone(),
                gossip.clone(),
                log.clone(),
            );
            threads.start(i, node)
        })
        .collect();
    let addrs = |range: std::ops::Range<usize>| -> Vec<String> {
        range.map(|i| transports[i].local_addr()).collect()
    };
    let cut = || {
        net.partition([addrs(0..half), addrs(half..args.nodes)]);
        phases.lock().unwrap().cut = Some(Instant::now());
        println!(
            "partitioned: nodes 0-{} | {}-{}",
            half - 1,
            half,
            args.nodes - 1
        );
    };
    // A partition from second 0 is in place before anyone gossips.
    if matches!(partition, Some((0, _))) {
        cut();
    }
    common::begin_all(&nodes).await;
    common::report_every_second(&stats, args.secs, |second| match partition {
        Some((at, _)) if second == at => cut(),
        Some((_, heal)) if second == heal => {
            net.heal();
            phases.lock().unwrap().healed = Some(Instant::now());
            println!("healed");
        }
        _ => {}
    })
    .await;

    // Calls that never ended are hung too; count them before stopping
    // cancels them.
    let stuck = stats.in_flight_longer_than(timeout + HUNG_AFTER_TIMEOUT);
    common::stop_all(
        &stats,
        &nodes,
        transports.iter().map(|t| t as &dyn Transport),
    )
    .await;
    let outcomes = outcomes.lock().unwrap();
    let recovered = outcomes
        .recovered_after(phases.lock().unwrap().healed)
        .map_or("null".to_owned(), |ms| ms.to_string());
    let carried = net.stats();
    println!(
        "network: {} messages delivered, {} lost, {} cut by the partition",
        carried.delivered, carried.lost, carried.cut
    );
    println!(
        r#"{{"nodes":{},"syncs":{},"errors_before_partition":{},"errors_during_partition":{},"errors_after_heal":{},"hung_calls":{},"max_call_ms":{},"recovered_after_ms":{}}}"#,
        args.nodes,
        stats.syncs.load(std::sync::atomic::Ordering::Relaxed),
        outcomes.errors_before,
        outcomes.errors_during,
        outcomes.errors_after,
        outcomes.hung + stuck as u64,
        outcomes.max_call.as_millis(),
        recovered,
    );
}
