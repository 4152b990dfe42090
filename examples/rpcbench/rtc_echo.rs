//! The raw WebRTC limit: webrtc-rs alone, two peer connections on
//! loopback in one process, each driven on a thread of its own (one
//! thread per side, as the raw QUIC limit), carrying the bytes a
//! workload's request and reply put on the wire over ordered, reliable
//! data channels, one per concurrent caller. No codec, no actors, no
//! signaling: what the WebRTC transport costs beyond this is ours.
//!
//! A request is one message of 16 bytes (the request's and the wanted
//! reply's lengths, big-endian) followed by the request's bytes in
//! messages of at most [`CHUNK`]; the answering side replies with that
//! many bytes in messages of at most [`CHUNK`]. Both sides use the
//! transport's settings: its largest message, SCTP receive window,
//! per-channel send buffer and UDP socket buffers (through the stack's
//! own runtime hook, which is all [`SocketBuffers`] changes; the
//! transport's quicker timers are left out, as ours).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use babble_net::rtc::CHUNK;
use bytes::BytesMut;
use tokio::sync::{mpsc, oneshot};
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
    RTCIceGatheringState, RTCSessionDescription, SettingEngineBuilder,
};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime,
    TokioRuntime,
};

use super::report::Report;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The kernel buffer each way of a UDP socket, as the transport asks.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// A peer connection's SCTP receive window, as the transport's.
const RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes of a channel handed to the stack and not yet acknowledged beyond
/// which a send waits, as the transport's.
const SEND_BUFFER: usize = 1024 * 1024;

/// What a side's peer connection reports: gathering done, and (on the
/// answering side) each channel the other side opens.
struct Events {
    gathered: mpsc::UnboundedSender<()>,
    channels: Option<mpsc::UnboundedSender<Arc<dyn DataChannel>>>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Events {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.send(());
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        if let Some(channels) = &self.channels {
            let _ = channels.send(channel);
        }
    }
}

/// The stack's tokio runtime, its UDP sockets given the transport's
/// buffers (without them, loopback drops packets under a large reply and
/// SCTP waits a whole retransmission timeout).
#[derive(Debug)]
struct SocketBuffers(TokioRuntime);

type Boxed<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

impl Runtime for SocketBuffers {
    fn spawn(&self, future: Boxed<'static, ()>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(&self, pool_size: usize, future: Boxed<'static, ()>) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(pool_size, future)
    }

    fn wrap_udp_socket(
        &self,
        socket: std::net::UdpSocket,
    ) -> std::io::Result<Arc<dyn AsyncUdpSocket>> {
        let raw = socket2::SockRef::from(&socket);
        raw.set_recv_buffer_size(SOCKET_BUFFER)?;
        raw.set_send_buffer_size(SOCKET_BUFFER)?;
        self.0.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(
        &self,
        listener: std::net::TcpListener,
    ) -> std::io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote: std::net::SocketAddr,
    ) -> Boxed<'a, std::io::Result<Arc<dyn AsyncTcpStream>>> {
        self.0.connect_tcp(remote)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Boxed<'a, std::io::Result<Vec<std::net::SocketAddr>>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: std::time::Duration) -> Boxed<'static, ()> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: std::time::Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Boxed<'static, ()> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio"
    }
}

/// A peer connection on loopback with the transport's SCTP settings.
async fn peer(events: Events) -> Result<Arc<dyn PeerConnection>, Error> {
    let settings = SettingEngineBuilder::new()
        .with_sctp_max_message_size(
            rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize::Bounded(
                CHUNK as u32,
            ),
        )
        .with_sctp_max_receive_buffer_size(RECEIVE_WINDOW)
        .with_include_loopback_candidate(true)
        .with_network_types(vec![rtc::ice::network_type::NetworkType::Udp4])
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .build();
    let connection = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_setting_engine(settings)
        .with_handler(Arc::new(events))
        .with_runtime(Arc::new(SocketBuffers(TokioRuntime)))
        .with_udp_addrs(vec!["127.0.0.1:0".to_owned()])
        .with_data_channel_send_buffer_limit(SEND_BUFFER)
        .build()
        .await?;
    Ok(Arc::new(connection))
}

/// Sets `description` as `connection`'s own and returns it with every
/// candidate, once gathering is done.
async fn described(
    connection: &Arc<dyn PeerConnection>,
    description: RTCSessionDescription,
    gathered: &mut mpsc::UnboundedReceiver<()>,
) -> Result<RTCSessionDescription, Error> {
    connection.set_local_description(description).await?;
    gathered.recv().await.ok_or("gathering never ended")?;
    Ok(connection
        .local_description()
        .await
        .ok_or("no local description")?)
}

/// Sends `len` bytes of `byte` on `channel` in messages of at most
/// [`CHUNK`].
async fn send_bytes(channel: &dyn DataChannel, len: usize, byte: u8) -> Result<(), Error> {
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK);
        let mut message = BytesMut::with_capacity(n);
        message.resize(n, byte);
        channel.send(message).await?;
        left -= n;
    }
    Ok(())
}

