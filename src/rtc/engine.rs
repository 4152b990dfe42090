//! Everything babble-net asks of the WebRTC stack (the `webrtc` crate 0.21,
//! an async driver around the sans-IO `rtc` core), in one place so that
//! another stack can replace it.
//!
//! * one [`PeerLink`] (peer connection) per remote peer and direction,
//!   carrying as many data channels as the pool needs;
//! * ICE gathering completes before an SDP is sent (no trickle), so the
//!   offer or answer carries every candidate;
//! * data channels are ordered and reliable, and only used once open.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use babble_net_core::places::Activity;
use rtc::ice::mdns::MulticastDnsMode;
use rtc::ice::network_type::NetworkType;
use tokio::sync::watch;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfiguration,
    RTCConfigurationBuilder, RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngine, SettingEngineBuilder,
};

use super::channel::{self, close_later, ChannelSlot, ChannelStream};
use super::gate::ChannelGate;
use super::read_ahead::ReadAhead;
use super::runtime::DriverRuntime;

/// A STUN or TURN server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, ...
    pub urls: Vec<String>,
    /// TURN username.
    pub username: String,
    /// TURN password.
    pub credential: String,
}

/// How peer connections find a path to each other.
#[derive(Clone, Debug, Default)]
pub struct IceOptions {
    /// STUN/TURN servers; none means host candidates only.
    pub servers: Vec<IceServer>,
    /// Use loopback addresses only (tests and single-machine demos):
    /// includes loopback candidates, ignores every other interface, IPv4
    /// UDP only, no mDNS.
    pub loopback_only: bool,
    /// Only relay candidates (through TURN), as a peer behind a strict
    /// firewall would.
    pub relay_only: bool,
    /// The one address peer connections bind their UDP sockets to (a
    /// host choosing its interface; with `loopback_only`, a loopback
    /// address other than 127.0.0.1). Default: every interface
    /// (`loopback_only`: 127.0.0.1).
    pub bind_ip: Option<IpAddr>,
}

/// `server` for the stack. A TURN server also answers STUN on its address,
/// but the stack asks only `stun:` URLs for the node's public address, so
/// each `turn:` URL brings its `stun:` twin: without it a node behind a NAT
/// would offer only its private and relayed addresses, and two such nodes
/// would always relay.
fn ice_server(server: &IceServer) -> RTCIceServer {
    let mut urls = server.urls.clone();
    for url in &server.urls {
        if let Some(address) = url.strip_prefix("turn:") {
            let address = address.split('?').next().unwrap_or(address);
            let twin = format!("stun:{address}");
            if !urls.contains(&twin) {
                urls.push(twin);
            }
        }
    }
    RTCIceServer {
        urls,
        username: server.username.clone(),
        credential: server.credential.clone(),
    }
}

/// A factory of peer connections with fixed ICE settings.
pub struct Engine {
    settings: SettingEngine,
    configuration: RTCConfiguration,
    /// Where each peer connection binds its UDP sockets: one wildcard
    /// (one socket per interface, loopback excluded) or loopback only.
    udp_addrs: Vec<String>,
}

/// Why the WebRTC stack failed.
pub type Error = webrtc::error::Error;

fn error(message: impl Into<String>) -> Error {
    Error::Other(message.into())
}

impl Engine {
    /// An engine with `options`.
    pub fn new(options: &IceOptions) -> Engine {
        let mut settings = SettingEngineBuilder::new()
            .with_sctp_max_message_size(channel::max_message_size())
            .with_sctp_max_receive_buffer_size(channel::RECEIVE_WINDOW);
        let udp_addrs = if options.loopback_only {
            settings = settings
                .with_include_loopback_candidate(true)
                .with_network_types(vec![NetworkType::Udp4])
                .with_multicast_dns_mode(MulticastDnsMode::Disabled);
            let ip = options.bind_ip.unwrap_or(IpAddr::from([127, 0, 0, 1]));
            vec![SocketAddr::new(ip, 0).to_string()]
        } else {
            let ip = options.bind_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
            vec![SocketAddr::new(ip, 0).to_string()]
        };
        let configuration = RTCConfigurationBuilder::new()
            .with_ice_servers(options.servers.iter().map(ice_server).collect())
            .with_ice_transport_policy(if options.relay_only {
                RTCIceTransportPolicy::Relay
            } else {
                RTCIceTransportPolicy::All
            })
            .build();
        Engine {
            settings: settings.build(),
            configuration,
            udp_addrs,
        }
    }

