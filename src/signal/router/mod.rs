//! The signaling router: a WAMP v2 router (basic profile, dealer role, JSON
//! over WebSocket, TLS) for WebRTC peers to exchange offers and answers.
//!
//! It serves `wss://` from a certificate and key file, or plain `ws://`
//! only when explicitly configured so (tests and local demos). Sessions are
//! anonymous and join one of the configured realms; realms are isolated.
//! Every session is bounded: message size, number of sessions, time to
//! complete the handshake, idle time (the router pings; a peer that
//! answers nothing is dropped). A malformed message aborts that session
//! with `wamp.error.protocol_violation`; nothing else is affected.

mod dealer;
mod session;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net_core::places::Places;
use babble_net_core::signaling::tls;
use babble_net_core::source::address_of;
use serde::{Deserialize, Serialize};
use slog::{info, warn, Logger};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use dealer::{Dealer, DealerLimits};

/// Settings of the signaling router, readable from TOML (see
/// `config/signal.toml`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct RouterConfig {
    /// Address to listen on.
    pub listen: String,
    /// Realms sessions may join.
    pub realms: Vec<String>,
    /// PEM certificate chain for TLS.
    pub cert_file: Option<PathBuf>,
    /// PEM private key for TLS.
    pub key_file: Option<PathBuf>,
    /// Serve plain `ws://` without TLS. Only for tests and local demos.
    pub insecure: bool,
    /// Admit only sessions that prove a node key (`babble-secp256k1`
    /// challenge), and let each register only its own ID. Go Babble nodes
    /// cannot authenticate: leave it off for networks with Go nodes.
    pub require_auth: bool,
    /// Most sessions at once. A connection beyond it is still let in: the
    /// address holding the most sessions (IPv4; IPv6 by /64) loses the one
    /// least recently used by a completed message.
    pub max_sessions: usize,
    /// Most sessions from one address (IPv4; IPv6 by /64); beyond it that
    /// address's own least recently used session is closed for the
    /// newcomer.
    pub max_sessions_per_address: usize,
    /// Most connections in their handshake (TLS, WebSocket, HELLO, the
    /// challenge) at once, a sixteenth of it from one address. They are
    /// places of their own: a newcomer beyond it closes the oldest
    /// handshake of the address with the most in progress, and a
    /// connection that never finishes its handshake never takes a joined
    /// session's place.
    pub max_handshakes: usize,
    /// A joined session that has registered nothing within this is closed
    /// (a node registers its ID as soon as it joins).
    #[serde(with = "humantime_serde")]
    pub register_timeout: Duration,
    /// Largest WebSocket message accepted, in bytes.
    pub max_message_size: usize,
    /// Time to finish the TLS, WebSocket and HELLO handshakes.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A session from which nothing (not even a pong) arrives for this
    /// long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A call the callee does not answer within this (or within the
    /// caller's own `timeout` option, if shorter) fails with
    /// `wamp.error.timeout`.
    #[serde(with = "humantime_serde")]
    pub call_timeout: Duration,
    /// A session whose socket takes no bytes for this long while the
    /// router writes to it is closed.
    #[serde(with = "humantime_serde")]
    pub write_timeout: Duration,
    /// Bytes of messages waiting to be written to one session. Beyond
    /// it, calls to that session fail with `io.babble.callee_busy`, and a
    /// session that does not read the answers to its own requests is
    /// closed.
    pub max_queued_bytes: usize,
    /// Procedures one session may register (a node registers one: its ID).
    pub max_registrations: usize,
    /// Calls one session may have in flight; more fail at once with
    /// `io.babble.too_many_calls`.
    pub max_calls: usize,
    /// Calls waiting for one callee's answer; more fail at once with
    /// `io.babble.callee_busy`, and the callee stays registered.
    pub max_invocations: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            listen: "127.0.0.1:2443".into(),
            realms: vec!["main".into()],
            cert_file: None,
            key_file: None,
            insecure: false,
            require_auth: false,
            max_sessions: 1024,
            max_sessions_per_address: 64,
            max_handshakes: 256,
            register_timeout: Duration::from_secs(30),
            max_message_size: 64 * 1024,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            call_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_queued_bytes: 1024 * 1024,
            max_registrations: 4,
            max_calls: 64,
            max_invocations: 64,
        }
    }
}

/// Why the router cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// A setting is missing or wrong.
    #[error("invalid signaling server configuration: {0}")]
    Config(String),
    /// The address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// What the system said.
        source: std::io::Error,
    },
}

