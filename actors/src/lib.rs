//! The actors behind [babble-net](https://docs.rs/babble-net) and the wire
//! format they speak.
//!
//! Most users depend on `babble-net`, which re-exports what a node needs.
//! This crate holds:
//!
//! * [`wire`]: the RPC messages and hashgraph data, encoded like Go Babble;
//! * [`codec`]: request and reply frames as tokio-util codecs;
//! * [`rpc`]: an incoming RPC with the means to answer it;
//! * the actors: [`dispatcher`].

#![warn(missing_docs)]

pub mod codec;
pub mod dispatcher;
pub mod error;
pub mod rpc;
pub mod wire;
