//! The frames captured from Go Babble, under `tests/data/vectors`.

use std::path::PathBuf;

use babble_net::codec::Reply;
use babble_net::codec::{ClientCodec, ServerCodec};
use babble_net::{Command, Response, RpcType};
use bytes::BytesMut;
use serde::Deserialize;
use tokio_util::codec::Decoder;

/// One entry of `MANIFEST.json`.
#[derive(Debug, Deserialize)]
#[allow(dead_code)]
pub struct Vector {
    pub name: String,
    pub direction: String,
    pub rpc_type_byte: u8,
    pub file: String,
    pub size: usize,
    pub go_client_error: Option<String>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/vectors")
}

#[allow(dead_code)]
pub fn manifest() -> Vec<Vector> {
    let text = std::fs::read(dir().join("MANIFEST.json")).expect("MANIFEST.json");
    serde_json::from_slice(&text).expect("manifest parses")
}

pub fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(dir().join(format!("{name}.bin"))).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The request a vector holds.
pub fn request(name: &str) -> Command {
    let mut buf = BytesMut::from(&bytes(name)[..]);
    ServerCodec::default()
        .decode_eof(&mut buf)
        .expect("decodes")
        .expect("complete")
}

/// The reply a vector holds, read as the answer to `rpc_type`.
pub fn reply(name: &str, rpc_type: RpcType) -> Reply {
    let mut buf = BytesMut::from(&bytes(name)[..]);
    let mut codec = ClientCodec::default();
    codec.expect(rpc_type);
    codec
        .decode_eof(&mut buf)
        .expect("decodes")
        .expect("complete")
}

/// The response a vector holds.
#[allow(dead_code)]
pub fn response(name: &str, rpc_type: RpcType) -> Response {
    reply(name, rpc_type)
        .response
        .expect("vector has a response")
}