    /// A new peer connection. When ICE or DTLS fails it closes itself (a
    /// failed connection is replaced, never waited on), and
    /// [`PeerLink::is_usable`] turns false.
    ///
    /// Its driver (ICE, DTLS, SCTP) runs on the calling thread's runtime.
    /// Not on the stack's dedicated driver threads: there, a channel being
    /// created can open (the peer's acknowledgement processed) before the
    /// stack has registered it, the stack then takes it for a channel the
    /// peer opened, and the dial fails with "the data channel closed before
    /// opening" (seen with webrtc 0.21.1).
    pub async fn peer(&self) -> Result<PeerLink, Error> {
        let events = Arc::new(LinkEvents::default());
        let connection = PeerConnectionBuilder::new()
            .with_configuration(self.configuration.clone())
            .with_setting_engine(self.settings.clone())
            .with_handler(events.clone())
            .with_runtime(DriverRuntime::for_connection())
            .with_udp_addrs(self.udp_addrs.clone())
            .with_data_channel_send_buffer_limit(channel::SEND_BUFFER)
            .build()
            .await?;
        let connection: Arc<dyn PeerConnection> = Arc::new(connection);
        let _ = events.connection.set(Arc::downgrade(&connection));
        Ok(PeerLink {
            _closer: Arc::new(ClosesOnDrop(connection.clone())),
            connection,
            events,
            gate: ChannelGate::default(),
            open_abandoned: Arc::new(AtomicBool::new(false)),
            channels: Arc::new(std::sync::Mutex::new(channel::LinkChannels::new())),
            remote_address: Arc::new(OnceLock::new()),
        })
    }
}

/// What an answering link does with each data channel its peer opens.
type IncomingChannels = Box<dyn Fn(Arc<dyn DataChannel>) + Send + Sync>;

/// What a peer connection reports, kept where the link can look.
///
/// The stack awaits these callbacks on the connection's own driver task,
/// so none of them may wait for anything.
struct LinkEvents {
    state: watch::Sender<RTCPeerConnectionState>,
    gathering: watch::Sender<RTCIceGatheringState>,
    /// The connection itself, to close it when it fails.
    connection: OnceLock<Weak<dyn PeerConnection>>,
    /// Takes the data channels the remote side opens (answering links only).
    incoming: OnceLock<IncomingChannels>,
}

impl Default for LinkEvents {
    fn default() -> LinkEvents {
        LinkEvents {
            state: watch::Sender::new(RTCPeerConnectionState::New),
            gathering: watch::Sender::new(RTCIceGatheringState::New),
            connection: OnceLock::new(),
            incoming: OnceLock::new(),
        }
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for LinkEvents {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        self.gathering.send_replace(state);
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        self.state.send_replace(state);
        if state == RTCPeerConnectionState::Failed {
            if let Some(connection) = self.connection.get().and_then(Weak::upgrade) {
                tokio::spawn(async move {
                    let _ = connection.close().await;
                });
            }
        }
    }

    async fn on_data_channel(&self, channel: Arc<dyn DataChannel>) {
        match self.incoming.get() {
            Some(incoming) => incoming(channel),
            // Nobody asked for channels from this side: an offering link
            // only opens its own.
            None => close_later(channel),
        }
    }
}

/// One peer connection, closed when its last handle is dropped.
#[derive(Clone)]
pub struct PeerLink {
    connection: Arc<dyn PeerConnection>,
    events: Arc<LinkEvents>,
    gate: ChannelGate,
    /// A channel open was abandoned half-way (its dial timed out): the
    /// peer may have stopped answering on this link.
    open_abandoned: Arc<AtomicBool>,
    /// Data channels the peer has open on an answering link.
    channels: Arc<std::sync::Mutex<channel::LinkChannels>>,
    /// The peer's address on the candidate pair ICE selected, once known.
    remote_address: Arc<OnceLock<SocketAddr>>,
    _closer: Arc<ClosesOnDrop>,
}

/// Closes the connection: the stack keeps a peer connection dropped
/// without `close()` running (its driver, sockets and consent checks).
struct ClosesOnDrop(Arc<dyn PeerConnection>);

impl Drop for ClosesOnDrop {
    fn drop(&mut self) {
        let connection = self.0.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = connection.close().await;
                // A peer connection holds megabytes (its SCTP and DTLS
                // state); those of peers evicted at the cap go back to the
                // system rather than stay with the allocator.
                drop(connection);
                babble_net_actors::allocator::give_back_freed_memory();
            });
        }
    }
}