impl RouterConfig {
    /// Reads a configuration from a TOML file.
    pub fn load(path: impl AsRef<std::path::Path>) -> Result<RouterConfig, RouterError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| RouterError::Config(format!("cannot read {}: {e}", path.display())))?;
        let config: RouterConfig = toml::from_str(&text)
            .map_err(|e| RouterError::Config(format!("{}: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks values that cannot work.
    pub fn validate(&self) -> Result<(), RouterError> {
        let fail = |what: &str| Err(RouterError::Config(what.to_owned()));
        if self.realms.is_empty() {
            return fail("at least one realm is needed");
        }
        for (name, value) in [
            ("handshake-timeout", self.handshake_timeout),
            ("idle-timeout", self.idle_timeout),
            ("call-timeout", self.call_timeout),
            ("write-timeout", self.write_timeout),
            ("register-timeout", self.register_timeout),
        ] {
            if value.is_zero() || value > MAX_TIMEOUT {
                return fail(&format!("{name} must be between 1ms and {MAX_TIMEOUT:?}"));
            }
        }
        for (name, value) in [
            ("max-sessions", self.max_sessions),
            ("max-sessions-per-address", self.max_sessions_per_address),
            ("max-registrations", self.max_registrations),
            ("max-calls", self.max_calls),
            ("max-invocations", self.max_invocations),
        ] {
            if value == 0 {
                return fail(&format!("{name} must be at least 1"));
            }
        }
        if self.max_message_size < 1024 {
            return fail("max-message-size must be at least 1024 bytes");
        }
        if self.max_queued_bytes < self.max_message_size {
            return fail("max-queued-bytes must be at least max-message-size");
        }
        Ok(())
    }
}

/// Longest timeout accepted: a day (longer ones are typing mistakes, and
/// overflow deadline arithmetic).
const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Shared by the accept loop and every session.
struct Shared {
    config: RouterConfig,
    dealer: Mutex<Dealer>,
    sessions: session::Sessions,
    shutdown: CancellationToken,
    log: Logger,
}

/// A running signaling router. Dropping it does not stop it; call
/// [`Router::shutdown`].
pub struct Router {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    stopped: tokio::sync::watch::Receiver<bool>,
}

/// The router's counters and gauge, shown at zero from its start, so
/// that rates over them have a value before the first event.
fn shown_at_zero() {
    metrics::gauge!("babble_net_signal_sessions").increment(0.0);
    metrics::counter!("babble_net_signal_sessions_evicted_total").increment(0);
    metrics::counter!("babble_net_signal_handshakes_evicted_total").increment(0);
    for result in ["routed", "refused", "expired", "displaced"] {
        metrics::counter!("babble_net_signal_calls_total", "result" => result).increment(0);
    }
}

impl Router {
    /// Binds `config.listen` and starts serving in the background (on the
    /// current tokio runtime).
    pub async fn start(config: RouterConfig, log: Logger) -> Result<Router, RouterError> {
        let tls = match (&config.cert_file, &config.key_file, config.insecure) {
            (Some(cert), Some(key), _) => Some(tokio_rustls::TlsAcceptor::from(
                tls::server_config(cert, key).map_err(|e| RouterError::Config(e.to_string()))?,
            )),
            (None, None, true) => None,
            (None, None, false) => return Err(RouterError::Config(
                "TLS needs a certificate and a key file (or run with --insecure for plain ws://)"
                    .into(),
            )),
            _ => {
                return Err(RouterError::Config(
                    "give both a certificate and a key file".into(),
                ))
            }
        };
        config.validate()?;
        shown_at_zero();
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| RouterError::Bind {
                    addr: config.listen.clone(),
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| RouterError::Bind {
            addr: config.listen.clone(),
            source,
        })?;
        let mut dealer = Dealer::new(DealerLimits {
            max_registrations: config.max_registrations,
            max_calls: config.max_calls,
            max_invocations: config.max_invocations,
        });
        for realm in &config.realms {
            dealer.add_realm(realm);
        }
        let scheme = if tls.is_some() { "wss" } else { "ws" };
        info!(log, "signaling server listening"; "url" => format!("{scheme}://{local_addr}/"), "realms" => config.realms.join(","));
        let shared = Arc::new(Shared {
            dealer: Mutex::new(dealer),
            sessions: session::Sessions::new(config.max_queued_bytes),
            shutdown: CancellationToken::new(),
            config,
            log,
        });
        let (stopped_tx, stopped) = tokio::sync::watch::channel(false);
        tokio::spawn(accept_loop(shared.clone(), listener, tls, stopped_tx));
        Ok(Router {
            shared,
            local_addr,
            stopped,
        })
    }

    /// The bound address (port 0 resolved).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Sessions joined right now.
    pub fn session_count(&self) -> usize {
        self.shared
            .dealer
            .lock()
            .expect("dealer lock")
            .session_count()
    }

    /// Stops accepting, says GOODBYE to every session and closes them;
    /// resolves once the listening socket is released.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        let mut stopped = self.stopped.clone();
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stopped: tokio::sync::watch::Sender<bool>,
) {
    let places = Arc::new(Mutex::new(Places::new(
        shared.config.max_sessions,
        shared.config.max_sessions_per_address,
    )));
    let handshakes = Arc::new(Mutex::new(Places::new(
        shared.config.max_handshakes.max(1),
        (shared.config.max_handshakes / 16).max(1),
    )));
    let mut pause = Duration::from_millis(5);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shared.shutdown.cancelled() => break,
        };
        let (tcp, remote) = match accepted {
            Ok(accepted) => {
                pause = Duration::from_millis(5);
                accepted
            }
            Err(err) => {
                warn!(shared.log, "accept failed, retrying"; "error" => %err);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        // Never refused: at a cap, the heaviest address makes room
        // (babble_net_core::places), among handshakes in progress first
        // and, once one is done, among joined sessions.
        let address = address_of(&remote.to_string());
        let Some(handshake) = session::Place::admit(&handshakes, &address, || {
            info!(shared.log, "closed a handshake in progress for a newcomer"; "address" => &address);
            metrics::counter!("babble_net_signal_handshakes_evicted_total").increment(1);
        }) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (shared, tls, places) = (shared.clone(), tls.clone(), places.clone());
        tokio::spawn(session::serve(shared, tcp, remote, tls, handshake, places));
    }
    drop(listener);
    let _ = stopped.send(true);
}
