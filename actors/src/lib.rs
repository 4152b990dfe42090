//! The actors behind [babble-net](https://docs.rs/babble-net) and the wire
//! format they speak.
//!
//! Most users depend on `babble-net`, which re-exports what a node needs.
//! This crate holds the actors, one module each, with the messages they
//! accept:
//!
//! * [`dispatcher`]: hands incoming RPCs to the application;
//! * [`listener`]: accepts connections and serves their requests;
//! * [`peer_pool`]: the connections to one peer, and outgoing calls;
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
pub mod listener;
pub mod peer_pool;
pub mod rpc;
pub mod signaling;
pub mod stream;
pub mod tls;
pub mod wamp;
pub mod wire;