/// Marks its link's open as abandoned if dropped before [`OpenWatch::done`].
struct OpenWatch<'a>(&'a AtomicBool, bool);

impl OpenWatch<'_> {
    fn done(mut self) {
        self.1 = true;
    }
}

impl Drop for OpenWatch<'_> {
    fn drop(&mut self) {
        if !self.1 {
            self.0.store(true, Ordering::Relaxed);
        }
    }
}

impl PeerLink {
    /// Opens a new data channel; [`PendingChannel::opened`] resolves once
    /// it is open. On a fresh link, call [`PeerLink::offer`] and
    /// [`PeerLink::accept_answer`] meanwhile.
    pub async fn open_channel(&self, label: &str) -> Result<PendingChannel, Error> {
        let channel = self.connection.create_data_channel(label, None).await?;
        Ok(PendingChannel {
            channel: Some(channel),
            connection: self.connection.clone(),
            gate: self.gate.clone(),
        })
    }

    /// Opens a new data channel on a link already connected, keeping it
    /// apart from the channels being closed (see [`super::gate`]); opens it
    /// once more if the stack closes it before it opens anyway. What
    /// arrives on it is taken from the stack at once, charged to
    /// `read_ahead` under `source` (see [`PendingChannel::opened`]).
    pub async fn new_channel(
        &self,
        label: &str,
        read_ahead: &Arc<ReadAhead>,
        source: &str,
    ) -> Result<ChannelStream, Error> {
        let mut tries = 0;
        loop {
            let opening = self.gate.open().await;
            let watch = OpenWatch(&self.open_abandoned, false);
            let pending = self.open_channel(label).await?;
            let opened = pending.opened(read_ahead, source).await;
            watch.done();
            match opened {
                Err(err) if tries == 0 && err.to_string() == CLOSED_BEFORE_OPENING => {
                    tries += 1;
                    drop(opening);
                    // The resets that closed it may still be crossing.
                    tokio::time::sleep(self.gate.close_hold()).await;
                }
                Err(err) => return Err(err),
                Ok(stream) => {
                    opening.opened();
                    return Ok(stream);
                }
            }
        }
    }

    /// The offer, with every ICE candidate, as SDP JSON.
    pub async fn offer(&self) -> Result<String, Error> {
        let offer = self.connection.create_offer(None).await?;
        self.describe_locally(offer).await
    }

    /// Applies the remote answer (SDP JSON).
    pub async fn accept_answer(&self, answer: &str) -> Result<(), Error> {
        let answer: RTCSessionDescription = serde_json::from_str(answer)
            .map_err(|e| error(format!("malformed SDP answer: {e}")))?;
        self.connection.set_remote_description(answer).await
    }

