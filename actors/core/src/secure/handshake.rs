//! The libp2p Noise XX handshake with a secp256k1 identity, as a state
//! machine: messages in, messages out, no socket.
//!
//! `Noise_XX_25519_ChaChaPoly_SHA256`, empty prologue. Message 1 (the
//! initiator's ephemeral key) carries no payload; messages 2 (responder)
//! and 3 (initiator) carry a `NoiseHandshakePayload`: the sender's
//! secp256k1 key and its signature of `"noise-libp2p-static-key:"`
//! followed by the sender's X25519 static key. A missing or bad signature
//! aborts the handshake. The initiator then checks the responder is the
//! key it expected for its target; the responder, that the initiator is
//! one it accepts.

use prost::Message;

use super::payload::{NoiseHandshakePayload, PublicKey, SECP256K1};
pub use super::Acceptance;
use super::HandshakeError;
use crate::identity::{NodeKey, PeerKey};

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XX_25519_ChaChaPoly_SHA256";
/// What an identity signature signs, before the static key.
const STATIC_KEY_DOMAIN: &[u8] = b"noise-libp2p-static-key:";
/// Largest handshake message accepted: the real ones are a few hundred
/// bytes.
pub const MAX_HANDSHAKE_MESSAGE: usize = 4096;

/// A node's half of a handshake.
pub struct Handshake {
    noise: snow::HandshakeState,
    key: NodeKey,
    /// The X25519 static public key, signed in the payload.
    static_public: Vec<u8>,
    role: Role,
    remote: Option<PeerKey>,
}

enum Role {
    Initiator { expect: PeerKey },
    Responder { accept: Acceptance },
}

/// A finished handshake: the keys for the transport, and who is there.
pub struct Established {
    /// The transport cipher states.
    pub transport: snow::TransportState,
    /// The other side's verified key.
    pub remote: PeerKey,
}

fn noise_error(error: snow::Error) -> HandshakeError {
    HandshakeError::Malformed(error.to_string())
}

impl Handshake {
    fn new(key: &NodeKey, role: Role) -> Result<Handshake, HandshakeError> {
        let params: snow::params::NoiseParams =
            NOISE_PARAMS.parse().expect("a valid Noise protocol name");
        let keypair = snow::Builder::new(params.clone())
            .generate_keypair()
            .map_err(noise_error)?;
        let builder = snow::Builder::new(params)
            .local_private_key(&keypair.private)
            .map_err(noise_error)?;
        let noise = match role {
            Role::Initiator { .. } => builder.build_initiator(),
            Role::Responder { .. } => builder.build_responder(),
        }
        .map_err(noise_error)?;
        Ok(Handshake {
            noise,
            key: key.clone(),
            static_public: keypair.public,
            role,
            remote: None,
        })
    }

    /// Starts a handshake as the dialler, expecting the responder to be
    /// `expect`. Returns the first message to send.
    pub fn initiate(
        key: &NodeKey,
        expect: PeerKey,
    ) -> Result<(Handshake, Vec<u8>), HandshakeError> {
        let mut handshake = Handshake::new(key, Role::Initiator { expect })?;
        let first = handshake.write(&[])?;
        Ok((handshake, first))
    }

    /// Waits for a dialler's first message, accepting initiators as said.
    pub fn respond(key: &NodeKey, accept: Acceptance) -> Result<Handshake, HandshakeError> {
        Handshake::new(key, Role::Responder { accept })
    }

    /// Takes the other side's next message; returns the message to send
    /// back, if any. After it, [`Handshake::is_finished`] may be true.
    pub fn receive(&mut self, message: &[u8]) -> Result<Option<Vec<u8>>, HandshakeError> {
        if message.len() > MAX_HANDSHAKE_MESSAGE {
            return Err(HandshakeError::Malformed(format!(
                "a handshake message of {} bytes",
                message.len()
            )));
        }
        let mut payload = vec![0u8; message.len()];
        let len = self
            .noise
            .read_message(message, &mut payload)
            .map_err(noise_error)?;
        payload.truncate(len);
        // Message 1 carries nothing; messages 2 and 3 the identity.
        if !payload.is_empty() || self.noise.get_remote_static().is_some() {
            let remote = self.identify(&payload)?;
            self.check(remote)?;
            self.remote = Some(remote);
        }
        if self.noise.is_handshake_finished() {
            return Ok(None);
        }
        // The responder answers message 1 with message 2; the initiator
        // message 2 with message 3. Both carry our identity.
        let ours = self.payload();
        self.write(&ours).map(Some)
    }

    /// Whether both sides have all they need.
    pub fn is_finished(&self) -> bool {
        self.noise.is_handshake_finished()
    }

    /// The keys for the transport and the other side's key; only once
    /// finished.
    pub fn finish(self) -> Result<Established, HandshakeError> {
        let remote = self
            .remote
            .ok_or_else(|| HandshakeError::Malformed("the handshake is not finished".into()))?;
        let transport = self.noise.into_transport_mode().map_err(noise_error)?;
        Ok(Established { transport, remote })
    }

    fn write(&mut self, payload: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut message = vec![0u8; MAX_HANDSHAKE_MESSAGE];
        let len = self
            .noise
            .write_message(payload, &mut message)
            .map_err(noise_error)?;
        message.truncate(len);
        Ok(message)
    }

