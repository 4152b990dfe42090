use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::bounded;
use super::{go_json, ByteSlice};
use super::{Block, Frame, InternalTransaction, Peer, WireEvent};

/// The first byte of a request frame: which RPC follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum RpcType {
    /// A request to join the group.
    Join = 0,
    /// Pull: ask a peer for the events we do not know.
    Sync = 1,
    /// Push: hand a peer the events it does not know.
    EagerSync = 2,
    /// Ask for a block, frame and snapshot to start from.
    FastForward = 3,
}

impl RpcType {
    /// The RPC type for a frame's first byte, if it is one.
    pub fn from_byte(byte: u8) -> Option<RpcType> {
        match byte {
            0 => Some(RpcType::Join),
            1 => Some(RpcType::Sync),
            2 => Some(RpcType::EagerSync),
            3 => Some(RpcType::FastForward),
            _ => None,
        }
    }

    /// A short lowercase name, as used in logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            RpcType::Join => "join",
            RpcType::Sync => "sync",
            RpcType::EagerSync => "eager_sync",
            RpcType::FastForward => "fast_forward",
        }
    }
}

impl fmt::Display for RpcType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How much a node knows: creator ID to the index of the last event it has
/// from that creator (Go `map[uint32]int`; `None` is a nil map).
pub type Known = Option<BTreeMap<u32, i64>>;

/// The pull half of gossip: "send me what I do not know".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncRequest {
    /// ID of the requesting node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// What the requester already knows.
    #[serde(rename = "Known", with = "go_json::string_sorted_map")]
    pub known: Known,
    /// The most events the requester wants back.
    #[serde(rename = "SyncLimit")]
    pub sync_limit: i64,
}

/// The events a [`SyncRequest`] asked for, and what the responder knows.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SyncResponse {
    /// ID of the responding node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// The events, in topological order; `None` when there are none.
    #[serde(rename = "Events", deserialize_with = "bounded::seq::deserialize")]
    pub events: Option<Vec<WireEvent>>,
    /// What the responder knows.
    #[serde(rename = "Known", with = "go_json::string_sorted_map")]
    pub known: Known,
}

/// The push half of gossip: events the receiver is missing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EagerSyncRequest {
    /// ID of the pushing node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// The pushed events.
    #[serde(rename = "Events", deserialize_with = "bounded::seq::deserialize")]
    pub events: Option<Vec<WireEvent>>,
}

/// Whether an [`EagerSyncRequest`] was applied.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EagerSyncResponse {
    /// ID of the responding node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// True when the events were inserted.
    #[serde(rename = "Success")]
    pub success: bool,
}

/// Asks a peer for a state to fast-forward from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FastForwardRequest {
    /// ID of the requesting node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
}

/// A block, its frame and the application snapshot to restart from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FastForwardResponse {
    /// ID of the responding node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// The block to start from.
    #[serde(rename = "Block")]
    pub block: Block,
    /// The frame the block was built from.
    #[serde(rename = "Frame")]
    pub frame: Frame,
    /// The application's state at that block (Go `[]byte`).
    #[serde(rename = "Snapshot", with = "go_json::bytes")]
    pub snapshot: ByteSlice,
}

/// A request to join the group, carried as a PEER_ADD internal transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinRequest {
    /// The signed PEER_ADD transaction.
    #[serde(rename = "InternalTransaction")]
    pub internal_transaction: InternalTransaction,
}

/// The group's verdict on a [`JoinRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct JoinResponse {
    /// ID of the responding node.
    #[serde(rename = "FromID")]
    pub from_id: u32,
    /// Whether the join was accepted.
    #[serde(rename = "Accepted")]
    pub accepted: bool,
    /// The round from which the new peer takes part.
    #[serde(rename = "AcceptedRound")]
    pub accepted_round: i64,
    /// The peer set the newcomer joins (elements are Go pointers).
    #[serde(rename = "Peers", deserialize_with = "bounded::seq::deserialize")]
    pub peers: Option<Vec<Option<Peer>>>,
}

