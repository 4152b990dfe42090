//! rpcbench: the benchmark every transport is measured with (BENCH.md).
//!
//! ```text
//! cargo run --release --example rpcbench -- serve --listen 127.0.0.1:7000
//! cargo run --release --example rpcbench -- call --target 127.0.0.1:7000 \
//!     --rpc sync --calls 20000 --concurrency 1 --max-pool 2 --sync-limit 0
//! cargo run --release --example rpcbench -- call --transport inmem --rpc sync ...
//! cargo run --release --example rpcbench -- echo-serve --listen 127.0.0.1:7001
//! cargo run --release --example rpcbench -- echo-call --target 127.0.0.1:7001 --calls 20000
//! # The raw QUIC limit: a workload's bytes over quinn alone.
//! cargo run --release --example rpcbench -- quic-echo-serve --listen 127.0.0.1:7002 \
//!     --cert-file echo.der
//! cargo run --release --example rpcbench -- quic-echo-call --target 127.0.0.1:7002 \
//!     --cert-file echo.der --rpc fastforward --calls 200
//! cargo run --release --example rpcbench -- codec --sync-limit 1000
//! # One server as the peers calling it grow (4, 16, 64, 256) at a fixed
//! # total rate, and the memory of an idle connection on each side:
//! cargo run --release --example rpcbench -- scale --target 127.0.0.1:7000 \
//!     --server-pid PID --peers 4,16,64,256 --rate 2000 --idle 200
//! # WebRTC, through a signaling server (babble-signal):
//! cargo run --release --example rpcbench -- serve --transport webrtc \
//!     --signal ws://127.0.0.1:2443 --id server --loopback-only
//! cargo run --release --example rpcbench -- call --transport webrtc \
//!     --signal ws://127.0.0.1:2443 --id client --target server --loopback-only ...
//! # Fairness (BENCH.md): a node spending 500 us per RPC, a flood of 256
//! # connections from 127.0.0.2, and an honest caller pacing one Sync per
//! # 10 ms from 127.0.0.1:
//! cargo run --release --example rpcbench -- serve --listen 127.0.0.1:7000 --work-us 500
//! cargo run --release --example rpcbench -- flood --target 127.0.0.1:7000 \
//!     --sources 127.0.0.2 --connections 256 --secs 20
//! cargo run --release --example rpcbench -- call --target 127.0.0.1:7000 \
//!     --calls 1000 --pace-ms 10
//! # The secure channel: the server prints its key; the caller expects it.
//! cargo run --release --example rpcbench -- serve --listen 127.0.0.1:7000 \
//!     --secure --key-file server.key
//! cargo run --release --example rpcbench -- call --target 127.0.0.1:7000 \
//!     --secure --key-file client.key --target-key 0X04...
//! ```
//! `call` speaks the wire format to any server, Go Babble's included, and
//! `serve` answers any client. `call` prints one JSON line last.

#[path = "rpcbench/codec_limit.rs"]
mod codec_limit;
#[path = "rpcbench/echo.rs"]
mod echo;
#[path = "rpcbench/flood.rs"]
mod flood;
#[path = "rpcbench/quic_echo.rs"]
mod quic_echo;
#[path = "rpcbench/report.rs"]
mod report;
#[path = "rpcbench/rtc_echo.rs"]
mod rtc_echo;
#[path = "rpcbench/scale.rs"]
mod scale;
#[path = "rpcbench/ticker.rs"]
mod ticker;
#[path = "rpcbench/workload.rs"]
mod workload;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::codec::{encode_request, Reply, ServerCodec};
use babble_net::rtc::IceOptions;
use babble_net::secure::NodeKey;
use babble_net::signal::WampSignal;
use babble_net::{logging, Command, Config, InmemTransport, NetworkTransport, Response, Transport};
use bytes::BytesMut;
use clap::{Args, Parser, Subcommand, ValueEnum};
use report::Report;
use tokio_util::codec::Encoder;
use workload::Shape;

