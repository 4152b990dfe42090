//! Helpers for signaling tests: an in-process router and clients.

use std::path::PathBuf;
use std::time::Duration;

use babble_net::logging;
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, SignalSettings, Trust, WampSignal};

/// A self-signed certificate for `localhost`/127.0.0.1, written to a
/// temporary directory: (directory guard, cert path, key path).
pub fn self_signed() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    let cert_path = dir.path().join("cert.pem");
    let key_path = dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    (dir, cert_path, key_path)
}

pub fn router_config(realms: &[&str]) -> RouterConfig {
    RouterConfig {
        listen: "127.0.0.1:0".into(),
        realms: realms.iter().map(|r| r.to_string()).collect(),
        insecure: true,
        ..RouterConfig::default()
    }
}

/// A plain-ws router with these realms.
pub async fn router(realms: &[&str]) -> Router {
    Router::start(router_config(realms), logging::discard())
        .await
        .unwrap()
}

pub fn settings(addr: &str, realm: &str, id: &str, trust: Option<Trust>) -> SignalSettings {
    let tls = trust.map(|t| babble_net::signal::client_config(&t).unwrap());
    SignalSettings {
        tls,
        connect_timeout: Duration::from_secs(5),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(200),
        ..SignalSettings::new(addr, realm, id)
    }
}

/// A client of `addr` (plain ws unless `trust` is given).
pub fn client(addr: &str, realm: &str, id: &str, trust: Option<Trust>) -> WampSignal {
    WampSignal::new(
        settings(addr, realm, id, trust),
        Duration::from_secs(5),
        logging::discard(),
    )
}

/// Answers every offer to `signal` with `answer(from, sdp)`.
pub fn answer_offers<F>(signal: &WampSignal, answer: F)
where
    F: Fn(&str, &str) -> Result<String, String> + 'static,
{
    let mut offers = signal.consumer();
    actix_rt::spawn(async move {
        while let Some(offer) = offers.recv().await {
            let result = answer(&offer.from, &offer.sdp);
            offer.answer(result);
        }
    });
}
