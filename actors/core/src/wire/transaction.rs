use serde::{Deserialize, Serialize};

use super::Peer;

/// The kind of an [`InternalTransaction`] (Go `hashgraph.TransactionType`).
///
/// Kept as the raw number so that a value this crate does not know (from a
/// newer node) still decodes and re-encodes unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TransactionType(pub u8);

impl TransactionType {
    /// Adds a peer to the group (Go `PEER_ADD`).
    pub const PEER_ADD: TransactionType = TransactionType(0);
    /// Removes a peer from the group (Go `PEER_REMOVE`).
    pub const PEER_REMOVE: TransactionType = TransactionType(1);
}

/// What an [`InternalTransaction`] asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InternalTransactionBody {
    /// Add or remove.
    #[serde(rename = "Type")]
    pub kind: TransactionType,
    /// The peer to add or remove.
    #[serde(rename = "Peer")]
    pub peer: Peer,
}

/// A transaction that changes the group itself, such as a peer joining.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InternalTransaction {
    /// The signed part.
    #[serde(rename = "Body")]
    pub body: InternalTransactionBody,
    /// The signature of the body's hash.
    #[serde(rename = "Signature")]
    pub signature: String,
}

impl InternalTransaction {
    /// An unsigned transaction of the given kind for `peer`.
    pub fn new(kind: TransactionType, peer: Peer) -> Self {
        InternalTransaction {
            body: InternalTransactionBody { kind, peer },
            signature: String::new(),
        }
    }
}

/// Whether the application accepted an [`InternalTransaction`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct InternalTransactionReceipt {
    /// The transaction this receipt is about.
    #[serde(rename = "InternalTransaction")]
    pub internal_transaction: InternalTransaction,
    /// The application's verdict.
    #[serde(rename = "Accepted")]
    pub accepted: bool,
}
