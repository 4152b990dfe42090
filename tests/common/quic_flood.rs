//! Half-open QUIC handshakes, as a flood makes them: each connection sends
//! a real ClientHello, answers the server's Retry once, and then goes
//! silent, so that the server holds the handshake until it times out.
//!
//! A quinn client dials through a relay of its own (one UDP socket facing
//! the client, one bound to the flood's source address facing the node):
//! the relay forwards the client's packets only until the node answers
//! with anything but a Retry, and all of the node's packets back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// A quinn client that presents a throwaway certificate and accepts any
/// server's: it never gets as far as checking anything.
pub fn client_endpoint() -> quinn::Endpoint {
    let cert = rcgen::generate_simple_self_signed(vec!["flood".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_client_auth_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    tls.alpn_protocols = vec![b"babble/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    endpoint
}

#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Whether a datagram from the server starts with a Retry packet.
fn is_retry(datagram: &[u8]) -> bool {
    datagram
        .first()
        .is_some_and(|&b| b & 0x80 != 0 && b & 0x30 == 0x30)
}

/// Relays one client connection to `node` from `source` (an IP address)
/// until `until`: the client's packets only until the node answered with
/// anything but a Retry. Returns the address the client dials.
async fn relay(node: SocketAddr, source: &str, until: Instant) -> SocketAddr {
    let front = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let back = UdpSocket::bind(format!("{source}:0")).await.unwrap();
    back.connect(node).await.unwrap();
    let address = front.local_addr().unwrap();
    actix_rt::spawn(async move {
        let mut client = None;
        let mut answered = false;
        let mut from_client = vec![0u8; 2048];
        let mut from_node = vec![0u8; 2048];
        let deadline = tokio::time::sleep_until(until.into());
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                got = front.recv_from(&mut from_client) => {
                    let Ok((n, sender)) = got else { return };
                    client = Some(sender);
                    if !answered {
                        let _ = back.send(&from_client[..n]).await;
                    }
                }
                got = back.recv(&mut from_node) => {
                    let Ok(n) = got else { return };
                    answered |= !is_retry(&from_node[..n]);
                    if let Some(client) = client {
                        let _ = front.send_to(&from_node[..n], client).await;
                    }
                }
            }
        }
    });
    address
}

/// What a flood did.
#[derive(Debug, Default)]
pub struct Flood {
    /// Handshakes started.
    pub started: AtomicU64,
}

/// Starts `rate` half-open handshakes a second to `node`, spread over the
/// `sources` (loopback addresses), until `until`. Returns at once; the
/// counts fill in as it goes.
pub fn half_open(node: SocketAddr, sources: Vec<String>, rate: u32, until: Instant) -> Arc<Flood> {
    let flood = Arc::new(Flood::default());
    let counts = flood.clone();
    actix_rt::spawn(async move {
        let endpoint = client_endpoint();
        let mut every = tokio::time::interval(Duration::from_secs(1) / rate.max(1));
        let mut n = 0usize;
        while Instant::now() < until {
            every.tick().await;
            let source = &sources[n % sources.len()];
            n += 1;
            let front = relay(node, source, until).await;
            let Ok(connecting) = endpoint.connect(front, "babble") else {
                continue;
            };
            counts.started.fetch_add(1, Ordering::Relaxed);
            // The client's side may think it is done (it never hears the
            // node's confirmation); the node never is.
            actix_rt::spawn(async move {
                let left = until.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, connecting).await;
            });
        }
        // The client's connections die with the endpoint.
        endpoint.close(0u32.into(), b"");
    });
    flood
}
