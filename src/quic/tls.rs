//! TLS for the QUIC transport: the node's certificate, made per process
//! with the libp2p key extension, and the checks of the peer's.
//!
//! Both sides present a certificate. rustls is told to accept any chain
//! (a node's certificate is self-signed and short-lived) but only a
//! certificate whose extension proves a node key
//! ([`babble_net_core::quic::verify_certificate`]), and only a handshake
//! signed by that certificate's key with ECDSA P-256 or Ed25519. Which
//! node key is welcome (the one expected at an address, one of the peer
//! set) is decided once the handshake is over, from the proved key.

use std::sync::Arc;

use babble_net_core::identity::{NodeKey, PeerKey};
use babble_net_core::quic::{
    extension_value, subject_public_key, verify_certificate, ALPN, EXTENSION_OID,
};
use babble_net_core::secure::HandshakeError;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{CertificateParams, CustomExtension, KeyPair, PublicKeyData};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use crate::TransportError;

/// The signature schemes a certificate's key may sign the handshake with.
const SCHEMES: [SignatureScheme; 2] = [
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ED25519,
];

/// A node's TLS certificate and its key.
pub(super) struct Identity {
    certificate: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
}

impl Identity {
    /// A fresh certificate (ECDSA P-256) whose extension `key` signs.
    pub(super) fn new(key: &NodeKey) -> Result<Identity, TransportError> {
        let failed = |err: rcgen::Error| {
            TransportError::Config(format!("cannot make the QUIC certificate: {err}"))
        };
        let tls_key = KeyPair::generate().map_err(failed)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(failed)?;
        let value = extension_value(key, &tls_key.subject_public_key_info());
        let mut extension = CustomExtension::from_oid_content(EXTENSION_OID, value);
        extension.set_criticality(true);
        params.custom_extensions.push(extension);
        let certificate = params.self_signed(&tls_key).map_err(failed)?;
        Ok(Identity {
            certificate: certificate.der().clone(),
            key: PrivatePkcs8KeyDer::from(tls_key.serialize_der()),
        })
    }

    /// The certificate and its signing key, as rustls presents them. Made
    /// without rustls's consistency check, which parses the certificate
    /// with a path validator that refuses the critical extension.
    fn certified(
        &self,
        provider: &CryptoProvider,
    ) -> Result<Arc<SingleCertAndKey>, TransportError> {
        let key = PrivateKeyDer::Pkcs8(self.key.clone_key());
        let signing = provider
            .key_provider
            .load_private_key(key)
            .map_err(tls_error)?;
        let certified = CertifiedKey::new(vec![self.certificate.clone()], signing);
        Ok(Arc::new(SingleCertAndKey::from(certified)))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(err: impl std::fmt::Display) -> TransportError {
    TransportError::Config(format!("cannot set up QUIC's TLS: {err}"))
}

/// The server side's TLS: TLS 1.3, ALPN `babble/1`, a client certificate
/// required and checked, no 0-RTT.
pub(super) fn server_crypto(identity: &Identity) -> Result<QuicServerConfig, TransportError> {
    let provider = provider();
    let check = Arc::new(CertificateCheck::new(&provider));
    let certified = identity.certified(&provider)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .with_client_cert_verifier(check)
        .with_cert_resolver(certified);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    // 0-RTT requests could be replayed.
    tls.max_early_data_size = 0;
    QuicServerConfig::try_from(tls).map_err(tls_error)
}

/// The client side's TLS: as the server's, presenting the node's
/// certificate.
pub(super) fn client_crypto(identity: &Identity) -> Result<QuicClientConfig, TransportError> {
    let provider = provider();
    let check = Arc::new(CertificateCheck::new(&provider));
    let certified = identity.certified(&provider)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_error)?
        .dangerous()
        .with_custom_certificate_verifier(check)
        .with_client_cert_resolver(certified);
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    QuicClientConfig::try_from(tls).map_err(tls_error)
}

/// The node key the peer of `connection` proved in its handshake.
pub(super) fn peer_key(connection: &quinn::Connection) -> Result<PeerKey, HandshakeError> {
    let certificates = connection
        .peer_identity()
        .and_then(|identity| identity.downcast::<Vec<CertificateDer<'static>>>().ok())
        .ok_or_else(|| HandshakeError::Malformed("the peer presented no certificate".into()))?;
    let first = certificates
        .first()
        .ok_or_else(|| HandshakeError::Malformed("the peer presented no certificate".into()))?;
    verify_certificate(first)
}

/// Checks a peer's certificate and handshake signature (module docs).
#[derive(Debug)]
struct CertificateCheck {
    algorithms: WebPkiSupportedAlgorithms,
}

impl CertificateCheck {
    fn new(provider: &CryptoProvider) -> CertificateCheck {
        CertificateCheck {
            algorithms: provider.signature_verification_algorithms,
        }
    }

    fn check(&self, certificate: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        verify_certificate(certificate)
            .map(drop)
            .map_err(|err| rustls::Error::General(err.to_string()))
    }

    /// Whether `signature` of `message` is by the key of `certificate`,
    /// with one of [`SCHEMES`]. The certificate's own key is used
    /// directly: a path validator would refuse the critical extension it
    /// does not know.
    fn verify(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let bad = || rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature);
        if !SCHEMES.contains(&signature.scheme) {
            return Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::NoSignatureSchemesInCommon,
            ));
        }
        let public_key = subject_public_key(certificate).map_err(|_| bad())?;
        let algorithms = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == signature.scheme)
            .map(|(_, algorithms)| *algorithms)
            .unwrap_or_default();
        algorithms
            .iter()
            .any(|algorithm| {
                algorithm
                    .verify_signature(&public_key, message, signature.signature())
                    .is_ok()
            })
            .then(HandshakeSignatureValid::assertion)
            .ok_or_else(bad)
    }
}

impl ServerCertVerifier for CertificateCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}

impl ClientCertVerifier for CertificateCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify(message, certificate, signature)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SCHEMES.to_vec()
    }
}
