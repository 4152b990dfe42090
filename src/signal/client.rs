//! The WAMP client: a facade over the Signaling actor.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use actix::{Actor, Addr};
use async_trait::async_trait;
use babble_net_actors::signaling::{
    CloseSignal, GetStatus, Listen, Offer, SendOffer, SignalError, SignalSettings, SignalStatus,
    Signaling,
};
use babble_net_core::signaling::tls::{self, Trust};
use futures::Stream;
use slog::Logger;
use tokio::sync::mpsc;

use super::Signal;
use crate::secure::PeerKey;
use crate::Config;

/// Offers made to us, see [`Signal::consumer`].
#[derive(Debug)]
pub struct Offers {
    rx: mpsc::Receiver<Offer>,
}

impl Offers {
    /// Waits for the next offer; `None` once the signal is closed.
    pub async fn recv(&mut self) -> Option<Offer> {
        self.rx.recv().await
    }
}

impl Stream for Offers {
    type Item = Offer;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Offer>> {
        self.rx.poll_recv(cx)
    }
}

/// A [`Signal`] over a WAMP router (`babble-signal`, or any WAMP v2 router
/// with the dealer role).
///
/// The session lives in a Signaling actor that reconnects by itself when
/// the router goes away. Create it inside an actix system. Clones share
/// the same session.
#[derive(Clone)]
pub struct WampSignal {
    id: String,
    actor: Addr<Signaling>,
    offers: Arc<Mutex<Option<Offers>>>,
    offer_timeout: Duration,
}

impl WampSignal {
    /// Joins the router described by `settings`; offers time out after
    /// `offer_timeout`.
    pub fn new(settings: SignalSettings, offer_timeout: Duration, log: Logger) -> WampSignal {
        let (tx, rx) = mpsc::channel(16);
        let id = settings.id.clone();
        let actor = Signaling::new(settings, tx, log).start();
        WampSignal {
            id,
            actor,
            offers: Arc::new(Mutex::new(Some(Offers { rx }))),
            offer_timeout,
        }
    }

    /// Joins the router of `config` (`signal-addr`, `signal-realm`,
    /// `signal-skip-verify`, `signal-ca-file`, and with `signal-auth` the
    /// node's key from `key-file`, whose `PubKeyHex` `id` must be) under
    /// `id`, with the
    /// default limits of [`SignalSettings::new`], `signal-connect-timeout`
    /// to connect and `offer-timeout` for offers (see
    /// [`crate::limits::signal`]). A `signal-addr` starting with `ws://`
    /// connects without TLS.
    pub fn from_config(
        config: &Config,
        id: impl Into<String>,
        log: Logger,
    ) -> Result<WampSignal, SignalError> {
        let plain = config.signal_addr.starts_with("ws://");
        let tls = if plain {
            None
        } else {
            let trust = if config.signal_skip_verify {
                Trust::SkipVerification
            } else if let Some(ca) = &config.signal_ca_file {
                Trust::CaFile(ca.clone())
            } else {
                Trust::PlatformRoots
            };
            Some(tls::client_config(&trust).map_err(|e| SignalError::Connect(e.to_string()))?)
        };
        let id = id.into();
        let key = match config.signal_auth {
            true => {
                let key = config
                    .node_key()
                    .map_err(|e| SignalError::Unauthenticated(e.to_string()))?;
                if PeerKey::parse(&id).ok() != Some(key.public()) {
                    return Err(SignalError::Unauthenticated(format!(
                        "with signal-auth the signaling ID must be the node's key {}, not {id}",
                        key.public()
                    )));
                }
                Some(key)
            }
            false => None,
        };
        crate::limits::warn_carried_over(config, &log);
        let settings = crate::limits::signal(config, id, tls, key);
        Ok(WampSignal::new(settings, config.offer_deadline(), log))
    }

    /// Whether the session is open and our ID registered.
    pub async fn status(&self) -> Result<SignalStatus, SignalError> {
        self.actor
            .send(GetStatus)
            .await
            .map_err(|_| SignalError::Closed)
    }
}

#[async_trait]
impl Signal for WampSignal {
    fn id(&self) -> String {
        self.id.clone()
    }

    async fn listen(&self) -> Result<(), SignalError> {
        self.actor
            .send(Listen)
            .await
            .map_err(|_| SignalError::Closed)?
    }

    fn consumer(&self) -> Offers {
        self.offers
            .lock()
            .expect("offers lock")
            .take()
            .unwrap_or_else(|| {
                let (_, rx) = mpsc::channel(1);
                Offers { rx }
            })
    }

    async fn offer(&self, target: &str, sdp: String) -> Result<String, SignalError> {
        let offer = SendOffer {
            target: target.to_owned(),
            sdp,
            timeout: self.offer_timeout,
        };
        self.actor
            .send(offer)
            .await
            .map_err(|_| SignalError::Closed)?
    }

    async fn close(&self) -> Result<(), SignalError> {
        let _ = self.actor.send(CloseSignal).await;
        Ok(())
    }
}
