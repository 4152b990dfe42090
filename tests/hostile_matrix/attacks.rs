//! The attacks of the matrix, each a function of the transport it is
//! made over: a connection from a given source address is all an attack
//! needs, whatever carries it (plain TCP, a Noise channel, a QUIC stream).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::secure::{NodeKey, PeerKey, SecureStreamLayer};
use babble_net::stream::{BoxConnection, StreamLayer};
use futures::future::BoxFuture;
use futures::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// The transports of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp,
    Noise,
    Quic,
    WebRtc,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tcp => "TCP",
            Kind::Noise => "TCP + Noise",
            Kind::Quic => "QUIC",
            Kind::WebRtc => "WebRTC",
        }
    }

    /// The `transport` label of the node's metrics.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Tcp | Kind::Noise => "tcp",
            Kind::Quic => "quic",
            Kind::WebRtc => "webrtc",
        }
    }
}

/// What the attacks hit.
#[derive(Clone)]
pub struct Target {
    pub kind: Kind,
    /// The node's address (on WebRTC, its ID).
    pub addr: String,
    pub key: Option<PeerKey>,
    /// On WebRTC: where the attackers meet the node.
    pub rtc: Option<Arc<crate::webrtc::Attackers>>,
}

impl Target {
    /// What an attacker at `source` dials through: each dial is a new TCP
    /// connection (its Noise handshake done, on TCP + Noise), or a new
    /// stream of one QUIC connection. With `small_window`, replies come in
    /// slowly: a 4 KiB receive buffer (TCP), a 64 KiB window (QUIC).
    pub fn layer(&self, source: &str, small_window: bool) -> Arc<dyn StreamLayer> {
        if let Some(rtc) = &self.rtc {
            // One peer connection per source, each dial a data channel.
            return rtc.layer(source);
        }
        let tcp = TcpFrom {
            source: source.to_owned(),
            small_window,
        };
        match self.kind {
            Kind::Tcp => Arc::new(tcp),
            Kind::Noise => Arc::new(SecureStreamLayer::new(
                Arc::new(tcp),
                NodeKey::generate(),
                [(self.addr.clone(), self.key.expect("a keyed node"))],
                false,
            )),
            Kind::WebRtc => unreachable!("WebRTC layers are made ahead"),
            Kind::Quic => {
                let mut limits = babble_net::limits::quic(&babble_net::Config::default());
                if small_window {
                    limits.reply_window = 64 * 1024;
                }
                let keys = babble_net::quic::QuicKeys {
                    key: NodeKey::generate(),
                    peers: [(self.addr.clone(), self.key.expect("a keyed node"))]
                        .into_iter()
                        .collect(),
                    accept_any_key: false,
                };
                Arc::new(
                    babble_net::quic::QuicStreamLayer::bind(
                        &format!("{source}:0"),
                        None,
                        keys,
                        limits,
                        0,
                        babble_net::logging::discard(),
                    )
                    .expect("a QUIC attacker binds"),
                )
            }
        }
    }
}

/// A TCP connection to `addr` from the loopback address `source`.
async fn tcp_from(
    source: &str,
    addr: &str,
    small_window: bool,
) -> io::Result<tokio::net::TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if small_window {
        socket.set_recv_buffer_size(4096)?;
    }
    socket.bind(format!("{source}:0").parse().map_err(io::Error::other)?)?;
    let addr: SocketAddr = addr.parse().map_err(io::Error::other)?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

/// TCP from a given source address, for a secure layer to dial over.
struct TcpFrom {
    source: String,
    small_window: bool,
}

impl StreamLayer for TcpFrom {
    fn accept(&self) -> BoxFuture<'_, io::Result<(BoxConnection, String)>> {
        futures::future::pending().boxed()
    }

    fn dial(&self, address: &str, _: Duration) -> BoxFuture<'static, io::Result<BoxConnection>> {
        let (source, address, small) = (self.source.clone(), address.to_owned(), self.small_window);
        async move {
            let stream = tcp_from(&source, &address, small).await?;
            Ok(Box::new(stream) as BoxConnection)
        }
        .boxed()
    }

    fn local_addr(&self) -> String {
        self.source.clone()
    }

    fn advertise_addr(&self) -> String {
        self.source.clone()
    }

    fn close(&self) {}
}

