//! Everything babble-net asks of the `webrtc` crate (0.17, the tokio-based
//! port of Pion), in one place so that another WebRTC stack can replace it.
//!
//! * one [`PeerLink`] (RTCPeerConnection) per remote peer and direction,
//!   carrying as many data channels as the pool needs;
//! * ICE gathering completes before an SDP is sent (no trickle), so the
//!   offer or answer carries every candidate;
//! * data channels are ordered and reliable, detached from the callback
//!   API, and only used once open.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::oneshot;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::data_channel::RTCDataChannel;
use webrtc::ice::mdns::MulticastDnsMode;
use webrtc::ice::network_type::NetworkType;
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;

use super::channel::{ChannelSlot, ChannelStream};

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
}

/// A factory of peer connections with fixed ICE settings.
pub struct Engine {
    api: API,
    configuration: RTCConfiguration,
}

/// Why the WebRTC stack failed.
pub type Error = webrtc::Error;

impl Engine {
    /// An engine with `options`.
    pub fn new(options: &IceOptions) -> Engine {
        let mut settings = SettingEngine::default();
        settings.detach_data_channels();
        if options.loopback_only {
            settings.set_include_loopback_candidate(true);
            settings.set_ip_filter(Box::new(|ip: IpAddr| ip.is_loopback()));
            settings.set_network_types(vec![NetworkType::Udp4]);
            settings.set_ice_multicast_dns_mode(MulticastDnsMode::Disabled);
        }
        let api = APIBuilder::new().with_setting_engine(settings).build();
        let configuration = RTCConfiguration {
            ice_servers: options
                .servers
                .iter()
                .map(|server| RTCIceServer {
                    urls: server.urls.clone(),
                    username: server.username.clone(),
                    credential: server.credential.clone(),
                })
                .collect(),
            ice_transport_policy: if options.relay_only {
                webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy::Relay
            } else {
                webrtc::peer_connection::policy::ice_transport_policy::RTCIceTransportPolicy::All
            },
            ..Default::default()
        };
        Engine { api, configuration }
    }

    /// A new peer connection. When ICE or DTLS fails it closes itself (a
    /// failed connection is replaced, never waited on), and
    /// [`PeerLink::is_usable`] turns false.
    pub async fn peer(&self) -> Result<PeerLink, Error> {
        let connection = Arc::new(
            self.api
                .new_peer_connection(self.configuration.clone())
                .await?,
        );
        let weak = Arc::downgrade(&connection);
        connection.on_peer_connection_state_change(Box::new(move |state| {
            if state == RTCPeerConnectionState::Failed {
                if let Some(connection) = weak.upgrade() {
                    tokio::spawn(async move {
                        let _ = connection.close().await;
                    });
                }
            }
            Box::pin(async {})
        }));
        Ok(PeerLink { connection })
    }
}

/// One RTCPeerConnection.
#[derive(Clone)]
pub struct PeerLink {
    connection: Arc<RTCPeerConnection>,
}

impl PeerLink {
    /// Opens a new data channel; resolves once it is open and detached.
    /// On a fresh link, call [`PeerLink::offer`] and
    /// [`PeerLink::accept_answer`] meanwhile.
    pub async fn open_channel(&self, label: &str) -> Result<PendingChannel, Error> {
        let channel = self.connection.create_data_channel(label, None).await?;
        Ok(PendingChannel {
            opened: on_open(&channel, None),
            _channel: channel,
        })
    }

    /// The offer, with every ICE candidate, as SDP JSON.
    pub async fn offer(&self) -> Result<String, Error> {
        let offer = self.connection.create_offer(None).await?;
        self.describe_locally(offer).await
    }

    /// Applies the remote answer (SDP JSON).
    pub async fn accept_answer(&self, answer: &str) -> Result<(), Error> {
        let answer: RTCSessionDescription = serde_json::from_str(answer)
            .map_err(|e| Error::new(format!("malformed SDP answer: {e}")))?;
        self.connection.set_remote_description(answer).await
    }

