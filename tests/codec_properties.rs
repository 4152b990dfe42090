//! Property tests of the frame codecs: every value survives a round trip,
//! and no input makes a decoder panic.

use std::collections::BTreeMap;

use babble_net::codec::{encode_request, ClientCodec, Reply, ServerCodec};
use babble_net::wire::*;
use babble_net::*;
use bytes::BytesMut;
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};

/// Strings with the characters Go escapes specially, and plenty of others.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9 ]{0,12}",
        "[<>&\"\\\\/\u{0}-\u{1f}\u{7f}\u{2028}\u{2029}\u{fffd}é😀a]{0,12}",
        any::<String>(),
    ]
}

fn bytes() -> impl Strategy<Value = Option<Vec<u8>>> {
    option::of(vec(any::<u8>(), 0..40))
}

fn bytes_list() -> impl Strategy<Value = Option<Vec<Option<Vec<u8>>>>> {
    option::of(vec(bytes(), 0..4))
}

fn peer() -> impl Strategy<Value = Peer> {
    (text(), text(), text()).prop_map(|(a, k, m)| Peer::new(a, k, m))
}

fn internal_transaction() -> impl Strategy<Value = InternalTransaction> {
    (any::<u8>(), peer(), text()).prop_map(|(kind, peer, signature)| InternalTransaction {
        body: InternalTransactionBody {
            kind: TransactionType(kind),
            peer,
        },
        signature,
    })
}

fn internal_transactions() -> impl Strategy<Value = Option<Vec<InternalTransaction>>> {
    option::of(vec(internal_transaction(), 0..3))
}

fn wire_event() -> impl Strategy<Value = WireEvent> {
    (
        bytes_list(),
        internal_transactions(),
        option::of(vec(
            (any::<i64>(), text())
                .prop_map(|(index, signature)| WireBlockSignature { index, signature }),
            0..3,
        )),
        any::<(u32, u32, i64, i64, i64, i64)>(),
        text(),
    )
        .prop_map(
            |(transactions, internal, signatures, numbers, signature)| WireEvent {
                body: WireBody {
                    transactions,
                    internal_transactions: internal,
                    block_signatures: signatures,
                    creator_id: numbers.0,
                    other_parent_creator_id: numbers.1,
                    index: numbers.2,
                    self_parent_index: numbers.3,
                    other_parent_index: numbers.4,
                    timestamp: numbers.5,
                },
                signature,
            },
        )
}

fn known() -> impl Strategy<Value = Known> {
    option::of(btree_map(any::<u32>(), any::<i64>(), 0..6))
}

fn event() -> impl Strategy<Value = Event> {
    (
        bytes_list(),
        internal_transactions(),
        option::of(vec(text(), 0..3)),
        bytes(),
        any::<(i64, i64)>(),
        option::of(vec(
            (bytes(), any::<i64>(), text()).prop_map(|(validator, index, signature)| {
                BlockSignature {
                    validator,
                    index,
                    signature,
                }
            }),
            0..2,
        )),
        text(),
    )
        .prop_map(
            |(transactions, internal, parents, creator, numbers, signatures, signature)| Event {
                body: EventBody {
                    transactions,
                    internal_transactions: internal,
                    parents,
                    creator,
                    index: numbers.0,
                    block_signatures: signatures,
                    timestamp: numbers.1,
                },
                signature,
            },
        )
}

fn frame_events() -> impl Strategy<Value = Option<Vec<Option<FrameEvent>>>> {
    option::of(vec(
        option::of((option::of(event()), any::<(i64, i64, bool)>()).prop_map(
            |(core, (round, lamport_timestamp, witness))| FrameEvent {
                core,
                round,
                lamport_timestamp,
                witness,
            },
        )),
        0..3,
    ))
}

fn peers() -> impl Strategy<Value = Option<Vec<Option<Peer>>>> {
    option::of(vec(option::of(peer()), 0..3))
}

fn frame() -> impl Strategy<Value = Frame> {
    (
        any::<(i64, i64)>(),
        peers(),
        option::of(btree_map(
            text(),
            option::of(frame_events().prop_map(|events| Root { events })),
            0..3,
        )),
        frame_events(),
        option::of(btree_map(any::<i64>(), peers(), 0..3)),
    )
        .prop_map(
            |((round, timestamp), peers, roots, events, peer_sets)| Frame {
                round,
                peers,
                roots,
                events,
                peer_sets,
                timestamp,
            },
        )
}

fn block() -> impl Strategy<Value = Block> {
    (
        any::<(i64, i64, i64)>(),
        (bytes(), bytes(), bytes()),
        bytes_list(),
        internal_transactions(),
        option::of(vec(
            (internal_transaction(), any::<bool>()).prop_map(|(internal_transaction, accepted)| {
                InternalTransactionReceipt {
                    internal_transaction,
                    accepted,
                }
            }),
            0..2,
        )),
        option::of(btree_map(text(), text(), 0..3)),
    )
        .prop_map(
            |(numbers, hashes, transactions, internal, receipts, signatures)| Block {
                body: BlockBody {
                    index: numbers.0,
                    round_received: numbers.1,
                    timestamp: numbers.2,
                    state_hash: hashes.0,
                    frame_hash: hashes.1,
                    peers_hash: hashes.2,
                    transactions,
                    internal_transactions: internal,
                    internal_transaction_receipts: receipts,
                },
                signatures,
            },
        )
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u32>(), known(), any::<i64>()).prop_map(|(from_id, known, sync_limit)| {
            Command::Sync(SyncRequest {
                from_id,
                known,
                sync_limit,
            })
        }),
        (any::<u32>(), option::of(vec(wire_event(), 0..3)))
            .prop_map(|(from_id, events)| Command::EagerSync(EagerSyncRequest { from_id, events })),
        any::<u32>().prop_map(|from_id| Command::FastForward(FastForwardRequest { from_id })),
        internal_transaction().prop_map(|internal_transaction| Command::Join(JoinRequest {
            internal_transaction
        })),
    ]
}

fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (any::<u32>(), option::of(vec(wire_event(), 0..3)), known()).prop_map(
            |(from_id, events, known)| Response::Sync(SyncResponse {
                from_id,
                events,
                known,
            })
        ),
        any::<(u32, bool)>().prop_map(|(from_id, success)| {
            Response::EagerSync(EagerSyncResponse { from_id, success })
        }),
        (any::<u32>(), block(), frame(), bytes()).prop_map(|(from_id, block, frame, snapshot)| {
            Response::FastForward(FastForwardResponse {
                from_id,
                block,
                frame,
                snapshot,
            })
        }),
        (any::<(u32, bool, i64)>(), peers()).prop_map(|(numbers, peers)| {
            Response::Join(JoinResponse {
                from_id: numbers.0,
                accepted: numbers.1,
                accepted_round: numbers.2,
                peers,
            })
        }),
    ]
}

fn reply() -> impl Strategy<Value = Reply> {
    (text(), option::of(response())).prop_map(|(error, response)| Reply { error, response })
}

/// Splits `bytes` into chunks at the given cut points and decodes them as
/// they arrive, as a socket would deliver them.
fn decode_in_chunks<D: Decoder>(decoder: &mut D, bytes: &[u8], cuts: &[usize]) -> Vec<D::Item>
where
    D::Error: std::fmt::Debug,
{
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    cuts.push(bytes.len());
    cuts.sort_unstable();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    let mut start = 0;
    for cut in cuts {
        buf.extend_from_slice(&bytes[start..cut]);
        start = cut;
        while let Some(item) = decoder.decode(&mut buf).unwrap() {
            items.push(item);
        }
    }
    items
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn any_request_round_trips(command in command(), cuts in vec(any::<usize>(), 0..4)) {
        let mut wire = BytesMut::new();
        encode_request(&command, &mut wire).unwrap();
        let decoded = decode_in_chunks(&mut ServerCodec::default(), &wire, &cuts);
        prop_assert_eq!(decoded, vec![command]);
    }

    #[test]
    fn any_reply_round_trips(reply in reply(), cuts in vec(any::<usize>(), 0..4)) {
        let rpc_type = reply.response.as_ref().map_or(RpcType::Sync, Response::rpc_type);
        let mut wire = BytesMut::new();
        ServerCodec::default().encode(&reply, &mut wire).unwrap();
        let mut codec = ClientCodec::default();
        codec.expect(rpc_type);
        let decoded = decode_in_chunks(&mut codec, &wire, &cuts);
        prop_assert_eq!(decoded, vec![reply]);
    }

    #[test]
    fn any_bytes_give_requests_or_an_error_never_a_panic(
        input in prop_oneof![vec(any::<u8>(), 0..512), garbled_frame()],
    ) {
        let mut codec = ServerCodec::new(4096);
        let mut buf = BytesMut::from(&input[..]);
        while let Ok(Some(_)) = codec.decode(&mut buf) {}
        let _ = codec.decode_eof(&mut buf);
    }

    #[test]
    fn any_bytes_give_replies_or_an_error_never_a_panic(
        input in prop_oneof![vec(any::<u8>(), 0..512), garbled_frame()],
        rpc in 0u8..4,
    ) {
        let mut codec = ClientCodec::new(4096);
        codec.expect(RpcType::from_byte(rpc).unwrap());
        let mut buf = BytesMut::from(&input[..]);
        let _ = codec.decode(&mut buf);
        let _ = codec.decode_eof(&mut buf);
    }
}

/// A valid frame with a few bytes changed: gets deeper into the decoders
/// than random bytes do.
fn garbled_frame() -> impl Strategy<Value = Vec<u8>> {
    (command(), vec((any::<usize>(), any::<u8>()), 1..4)).prop_map(|(command, edits)| {
        let mut wire = BytesMut::new();
        encode_request(&command, &mut wire).unwrap();
        let mut wire = wire.to_vec();
        for (at, byte) in edits {
            let at = at % wire.len();
            wire[at] = byte;
        }
        wire
    })
}

#[test]
fn deeply_nested_json_is_an_error_not_a_stack_overflow() {
    let mut input = vec![1u8];
    input.extend(std::iter::repeat_n(b'[', 100_000));
    input.extend(std::iter::repeat_n(b']', 100_000));
    let mut buf = BytesMut::from(&input[..]);
    assert!(ServerCodec::default().decode(&mut buf).is_err());
}

#[test]
fn map_keys_are_written_in_go_order() {
    let known: BTreeMap<u32, i64> = [(2, 0), (10, 1), (1, 2)].into_iter().collect();
    let json = babble_net::wire::go_json::to_vec(&SyncRequest {
        from_id: 0,
        known: Some(known),
        sync_limit: 0,
    })
    .unwrap();
    assert_eq!(
        String::from_utf8(json).unwrap(),
        r#"{"FromID":0,"Known":{"1":2,"10":1,"2":0},"SyncLimit":0}"#
    );
}