/// The attacks, as the matrix's rows name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attack {
    /// Connections (and handshakes) opened and never finished.
    HalfOpen,
    /// Requests trickled a byte at a time.
    Trickle,
    /// Garbage and frames over the request size cap.
    Garbage,
    /// Valid large requests, faster than the node answers.
    LargeRequests,
    /// Requests for large replies that are never read.
    UnreadReplies,
    /// Valid small requests back to back (the fair share).
    SmallFlood,
    /// Sessions, offers and channel opens from made-up IDs (where a
    /// source can claim an ID: WebRTC and the router).
    MintedIds,
}

impl Attack {
    /// The attacks on a node: every one but [`Attack::MintedIds`].
    pub const ON_NODES: [Attack; 6] = [
        Attack::HalfOpen,
        Attack::Trickle,
        Attack::Garbage,
        Attack::LargeRequests,
        Attack::UnreadReplies,
        Attack::SmallFlood,
    ];
    /// Every attack: those on WebRTC and the signaling router, where a
    /// source can claim IDs.
    pub const ALL: [Attack; 7] = [
        Attack::HalfOpen,
        Attack::Trickle,
        Attack::Garbage,
        Attack::LargeRequests,
        Attack::UnreadReplies,
        Attack::SmallFlood,
        Attack::MintedIds,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Attack::HalfOpen => "connections or handshakes never finished",
            Attack::Trickle => "requests trickled",
            Attack::Garbage => "garbage and oversized frames",
            Attack::LargeRequests => "valid large requests, faster than answered",
            Attack::UnreadReplies => "replies never read",
            Attack::SmallFlood => "valid small requests flooding",
            Attack::MintedIds => "sessions, offers and channels from minted IDs",
        }
    }
}

/// The sizes the attacks use, fitted to the node's limits.
#[derive(Clone)]
pub struct Sizes {
    /// Events a Sync of the unread-replies attack asks for.
    pub reply_events: usize,
    /// A valid EagerSync frame just under the request size cap.
    pub large_request: Arc<Vec<u8>>,
    /// The request size cap.
    pub max_request: usize,
}

/// How far an attack got.
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections (or handshakes) the attack opened.
    pub opened: AtomicU64,
    /// Requests it sent whole.
    pub sent: AtomicU64,
}

