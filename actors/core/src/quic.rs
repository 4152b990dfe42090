//! The QUIC transport's identity protocol, without I/O: the libp2p TLS
//! certificate extension that binds a per-process TLS certificate to the
//! node's Babble key, made and checked here.
//!
//! The certificate is self-signed with a fresh key (ECDSA P-256 or
//! Ed25519) and carries the extension [`EXTENSION_OID`], marked critical,
//! whose value is the DER of
//!
//! ```text
//! SEQUENCE { publicKey OCTET STRING, signature OCTET STRING }
//! ```
//!
//! where `publicKey` is the protobuf `PublicKey { Type = 2 (Secp256k1),
//! Data = 33-byte compressed key }` of the node's key (as in the Noise
//! payload) and `signature` the node key's DER ECDSA signature of
//! SHA-256([`SIGNATURE_DOMAIN`] || the certificate's DER
//! SubjectPublicKeyInfo). Whoever completes a TLS handshake with that
//! certificate holds its TLS key, and the extension says which node key
//! vouched for that TLS key: together, the peer's identity.

use prost::Message;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{NodeKey, PeerKey};
use crate::secure::payload::{PublicKey, SECP256K1};
use crate::secure::HandshakeError;

/// The extension's object identifier, 1.3.6.1.4.1.53594.1.1.
pub const EXTENSION_OID: &[u64] = &[1, 3, 6, 1, 4, 1, 53594, 1, 1];

/// The extension's identifier as x509-parser prints it.
const EXTENSION_OID_TEXT: &str = "1.3.6.1.4.1.53594.1.1";

/// What the node key signs, before the SubjectPublicKeyInfo.
pub const SIGNATURE_DOMAIN: &[u8] = b"libp2p-tls-handshake:";

/// The one application protocol (ALPN) both sides offer.
pub const ALPN: &[u8] = b"babble/1";

/// The server name a client sends (the server does not check it: a
/// node's name is its key, proved by the extension).
pub const SERVER_NAME: &str = "babble";

/// The extension's value for a certificate whose DER SubjectPublicKeyInfo
/// is `spki_der`, vouched for by `key`.
pub fn extension_value(key: &NodeKey, spki_der: &[u8]) -> Vec<u8> {
    let public = PublicKey {
        key_type: SECP256K1,
        data: key.public().to_compressed(),
    }
    .encode_to_vec();
    let signature = key.sign(&signed_message(spki_der));
    yasna::construct_der(|writer| {
        writer.write_sequence(|writer| {
            writer.next().write_bytes(&public);
            writer.next().write_bytes(&signature);
        })
    })
}

fn signed_message(spki_der: &[u8]) -> Vec<u8> {
    [SIGNATURE_DOMAIN, spki_der].concat()
}

