use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::bounded;
use super::go_json;
use super::{Event, Peer};

/// An event of a [`Frame`] with its consensus metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct FrameEvent {
    /// The event itself (a Go pointer: `None` is nil).
    #[serde(rename = "Core")]
    pub core: Option<Event>,
    /// Its round.
    #[serde(rename = "Round")]
    pub round: i64,
    /// Its Lamport timestamp.
    #[serde(rename = "LamportTimestamp")]
    pub lamport_timestamp: i64,
    /// Whether it is a witness.
    #[serde(rename = "Witness")]
    pub witness: bool,
}

/// The base on which a participant's events of a [`Frame`] are built.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Root {
    /// The events below the frame (elements are Go pointers).
    #[serde(rename = "Events", deserialize_with = "bounded::seq::deserialize")]
    pub events: Option<Vec<Option<FrameEvent>>>,
}

/// The state from which a node can fast-forward (Go `hashgraph.Frame`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Frame {
    /// The frame's round.
    #[serde(rename = "Round")]
    pub round: i64,
    /// The peer set of the round (elements are Go pointers).
    #[serde(rename = "Peers", deserialize_with = "bounded::seq::deserialize")]
    pub peers: Option<Vec<Option<Peer>>>,
    /// Public key (hex) to that participant's root.
    #[serde(rename = "Roots", deserialize_with = "bounded::map::deserialize")]
    pub roots: Option<BTreeMap<String, Option<Root>>>,
    /// The events of the frame, in consensus order.
    #[serde(rename = "Events", deserialize_with = "bounded::seq::deserialize")]
    pub events: Option<Vec<Option<FrameEvent>>>,
    /// Round to the peer set that took effect in it.
    #[serde(
        rename = "PeerSets",
        serialize_with = "go_json::string_sorted_map::serialize",
        deserialize_with = "bounded::map_of_seqs::deserialize"
    )]
    pub peer_sets: Option<BTreeMap<i64, Option<Vec<Option<Peer>>>>>,
    /// Consensus time (Unix seconds).
    #[serde(rename = "Timestamp")]
    pub timestamp: i64,
}
