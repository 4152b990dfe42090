//! Every frame captured from Go Babble decodes, and encodes back to the
//! very same bytes.

mod common;

use babble_net::codec::{encode_request, ClientCodec, CodecError, ServerCodec};
use babble_net::{Command, RpcType, TransportError};
use bytes::BytesMut;
use common::vectors;
use tokio_util::codec::{Decoder, Encoder};

fn rpc_type(byte: u8) -> RpcType {
    RpcType::from_byte(byte).expect("manifest names a known RPC type")
}

#[test]
fn every_vector_reencodes_to_identical_bytes() {
    let manifest = vectors::manifest();
    assert!(
        manifest.len() >= 30,
        "manifest lists {} vectors",
        manifest.len()
    );
    for vector in manifest
        .iter()
        .filter(|v| v.name != "unknown_rpc_type_request")
    {
        let wire = vectors::bytes(vector.name.as_str());
        assert_eq!(wire.len(), vector.size, "{}", vector.name);
        let mut encoded = BytesMut::new();
        if vector.direction == "request" {
            let command = vectors::request(&vector.name);
            assert_eq!(
                command.rpc_type() as u8,
                vector.rpc_type_byte,
                "{}",
                vector.name
            );
            encode_request(&command, &mut encoded).unwrap();
        } else {
            let reply = vectors::reply(&vector.name, rpc_type(vector.rpc_type_byte));
            ServerCodec::default().encode(&reply, &mut encoded).unwrap();
        }
        assert_eq!(
            String::from_utf8_lossy(&encoded),
            String::from_utf8_lossy(&wire),
            "{} does not re-encode identically",
            vector.name
        );
        assert_eq!(&encoded[..], &wire[..], "{}", vector.name);
    }
}

#[test]
fn remote_errors_are_taken_literally() {
    for vector in vectors::manifest()
        .iter()
        .filter(|v| v.go_client_error.is_some())
    {
        let reply = vectors::reply(&vector.name, rpc_type(vector.rpc_type_byte));
        // Go's client runs the string through fmt.Errorf; `%` survives here.
        let literal = std::str::from_utf8(&vectors::bytes(&vector.name))
            .unwrap()
            .lines()
            .next()
            .map(|line| serde_json::from_str::<String>(line).unwrap())
            .unwrap();
        assert_eq!(reply.error, literal);
    }
    let reply = vectors::reply("sync_error_percent_response", RpcType::Sync);
    assert_eq!(reply.error, "100% sure: %d");
    assert_eq!(reply.response, None);
}

#[test]
fn vectors_decode_when_fed_one_byte_at_a_time() {
    for vector in vectors::manifest()
        .iter()
        .filter(|v| v.name != "unknown_rpc_type_request")
    {
        let wire = vectors::bytes(&vector.name);
        let mut buf = BytesMut::new();
        let mut decoded = false;
        if vector.direction == "request" {
            let mut codec = ServerCodec::default();
            for byte in &wire {
                buf.extend_from_slice(&[*byte]);
                if let Some(command) = codec.decode(&mut buf).unwrap() {
                    assert_eq!(command, vectors::request(&vector.name));
                    decoded = true;
                }
            }
        } else {
            let mut codec = ClientCodec::default();
            codec.expect(rpc_type(vector.rpc_type_byte));
            for byte in &wire {
                buf.extend_from_slice(&[*byte]);
                if let Some(reply) = codec.decode(&mut buf).unwrap() {
                    let expected = vectors::reply(&vector.name, rpc_type(vector.rpc_type_byte));
                    assert_eq!(reply, expected);
                    decoded = true;
                }
            }
        }
        assert!(decoded, "{} never decoded", vector.name);
        assert!(buf.iter().all(u8::is_ascii_whitespace), "{}", vector.name);
    }
}

#[test]
fn unknown_rpc_type_is_refused() {
    let mut buf = BytesMut::from(&vectors::bytes("unknown_rpc_type_request")[..]);
    let err = ServerCodec::default().decode(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::UnknownRpcType(7)), "{err}");
    assert_eq!(err.to_string(), "unknown RPC type 7");
}

#[test]
fn requests_decode_without_their_newline_and_back_to_back() {
    let mut wire = Vec::new();
    for name in [
        "sync_request",
        "join_request",
        "eager_sync_request",
        "fast_forward_request",
    ] {
        let frame = vectors::bytes(name);
        wire.extend_from_slice(&frame[..frame.len() - 1]);
    }
    let mut buf = BytesMut::from(&wire[..]);
    let mut codec = ServerCodec::default();
    let mut types = Vec::new();
    while let Some(command) = codec.decode(&mut buf).unwrap() {
        types.push(command.rpc_type());
    }
    assert_eq!(
        types,
        [
            RpcType::Sync,
            RpcType::Join,
            RpcType::EagerSync,
            RpcType::FastForward
        ]
    );
}

#[test]
fn a_frame_over_the_limit_is_refused_before_it_is_complete() {
    let wire = vectors::bytes("sync_large_values_response");
    let mut codec = ClientCodec::new(1000);
    codec.expect(RpcType::Sync);
    let mut buf = BytesMut::from(&wire[..1001]);
    let err = codec.decode(&mut buf).unwrap_err();
    assert!(
        matches!(err, CodecError::FrameTooLarge { max: 1000, .. }),
        "{err}"
    );

    let request = vectors::bytes("join_strings_request");
    let mut buf = BytesMut::from(&request[..200]);
    let err = ServerCodec::new(199).decode(&mut buf).unwrap_err();
    let err = TransportError::from_codec(err, "peer1", std::time::Duration::from_secs(1));
    assert_eq!(
        err.to_string(),
        "frame from peer1 larger than the 199-byte limit"
    );
}

#[test]
fn truncated_and_malformed_frames_are_errors() {
    let wire = vectors::bytes("sync_request");
    let mut buf = BytesMut::from(&wire[..20]);
    let err = ServerCodec::default().decode_eof(&mut buf).unwrap_err();
    assert!(matches!(err, CodecError::Truncated), "{err}");

    let mut buf = BytesMut::from(&b"\x01{\"FromID\":-1}\n"[..]);
    let err = ServerCodec::default().decode(&mut buf).unwrap_err();
    assert!(err.to_string().starts_with("malformed request"), "{err}");

    let mut buf = BytesMut::from(&b"\x01{\"FromID\":1,}\n"[..]);
    assert!(ServerCodec::default().decode(&mut buf).is_err());

    let mut buf = BytesMut::from(&b"\x01]"[..]);
    assert!(ServerCodec::default().decode(&mut buf).is_err());
}

#[test]
fn go_decoding_leniency_unknown_fields_and_missing_fields() {
    let mut buf = BytesMut::from(&b"\x01 {\"Extra\":[1,{\"a\":null}],\"SyncLimit\":7}"[..]);
    let command = ServerCodec::default().decode(&mut buf).unwrap().unwrap();
    let Command::Sync(request) = command else {
        panic!("not a sync")
    };
    assert_eq!(
        (request.from_id, request.known, request.sync_limit),
        (0, None, 7)
    );
}

#[test]
fn a_reply_with_null_and_no_error_is_the_zero_response() {
    let mut codec = ClientCodec::default();
    codec.expect(RpcType::EagerSync);
    let mut buf = BytesMut::from(&b"\"\"\nnull\n"[..]);
    let reply = codec.decode(&mut buf).unwrap().unwrap();
    assert_eq!((reply.error.as_str(), reply.response), ("", None));
}
