use serde::{Deserialize, Serialize};

use super::bounded;
use super::{go_json, ByteSlice, ByteSlices};
use super::{BlockSignature, InternalTransaction};

/// A block signature inside a [`WireBody`]: the validator is implied by the
/// event's creator.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireBlockSignature {
    /// Index of the signed block.
    #[serde(rename = "Index")]
    pub index: i64,
    /// The signature.
    #[serde(rename = "Signature")]
    pub signature: String,
}

/// The body of a [`WireEvent`]: parents and creator are given as small
/// integer IDs and indexes instead of hashes and keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireBody {
    /// Application transactions (Go `[][]byte`; `None` is nil).
    #[serde(rename = "Transactions", with = "go_json::bytes_list")]
    pub transactions: ByteSlices,
    /// Transactions that change the group.
    #[serde(
        rename = "InternalTransactions",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub internal_transactions: Option<Vec<InternalTransaction>>,
    /// Signatures of blocks.
    #[serde(
        rename = "BlockSignatures",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub block_signatures: Option<Vec<WireBlockSignature>>,
    /// ID of the creator.
    #[serde(rename = "CreatorID")]
    pub creator_id: u32,
    /// ID of the other parent's creator.
    #[serde(rename = "OtherParentCreatorID")]
    pub other_parent_creator_id: u32,
    /// Index of this event in its creator's chain.
    #[serde(rename = "Index")]
    pub index: i64,
    /// Index of the self parent.
    #[serde(rename = "SelfParentIndex")]
    pub self_parent_index: i64,
    /// Index of the other parent.
    #[serde(rename = "OtherParentIndex")]
    pub other_parent_index: i64,
    /// Creation time (Unix seconds).
    #[serde(rename = "Timestamp")]
    pub timestamp: i64,
}

/// An event in its compact wire form (Go `hashgraph.WireEvent`), as carried
/// by Sync and EagerSync.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct WireEvent {
    /// The signed part.
    #[serde(rename = "Body")]
    pub body: WireBody,
    /// The creator's signature of the full event's hash.
    #[serde(rename = "Signature")]
    pub signature: String,
}

/// The signed part of an [`Event`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventBody {
    /// Application transactions (Go `[][]byte`; `None` is nil).
    #[serde(rename = "Transactions", with = "go_json::bytes_list")]
    pub transactions: ByteSlices,
    /// Transactions that change the group.
    #[serde(
        rename = "InternalTransactions",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub internal_transactions: Option<Vec<InternalTransaction>>,
    /// Hashes of the self parent and the other parent.
    #[serde(rename = "Parents", deserialize_with = "bounded::seq::deserialize")]
    pub parents: Option<Vec<String>>,
    /// Public key of the creator (Go `[]byte`).
    #[serde(rename = "Creator", with = "go_json::bytes")]
    pub creator: ByteSlice,
    /// Index of this event in its creator's chain.
    #[serde(rename = "Index")]
    pub index: i64,
    /// Signatures of blocks.
    #[serde(
        rename = "BlockSignatures",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub block_signatures: Option<Vec<BlockSignature>>,
    /// Creation time (Unix seconds).
    #[serde(rename = "Timestamp")]
    pub timestamp: i64,
}

/// A full hashgraph event (Go `hashgraph.Event`), as carried in frames.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// The signed part.
    #[serde(rename = "Body")]
    pub body: EventBody,
    /// The creator's signature of the body's hash.
    #[serde(rename = "Signature")]
    pub signature: String,
}
