//! The matrix's WebRTC attackers: one peer connection per source address
//! (its ICE bound to that address), each attack connection a data channel
//! on it; offers whose ICE never finishes, sent as raw WAMP calls from the
//! source; and peer connections under made-up IDs, one after another.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::rtc::{IceOptions, WebRtcStreamLayer};
use babble_net::signal::{Signal, SignalSettings, WampSignal};
use babble_net::stream::StreamLayer;
use babble_net::{logging, Config};

use crate::attacks::{Attack, Progress};

/// IDs made up so far, so that each is new.
static MINTED: AtomicU64 = AtomicU64::new(0);

/// What the WebRTC attacks share.
pub struct Attackers {
    url: String,
    router: SocketAddr,
    layers: HashMap<String, Arc<dyn StreamLayer>>,
    /// A real offer, made by a peer connection that is gone: whoever
    /// answers it waits for ICE checks that never come.
    offer: String,
}

impl Attackers {
    /// A peer connection's layer for each of `sources`, signaling through
    /// the router at `router`.
    pub async fn new(router: SocketAddr, sources: &[String]) -> Attackers {
        let url = format!("ws://{router}");
        let mut layers = HashMap::new();
        for source in sources {
            let layer = rtc_layer(&url, source).await;
            layers.insert(source.clone(), layer);
        }
        let offer = dead_offer(&url, &sources[0]).await;
        Attackers {
            url,
            router,
            layers,
            offer,
        }
    }

    /// The layer of `source`.
    pub fn layer(&self, source: &str) -> Arc<dyn StreamLayer> {
        self.layers[source].clone()
    }

    /// The attacks made of offers rather than channels: offers never
    /// finished ([`Attack::HalfOpen`]) and made-up IDs
    /// ([`Attack::MintedIds`]), against the node `target` (its ID).
    pub fn start(
        &self,
        attack: Attack,
        target: &str,
        sources: &[String],
        connections: usize,
        progress: &Arc<Progress>,
        until: Instant,
    ) {
        for n in 0..connections {
            let source = sources[n % sources.len()].clone();
            let (progress, target) = (progress.clone(), target.to_owned());
            let (url, router, offer) = (self.url.clone(), self.router, self.offer.clone());
            actix_rt::spawn(async move {
                let run = async {
                    while Instant::now() < until {
                        let done = match attack {
                            Attack::HalfOpen => {
                                offers_never_finished(router, &source, &target, &offer, &progress)
                                    .await
                            }
                            _ => minted_peer(&url, &source, &target, &progress).await,
                        };
                        if done.is_err() {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                };
                let _ = tokio::time::timeout_at(until.into(), run).await;
            });
        }
    }
}

/// A session from `source` that offers `offer` to `target` under a new
/// made-up ID each time, waiting for each answer, until the router closes
/// it.
async fn offers_never_finished(
    router: SocketAddr,
    source: &str,
    target: &str,
    offer: &str,
    progress: &Progress,
) -> std::io::Result<()> {
    let mut ws = crate::router::joined_from(source, router).await?;
    for request in 1.. {
        let id = format!("half-open-{}", MINTED.fetch_add(1, Ordering::Relaxed));
        progress.opened.fetch_add(1, Ordering::Relaxed);
        crate::router::call_once(&mut ws, request, target, &id, offer).await?;
    }
    Ok(())
}

/// A peer connection from `source` under a made-up ID: one data channel,
/// small calls on it for a moment, then the next one.
async fn minted_peer(
    url: &str,
    source: &str,
    target: &str,
    progress: &Progress,
) -> std::io::Result<()> {
    let layer = rtc_layer(url, source).await;
    let stream = layer.dial(target, Duration::from_secs(5)).await;
    progress.opened.fetch_add(1, Ordering::Relaxed);
    if let Ok(mut stream) = stream {
        let frame = b"\x01{\"FromID\":1,\"Known\":null,\"SyncLimit\":0}\n";
        let calls = crate::attacks::calls(&mut stream, false, frame, progress);
        let _ = tokio::time::timeout(Duration::from_millis(300), calls).await;
    }
    layer.close();
    Ok(())
}

/// A WebRTC layer under a new made-up ID, its ICE and its signaling
/// session bound to `source` (so the router gives the node `source` as
/// its offers' caller).
async fn rtc_layer(url: &str, source: &str) -> Arc<dyn StreamLayer> {
    let id = format!("attacker-{}", MINTED.fetch_add(1, Ordering::Relaxed));
    let layer = WebRtcStreamLayer::start(
        signal_from(url, &id, source),
        &ice(source),
        babble_net::limits::rtc(&Config::default()),
        logging::discard(),
    )
    .await
    .expect("an attacker's WebRTC layer");
    Arc::new(layer)
}

/// A real offer from `source`, caught on its way (answered with an
/// error, so its peer connection is closed).
async fn dead_offer(url: &str, source: &str) -> String {
    let catcher = WampSignal::new(
        SignalSettings::new(url, "main", "offer-catcher"),
        Duration::from_secs(10),
        logging::discard(),
    );
    let mut offers = catcher.consumer();
    catcher.listen().await.expect("the catcher registers");
    let layer = rtc_layer(url, source).await;
    let dial = layer.dial("offer-catcher", Duration::from_secs(10));
    let caught = async {
        let offer = offers.recv().await.expect("an offer");
        let sdp = offer.sdp.clone();
        offer.answer(Err("caught".into()));
        sdp
    };
    let (_, sdp) = tokio::join!(dial, caught);
    layer.close();
    let _ = catcher.close().await;
    sdp
}

/// A signaling client from this process (127.0.0.1).
pub fn signal(url: &str, id: &str) -> Arc<dyn Signal> {
    signal_from(url, id, "127.0.0.1")
}

/// A signaling client connecting from `source`.
fn signal_from(url: &str, id: &str, source: &str) -> Arc<dyn Signal> {
    Arc::new(WampSignal::new(
        SignalSettings {
            bind_ip: Some(source.parse().expect("an IP address")),
            ..SignalSettings::new(url, "main", id)
        },
        Duration::from_secs(10),
        logging::discard(),
    ))
}

/// ICE on loopback only, bound to `source`.
pub fn ice(source: &str) -> IceOptions {
    IceOptions {
        loopback_only: true,
        bind_ip: Some(source.parse().expect("an IP address")),
        ..IceOptions::default()
    }
}
