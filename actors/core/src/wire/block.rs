use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bounded;
use super::{go_json, ByteSlice, ByteSlices};
use super::{InternalTransaction, InternalTransactionReceipt};

/// A validator's signature of a block.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockSignature {
    /// Public key of the validator (Go `[]byte`).
    #[serde(rename = "Validator", with = "go_json::bytes")]
    pub validator: ByteSlice,
    /// Index of the signed block.
    #[serde(rename = "Index")]
    pub index: i64,
    /// The signature.
    #[serde(rename = "Signature")]
    pub signature: String,
}

/// The signed part of a [`Block`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BlockBody {
    /// Position of the block in the chain.
    #[serde(rename = "Index")]
    pub index: i64,
    /// The round whose events this block holds.
    #[serde(rename = "RoundReceived")]
    pub round_received: i64,
    /// Consensus time (Unix seconds).
    #[serde(rename = "Timestamp")]
    pub timestamp: i64,
    /// Application state after the block (Go `[]byte`).
    #[serde(rename = "StateHash", with = "go_json::bytes")]
    pub state_hash: ByteSlice,
    /// Hash of the frame the block was built from (Go `[]byte`).
    #[serde(rename = "FrameHash", with = "go_json::bytes")]
    pub frame_hash: ByteSlice,
    /// Hash of the peer set (Go `[]byte`).
    #[serde(rename = "PeersHash", with = "go_json::bytes")]
    pub peers_hash: ByteSlice,
    /// Application transactions (Go `[][]byte`).
    #[serde(rename = "Transactions", with = "go_json::bytes_list")]
    pub transactions: ByteSlices,
    /// Transactions that change the group.
    #[serde(
        rename = "InternalTransactions",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub internal_transactions: Option<Vec<InternalTransaction>>,
    /// The application's verdicts on the internal transactions.
    #[serde(
        rename = "InternalTransactionReceipts",
        deserialize_with = "bounded::seq::deserialize"
    )]
    pub internal_transaction_receipts: Option<Vec<InternalTransactionReceipt>>,
}

/// A block of consensus transactions (Go `hashgraph.Block`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Block {
    /// The signed part.
    #[serde(rename = "Body")]
    pub body: BlockBody,
    /// Validator public key (hex) to signature; `None` is a nil map.
    #[serde(rename = "Signatures", deserialize_with = "bounded::map::deserialize")]
    pub signatures: Option<BTreeMap<String, String>>,
}