    /// Answers a remote offer (SDP JSON); every data channel the remote
    /// side opens is handed to `on_channel` once open, with the peer's
    /// address on the link (see [`PeerLink::learn_remote_address`]); at
    /// `max_channels` open, a new one closes the one least recently used
    /// by a reply. Each reply written on them marks `activity`. What
    /// arrives on them is taken from the stack at once and charged to
    /// `read_ahead` under the peer's address (`fallback_source` until it
    /// is known).
    pub async fn answer<F>(
        &self,
        offer: &str,
        max_channels: usize,
        activity: Arc<Activity>,
        read_ahead: &Arc<ReadAhead>,
        fallback_source: &str,
        on_channel: F,
    ) -> Result<String, Error>
    where
        F: Fn(ChannelStream, Option<SocketAddr>) + Send + Sync + 'static,
    {
        let offer: RTCSessionDescription =
            serde_json::from_str(offer).map_err(|e| error(format!("malformed SDP offer: {e}")))?;
        let on_channel = Arc::new(on_channel);
        let (read_ahead, fallback_source) = (read_ahead.clone(), Arc::<str>::from(fallback_source));
        let channels = self.channels.clone();
        let used = activity;
        let remote_address = self.remote_address.clone();
        // Weak: the connection owns this closure.
        let connection = Arc::downgrade(&self.connection);
        let incoming = move |channel: Arc<dyn DataChannel>| {
            let (id, last_used, base) = channels
                .lock()
                .expect("channels lock")
                .admit(channel.clone(), max_channels);
            let slot = ChannelSlot {
                channels: channels.clone(),
                id,
                last_used,
                base,
                used: used.clone(),
            };
            let on_channel = on_channel.clone();
            let connection = connection.clone();
            let remote_address = remote_address.clone();
            let (read_ahead, fallback_source) = (read_ahead.clone(), fallback_source.clone());
            // Not awaited here: the stack waits for this handler.
            tokio::spawn(async move {
                let Some(connection) = connection.upgrade() else {
                    return;
                };
                let message_size = message_size(&*connection).await;
                let address = selected_remote(&*connection, &remote_address).await;
                let source = address.map_or_else(
                    || fallback_source.to_string(),
                    |a| babble_net_core::source::source_address("", Some(a)),
                );
                let account = read_ahead.open(&source);
                if let Ok(stream) =
                    ChannelStream::open(channel, Some(slot), None, message_size, Some(account))
                        .await
                {
                    on_channel(stream, address);
                }
            });
        };
        if self.events.incoming.set(Box::new(incoming)).is_err() {
            return Err(error("this peer connection already answered an offer"));
        }
        self.connection.set_remote_description(offer).await?;
        let answer = self.connection.create_answer(None).await?;
        self.describe_locally(answer).await
    }

    /// Sets the local description and waits for ICE gathering to finish, so
    /// the SDP sent carries every candidate. The caller bounds the wait.
    async fn describe_locally(&self, description: RTCSessionDescription) -> Result<String, Error> {
        let mut gathering = self.events.gathering.subscribe();
        self.connection.set_local_description(description).await?;
        gathering
            .wait_for(|state| *state == RTCIceGatheringState::Complete)
            .await
            .map_err(|_| error("the peer connection closed while gathering candidates"))?;
        let local = self
            .connection
            .local_description()
            .await
            .ok_or_else(|| error("no local description"))?;
        if !local.sdp.contains("a=candidate") {
            // Nothing the other side could reach: say why now rather than
            // let the dial time out.
            return Err(error(
                "ICE gathering found no candidates: check the STUN/TURN servers, their credentials and the network",
            ));
        }
        serde_json::to_string(&local).map_err(|e| error(e.to_string()))
    }

    /// Whether the link can still carry channels: not failed or closed,
    /// and no channel open on it was abandoned half-way.
    pub fn is_usable(&self) -> bool {
        !self.open_abandoned.load(Ordering::Relaxed)
            && !matches!(
                *self.events.state.borrow(),
                RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
            )
    }

    /// Resolves once the link is connected (true), or has failed or closed
    /// (false).
    pub async fn connected(&self) -> bool {
        let mut state = self.events.state.subscribe();
        let reached = state
            .wait_for(|state| {
                matches!(
                    state,
                    RTCPeerConnectionState::Connected
                        | RTCPeerConnectionState::Failed
                        | RTCPeerConnectionState::Closed
                )
            })
            .await;
        matches!(reached.as_deref(), Ok(RTCPeerConnectionState::Connected))
    }

    /// The peer's address on this link: the remote side of the candidate
    /// pair ICE selected (a path the peer proved it answers on, unlike the
    /// candidates its SDP claims; a relayed peer's is its TURN relay's).
    /// `None` until ICE has selected a pair.
    pub async fn learn_remote_address(&self) -> Option<SocketAddr> {
        selected_remote(&*self.connection, &self.remote_address).await
    }

