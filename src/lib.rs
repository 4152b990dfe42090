//! Transports for hashgraph (Babble) consensus nodes, on actix.
//!
//! A node talks to its peers through a [`Transport`]: it calls
//! [`sync`](Transport::sync), [`eager_sync`](Transport::eager_sync),
//! [`fast_forward`](Transport::fast_forward) and [`join`](Transport::join),
//! and answers the same RPCs from peers, which arrive as [`Rpc`]s through
//! [`Transport::consumer`]. Bytes on the wire are exactly Go Babble's, so
//! Rust and Go nodes can share a network.
//!
//! Transports:
//! * [`InmemTransport`]: inside one process, for tests and simulations.
//! * [`NetworkTransport::tcp`]: TCP, with a pool of connections per peer.
//! * [`NetworkTransport::webrtc`]: WebRTC data channels, peers meeting
//!   through a signaling server ([`signal`]).
//!
//! ```
//! use babble_net::{InmemTransport, Response, SyncRequest, SyncResponse, Transport};
//! use futures::StreamExt;
//!
//! # actix_rt::System::new().block_on(async {
//! let alice = InmemTransport::new(Some("alice".into()));
//! let bob = InmemTransport::new(Some("bob".into()));
//! alice.connect("bob", &bob);
//!
//! // Bob answers every Sync with what he knows.
//! let mut rpcs = bob.consumer();
//! actix_rt::spawn(async move {
//!     while let Some(rpc) = rpcs.next().await {
//!         let answer = SyncResponse { from_id: 2, ..Default::default() };
//!         rpc.respond(Ok(Response::Sync(answer)));
//!     }
//! });
//!
//! let response = alice.sync("bob", SyncRequest::default()).await.unwrap();
//! assert_eq!(response.from_id, 2);
//! # });
//! ```

#![warn(missing_docs)]

mod config;
mod consumer;
mod inmem;
pub mod logging;
mod network;
pub mod rtc;
pub mod signal;
mod tcp;
mod transport;

pub use babble_net_actors::codec::{self, Reply};
pub use babble_net_actors::dispatcher::DispatchStats;
pub use babble_net_actors::error::TransportError;
pub use babble_net_actors::peer_pool::PoolStats;
pub use babble_net_actors::rpc::{Responder, Rpc, DROPPED_WITHOUT_ANSWER};
pub use babble_net_actors::stream::{BoxConnection, Connection, StreamLayer};
pub use babble_net_actors::wire::{self, *};
pub use config::Config;
pub use consumer::Consumer;
pub use inmem::InmemTransport;
pub use network::NetworkTransport;
pub use tcp::TcpStreamLayer;
pub use transport::Transport;