#[derive(Parser)]
#[command(about = "Measures babble-net transports with the BENCH.md workload")]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Subcommand)]
enum Role {
    /// Answer every incoming RPC as BENCH.md says.
    Serve(ServeArgs),
    /// Make RPCs to a server and report throughput and latency.
    Call(CallArgs),
    /// The raw TCP limit, server side: answer each ping-sized request.
    EchoServe(EchoServeArgs),
    /// The raw TCP limit, client side: ping-sized round trips.
    EchoCall(EchoCallArgs),
    /// The raw QUIC limit, server side: quinn alone, answering each stream
    /// with the reply length it asks for.
    QuicEchoServe(QuicEchoServeArgs),
    /// The raw QUIC limit, client side: a workload's request and reply
    /// bytes over quinn alone.
    QuicEchoCall(QuicEchoCallArgs),
    /// The raw WebRTC limit: a workload's request and reply bytes over
    /// webrtc-rs data channels alone, both sides in this process.
    RtcEcho(RtcEchoArgs),
    /// The in-memory codec limit: encode+decode rate of a Sync reply.
    Codec(CodecArgs),
    /// One server's latency and memory as the peers calling it grow.
    Scale(ScaleArgs),
    /// Hostile load for the fairness runs: many connections from given
    /// source addresses sending valid Syncs, or never reading the replies.
    Flood(FloodArgs),
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    Tcp,
    Inmem,
    Webrtc,
    /// QUIC: keyed like --secure (--key-file, and --target-key to call).
    Quic,
}

/// How a WebRTC role reaches the signaling server.
#[derive(Args)]
struct SignalArgs {
    /// Signaling server, HOST:PORT (wss), or ws://HOST:PORT for plain.
    #[arg(long)]
    signal: Option<String>,
    #[arg(long, default_value = "main")]
    realm: String,
    /// This role's ID on the signaling server.
    #[arg(long)]
    id: Option<String>,
    /// Trust the signaling server certificate(s) in this PEM file.
    #[arg(long)]
    ca_file: Option<std::path::PathBuf>,
    /// Accept any signaling server certificate (tests only).
    #[arg(long)]
    signal_skip_verify: bool,
    /// Only loopback ICE candidates (both roles on one machine).
    #[arg(long)]
    loopback_only: bool,
    /// A STUN or TURN server (stun:HOST:PORT, turn:HOST:PORT?transport=udp).
    #[arg(long)]
    ice_server: Option<String>,
    /// TURN username.
    #[arg(long)]
    ice_username: Option<String>,
    /// TURN password.
    #[arg(long)]
    ice_password: Option<String>,
    /// Only relay (TURN) candidates.
    #[arg(long)]
    relay_only: bool,
    /// Transport log level (error, warn, info, debug, trace), on stderr.
    #[arg(long, default_value = "error", value_parser = parse_log_level)]
    log_level: slog::Level,
}

fn parse_log_level(name: &str) -> Result<slog::Level, String> {
    logging::parse_level(name).ok_or_else(|| format!("unknown log level {name:?}"))
}

impl SignalArgs {
    /// A WebRTC transport registered under `--id`.
    async fn transport(&self, config: &Config) -> NetworkTransport {
        let (Some(signal_addr), Some(id)) = (&self.signal, &self.id) else {
            fail("--transport webrtc needs --signal and --id");
        };
        let config = Config {
            signal_addr: signal_addr.clone(),
            signal_realm: self.realm.clone(),
            signal_ca_file: self.ca_file.clone(),
            signal_skip_verify: self.signal_skip_verify,
            ice_addr: self.ice_server.clone(),
            ice_username: self.ice_username.clone(),
            ice_password: self.ice_password.clone(),
            ..config.clone()
        };
        let log = logging::terminal(self.log_level);
        let signal =
            WampSignal::from_config(&config, id.clone(), log.clone()).unwrap_or_else(|e| fail(e));
        let ice = IceOptions {
            loopback_only: self.loopback_only,
            relay_only: self.relay_only,
            ..babble_net::limits::ice(&config)
        };
        NetworkTransport::webrtc(Arc::new(signal), &ice, &config, log)
            .await
            .unwrap_or_else(|e| fail(e))
    }
}

/// The secure channel (docs/SECURITY.md).
#[derive(Args)]
struct SecureArgs {
    /// Encrypt and authenticate with the Noise channel keyed to --key-file.
    #[arg(long)]
    secure: bool,
    /// This role's private key (hex of the secp256k1 scalar); a new key is
    /// generated and written there when the file does not exist.
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// call: the server's PubKeyHex (on WebRTC, the target ID when it is a
    /// key).
    #[arg(long)]
    target_key: Option<String>,
}