    /// Our `NoiseHandshakePayload`.
    fn payload(&self) -> Vec<u8> {
        let identity_key = PublicKey {
            key_type: SECP256K1,
            data: self.key.public().to_compressed(),
        }
        .encode_to_vec();
        let identity_sig = self.key.sign(&signed_static(&self.static_public));
        NoiseHandshakePayload {
            identity_key,
            identity_sig,
        }
        .encode_to_vec()
    }

    /// The verified key of a payload, signed over the remote static key.
    fn identify(&self, payload: &[u8]) -> Result<PeerKey, HandshakeError> {
        let malformed = |what: &str| HandshakeError::Malformed(what.to_owned());
        let payload = NoiseHandshakePayload::decode(payload)
            .map_err(|_| malformed("the handshake payload is not a NoiseHandshakePayload"))?;
        let key = PublicKey::decode(&payload.identity_key[..])
            .map_err(|_| malformed("the identity key is not a PublicKey"))?;
        if key.key_type != SECP256K1 {
            return Err(malformed("the identity key is not a secp256k1 key"));
        }
        let remote = PeerKey::from_sec1(&key.data)
            .map_err(|_| malformed("the identity key is not a secp256k1 point"))?;
        let remote_static = self
            .noise
            .get_remote_static()
            .ok_or_else(|| malformed("no static key before the identity"))?;
        if !remote.verify(&signed_static(remote_static), &payload.identity_sig) {
            return Err(HandshakeError::BadSignature { key: remote });
        }
        Ok(remote)
    }

    fn check(&self, remote: PeerKey) -> Result<(), HandshakeError> {
        match &self.role {
            Role::Initiator { expect } if *expect != remote => Err(HandshakeError::WrongKey {
                expected: *expect,
                got: remote,
            }),
            Role::Responder {
                accept: Acceptance::Only(peers),
            } if !peers.contains(&remote) => Err(HandshakeError::NotAPeer { key: remote }),
            _ => Ok(()),
        }
    }
}

fn signed_static(static_public: &[u8]) -> Vec<u8> {
    [STATIC_KEY_DOMAIN, static_public].concat()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Runs a handshake between two state machines.
    fn run(
        dialler: &NodeKey,
        expect: PeerKey,
        listener: &NodeKey,
        accept: Acceptance,
    ) -> Result<(Established, Established), HandshakeError> {
        let (mut initiator, first) = Handshake::initiate(dialler, expect)?;
        let mut responder = Handshake::respond(listener, accept)?;
        let second = responder.receive(&first)?.expect("message 2");
        let third = initiator.receive(&second)?.expect("message 3");
        assert!(initiator.is_finished());
        assert_eq!(responder.receive(&third)?, None);
        assert!(responder.is_finished());
        Ok((initiator.finish()?, responder.finish()?))
    }

    #[test]
    fn both_sides_learn_the_others_key_and_share_a_channel() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let (mut ia, mut rb) = run(&a, b.public(), &b, Acceptance::AnyKey).unwrap();
        assert_eq!(ia.remote, b.public());
        assert_eq!(rb.remote, a.public());
        let mut message = [0u8; 64];
        let len = ia.transport.write_message(b"ping", &mut message).unwrap();
        let mut plain = [0u8; 64];
        let got = rb
            .transport
            .read_message(&message[..len], &mut plain)
            .unwrap();
        assert_eq!(&plain[..got], b"ping");
    }

    #[test]
    fn the_dialler_refuses_an_unexpected_responder() {
        let (a, b, c) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let err = run(&a, c.public(), &b, Acceptance::AnyKey).err().unwrap();
        assert!(
            matches!(err, HandshakeError::WrongKey { expected, got } if expected == c.public() && got == b.public()),
            "{err}"
        );
    }

    #[test]
    fn the_listener_refuses_a_key_outside_its_peer_set() {
        let (a, b, c) = (
            NodeKey::generate(),
            NodeKey::generate(),
            NodeKey::generate(),
        );
        let peers = Acceptance::Only(Arc::new([c.public()].into_iter().collect()));
        let err = run(&a, b.public(), &b, peers).err().unwrap();
        assert!(
            matches!(err, HandshakeError::NotAPeer { key } if key == a.public()),
            "{err}"
        );
    }

    #[test]
    fn a_forged_identity_signature_is_refused() {
        let (a, b) = (NodeKey::generate(), NodeKey::generate());
        let (mut initiator, first) = Handshake::initiate(&a, b.public()).unwrap();
        let mut responder = Handshake::respond(&b, Acceptance::AnyKey).unwrap();
        // The responder claims b's key but signs with another one.
        responder.key = NodeKey::generate();
        let forged_payload = NoiseHandshakePayload {
            identity_key: PublicKey {
                key_type: SECP256K1,
                data: b.public().to_compressed(),
            }
            .encode_to_vec(),
            identity_sig: responder.key.sign(&signed_static(&responder.static_public)),
        }
        .encode_to_vec();
        let mut payload = vec![0u8; 64];
        responder.noise.read_message(&first, &mut payload).unwrap();
        let second = responder.write(&forged_payload).unwrap();
        let err = initiator.receive(&second).err().unwrap();
        assert!(matches!(err, HandshakeError::BadSignature { .. }), "{err}");
    }

    #[test]
    fn garbage_and_oversized_messages_are_errors() {
        let b = NodeKey::generate();
        let mut responder = Handshake::respond(&b, Acceptance::AnyKey).unwrap();
        assert!(responder.receive(b"short").is_err());
        let mut responder = Handshake::respond(&b, Acceptance::AnyKey).unwrap();
        assert!(responder
            .receive(&vec![0u8; MAX_HANDSHAKE_MESSAGE + 1])
            .is_err());
    }
}