/// The node key a DER certificate proves: its extension must be present,
/// well formed, carry a secp256k1 key and that key's valid signature of
/// the certificate's own SubjectPublicKeyInfo (a high-S signature is
/// valid too). The validity period is not checked (certificates are made
/// per process); the TLS handshake checks that the peer holds the
/// certificate's key.
pub fn verify_certificate(der: &[u8]) -> Result<PeerKey, HandshakeError> {
    let malformed = |what: &str| HandshakeError::Malformed(format!("certificate: {what}"));
    let (rest, certificate) =
        X509Certificate::from_der(der).map_err(|_| malformed("not a DER X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(malformed("bytes after the certificate"));
    }
    let mut found = certificate
        .extensions()
        .iter()
        .filter(|extension| extension.oid.to_id_string() == EXTENSION_OID_TEXT);
    let extension = found
        .next()
        .ok_or_else(|| malformed("no libp2p key extension (1.3.6.1.4.1.53594.1.1)"))?;
    if found.next().is_some() {
        return Err(malformed("the libp2p key extension appears twice"));
    }
    let (public, signature) = yasna::parse_der(extension.value, |reader| {
        reader.read_sequence(|reader| {
            let public = reader.next().read_bytes()?;
            let signature = reader.next().read_bytes()?;
            Ok((public, signature))
        })
    })
    .map_err(|_| malformed("the libp2p key extension is not a SEQUENCE of two OCTET STRINGs"))?;
    let public = PublicKey::decode(&public[..])
        .map_err(|_| malformed("the extension's public key is not a protobuf PublicKey"))?;
    if public.key_type != SECP256K1 {
        return Err(malformed("the extension's key is not secp256k1"));
    }
    if public.data.len() != 33 || !matches!(public.data[0], 0x02 | 0x03) {
        return Err(malformed(
            "the extension's key is not a 33-byte compressed secp256k1 key",
        ));
    }
    let key = PeerKey::from_sec1(&public.data)
        .map_err(|_| malformed("the extension's key is not a secp256k1 point"))?;
    check_key_algorithm(&certificate)?;
    let spki = certificate.tbs_certificate.subject_pki.raw;
    if !key.verify(&signed_message(spki), &signature) {
        return Err(HandshakeError::BadSignature { key });
    }
    Ok(key)
}

/// Checks that a certificate's own key is ECDSA P-256 or Ed25519, the
/// two kinds it may sign the handshake with.
fn check_key_algorithm(certificate: &X509Certificate<'_>) -> Result<(), HandshakeError> {
    const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
    const P256: &str = "1.2.840.10045.3.1.7";
    const ED25519: &str = "1.3.101.112";
    let algorithm = &certificate.tbs_certificate.subject_pki.algorithm;
    let curve = || {
        (algorithm.parameters.as_ref())
            .and_then(|parameters| parameters.as_oid().ok())
            .map(|oid| oid.to_id_string())
    };
    match algorithm.algorithm.to_id_string().as_str() {
        ED25519 => Ok(()),
        EC_PUBLIC_KEY if curve().as_deref() == Some(P256) => Ok(()),
        _ => Err(HandshakeError::Malformed(
            "certificate: its key is neither ECDSA P-256 nor Ed25519".into(),
        )),
    }
}

/// The subject public key of a DER certificate (the bits of its
/// SubjectPublicKeyInfo: an uncompressed point for ECDSA, 32 bytes for
/// Ed25519), which must sign the TLS handshake.
pub fn subject_public_key(der: &[u8]) -> Result<Vec<u8>, HandshakeError> {
    let (_, certificate) = X509Certificate::from_der(der).map_err(|_| {
        HandshakeError::Malformed("certificate: not a DER X.509 certificate".into())
    })?;
    Ok(certificate
        .tbs_certificate
        .subject_pki
        .subject_public_key
        .data
        .to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    use rcgen::{CertificateParams, CustomExtension, KeyPair, PublicKeyData};

    /// A self-signed certificate of a fresh P-256 key with `extensions`
    /// (OID, value), each marked critical; and that key's
    /// SubjectPublicKeyInfo.
    fn certificate(extensions: impl FnOnce(&[u8]) -> Vec<(&'static [u64], Vec<u8>)>) -> Vec<u8> {
        let tls_key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        for (oid, value) in extensions(&tls_key.subject_public_key_info()) {
            let mut extension = CustomExtension::from_oid_content(oid, value);
            extension.set_criticality(true);
            params.custom_extensions.push(extension);
        }
        params.self_signed(&tls_key).unwrap().der().to_vec()
    }

    /// Another key's SubjectPublicKeyInfo.
    fn other_spki() -> Vec<u8> {
        KeyPair::generate().unwrap().subject_public_key_info()
    }

    #[test]
    fn a_certificate_proves_the_key_that_signed_its_public_key() {
        let key = NodeKey::generate();
        let der = certificate(|spki| vec![(EXTENSION_OID, extension_value(&key, spki))]);
        assert_eq!(verify_certificate(&der), Ok(key.public()));
    }

    #[test]
    fn the_extension_is_the_specified_der_and_protobuf() {
        let key = NodeKey::generate();
        let value = extension_value(&key, &other_spki());
        // SEQUENCE, then OCTET STRING of 37 bytes: field 1 varint 2, field
        // 2 length 33, the compressed key.
        assert_eq!(value[0], 0x30);
        let public_at = if value[1] & 0x80 == 0 { 2 } else { 3 };
        assert_eq!(
            &value[public_at..public_at + 6],
            &[0x04, 37, 0x08, 0x02, 0x12, 33]
        );
        assert_eq!(
            &value[public_at + 6..public_at + 39],
            &key.public().to_compressed()[..]
        );
    }

    #[test]
    fn a_certificate_without_the_extension_or_with_it_twice_is_refused() {
        let key = NodeKey::generate();
        let none = certificate(|_| vec![]);
        assert!(matches!(
            verify_certificate(&none),
            Err(HandshakeError::Malformed(m)) if m.contains("no libp2p key extension")
        ));
        let twice = certificate(|spki| {
            let value = extension_value(&key, spki);
            vec![(EXTENSION_OID, value.clone()), (EXTENSION_OID, value)]
        });
        assert!(matches!(
            verify_certificate(&twice),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn a_signature_over_another_public_key_is_refused_naming_the_key() {
        let key = NodeKey::generate();
        // Signed for one TLS key, carried by a certificate of another.
        let der = certificate(|_| vec![(EXTENSION_OID, extension_value(&key, &other_spki()))]);
        assert_eq!(
            verify_certificate(&der),
            Err(HandshakeError::BadSignature { key: key.public() })
        );
    }

    #[test]
    fn an_uncompressed_extension_key_is_refused() {
        let key = NodeKey::generate();
        let der = certificate(|spki| {
            let public = PublicKey {
                key_type: SECP256K1,
                data: hex::decode(&key.public().to_string()[2..]).unwrap(),
            }
            .encode_to_vec();
            let signature = key.sign(&signed_message(spki));
            let value = yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_bytes(&public);
                    w.next().write_bytes(&signature);
                })
            });
            vec![(EXTENSION_OID, value)]
        });
        assert!(matches!(
            verify_certificate(&der),
            Err(HandshakeError::Malformed(m)) if m.contains("33-byte compressed")
        ));
    }

    #[test]
    fn a_certificate_key_other_than_p256_or_ed25519_is_refused() {
        let key = NodeKey::generate();
        let of = |algorithm| {
            let tls_key = KeyPair::generate_for(algorithm).unwrap();
            let mut params = CertificateParams::default();
            let value = extension_value(&key, &tls_key.subject_public_key_info());
            let mut extension = CustomExtension::from_oid_content(EXTENSION_OID, value);
            extension.set_criticality(true);
            params.custom_extensions.push(extension);
            params.self_signed(&tls_key).unwrap().der().to_vec()
        };
        assert!(matches!(
            verify_certificate(&of(&rcgen::PKCS_ECDSA_P384_SHA384)),
            Err(HandshakeError::Malformed(m)) if m.contains("neither ECDSA P-256 nor Ed25519")
        ));
        assert_eq!(
            verify_certificate(&of(&rcgen::PKCS_ED25519)),
            Ok(key.public())
        );
        assert_eq!(
            verify_certificate(&of(&rcgen::PKCS_ECDSA_P256_SHA256)),
            Ok(key.public())
        );
    }

    #[test]
    fn malformed_values_are_refused_without_panicking() {
        for value in [
            vec![],
            vec![0x30, 0x00],
            vec![0x30, 0x03, 0x04, 0x01, 0x00],
            // A PublicKey of type 1 (Ed25519).
            yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_bytes(&[0x08, 0x01, 0x12, 0x01, 0x00]);
                    w.next().write_bytes(&[0x30, 0x00]);
                })
            }),
            // A secp256k1 PublicKey whose data is not a point.
            yasna::construct_der(|w| {
                w.write_sequence(|w| {
                    w.next().write_bytes(&[0x08, 0x02, 0x12, 0x01, 0x00]);
                    w.next().write_bytes(&[0x30, 0x00]);
                })
            }),
        ] {
            let der = certificate(|_| vec![(EXTENSION_OID, value)]);
            assert!(matches!(
                verify_certificate(&der),
                Err(HandshakeError::Malformed(_))
            ));
        }
        assert!(verify_certificate(b"not a certificate").is_err());
    }
}