impl SecureArgs {
    /// `config` with the secure settings: a server accepts any caller that
    /// proves its key; a caller expects `--target-key` at `target`.
    fn apply(&self, config: Config, target: Option<&str>) -> Config {
        if !self.secure {
            return config;
        }
        Config {
            secure: true,
            ..self.keyed(config, target, "--secure")
        }
    }

    /// `config` for QUIC: keyed as for `--secure`.
    fn apply_quic(&self, config: Config, target: Option<&str>) -> Config {
        Config {
            quic: true,
            ..self.keyed(config, target, "--transport quic")
        }
    }

    /// `config` with this role's key (made when the file does not exist)
    /// and the target's, accepting any caller that proves its key.
    fn keyed(&self, config: Config, target: Option<&str>, what: &str) -> Config {
        let Some(path) = &self.key_file else {
            fail(format!("{what} needs --key-file"));
        };
        if !path.exists() {
            let key = NodeKey::generate();
            key.save(path).unwrap_or_else(|e| fail(e));
            eprintln!("rpcbench: new key {} in {}", key.public(), path.display());
        }
        let mut peer_keys = std::collections::BTreeMap::new();
        if let (Some(target), Some(key)) = (target, &self.target_key) {
            peer_keys.insert(target.to_owned(), key.clone());
        }
        Config {
            key_file: Some(path.clone()),
            peer_keys,
            accept_any_key: true,
            ..config
        }
    }
}

#[derive(Args)]
struct ShapeArgs {
    /// Transactions per generated event.
    #[arg(long, default_value_t = 4)]
    tx_per_event: usize,
    /// Bytes per transaction.
    #[arg(long, default_value_t = 100)]
    tx_size: usize,
}

impl ShapeArgs {
    fn shape(&self) -> Shape {
        Shape {
            tx_per_event: self.tx_per_event,
            tx_size: self.tx_size,
        }
    }
}

/// What both ends of a run set alike.
#[derive(Args)]
struct RunArgs {
    /// The I/O timeout: a call, a request and a reply must make progress
    /// within it, and end within it plus their bytes at the minimum rate.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Threads for the transport's I/O (0: on the main thread; default:
    /// one per core).
    #[arg(long)]
    io_threads: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics (docs/METRICS.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Frames larger than this many bytes are parsed and encoded on the
    /// I/O threads (default: the configuration's, 2 MiB).
    #[arg(long)]
    large_frame: Option<usize>,
    /// Run a ticker every MS milliseconds on the node's thread and report
    /// how late it ran (tick_p99_ms, tick_max_ms).
    #[arg(long)]
    tick_ms: Option<u64>,
}

impl RunArgs {
    /// Starts the metrics endpoint, if asked, and returns `config` with
    /// the timeouts and I/O threads set.
    fn apply(&self, config: Config) -> Config {
        if let Some(addr) = self.metrics_addr {
            babble_net::metrics::serve_prometheus(addr).unwrap_or_else(|e| fail(e));
        }
        let timeout = Duration::from_millis(self.timeout_ms);
        Config {
            timeout,
            join_timeout: timeout,
            webrtc_connect_timeout: Some(timeout),
            signal_connect_timeout: Some(timeout),
            offer_timeout: Some(timeout),
            io_threads: self.io_threads.unwrap_or(config.io_threads),
            large_frame: self.large_frame.unwrap_or(config.large_frame),
            ..config
        }
    }
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (TCP).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    #[command(flatten)]
    run: RunArgs,
    #[arg(long, value_enum, default_value = "tcp")]
    transport: TransportKind,
    #[command(flatten)]
    signal: SignalArgs,
    #[command(flatten)]
    secure: SecureArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// CPU time the node spends on each RPC before answering it (a busy
    /// loop on the node's thread, one RPC at a time), in microseconds.
    #[arg(long, default_value_t = 0)]
    work_us: u64,
    /// The node's configuration (limits, budgets), from a TOML file of the
    /// `config/node.toml` kind; the flags above override it. Without it,
    /// the defaults with `max-inbound` 4096.
    #[arg(long)]
    config: Option<std::path::PathBuf>,
}

#[derive(Args)]
struct FloodArgs {
    /// The server's address.
    #[arg(long)]
    target: String,
    /// Source addresses to flood from.
    #[arg(long, value_delimiter = ',', default_value = "127.0.0.2")]
    sources: Vec<String>,
    /// Connections from each source.
    #[arg(long, default_value_t = 256)]
    connections: usize,
    /// Events each Sync asks for.
    #[arg(long, default_value_t = 0)]
    sync_limit: usize,
    /// One request per connection, reply never read.
    #[arg(long)]
    never_read: bool,
    /// Seconds to flood.
    #[arg(long, default_value_t = 20.0)]
    secs: f64,
}

#[derive(Args)]
struct CallArgs {
    /// The server's address (ignored with --transport inmem).
    #[arg(long, default_value = "")]
    target: String,
    /// sync, eager, fastforward or join.
    #[arg(long, default_value = "sync")]
    rpc: String,
    #[arg(long, default_value_t = 20000)]
    calls: u64,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 2)]
    max_pool: usize,
    /// Events per Sync reply / EagerSync request.
    #[arg(long, default_value_t = 0)]
    sync_limit: usize,
    #[command(flatten)]
    run: RunArgs,
    /// tcp: call --target; inmem: serve and call inside this process;
    /// webrtc: call the ID --target through --signal.
    #[arg(long, value_enum, default_value = "tcp")]
    transport: TransportKind,
    #[command(flatten)]
    signal: SignalArgs,
    #[command(flatten)]
    secure: SecureArgs,
    #[command(flatten)]
    shape: ShapeArgs,
    /// Start a call every MS milliseconds (per worker) instead of
    /// back to back: an honest peer's pace.
    #[arg(long)]
    pace_ms: Option<u64>,
}

