//! The actors behind [babble-net](https://docs.rs/babble-net) and the wire
//! format they speak.
//!
//! **This crate is internal to babble-net.** Its items are public so that
//! `babble-net` can build on them, not for other users: depend on
//! `babble-net`, whose exports are the promised API; anything here may
//! change in any release.
//!
//! It holds the actors, one module each, with the messages they accept:
//!
//! * [`dispatcher`]: hands incoming RPCs to the application;
//! * [`listener`]: accepts connections and serves their requests;
//! * [`peer_pool`]: the outgoing path, and the connections to each peer;
//! * [`signaling`]: the session with the WebRTC signaling router (its
//!   protocol a socket-free state machine, [`signaling::client`]), the
//!   WAMP messages it shares with the router ([`signaling::wamp`]) and its
//!   TLS settings ([`signaling::tls`]);
//!
//! and what they share: [`wire`] (the RPC messages and hashgraph data,
//! encoded like Go Babble), [`codec`] (request and reply frames as
//! tokio-util codecs), [`rpc`] (an incoming RPC with its responder),
//! [`stream`] (the byte streams below), [`deadline`] (progress-aware I/O
//! deadlines) and [`error`].

#![warn(missing_docs)]

pub mod codec;
pub mod deadline;
pub mod dispatcher;
pub mod error;
pub mod identity;
pub mod io_arbiters;
pub mod listener;
pub mod metrics;
pub mod peer_pool;
pub mod rpc;
pub mod secure;
pub mod signaling;
pub mod stream;
pub mod wire;
