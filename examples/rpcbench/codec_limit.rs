//! The codec-only limit of `sync-1000`: encode and decode of the same reply
//! in memory, with our codec and with plain serde_json.

use std::hint::black_box;
use std::time::Instant;

use babble_net::codec::{ClientCodec, Reply, ServerCodec};
use babble_net::{Response, RpcType, SyncResponse};
use bytes::BytesMut;
use tokio_util::codec::{Decoder, Encoder};

use super::workload::{self, Shape};

/// Encodes and decodes a SyncResponse of `sync_limit` events `iterations`
/// times both ways; prints one JSON line.
/// `skip_plain` leaves out the serde_json half (to profile ours alone).
pub fn run(sync_limit: usize, shape: Shape, iterations: u32, skip_plain: bool) -> String {
    let response = SyncResponse {
        from_id: 1,
        events: workload::events(sync_limit, shape),
        known: workload::known(),
    };
    let reply = Reply::ok(Response::Sync(response.clone()));

    let mut buf = BytesMut::new();
    let mut server = ServerCodec::default();
    let mut client = ClientCodec::default();
    let started = Instant::now();
    let mut frame_len = 0;
    for _ in 0..iterations {
        server.encode(&reply, &mut buf).unwrap();
        frame_len = buf.len();
        client.expect(RpcType::Sync);
        let decoded = client.decode(&mut buf).unwrap().unwrap();
        black_box(decoded);
        buf.clear();
    }
    let ours = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut json_len = 0;
    let iterations_plain = if skip_plain { 0 } else { iterations };
    for _ in 0..iterations_plain {
        let json = serde_json::to_vec(black_box(&response)).unwrap();
        json_len = json.len();
        let decoded: SyncResponse = serde_json::from_slice(&json).unwrap();
        black_box(decoded);
    }
    let plain = started.elapsed().as_secs_f64();

    let n = f64::from(iterations);
    let mb = |bytes: usize, secs: f64| bytes as f64 * n / secs / 1e6;
    format!(
        r#"{{"mode":"codec","sync_limit":{sync_limit},"iterations":{iterations},"frame_bytes":{frame_len},"json_bytes":{json_len},"ours_mb_per_s":{:.1},"serde_json_mb_per_s":{:.1},"ours_events_per_s":{:.0},"serde_json_events_per_s":{:.0},"ratio":{:.3}}}"#,
        mb(frame_len, ours),
        mb(json_len, plain),
        sync_limit as f64 * n / ours,
        sync_limit as f64 * n / plain,
        plain / ours,
    )
}