#[derive(Args)]
struct EchoServeArgs {
    #[arg(long)]
    listen: String,
}

#[derive(Args)]
struct EchoCallArgs {
    #[arg(long)]
    target: String,
    #[arg(long, default_value_t = 20000)]
    calls: u64,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
}

#[derive(Args)]
struct QuicEchoServeArgs {
    #[arg(long)]
    listen: String,
    /// Where to write the server's certificate (DER) for the client.
    #[arg(long)]
    cert_file: std::path::PathBuf,
}

/// What a raw-stack role carries: a workload's request and reply bytes.
#[derive(Args)]
struct RawWorkloadArgs {
    /// Whose request and reply bytes to carry: sync, eager, fastforward.
    #[arg(long, default_value = "sync")]
    rpc: String,
    #[arg(long, default_value_t = 20000)]
    calls: u64,
    /// Callers at once (a stream, or a data channel, each).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 0)]
    sync_limit: usize,
    #[command(flatten)]
    shape: ShapeArgs,
}

impl RawWorkloadArgs {
    /// The request's frame and the length of its reply's frame.
    fn frames(&self) -> (Vec<u8>, usize) {
        let shape = self.shape.shape();
        let command = workload::request(&self.rpc, self.sync_limit, shape)
            .unwrap_or_else(|| fail(format!("unknown --rpc {}", self.rpc)));
        let reply = Reply::ok(workload::answer(&command, shape, &workload::snapshot()));
        (request_frame(&command), reply_frame(&reply).len())
    }
}

#[derive(Args)]
struct RtcEchoArgs {
    #[command(flatten)]
    workload: RawWorkloadArgs,
}

#[derive(Args)]
struct QuicEchoCallArgs {
    #[arg(long)]
    target: String,
    /// The server's certificate, as `quic-echo-serve` wrote it.
    #[arg(long)]
    cert_file: std::path::PathBuf,
    #[command(flatten)]
    workload: RawWorkloadArgs,
}

#[derive(Args)]
struct ScaleArgs {
    /// The server's address.
    #[arg(long)]
    target: String,
    /// The server's process ID, to read its memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Numbers of calling peers, one step each.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,256")]
    peers: Vec<usize>,
    /// Pings a second, all peers together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds each step measures.
    #[arg(long, default_value_t = 3.0)]
    secs: f64,
    /// Idle pooled connections to open for the memory figure (0: none;
    /// at most the server's `max-inbound-per-ip`, 256 by default, since
    /// they all come from one address).
    #[arg(long, default_value_t = 200)]
    idle: usize,
}

#[derive(Args)]
struct CodecArgs {
    #[arg(long, default_value_t = 1000)]
    sync_limit: usize,
    #[arg(long, default_value_t = 200)]
    iterations: u32,
    /// Only run our codec (for profiling it alone).
    #[arg(long)]
    ours_only: bool,
    #[command(flatten)]
    shape: ShapeArgs,
}

