//! TLS settings for the signaling client and router (rustls, ring).

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// Which server certificates a client accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Certificates from this PEM file: CAs that sign the server's
    /// certificate, or the server's own certificate itself (pinned: a
    /// self-signed certificate, even one marked `CA:TRUE` as `openssl req
    /// -x509` makes them, is accepted when the server presents exactly it).
    /// Host name and validity period are checked either way.
    CaFile(std::path::PathBuf),
    /// The operating system's trusted roots.
    PlatformRoots,
    /// Any certificate at all. Only for tests and local demos: it gives up
    /// every protection TLS offers against an active attacker.
    SkipVerification,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn invalid(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what)
}

/// A client configuration for `trust`.
pub fn client_config(trust: &Trust) -> io::Result<Arc<ClientConfig>> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?;
    let config = match trust {
        Trust::SkipVerification => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                policy: Policy::AcceptAny,
                provider: provider(),
            }))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let pinned = read_certificates(path)?;
            let mut roots = RootCertStore::empty();
            for cert in &pinned {
                roots
                    .add(cert.clone())
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            }
            let chain = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Verifier {
                    policy: Policy::CaFile { pinned, chain },
                    provider: provider(),
                }))
                .with_no_client_auth()
        }
        Trust::PlatformRoots => {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(invalid(
                    "no trusted root certificates found on this system".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(Arc::new(config))
}

/// A server configuration from a PEM certificate chain and private key.
pub fn server_config(cert_file: &Path, key_file: &Path) -> io::Result<Arc<ServerConfig>> {
    let certs = read_certificates(cert_file)?;
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| {
        invalid(format!(
            "{}: no usable private key: {e}",
            key_file.display()
        ))
    })?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(format!(
                "{} and {}: {e}",
                cert_file.display(),
                key_file.display()
            ))
        })?;
    Ok(Arc::new(config))
}

fn read_certificates(path: &Path) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!("{}: no certificate found", path.display())));
    }
    Ok(certs)
}

/// Which server certificates a [`Verifier`] accepts.
#[derive(Debug)]
enum Policy {
    /// Any certificate ([`Trust::SkipVerification`]).
    AcceptAny,
    /// A chain up to one of the certificates of a CA file, as usual, or
    /// one of them presented as the server's own certificate. The second
    /// case is what Go's TLS client accepts for a self-signed certificate
    /// in its root pool; webpki alone refuses it when the certificate says
    /// `CA:TRUE` (`CaUsedAsEndEntity`).
    CaFile {
        pinned: Vec<CertificateDer<'static>>,
        chain: Arc<WebPkiServerVerifier>,
    },
}

/// Checks the server's certificate by its [`Policy`]; handshake signatures
/// are always verified.
#[derive(Debug)]
struct Verifier {
    policy: Policy,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Policy::CaFile { pinned, chain } = &self.policy else {
            return Ok(ServerCertVerified::assertion());
        };
        if !pinned.iter().any(|pinned| pinned == end_entity) {
            return chain.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            );
        }
        // The very certificate we were told to trust: its signature needs no
        // chain, but it must still name this server and be in its validity
        // period. That the server holds its key is proven by the handshake
        // signature, verified below.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        check_validity(end_entity, now)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Refuses a certificate outside its validity period at `now`.
fn check_validity(cert: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = now.as_secs() as i64;
    let validity = parsed.validity();
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}