/// Reads messages until `len` bytes have arrived; false if the channel
/// ended first.
async fn receive_bytes(channel: &dyn DataChannel, len: usize) -> bool {
    let mut got = 0;
    while got < len {
        match channel.poll().await {
            Some(DataChannelEvent::OnMessage(message)) => got += message.data.len(),
            Some(DataChannelEvent::OnClose) | None => return false,
            Some(_) => {}
        }
    }
    true
}

/// The answering side of one channel: each request's header, then its
/// bytes, then the reply it asks for.
async fn answer_requests(channel: Arc<dyn DataChannel>) {
    loop {
        let header = loop {
            match channel.poll().await {
                Some(DataChannelEvent::OnMessage(message)) => break message.data,
                Some(DataChannelEvent::OnClose) | None => return,
                Some(_) => {}
            }
        };
        let Some((request, reply)) = header
            .get(..16)
            .map(|h| (h[..8].try_into().unwrap(), h[8..].try_into().unwrap()))
            .map(|(a, b)| (u64::from_be_bytes(a), u64::from_be_bytes(b)))
        else {
            return;
        };
        if !receive_bytes(&*channel, request as usize).await {
            return;
        }
        if send_bytes(&*channel, reply as usize, 0x5a).await.is_err() {
            return;
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Makes `calls` round trips, `concurrency` at a time (a channel each),
/// each carrying `request_len` bytes and bringing `reply_len` back.
pub fn call(
    calls: u64,
    concurrency: usize,
    request_len: usize,
    reply_len: usize,
) -> Result<Report, Error> {
    let concurrency = concurrency.max(1);
    let (offer_tx, offer_rx) = oneshot::channel::<RTCSessionDescription>();
    let (answer_tx, answer_rx) = oneshot::channel::<RTCSessionDescription>();
    let (done_tx, done_rx) = oneshot::channel::<()>();
    // The answering side, on a thread of its own.
    let answering = std::thread::spawn(move || -> Result<(), String> {
        let rt = runtime();
        let local = tokio::task::LocalSet::new();
        local
            .block_on(&rt, async move {
                let (gathered_tx, mut gathered) = mpsc::unbounded_channel();
                let (channels_tx, mut channels) = mpsc::unbounded_channel();
                let connection = peer(Events {
                    gathered: gathered_tx,
                    channels: Some(channels_tx),
                })
                .await?;
                let offer = offer_rx.await?;
                connection.set_remote_description(offer).await?;
                let answer = connection.create_answer(None).await?;
                let answer = described(&connection, answer, &mut gathered).await?;
                answer_tx.send(answer).map_err(|_| "the caller left")?;
                let serving = async {
                    while let Some(channel) = channels.recv().await {
                        tokio::task::spawn_local(answer_requests(channel));
                    }
                };
                tokio::select! {
                    _ = serving => {}
                    _ = done_rx => {}
                }
                connection.close().await?;
                Ok::<(), Error>(())
            })
            .map_err(|e| e.to_string())
    });
    let rt = runtime();
    let local = tokio::task::LocalSet::new();
    let report = local.block_on(&rt, async move {
        let (gathered_tx, mut gathered) = mpsc::unbounded_channel();
        let connection = peer(Events {
            gathered: gathered_tx,
            channels: None,
        })
        .await?;
        let mut channels = Vec::new();
        for n in 0..concurrency {
            channels.push(
                connection
                    .create_data_channel(&format!("c{n}"), None)
                    .await?,
            );
        }
        let offer = connection.create_offer(None).await?;
        let offer = described(&connection, offer, &mut gathered).await?;
        offer_tx
            .send(offer)
            .map_err(|_| "the answering side failed")?;
        connection.set_remote_description(answer_rx.await?).await?;
        for channel in &channels {
            loop {
                match channel.poll().await {
                    Some(DataChannelEvent::OnOpen) => break,
                    Some(DataChannelEvent::OnClose) | None => {
                        return Err("a data channel closed before opening".into())
                    }
                    Some(_) => {}
                }
            }
        }
        let mut header = (request_len as u64).to_be_bytes().to_vec();
        header.extend_from_slice(&(reply_len as u64).to_be_bytes());
        let next = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let workers: Vec<_> = channels
            .into_iter()
            .map(|channel| {
                let (next, header) = (next.clone(), header.clone());
                tokio::task::spawn_local(async move {
                    let (mut latencies, mut errors) = (Vec::new(), 0u64);
                    while next.fetch_add(1, Ordering::Relaxed) < calls {
                        let t0 = Instant::now();
                        let round_trip = async {
                            channel.send(BytesMut::from(&header[..])).await.ok()?;
                            send_bytes(&*channel, request_len, 0x7b).await.ok()?;
                            receive_bytes(&*channel, reply_len).await.then_some(())
                        };
                        match round_trip.await {
                            Some(()) => latencies.push(t0.elapsed().as_micros() as u64),
                            None => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut measured = Vec::new();
        for worker in workers {
            measured.push(worker.await?);
        }
        let report = Report::round_trips(
            "rtc-echo",
            calls,
            measured,
            started.elapsed(),
            request_len,
            reply_len,
        );
        let _ = done_tx.send(());
        connection.close().await?;
        Ok::<Report, Error>(report)
    })?;
    answering
        .join()
        .map_err(|_| "the answering side panicked")?
        .map_err(|e| format!("the answering side failed: {e}"))?;
    Ok(report)
}