fn fail(message: impl std::fmt::Display) -> ! {
    eprintln!("rpcbench: {message}");
    std::process::exit(2)
}

fn main() {
    // The WebRTC stack logs through the `log` crate: RUST_LOG=webrtc=debug
    // shows its ICE and DTLS progress.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("off")).init();
    let cli = Cli::parse();
    match cli.role {
        Role::Serve(args) => actix_rt::System::new().block_on(serve(args)),
        Role::Call(args) => {
            let report = actix_rt::System::new().block_on(call(args));
            println!("{}", report.json());
        }
        Role::EchoServe(args) => {
            let (request, reply) = ping_frames();
            echo::serve(&args.listen, request.len(), reply).unwrap_or_else(|e| fail(e));
        }
        Role::EchoCall(args) => {
            let (request, reply) = ping_frames();
            let report = echo::call(
                &args.target,
                args.calls,
                args.concurrency,
                request,
                reply.len(),
            );
            println!("{}", report.json());
        }
        Role::QuicEchoServe(args) => {
            quic_echo::serve(&args.listen, &args.cert_file).unwrap_or_else(|e| fail(e));
        }
        Role::QuicEchoCall(args) => {
            let (request, reply_len) = args.workload.frames();
            let report = quic_echo::call(
                &args.target,
                &args.cert_file,
                args.workload.calls,
                args.workload.concurrency,
                request,
                reply_len,
            )
            .unwrap_or_else(|e| fail(e));
            println!("{}", report.json());
        }
        Role::RtcEcho(args) => {
            let (request, reply_len) = args.workload.frames();
            let report = rtc_echo::call(
                args.workload.calls,
                args.workload.concurrency,
                request.len(),
                reply_len,
            )
            .unwrap_or_else(|e| fail(e));
            println!("{}", report.json());
        }
        Role::Scale(args) => {
            let ping = workload::request("sync", 0, Shape::default());
            let plan = scale::Plan {
                target: args.target,
                server_pid: args.server_pid,
                peers: args.peers,
                rate: args.rate.max(1),
                secs: args.secs,
                idle: args.idle,
            };
            actix_rt::System::new().block_on(scale::run(plan, ping.expect("sync is known")));
        }
        Role::Flood(args) => {
            let plan = flood::Plan {
                target: args.target,
                sources: args.sources,
                connections: args.connections,
                sync_limit: args.sync_limit,
                never_read: args.never_read,
                secs: args.secs,
            };
            actix_rt::System::new().block_on(flood::run(plan));
        }
        Role::Codec(args) => {
            println!(
                "{}",
                codec_limit::run(
                    args.sync_limit,
                    args.shape.shape(),
                    args.iterations,
                    args.ours_only
                )
            )
        }
    }
}

/// The exact bytes of a `ping`: a Sync request with SyncLimit 0 and its
/// reply.
fn ping_frames() -> (Vec<u8>, Vec<u8>) {
    let shape = Shape::default();
    let command = workload::request("sync", 0, shape).expect("sync is known");
    let reply = Reply::ok(workload::answer(&command, shape, &[]));
    (request_frame(&command), reply_frame(&reply))
}

fn request_frame(command: &Command) -> Vec<u8> {
    let mut buf = BytesMut::new();
    encode_request(command, &mut buf).expect("encodes");
    buf.to_vec()
}

fn reply_frame(reply: &Reply) -> Vec<u8> {
    let mut buf = BytesMut::new();
    ServerCodec::default()
        .encode(reply, &mut buf)
        .expect("encodes");
    buf.to_vec()
}

/// Answers the RPCs of `transport` until it closes, one at a time, each
/// after `work` of CPU time. Sync replies of the same size share their
/// generated events.
fn answer_all(transport: &dyn Transport, shape: Shape, work: Duration) {
    let mut rpcs = transport.consumer();
    let snapshot = workload::snapshot();
    let mut cache: HashMap<i64, Response> = HashMap::new();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            if !work.is_zero() {
                let started = Instant::now();
                while started.elapsed() < work {
                    std::hint::spin_loop();
                }
            }
            let response = match &rpc.command {
                Command::Sync(request) => {
                    let cached = cache
                        .entry(request.sync_limit)
                        .or_insert_with(|| workload::answer(&rpc.command, shape, &snapshot));
                    let mut response = cached.clone();
                    if let Response::Sync(sync) = &mut response {
                        sync.known = request.known.clone();
                    }
                    response
                }
                command => workload::answer(command, shape, &snapshot),
            };
            rpc.respond(Ok(response));
        }
    });
}

