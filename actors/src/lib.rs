//! The actors behind [babble-net](https://docs.rs/babble-net), and the
//! streams they run the protocols of `babble-net-core` over.
//!
//! **This crate is internal to babble-net.** Its items are public so that
//! `babble-net` can build on them, not for other users: depend on
//! `babble-net`, whose exports are the promised API; anything here may
//! change in any release.
//!
//! It holds the actors, one module each, with the messages they accept:
//!
//! * [`dispatcher`]: hands incoming RPCs to the application, from the
//!   [`fair_queue`] where they wait by [`source`];
//! * [`listener`]: accepts connections and serves their requests;
//! * [`peer_pool`]: the outgoing path, and the connections to each peer;
//! * `signaling` (feature `signaling`): the session with the WebRTC
//!   signaling router (its protocol a socket-free state machine,
//!   `signaling::client`), the WAMP messages it shares with the router
//!   (`signaling::wamp`) and its TLS settings (`signaling::tls`);
//!
//! and what they share: [`secure`]
//! (the Noise channel over a stream, feature `secure`), [`deadline`]
//! (progress-aware I/O deadlines), [`io_arbiters`] (the I/O threads).
//! The protocols themselves ([`wire`], [`codec`], [`rpc`], [`error`],
//! [`identity`], [`source`], [`places`], [`stream`], [`stats`]) are
//! `babble-net-core`'s, re-exported here under the same paths.

#![warn(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The protocols these actors run, from the crate that defines them.
pub use babble_net_core::{codec, error, identity, places, rpc, source, stats, stream, wire};

pub mod allocator;
pub mod call_metrics;
pub mod deadline;
pub mod dispatcher;
pub mod fair_queue;
pub mod io_arbiters;
pub mod listener;
pub mod metrics;
pub mod peer_pool;
pub mod secure;
#[cfg(feature = "signaling")]
pub mod signaling;
pub mod spin;
