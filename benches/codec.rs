//! Criterion benchmarks of the frame codec: the `sync-1000` reply of
//! BENCH.md (1000 events, 4 transactions of 100 bytes each) and a small
//! Sync request.

#[path = "../examples/rpcbench/workload.rs"]
mod workload;

use std::hint::black_box;

use babble_net::codec::{encode_request, ClientCodec, Reply, ServerCodec};
use babble_net::{Response, RpcType, SyncResponse};
use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tokio_util::codec::{Decoder, Encoder};
use workload::Shape;

fn sync_reply(events: usize) -> Reply {
    Reply::ok(Response::Sync(SyncResponse {
        from_id: 1,
        events: workload::events(events, Shape::default()),
        known: workload::known(),
    }))
}

fn sync_response_1000(c: &mut Criterion) {
    let reply = sync_reply(1000);
    let mut wire = BytesMut::new();
    ServerCodec::default().encode(&reply, &mut wire).unwrap();
    let wire = wire.freeze();

    let mut group = c.benchmark_group("sync_response_1000_events");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("encode", |b| {
        let mut codec = ServerCodec::default();
        let mut buf = BytesMut::with_capacity(wire.len());
        b.iter(|| {
            buf.clear();
            codec.encode(black_box(&reply), &mut buf).unwrap();
        })
    });
    group.bench_function("decode", |b| {
        let mut codec = ClientCodec::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            codec.expect(RpcType::Sync);
            black_box(codec.decode(&mut buf).unwrap().unwrap())
        })
    });
    group.finish();
}

fn small_sync_request(c: &mut Criterion) {
    let command = workload::request("sync", 0, Shape::default()).unwrap();
    let mut wire = BytesMut::new();
    encode_request(&command, &mut wire).unwrap();
    let wire = wire.freeze();

    let mut group = c.benchmark_group("sync_request");
    group.throughput(Throughput::Bytes(wire.len() as u64));
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(256);
        b.iter(|| {
            buf.clear();
            encode_request(black_box(&command), &mut buf).unwrap();
        })
    });
    group.bench_function("decode", |b| {
        let mut codec = ServerCodec::default();
        b.iter(|| {
            let mut buf = BytesMut::from(&wire[..]);
            black_box(codec.decode(&mut buf).unwrap().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, sync_response_1000, small_sync_request);
criterion_main!(benches);