    /// The peer's address on this link, if already learnt.
    pub fn remote_address(&self) -> Option<SocketAddr> {
        self.remote_address.get().copied()
    }

    /// Closes the connection and its channels; errors are not interesting
    /// at that point.
    pub async fn close(&self) {
        let _ = self.connection.close().await;
        self.events
            .state
            .send_replace(RTCPeerConnectionState::Closed);
    }
}

/// A data channel on its way to being open; closed if dropped before.
pub struct PendingChannel {
    channel: Option<Arc<dyn DataChannel>>,
    connection: Arc<dyn PeerConnection>,
    gate: ChannelGate,
}

const CLOSED_BEFORE_OPENING: &str = "the data channel closed before opening";

/// The largest message `connection` may send: the `max-message-size` both
/// sides agreed on, at most [`channel::CHUNK`].
async fn message_size(connection: &dyn PeerConnection) -> usize {
    let negotiated = match connection.sctp().await {
        Some(sctp) => sctp.max_message_size().await.unwrap_or(0),
        None => 0,
    };
    match usize::try_from(negotiated) {
        Ok(0) | Err(_) => channel::CHUNK,
        Ok(size) => size.min(channel::CHUNK),
    }
}

/// The remote address of `connection`'s selected candidate pair, kept in
/// `cache` once known (the pair of an answering link does not change).
async fn selected_remote(
    connection: &dyn PeerConnection,
    cache: &OnceLock<SocketAddr>,
) -> Option<SocketAddr> {
    if let Some(known) = cache.get() {
        return Some(*known);
    }
    let sctp = connection.sctp().await?;
    let pair = sctp
        .transport()
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .ok()??;
    let remote = pair.remote();
    // An mDNS name is not an address; such a peer is its own source.
    let ip: IpAddr = remote.address.parse().ok()?;
    Some(*cache.get_or_init(|| SocketAddr::new(ip, remote.port)))
}

impl PendingChannel {
    /// Waits until the channel is open and returns it as a byte stream.
    /// Nothing is sent before that: a send on a channel that is not open
    /// may be lost. From then on what arrives on it is taken from the
    /// stack at once, charged to `read_ahead` under `source`, as on a
    /// channel another peer opened: the peer this node called could
    /// otherwise make the stack queue 256 messages a channel, outside
    /// every budget, by sending what nobody asked for.
    pub async fn opened(
        mut self,
        read_ahead: &Arc<ReadAhead>,
        source: &str,
    ) -> Result<ChannelStream, Error> {
        let channel = self.channel.clone().expect("taken only here");
        loop {
            match channel.poll().await {
                Some(DataChannelEvent::OnOpen) => break,
                // Closing: dropping `self` closes it and waits for that.
                Some(DataChannelEvent::OnClosing) => return Err(error(CLOSED_BEFORE_OPENING)),
                Some(DataChannelEvent::OnClose) | None => {
                    // Closed already: nothing to close on drop.
                    self.channel = None;
                    return Err(error(CLOSED_BEFORE_OPENING));
                }
                Some(_) => {}
            }
        }
        self.channel = None;
        let message_size = message_size(&*self.connection).await;
        let account = read_ahead.open(source);
        ChannelStream::open(
            channel,
            None,
            Some(self.gate.clone()),
            message_size,
            Some(account),
        )
        .await
    }
}

impl Drop for PendingChannel {
    fn drop(&mut self) {
        // A dial that timed out: the channel would stay on the link.
        if let Some(channel) = self.channel.take() {
            self.gate.close(channel, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turn_url_brings_its_stun_twin() {
        let server = IceServer {
            urls: vec![
                "turn:turn.example.com:3478?transport=udp".into(),
                "stun:other.example.com:3478".into(),
            ],
            username: "u".into(),
            credential: "p".into(),
        };
        let converted = ice_server(&server);
        assert_eq!(
            converted.urls,
            [
                "turn:turn.example.com:3478?transport=udp",
                "stun:other.example.com:3478",
                "stun:turn.example.com:3478"
            ]
        );
        assert_eq!(
            (converted.username.as_str(), converted.credential.as_str()),
            ("u", "p")
        );
    }
}
