//! A node's identity: its Babble key (secp256k1), as Go Babble stores and
//! prints it, and the signatures made with it.
//!
//! * The private key file holds the hex of the scalar D (Go Babble's
//!   `priv_key`); [`NodeKey::load`] also accepts a `0x` prefix, upper case
//!   and surrounding whitespace.
//! * The public key is written as Go Babble's `PubKeyHex`: `0X` and the
//!   upper-case hex of the uncompressed point (65 bytes, starting `04`);
//!   [`PeerKey::parse`] accepts any case and the compressed form too.
//! * Every signature is ECDSA over SHA-256 of the message, DER encoded, as
//!   libp2p signs with secp256k1 keys; signing is deterministic (RFC 6979).

use std::fmt;
use std::path::Path;

use k256::ecdsa::signature::{Signer, Verifier};
use k256::ecdsa::{Signature, SigningKey, VerifyingKey};

/// Why a key could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// What the system said.
        source: std::io::Error,
    },
    /// The text is not a key.
    #[error("not a secp256k1 key: {0}")]
    Malformed(String),
}

/// This node's private key.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the secret.
        f.debug_tuple("NodeKey")
            .field(&self.public().to_string())
            .finish()
    }
}

impl NodeKey {
    /// A new random key.
    pub fn generate() -> NodeKey {
        loop {
            let bytes: [u8; 32] = rand::random();
            if let Ok(signing) = SigningKey::from_slice(&bytes) {
                return NodeKey { signing };
            }
        }
    }

    /// Reads a key from the hex of its scalar (Go Babble's `priv_key`).
    pub fn from_hex(text: &str) -> Result<NodeKey, KeyError> {
        let bytes = decode_hex(text)?;
        let signing = SigningKey::from_slice(&bytes)
            .map_err(|_| KeyError::Malformed("not a valid private scalar".into()))?;
        Ok(NodeKey { signing })
    }

    /// Reads the key file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<NodeKey, KeyError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::File {
            path: path.display().to_string(),
            source,
        })?;
        NodeKey::from_hex(&text)
    }

    /// Writes the key file at `path` (readable by its owner only).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), KeyError> {
        let path = path.as_ref();
        let error = |source| KeyError::File {
            path: path.display().to_string(),
            source,
        };
        std::fs::write(path, self.to_hex()).map_err(error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(error)?;
        }
        Ok(())
    }

    /// The hex of the scalar, as Go Babble's `priv_key` holds it.
    pub fn to_hex(&self) -> String {
        hex::encode(self.signing.to_bytes())
    }

    /// The public key.
    pub fn public(&self) -> PeerKey {
        PeerKey::of(self.signing.verifying_key())
    }

    /// The DER ECDSA signature of SHA-256(`message`).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let signature: Signature = self.signing.sign(message);
        signature.to_der().as_bytes().to_vec()
    }
}

/// A node's public key: who a peer is. Kept compressed (33 bytes), a
/// valid point on secp256k1.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerKey {
    compressed: [u8; 33],
}

impl PeerKey {
    /// Parses a `PubKeyHex` (`0X04…`, any case, with or without the `0x`),
    /// or the hex of a compressed key.
    pub fn parse(text: &str) -> Result<PeerKey, KeyError> {
        PeerKey::from_sec1(&decode_hex(text)?)
    }

    /// A key from its SEC1 bytes (33 compressed or 65 uncompressed).
    pub fn from_sec1(bytes: &[u8]) -> Result<PeerKey, KeyError> {
        VerifyingKey::from_sec1_bytes(bytes)
            .map(|verifying| PeerKey::of(&verifying))
            .map_err(|_| KeyError::Malformed("not a point on secp256k1".into()))
    }

    fn of(verifying: &VerifyingKey) -> PeerKey {
        let point = verifying.to_encoded_point(true);
        let mut compressed = [0u8; 33];
        compressed.copy_from_slice(point.as_bytes());
        PeerKey { compressed }
    }

    fn verifying(&self) -> VerifyingKey {
        VerifyingKey::from_sec1_bytes(&self.compressed).expect("checked when made")
    }

    /// The 33-byte compressed form (what libp2p puts on the wire).
    pub fn to_compressed(&self) -> Vec<u8> {
        self.compressed.to_vec()
    }

    /// The compressed form, in lower-case hex (66 characters): the name
    /// under which a verified key is a source of requests.
    pub fn compressed_hex(&self) -> String {
        let mut text = [0u8; 66];
        hex::encode_to_slice(self.compressed, &mut text).expect("66 bytes hold 33 in hex");
        std::str::from_utf8(&text).expect("hex is ASCII").to_owned()
    }

    /// Whether `signature` (DER) is this key's signature of
    /// SHA-256(`message`).
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match Signature::from_der(signature) {
            // A high-S signature is as valid (Go's crypto/ecdsa and most
            // signers do not normalise): normalised, then verified. What
            // must recognise a signature again keys on the signed content.
            Ok(signature) => {
                let signature = signature.normalize_s().unwrap_or(signature);
                self.verifying().verify(message, &signature).is_ok()
            }
            Err(_) => false,
        }
    }
}

/// Go Babble's `PubKeyHex`: `0X` and the upper-case hex of the
/// uncompressed point.
impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let point = self.verifying().to_encoded_point(false);
        write!(f, "0X{}", hex::encode_upper(point.as_bytes()))
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey({self})")
    }
}

impl std::str::FromStr for PeerKey {
    type Err = KeyError;

    fn from_str(text: &str) -> Result<PeerKey, KeyError> {
        PeerKey::parse(text)
    }
}

fn decode_hex(text: &str) -> Result<Vec<u8>, KeyError> {
    let text = text.trim();
    let digits = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix("0X"))
        .unwrap_or(text);
    hex::decode(digits).map_err(|e| KeyError::Malformed(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_go_babbles_formats() {
        let key = NodeKey::generate();
        let again = NodeKey::from_hex(&format!(" 0x{}\n", key.to_hex().to_uppercase())).unwrap();
        assert_eq!(again.public(), key.public());
        let shown = key.public().to_string();
        assert!(
            shown.starts_with("0X04") && shown.len() == 2 + 130,
            "{shown}"
        );
        assert_eq!(shown, shown.to_uppercase());
        assert_eq!(PeerKey::parse(&shown).unwrap(), key.public());
        assert_eq!(PeerKey::parse(&shown.to_lowercase()).unwrap(), key.public());
        let compressed = hex::encode(key.public().to_compressed());
        assert_eq!(PeerKey::parse(&compressed).unwrap(), key.public());
    }

    #[test]
    fn a_known_scalar_gives_its_known_public_key() {
        // secp256k1's generator is the public key of the scalar 1.
        let one = NodeKey::from_hex(&format!("{:064x}", 1)).unwrap();
        assert_eq!(
            one.public().to_string(),
            "0X0479BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798\
             483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8"
        );
    }

    #[test]
    fn signatures_verify_only_for_their_key_and_message() {
        let key = NodeKey::generate();
        let signature = key.sign(b"hello");
        assert!(key.public().verify(b"hello", &signature));
        assert!(!key.public().verify(b"hellO", &signature));
        assert!(!NodeKey::generate().public().verify(b"hello", &signature));
        assert!(!key.public().verify(b"hello", b"not der"));
    }

    #[test]
    fn bad_keys_are_clear_errors() {
        assert!(NodeKey::from_hex("zz").is_err());
        assert!(NodeKey::from_hex(&"00".repeat(32)).is_err());
        assert!(PeerKey::parse("0X04").is_err());
        assert!(NodeKey::load("/nonexistent/priv_key").is_err());
    }
}
