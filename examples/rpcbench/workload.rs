//! The rpcbench workload of BENCH.md: deterministic events and the answers
//! a `serve` gives, so that any two implementations agree byte for byte.
#![allow(dead_code)]

use std::collections::BTreeMap;

use babble_net::wire::{InternalTransaction, Peer, TransactionType, WireBody, WireEvent};
use babble_net::{
    Command, EagerSyncRequest, EagerSyncResponse, FastForwardRequest, FastForwardResponse,
    JoinRequest, JoinResponse, Response, SyncRequest, SyncResponse,
};

/// Transactions per event and bytes per transaction.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    pub tx_per_event: usize,
    pub tx_size: usize,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            tx_per_event: 4,
            tx_size: 100,
        }
    }
}

/// Event `i` of a generated batch.
pub fn event(i: usize, shape: Shape) -> WireEvent {
    let transactions = (0..shape.tx_per_event)
        .map(|t| {
            Some(
                (0..shape.tx_size)
                    .map(|j| ((i + t + j) % 251) as u8)
                    .collect(),
            )
        })
        .collect();
    let hex = format!("{i:x}");
    let signature: String = hex.chars().cycle().take(64).collect();
    let i = i as i64;
    WireEvent {
        body: WireBody {
            transactions: Some(transactions),
            internal_transactions: None,
            block_signatures: None,
            creator_id: (i % 4) as u32,
            other_parent_creator_id: ((i + 1) % 4) as u32,
            index: i,
            self_parent_index: i - 1,
            other_parent_index: i - 2,
            timestamp: 1_700_000_000 + i,
        },
        signature,
    }
}

/// Events `0..n`; `None` (Go's nil) when `n` is zero.
pub fn events(n: usize, shape: Shape) -> Option<Vec<WireEvent>> {
    (n > 0).then(|| (0..n).map(|i| event(i, shape)).collect())
}

/// What every client request says it knows.
pub fn known() -> Option<BTreeMap<u32, i64>> {
    Some([(0, 1), (1, 2), (2, 3)].into_iter().collect())
}

/// The peer a Join request introduces.
pub fn joining_peer() -> Peer {
    Peer::new(
        "127.0.0.1:1337",
        format!("0X04{}", "AB".repeat(64)),
        "rpcbench",
    )
}

/// The request `call` sends for `rpc`.
pub fn request(rpc: &str, sync_limit: usize, shape: Shape) -> Option<Command> {
    Some(match rpc {
        "sync" => Command::Sync(SyncRequest {
            from_id: 0,
            known: known(),
            sync_limit: sync_limit as i64,
        }),
        "eager" => Command::EagerSync(EagerSyncRequest {
            from_id: 0,
            events: events(sync_limit, shape),
        }),
        "fastforward" => Command::FastForward(FastForwardRequest { from_id: 0 }),
        "join" => Command::Join(JoinRequest {
            internal_transaction: InternalTransaction::new(
                TransactionType::PEER_ADD,
                joining_peer(),
            ),
        }),
        _ => return None,
    })
}

/// 1 MiB where byte j is j mod 251.
pub fn snapshot() -> Vec<u8> {
    (0..1 << 20).map(|j: usize| (j % 251) as u8).collect()
}

/// What a `serve` answers to `command`.
pub fn answer(command: &Command, shape: Shape, snapshot: &[u8]) -> Response {
    match command {
        Command::Sync(request) => Response::Sync(SyncResponse {
            from_id: 1,
            events: events(request.sync_limit.max(0) as usize, shape),
            known: request.known.clone(),
        }),
        Command::EagerSync(_) => Response::EagerSync(EagerSyncResponse {
            from_id: 1,
            success: true,
        }),
        Command::FastForward(_) => Response::FastForward(FastForwardResponse {
            from_id: 1,
            snapshot: Some(snapshot.to_vec()),
            ..Default::default()
        }),
        Command::Join(request) => Response::Join(JoinResponse {
            from_id: 1,
            accepted: true,
            accepted_round: 5,
            peers: Some(vec![Some(request.internal_transaction.body.peer.clone())]),
        }),
    }
}
