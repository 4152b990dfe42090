//! babble-signal: the WebRTC signaling server (a WAMP router).
//!
//! ```text
//! babble-signal --listen 127.0.0.1:2443 --realm main --cert-file cert.pem --key-file key.pem
//! babble-signal --config config/signal.toml
//! babble-signal --listen 127.0.0.1:2443 --insecure      # plain ws://, local demos only
//! babble-signal --config config/signal.toml --require-auth  # nodes prove their keys
//! ```
//! Command-line flags override the file. Stops cleanly on SIGINT/SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use babble_net::logging;
use babble_net::signal::router::{Router, RouterConfig};
use clap::Parser;
use slog::info;

#[derive(Parser)]
#[command(
    name = "babble-signal",
    version,
    about = "WebRTC signaling server for babble-net (WAMP v2 over WebSocket)"
)]
struct Args {
    /// TOML file with the settings (see config/signal.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long)]
    listen: Option<String>,
    /// A realm sessions may join (repeat for several).
    #[arg(long)]
    realm: Vec<String>,
    /// PEM certificate chain for TLS.
    #[arg(long)]
    cert_file: Option<PathBuf>,
    /// PEM private key for TLS.
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Serve plain ws:// without TLS (tests and local demos only).
    #[arg(long)]
    insecure: bool,
    /// Admit only sessions that prove a node key (babble-secp256k1), each
    /// registering only its own ID.
    #[arg(long)]
    require_auth: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Serve Prometheus metrics at http://ADDR/metrics (docs/METRICS.md).
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let Some(level) = logging::parse_level(&args.log_level) else {
        eprintln!("babble-signal: unknown --log-level {}", args.log_level);
        return ExitCode::from(2);
    };
    let mut config = match &args.config {
        Some(path) => match RouterConfig::load(path) {
            Ok(config) => config,
            Err(err) => {
                eprintln!("babble-signal: {err}");
                return ExitCode::from(2);
            }
        },
        None => RouterConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if !args.realm.is_empty() {
        config.realms = args.realm;
    }
    if args.cert_file.is_some() {
        config.cert_file = args.cert_file;
    }
    if args.key_file.is_some() {
        config.key_file = args.key_file;
    }
    config.insecure |= args.insecure;
    config.require_auth |= args.require_auth;

    let log = logging::terminal(level);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    runtime.block_on(async move {
        if let Some(addr) = args.metrics_addr {
            if let Err(err) = babble_net::metrics::serve_prometheus(addr) {
                eprintln!("babble-signal: {err}");
                return ExitCode::from(2);
            }
        }
        let router = match Router::start(config.clone(), log.clone()).await {
            Ok(router) => router,
            Err(err) => {
                eprintln!("babble-signal: {err}");
                return ExitCode::from(1);
            }
        };
        let scheme = if config.cert_file.is_some() {
            "wss"
        } else {
            "ws"
        };
        println!(
            "babble-signal listening on {scheme}://{}/",
            router.local_addr()
        );
        wait_for_signal().await;
        info!(log, "shutting down");
        router.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).expect("a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
