//! The two protobuf messages of the libp2p Noise handshake payload.
//!
//! ```text
//! message PublicKey { required KeyType Type = 1; required bytes Data = 2; }  // keys.proto (proto2)
//! message NoiseHandshakePayload { bytes identity_key = 1; bytes identity_sig = 2; ... }
//! ```
//! `KeyType` 2 is Secp256k1, whose `Data` is the 33-byte compressed key.

/// libp2p's `PublicKey` (proto2, both fields required).
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct PublicKey {
    #[prost(int32, required, tag = "1")]
    pub(crate) key_type: i32,
    #[prost(bytes = "vec", required, tag = "2")]
    pub(crate) data: Vec<u8>,
}

/// `KeyType::Secp256k1`.
pub(crate) const SECP256K1: i32 = 2;

/// libp2p's `NoiseHandshakePayload` (proto3); extensions are ignored.
#[cfg(feature = "secure")]
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct NoiseHandshakePayload {
    #[prost(bytes = "vec", tag = "1")]
    pub(crate) identity_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub(crate) identity_sig: Vec<u8>,
}

#[cfg(all(test, feature = "secure"))]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn the_encoding_is_the_protobuf_one_byte_for_byte() {
        let key = PublicKey {
            key_type: SECP256K1,
            data: vec![0xaa; 3],
        };
        // field 1 varint 2; field 2 length 3.
        assert_eq!(
            key.encode_to_vec(),
            [0x08, 0x02, 0x12, 0x03, 0xaa, 0xaa, 0xaa]
        );
        let payload = NoiseHandshakePayload {
            identity_key: vec![1, 2],
            identity_sig: vec![3],
        };
        assert_eq!(payload.encode_to_vec(), [0x0a, 0x02, 1, 2, 0x12, 0x01, 3]);
        // Unknown fields (extensions, field 4) are skipped.
        let with_extensions = [0x0a, 0x01, 9, 0x22, 0x02, 0x0a, 0x00];
        let decoded = NoiseHandshakePayload::decode(&with_extensions[..]).unwrap();
        assert_eq!(decoded.identity_key, vec![9]);
    }
}