/// An incoming request, as decoded from a request frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// See [`SyncRequest`].
    Sync(SyncRequest),
    /// See [`EagerSyncRequest`].
    EagerSync(EagerSyncRequest),
    /// See [`FastForwardRequest`].
    FastForward(FastForwardRequest),
    /// See [`JoinRequest`].
    Join(JoinRequest),
}

impl Command {
    /// Which RPC this is.
    pub fn rpc_type(&self) -> RpcType {
        match self {
            Command::Sync(_) => RpcType::Sync,
            Command::EagerSync(_) => RpcType::EagerSync,
            Command::FastForward(_) => RpcType::FastForward,
            Command::Join(_) => RpcType::Join,
        }
    }

    /// About how many bytes the request's frame takes, found without
    /// encoding it (used to decide where to encode it: a large frame's
    /// encoding moves off the caller's thread). Counts what dominates:
    /// the events and their transactions.
    pub fn size_hint(&self) -> usize {
        const SMALL: usize = 256;
        match self {
            Command::EagerSync(request) => SMALL + events_size_hint(request.events.as_deref()),
            Command::Sync(request) => SMALL + request.known.as_ref().map_or(0, |k| k.len() * 24),
            Command::FastForward(_) | Command::Join(_) => SMALL,
        }
    }
}

/// About how many bytes `events` take as JSON.
fn events_size_hint(events: Option<&[super::WireEvent]>) -> usize {
    /// The fields of an event other than its transactions and signature.
    const EVENT: usize = 192;
    events.unwrap_or_default().iter().fold(0, |total, event| {
        let body = &event.body;
        let transactions: usize = body
            .transactions
            .iter()
            .flatten()
            .map(|tx| tx.as_ref().map_or(0, Vec::len).div_ceil(3) * 4 + 3)
            .sum();
        let others = body.internal_transactions.as_ref().map_or(0, Vec::len)
            + body.block_signatures.as_ref().map_or(0, Vec::len);
        total
            .saturating_add(EVENT + event.signature.len() + transactions)
            .saturating_add(others.saturating_mul(EVENT))
    })
}

/// The events, roots and peers of a frame, each a few hundred bytes of
/// keys and hashes.
fn frame_parts(frame: &super::Frame) -> usize {
    frame.events.as_ref().map_or(0, Vec::len)
        + frame.roots.as_ref().map_or(0, |roots| roots.len())
        + frame.peers.as_ref().map_or(0, Vec::len)
        + frame
            .peer_sets
            .iter()
            .flatten()
            .map(|(_, set)| set.as_ref().map_or(1, Vec::len))
            .sum::<usize>()
}

/// The answer to a [`Command`]; its variant must match the command's.
// A FastForward response is a few hundred bytes inline (its snapshot is on
// the heap); boxing it would only make matching on it clumsier.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// See [`SyncResponse`].
    Sync(SyncResponse),
    /// See [`EagerSyncResponse`].
    EagerSync(EagerSyncResponse),
    /// See [`FastForwardResponse`].
    FastForward(FastForwardResponse),
    /// See [`JoinResponse`].
    Join(JoinResponse),
}

impl Response {
    /// Which RPC this answers.
    pub fn rpc_type(&self) -> RpcType {
        match self {
            Response::Sync(_) => RpcType::Sync,
            Response::EagerSync(_) => RpcType::EagerSync,
            Response::FastForward(_) => RpcType::FastForward,
            Response::Join(_) => RpcType::Join,
        }
    }

    /// About how many bytes the response's frame takes, found without
    /// encoding it (see [`Command::size_hint`]).
    pub fn size_hint(&self) -> usize {
        const SMALL: usize = 256;
        match self {
            Response::Sync(response) => {
                SMALL
                    + events_size_hint(response.events.as_deref())
                    + response.known.as_ref().map_or(0, |k| k.len() * 24)
            }
            Response::EagerSync(_) => SMALL,
            Response::FastForward(response) => {
                // The snapshot and the block's transactions as base64, and
                // a generous share for each event, root and peer of the
                // frame (each is a few hundred bytes of keys and hashes).
                let base64 = |len: usize| len.div_ceil(3) * 4;
                let transactions: usize = (response.block.body.transactions.iter().flatten())
                    .map(|tx| base64(tx.as_ref().map_or(0, Vec::len)) + 3)
                    .sum();
                let parts = frame_parts(&response.frame);
                (4 * SMALL)
                    .saturating_add(base64(response.snapshot.as_ref().map_or(0, Vec::len)))
                    .saturating_add(transactions)
                    .saturating_add(parts.saturating_mul(4 * SMALL))
            }
            Response::Join(response) => {
                SMALL
                    + response
                        .peers
                        .as_ref()
                        .map_or(0, |peers| peers.len() * SMALL)
            }
        }
    }

