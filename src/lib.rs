//! Transports for hashgraph (Babble) consensus nodes, on actix.
//!
//! A node talks to its peers through a [`Transport`]: it calls
//! [`sync`](Transport::sync), [`eager_sync`](Transport::eager_sync),
//! [`fast_forward`](Transport::fast_forward) and [`join`](Transport::join),
//! and answers the same RPCs from peers, which arrive as [`Rpc`]s through
//! [`Transport::consumer`] (or an actor, [`Transport::consume_with`]).
//! Bytes on the wire are exactly Go Babble's, so Rust and Go nodes can
//! share a network.
//!
//! Transports, all configured by one [`Config`]:
//! * [`InmemTransport`]: inside one process, for tests and simulations;
//!   [`sim`] puts such transports on a simulated network with delay,
//!   loss, limited bandwidth and partitions.
//! * [`NetworkTransport::tcp`]: TCP, with a pool of connections per peer.
//! * [`NetworkTransport::webrtc`]: WebRTC data channels (feature `webrtc`,
//!   on by default), peers meeting through a signaling server
//!   ([`signal`]).
//! * [`NetworkTransport::quic`]: QUIC between Rust nodes (feature `quic`,
//!   on by default): one connection per peer, a stream per call, each
//!   side proving its node key in TLS ([`quic`]).
//!
//! Every failure is one [`TransportError`]; ask it what happened with its
//! predicates ([`is_timeout`](TransportError::is_timeout),
//! [`is_connect`](TransportError::is_connect),
//! [`is_remote`](TransportError::is_remote), ...).
//!
//! The rest lives in modules: [`wire`] (the hashgraph data the RPCs carry,
//! and Go's exact JSON), [`secure`] (node keys and authenticated,
//! encrypted channels), [`signal`] and [`rtc`] (WebRTC's signaling and
//! data channels), [`stream`] (the byte streams under a network transport,
//! to bring your own), [`codec`] (the frames, for tools), [`stats`] and
//! [`logging`].
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
//!
//! The actors behind the transports live in the `babble-net-actors` crate,
//! which is internal: only what this crate exports is promised.

#![cfg_attr(docsrs, feature(doc_cfg))]
#![warn(missing_docs)]

mod config;
mod consumer;
mod endpoint;
mod inmem;
pub mod limits;
pub mod logging;
pub mod metrics;
mod network;
#[cfg(feature = "quic")]
pub mod quic;
#[cfg(feature = "webrtc")]
pub mod rtc;
pub mod secure;
#[cfg(feature = "signal")]
pub mod signal;
pub mod sim;
mod tcp;
mod transport;

pub use babble_net_core::error::{RemoteError, RemoteKind, TransportError};
pub use babble_net_core::rpc::{Responder, Rpc};
pub use babble_net_core::wire::{
    Command, EagerSyncRequest, EagerSyncResponse, FastForwardRequest, FastForwardResponse,
    JoinRequest, JoinResponse, Response, RpcType, SyncRequest, SyncResponse,
};
pub use config::Config;
pub use consumer::Consumer;
pub use inmem::InmemTransport;
pub use network::NetworkTransport;
pub use transport::Transport;

/// docs/TESTING.md's Rust examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../docs/TESTING.md")]
pub struct TestingGuide;

pub mod wire {
    //! The hashgraph data that RPCs carry (events, blocks, frames, peers,
    //! transactions), with Go Babble's field names and order, and [`go_json`],
    //! which encodes them byte for byte as Go does (nodes sign those bytes).
    //!
    //! The RPC requests and responses themselves are at the crate root.

    pub use babble_net_core::wire::{
        go_json, Block, BlockBody, BlockSignature, ByteSlice, ByteSlices, Event, EventBody, Frame,
        FrameEvent, InternalTransaction, InternalTransactionBody, InternalTransactionReceipt,
        Known, Peer, Root, TransactionType, WireBlockSignature, WireBody, WireEvent,
    };
}

pub mod stream {
    //! The byte streams a [`NetworkTransport`](crate::NetworkTransport)
    //! runs on: implement [`StreamLayer`] to carry RPCs over something
    //! other than TCP or WebRTC, and pass it to
    //! [`NetworkTransport::new`](crate::NetworkTransport::new).

    pub use crate::tcp::TcpStreamLayer;
    pub use babble_net_core::stream::{BoxConnection, Connection, Inbound, StreamLayer, Upgraded};
}

pub mod codec {
    //! Request and reply frames of Go Babble's wire format, as tokio-util
    //! codecs, for tools that speak it directly (benchmarks, test peers).
    //! A node does not need them.

    pub use babble_net_core::codec::{
        encode_request, ClientCodec, CodecError, RawReply, RawRequest, Reply, ServerCodec,
        DEFAULT_MAX_FRAME_SIZE,
    };
}

pub mod stats {
    //! Counters a transport keeps, for tests and diagnostics.

    pub use babble_net_core::stats::DispatchStats;
    pub use babble_net_core::stats::PoolStats;
}
