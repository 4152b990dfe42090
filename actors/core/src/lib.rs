//! The protocols of [babble-net](https://docs.rs/babble-net), without
//! actix and without I/O: what every transport of babble-net speaks and
//! decides, kept apart from the actors and streams that run it (as a
//! sans-I/O protocol crate is kept apart from its runtime).
//!
//! * [`wire`]: the RPC messages and hashgraph data, encoded exactly like
//!   Go Babble, and [`codec`]: request and reply frames;
//! * [`rpc`]: an incoming RPC with its responder, and [`error`]: the one
//!   error type of every transport;
//! * [`identity`]: node keys (secp256k1, Go Babble's format), and
//!   [`secure`]: the Noise handshake as a state machine (feature
//!   `secure`) and its errors;
//! * `signaling` (feature `signaling`): the WAMP messages, signed offers
//!   and the node's signaling session as a state machine;
//! * `quic` (feature `quic`): the QUIC transport's certificate
//!   extension, binding a TLS certificate to a node key;
//! * [`source`] and [`places`]: who a connection comes from, and who
//!   keeps a place at a cap;
//! * [`stream`]: what a transport needs of the byte streams below it (the
//!   `StreamLayer` trait; the streams themselves are the runtime's), and
//!   [`stats`]: counts a transport keeps.
//!
//! `babble-net` re-exports the types it promises from here; this crate is
//! versioned with it.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod codec;
pub mod error;
pub mod identity;
pub mod places;
#[cfg(feature = "quic")]
pub mod quic;
pub mod rpc;
pub mod secure;
#[cfg(feature = "signaling")]
pub mod signaling;
pub mod source;
pub mod stats;
pub mod stream;
pub mod wire;
