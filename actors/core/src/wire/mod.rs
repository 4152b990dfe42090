//! The data Babble nodes exchange, with Go Babble v0.8's field names and
//! order, and the JSON rules that make their encoding byte-identical to Go's.
//!
//! Go's nil and empty are different on the wire (`null` versus `[]`, `{}` or
//! `""`), and nodes sign those bytes, so the types keep the difference:
//! a Go slice, map or `[]byte` is an `Option`, and a Go pointer inside a
//! slice or map is an `Option` too.

mod block;
pub mod bounded;
mod event;
mod frame;
pub mod go_json;
mod messages;
mod peer;
mod transaction;

/// A Go `[]byte`: `None` is nil (`null` on the wire), `Some` is base64 text.
pub type ByteSlice = Option<Vec<u8>>;

/// A Go `[][]byte`, such as a list of transactions: the list and each
/// element can be nil.
pub type ByteSlices = Option<Vec<ByteSlice>>;

pub use block::{Block, BlockBody, BlockSignature};
pub use event::{Event, EventBody, WireBlockSignature, WireBody, WireEvent};
pub use frame::{Frame, FrameEvent, Root};
pub use messages::{
    Command, EagerSyncRequest, EagerSyncResponse, FastForwardRequest, FastForwardResponse,
    JoinRequest, JoinResponse, Known, Response, RpcType, SyncRequest, SyncResponse,
};
pub use peer::Peer;
pub use transaction::{
    InternalTransaction, InternalTransactionBody, InternalTransactionReceipt, TransactionType,
};