async fn serve(args: ServeArgs) {
    let base = match &args.config {
        Some(path) => Config::load(path).unwrap_or_else(|e| fail(e)),
        None => Config {
            max_inbound: 4096,
            ..Config::default()
        },
    };
    let config = args.run.apply(Config {
        bind_addr: args.listen.clone(),
        ..base
    });
    let config = match args.transport {
        TransportKind::Quic => args.secure.apply_quic(config, None),
        _ => args.secure.apply(config, None),
    };
    let transport = match args.transport {
        TransportKind::Tcp => {
            NetworkTransport::tcp(&config, logging::terminal(slog::Level::Warning))
                .unwrap_or_else(|e| fail(e))
        }
        TransportKind::Quic => {
            NetworkTransport::quic(&config, logging::terminal(slog::Level::Warning))
                .unwrap_or_else(|e| fail(e))
        }
        TransportKind::Webrtc => args.signal.transport(&config).await,
        TransportKind::Inmem => {
            fail("serve --transport inmem makes no sense: use call --transport inmem")
        }
    };
    transport.listen().unwrap_or_else(|e| fail(e));
    answer_all(
        &transport,
        args.shape.shape(),
        Duration::from_micros(args.work_us),
    );
    match config.secure || config.quic {
        true => {
            let key = config.node_key().unwrap_or_else(|e| fail(e));
            println!(
                "rpcbench serve listening on {} as {}",
                transport.local_addr(),
                key.public()
            );
        }
        false => println!("rpcbench serve listening on {}", transport.local_addr()),
    }
    let ticks = args
        .run
        .tick_ms
        .map(|ms| ticker::Ticks::start(Duration::from_millis(ms)));
    if let Some(ticks) = ticks.clone() {
        // A progress line a second: how late the ticker ran so far.
        actix_rt::spawn(async move {
            let started = Instant::now();
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.tick().await;
            loop {
                every.tick().await;
                println!(
                    r#"{{"role":"serve","secs":{:.0},{}}}"#,
                    started.elapsed().as_secs_f64(),
                    ticks.json_fields()
                );
            }
        });
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .unwrap_or_else(|e| fail(e));
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    if let Some(ticks) = ticks {
        println!(r#"{{"role":"serve","exit":true,{}}}"#, ticks.json_fields());
    }
    let _ = transport.close().await;
}

/// Large answers at most waiting for their check, per caller.
const CHECKS_PENDING: usize = 4;

/// Counts a call: its latency if its answer was the expected one, else
/// an error (the first few printed).
fn tally<E: std::fmt::Display>(
    checked: Result<bool, E>,
    latency: u64,
    latencies: &mut Vec<u64>,
    errors: &mut u64,
) {
    match checked {
        Ok(true) => latencies.push(latency),
        Ok(false) => {
            *errors += 1;
            eprintln!("rpcbench: the answer differs from the expected one");
        }
        Err(err) => {
            *errors += 1;
            if *errors <= 3 {
                eprintln!("rpcbench: {err}");
            }
        }
    }
}

async fn call(args: CallArgs) -> Report {
    let shape = args.shape.shape();
    let command = workload::request(&args.rpc, args.sync_limit, shape).unwrap_or_else(|| {
        fail(format!(
            "unknown --rpc {} (sync, eager, fastforward, join)",
            args.rpc
        ))
    });
    let expected = workload::answer(&command, shape, &workload::snapshot());
    let bytes_out = request_frame(&command).len() as u64;
    let bytes_in = reply_frame(&Reply::ok(expected.clone())).len() as u64;
    let config = args.run.apply(Config {
        bind_addr: "127.0.0.1:0".into(),
        max_pool: args.max_pool,
        ..Config::default()
    });
    let config = match args.transport {
        TransportKind::Quic => args.secure.apply_quic(config, Some(&args.target)),
        _ => args.secure.apply(config, Some(&args.target)),
    };
    let (client, target): (Arc<dyn Transport>, String) = match args.transport {
        TransportKind::Quic | TransportKind::Tcp => {
            if args.target.is_empty() {
                fail("call needs --target");
            }
            let log = logging::terminal(slog::Level::Error);
            let client = match args.transport {
                TransportKind::Quic => NetworkTransport::quic(&config, log),
                _ => NetworkTransport::tcp(&config, log),
            };
            (
                Arc::new(client.unwrap_or_else(|e| fail(e))),
                args.target.clone(),
            )
        }
        TransportKind::Webrtc => {
            if args.target.is_empty() {
                fail("call needs --target (the server's ID)");
            }
            (
                Arc::new(args.signal.transport(&config).await),
                args.target.clone(),
            )
        }
        TransportKind::Inmem => {
            let server =
                InmemTransport::with_config(Some("server".into()), &config, logging::discard());
            answer_all(&server, shape, Duration::ZERO);
            let client = InmemTransport::with_config(None, &config, logging::discard());
            client.connect("server", &server);
            (Arc::new(client), "server".to_owned())
        }
    };

    let ticks = args
        .run
        .tick_ms
        .map(|ms| ticker::Ticks::start(Duration::from_millis(ms)));
    let remaining = Rc::new(RefCell::new(args.calls));
    let first_reported = Rc::new(std::cell::Cell::new(false));
    let expected = Arc::new(expected);
    let pace = args.pace_ms.map(Duration::from_millis);
    let started = Instant::now();
    let workers: Vec<_> = (0..args.concurrency.max(1))
        .map(|_| {
            let (client, target, command, expected, remaining) = (
                client.clone(),
                target.clone(),
                command.clone(),
                expected.clone(),
                remaining.clone(),
            );
            let first_reported = first_reported.clone();
            actix_rt::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0u64;
                let mut checks = std::collections::VecDeque::new();
                let mut paced = pace.map(|every| {
                    let mut ticks = tokio::time::interval(every);
                    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    ticks
                });
                loop {
                    if let Some(ticks) = &mut paced {
                        ticks.tick().await;
                    }
                    {
                        let mut left = remaining.borrow_mut();
                        if *left == 0 {
                            break;
                        }
                        *left -= 1;
                    }
                    let t0 = Instant::now();
                    let result = client.call(&target, command.clone()).await;
                    if !first_reported.replace(true) {
                        // The first call includes connecting (dial, ICE, ...).
                        eprintln!("rpcbench: first call took {} us", t0.elapsed().as_micros());
                    }
                    let latency = t0.elapsed().as_micros() as u64;
                    // A large answer is checked (and freed) on a helper
                    // thread while the next call goes: the timed loop
                    // measures the transport, not this harness's check,
                    // and a ticker the transport's stalls. At most
                    // `CHECKS_PENDING` answers wait for their check.
                    match result {
                        Ok(response) if response.size_hint() > 1 << 20 => {
                            let expected = expected.clone();
                            let check = tokio::task::spawn_blocking(move || response == *expected);
                            checks.push_back((check, latency));
                            if checks.len() > CHECKS_PENDING {
                                let (check, latency) = checks.pop_front().expect("a check waits");
                                tally(check.await, latency, &mut latencies, &mut errors);
                            }
                        }
                        Ok(response) => {
                            let matched = Ok::<_, String>(response == *expected);
                            tally(matched, latency, &mut latencies, &mut errors);
                        }
                        Err(err) => tally(Err(err), latency, &mut latencies, &mut errors),
                    }
                }
                for (check, latency) in checks {
                    tally(check.await, latency, &mut latencies, &mut errors);
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut report = Report {
        rpc: args.rpc.clone(),
        calls: args.calls,
        errors: 0,
        elapsed: Duration::ZERO,
        latencies_us: Vec::with_capacity(args.calls as usize),
        bytes_in: 0,
        bytes_out: 0,
        extra: None,
    };
    for worker in workers {
        let (latencies, errors) = worker.await.expect("worker ran");
        report.latencies_us.extend(latencies);
        report.errors += errors;
    }
    report.elapsed = started.elapsed();
    let ok = report.calls - report.errors;
    report.bytes_in = ok * bytes_in;
    report.bytes_out = ok * bytes_out;
    report.extra = ticks.map(|ticks| ticks.json_fields());
    let _ = client.close().await;
    report
}