    /// About how many bytes of memory the response holds (its own heap
    /// allocations, generously), found without walking every field: the
    /// events' and blocks' transactions and signatures byte for byte, and
    /// a few hundred bytes for each other part. A budget for replies
    /// charges this for a reply from the moment the node hands it over
    /// until it is encoded.
    pub fn memory_hint(&self) -> usize {
        /// What an allocation costs beyond its bytes: the allocator's
        /// header and rounding, and the slot that points to it.
        const PER_ALLOCATION: usize = 48;
        const PART: usize = 1024;
        let bytes = |tx: &Option<Vec<u8>>| tx.as_ref().map_or(0, Vec::len) + PER_ALLOCATION;
        match self {
            Response::Sync(response) => {
                let events = response.events.as_deref().unwrap_or_default();
                events.iter().fold(PART, |total, event| {
                    let body = &event.body;
                    let transactions: usize = body.transactions.iter().flatten().map(bytes).sum();
                    let others = body.internal_transactions.as_ref().map_or(0, Vec::len)
                        + body.block_signatures.as_ref().map_or(0, Vec::len);
                    total
                        .saturating_add(std::mem::size_of::<super::WireEvent>())
                        .saturating_add(event.signature.len() + PER_ALLOCATION)
                        .saturating_add(transactions)
                        .saturating_add(others.saturating_mul(PART))
                }) + response
                    .known
                    .as_ref()
                    .map_or(0, |k| k.len() * PER_ALLOCATION)
            }
            Response::EagerSync(_) => PART,
            Response::FastForward(response) => {
                let transactions: usize = (response.block.body.transactions.iter().flatten())
                    .map(bytes)
                    .sum();
                let parts = frame_parts(&response.frame);
                (4 * PART)
                    .saturating_add(response.snapshot.as_ref().map_or(0, Vec::len))
                    .saturating_add(transactions)
                    .saturating_add(parts.saturating_mul(4 * PART))
            }
            Response::Join(response) => {
                PART + response
                    .peers
                    .as_ref()
                    .map_or(0, |peers| peers.len() * PART)
            }
        }
    }

    /// The zero value of the response to `rpc_type`, which is what a Go
    /// client is left with when the server sends `null` and no error.
    pub fn zero(rpc_type: RpcType) -> Response {
        match rpc_type {
            RpcType::Sync => Response::Sync(SyncResponse::default()),
            RpcType::EagerSync => Response::EagerSync(EagerSyncResponse::default()),
            RpcType::FastForward => Response::FastForward(FastForwardResponse::default()),
            RpcType::Join => Response::Join(JoinResponse::default()),
        }
    }
}

macro_rules! rpc_conversions {
    ($($variant:ident: $request:ident => $response:ident),* $(,)?) => {$(
        impl From<$request> for Command {
            fn from(request: $request) -> Command {
                Command::$variant(request)
            }
        }

        impl From<$response> for Response {
            fn from(response: $response) -> Response {
                Response::$variant(response)
            }
        }

        impl TryFrom<Response> for $response {
            type Error = Response;

            /// Gives the response back when it is of another RPC.
            fn try_from(response: Response) -> Result<$response, Response> {
                match response {
                    Response::$variant(inner) => Ok(inner),
                    other => Err(other),
                }
            }
        }
    )*};
}

rpc_conversions! {
    Sync: SyncRequest => SyncResponse,
    EagerSync: EagerSyncRequest => EagerSyncResponse,
    FastForward: FastForwardRequest => FastForwardResponse,
    Join: JoinRequest => JoinResponse,
}