/// Runs `attack` against `target` from `sources` with `connections`
/// connections in all, until `until`. Returns at once; `Progress` fills
/// in as it goes, and the tasks end by `until`.
pub fn start(
    attack: Attack,
    target: &Target,
    sources: &[String],
    connections: usize,
    sizes: &Sizes,
    until: Instant,
) -> Arc<Progress> {
    let progress = Arc::new(Progress::default());
    if let (Some(rtc), Attack::HalfOpen | Attack::MintedIds) = (&target.rtc, attack) {
        rtc.start(attack, &target.addr, sources, connections, &progress, until);
        return progress;
    }
    if attack == Attack::HalfOpen && target.kind == Kind::Quic {
        // Handshakes that answer the Retry and go silent.
        let addr: SocketAddr = target.addr.parse().unwrap();
        let flood = crate::common::quic_flood::half_open(addr, sources.to_vec(), 150, until);
        let counts = progress.clone();
        actix_rt::spawn(async move {
            while Instant::now() < until {
                let started = flood.started.load(Ordering::Relaxed);
                counts.opened.store(started, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        return progress;
    }
    for n in 0..connections {
        let source = sources[n % sources.len()].clone();
        let (target, sizes, progress) = (target.clone(), sizes.clone(), progress.clone());
        actix_rt::spawn(async move {
            let run = one_connection(attack, &target, &source, n, &sizes, &progress, until);
            let _ = tokio::time::timeout_at(until.into(), run).await;
        });
    }
    progress
}

/// One connection of an attack, opened again whenever the node closes it,
/// until the attack ends (its caller's timeout).
async fn one_connection(
    attack: Attack,
    target: &Target,
    source: &str,
    n: usize,
    sizes: &Sizes,
    progress: &Progress,
    until: Instant,
) {
    let layer = target.layer(source, attack == Attack::UnreadReplies);
    while Instant::now() < until {
        let connection = match attack {
            // Only the TCP connection: the secure handshake (if any) never
            // starts.
            Attack::HalfOpen => tcp_from(source, &target.addr, false)
                .await
                .map(|stream| Box::new(stream) as BoxConnection),
            _ => layer.dial(&target.addr, Duration::from_secs(5)).await,
        };
        let Ok(mut stream) = connection else {
            // Refused (a handshake shed, say): again a moment later.
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        };
        progress.opened.fetch_add(1, Ordering::Relaxed);
        let _ = run(attack, &mut stream, target.kind, n, sizes, progress).await;
    }
}

/// What `attack` does on one open connection, until the node closes it.
/// A connection of a QUIC node is a stream: it carries one request, ended
/// by the end of its side.
async fn run(
    attack: Attack,
    stream: &mut BoxConnection,
    kind: Kind,
    n: usize,
    sizes: &Sizes,
    progress: &Progress,
) -> io::Result<()> {
    let one_call = kind == Kind::Quic;
    match attack {
        Attack::HalfOpen => until_closed(stream).await,
        Attack::Trickle => {
            // The start of an EagerSync, then an event's bytes one at a
            // time, each 50 ms apart: the request never ends.
            stream.write_all(b"\x02{\"FromID\":1,\"Events\":[").await?;
            stream.flush().await?;
            for byte in b"{},".iter().cycle() {
                stream.write_all(&[*byte]).await?;
                stream.flush().await?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(())
        }
        Attack::Garbage => {
            if n.is_multiple_of(2) {
                // Bytes that are no request at all.
                stream.write_all(b"\x09this is not a request\n").await?;
                stream.flush().await?;
            } else {
                // A frame over the cap: an EagerSync that never closes.
                let mut frame = b"\x02{\"FromID\":1,\"Events\":[".to_vec();
                let event = br#"{"Body":{"Transactions":["aGVsbG8gd29ybGQ="]},"Signature":"ab"},"#;
                while frame.len() < sizes.max_request + (1 << 20) {
                    frame.extend_from_slice(event);
                }
                stream.write_all(&frame).await?;
                stream.flush().await?;
                progress.sent.fetch_add(1, Ordering::Relaxed);
            }
            until_closed(stream).await
        }
        Attack::LargeRequests => calls(stream, one_call, &sizes.large_request, progress).await,
        Attack::UnreadReplies => {
            // Replies larger than the kernel's socket buffers take in
            // (4 MiB on Linux by default) and than a QUIC stream's window,
            // so that what is not read waits in the node's memory, charged
            // to its outbound budget. The WebRTC stack takes a whole reply
            // into its own buffers at once (outside the budgets, see
            // docs/SECURITY.md): there larger replies would measure only
            // those (6 MiB ones: +63 MiB against a 64 MiB bound).
            let events = match kind {
                Kind::WebRtc => sizes.reply_events,
                _ => 3 * sizes.reply_events,
            };
            let frame = format!("\x01{{\"FromID\":{n},\"Known\":null,\"SyncLimit\":{events}}}\n");
            stream.write_all(frame.as_bytes()).await?;
            if one_call {
                stream.shutdown().await?;
            }
            stream.flush().await?;
            progress.sent.fetch_add(1, Ordering::Relaxed);
            // Holds the connection, never reading, until the node closes
            // it or the attack ends.
            futures::future::pending().await
        }
        Attack::SmallFlood => {
            let frame = format!("\x01{{\"FromID\":{n},\"Known\":null,\"SyncLimit\":0}}\n");
            calls(stream, one_call, frame.as_bytes(), progress).await
        }
        // A node's source is its address: there is no ID to mint.
        Attack::MintedIds => Ok(()),
    }
}

/// Sends `request` and reads its reply, again and again (once on a
/// connection of `one_call`).
pub async fn calls(
    stream: &mut BoxConnection,
    one_call: bool,
    request: &[u8],
    progress: &Progress,
) -> io::Result<()> {
    loop {
        stream.write_all(request).await?;
        if one_call {
            stream.shutdown().await?;
        }
        progress.sent.fetch_add(1, Ordering::Relaxed);
        read_reply(stream).await?;
        if one_call {
            return Ok(());
        }
    }
}

/// Reads until the node closes the connection (or fails it).
async fn until_closed(stream: &mut BoxConnection) -> io::Result<()> {
    let mut sink = [0u8; 4096];
    while stream.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Reads one Go reply: an error line and a response line.
async fn read_reply(stream: &mut BoxConnection) -> io::Result<()> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut newlines = 0;
    while newlines < 2 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        newlines += buf[..n].iter().filter(|&&b| b == b'\n').count();
    }
    Ok(())
}
