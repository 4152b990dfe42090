//! The secure channel: the libp2p Noise handshake keyed to the node's
//! Babble key (its protocol in [`babble_net_core::secure`]), then every
//! byte encrypted and authenticated ([`stream`], feature `secure`). Inside,
//! the bytes are the usual Go Babble frames.
//!
//! Every handshake and transport message travels as a 2-byte big-endian
//! length and the Noise message (at most 65535 bytes, tag included).

#[cfg(feature = "secure")]
pub mod stream;

pub use babble_net_core::secure::*;
#[cfg(feature = "secure")]
pub use stream::NoiseStream;