    /// Answers a remote offer (SDP JSON); every data channel the remote
    /// side opens is detached, once open, and handed to `on_channel`, as
    /// long as fewer than `max_channels` of its channels are open (more are
    /// closed at once).
    pub async fn answer<F>(
        &self,
        offer: &str,
        max_channels: usize,
        on_channel: F,
    ) -> Result<String, Error>
    where
        F: Fn(ChannelStream) + Send + Sync + 'static,
    {
        let offer: RTCSessionDescription = serde_json::from_str(offer)
            .map_err(|e| Error::new(format!("malformed SDP offer: {e}")))?;
        let on_channel = Arc::new(on_channel);
        let open_channels = Arc::new(AtomicUsize::new(0));
        self.connection
            .on_data_channel(Box::new(move |channel: Arc<RTCDataChannel>| {
                if open_channels.fetch_add(1, Ordering::Relaxed) >= max_channels {
                    open_channels.fetch_sub(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        let _ = channel.close().await;
                    });
                    return Box::pin(async {});
                }
                let slot = ChannelSlot(open_channels.clone());
                let opened = on_open(&channel, Some(slot));
                let on_channel = on_channel.clone();
                // Not awaited here: the stack waits for this handler.
                tokio::spawn(async move {
                    if let Ok(Ok(stream)) = opened.await {
                        on_channel(stream);
                    }
                });
                Box::pin(async {})
            }));
        self.connection.set_remote_description(offer).await?;
        let answer = self.connection.create_answer(None).await?;
        self.describe_locally(answer).await
    }

    /// Sets the local description and waits for ICE gathering to finish, so
    /// the SDP sent carries every candidate.
    async fn describe_locally(&self, description: RTCSessionDescription) -> Result<String, Error> {
        let mut gathered = self.connection.gathering_complete_promise().await;
        self.connection.set_local_description(description).await?;
        let _ = gathered.recv().await;
        let local = self
            .connection
            .local_description()
            .await
            .ok_or_else(|| Error::new("no local description".to_owned()))?;
        if !local.sdp.contains("a=candidate") {
            // Nothing the other side could reach: say why now rather than
            // let the dial time out.
            return Err(Error::new(
                "ICE gathering found no candidates: check the STUN/TURN servers, their credentials and the network"
                    .to_owned(),
            ));
        }
        serde_json::to_string(&local).map_err(|e| Error::new(e.to_string()))
    }

    /// Whether the link can still carry channels (not failed or closed).
    pub fn is_usable(&self) -> bool {
        !matches!(
            self.connection.connection_state(),
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed
        )
    }

    /// Closes the connection and its channels; errors are not interesting
    /// at that point.
    pub async fn close(&self) {
        let _ = self.connection.close().await;
    }
}

/// A data channel on its way to being open.
pub struct PendingChannel {
    opened: oneshot::Receiver<Result<ChannelStream, Error>>,
    _channel: Arc<RTCDataChannel>,
}

impl PendingChannel {
    /// Waits until the channel is open and returns it as a byte stream.
    pub async fn opened(self) -> Result<ChannelStream, Error> {
        self.opened.await.unwrap_or_else(|_| {
            Err(Error::new(
                "the data channel closed before opening".to_owned(),
            ))
        })
    }
}

/// Detaches `channel` once open; nothing is sent before that, because a
/// send on a channel that is not open can be dropped silently. A channel
/// that never opens frees its `slot` when the stack drops the handler.
fn on_open(
    channel: &Arc<RTCDataChannel>,
    slot: Option<ChannelSlot>,
) -> oneshot::Receiver<Result<ChannelStream, Error>> {
    let (tx, rx) = oneshot::channel();
    let detachable = channel.clone();
    channel.on_open(Box::new(move || {
        Box::pin(async move {
            let detached = detachable
                .detach()
                .await
                .map(|channel| ChannelStream::in_slot(channel, slot));
            let _ = tx.send(detached);
        })
    }));
    rx
}
