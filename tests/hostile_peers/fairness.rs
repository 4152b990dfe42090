//! Honest peers keep their share: fair service per source, newcomers let
//! in by evicting from the heaviest source, replies inside a budget. Each
//! floods from its own loopback addresses (Linux routes all of 127/8 to
//! `lo`); the honest peer calls from 127.0.0.1. The tests assert order and
//! outcome, never a latency.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use babble_net::wire::*;
use babble_net::*;
use futures::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::{connect_from, honest, honest_call, local};

/// A Sync request frame from `id`, as a Go peer writes it.
fn sync_frame(id: u32) -> Vec<u8> {
    format!("\x01{{\"FromID\":{id},\"Known\":null,\"SyncLimit\":1}}\n").into_bytes()
}

fn from_id(rpc: &Rpc) -> u32 {
    match &rpc.command {
        Command::Sync(request) => request.from_id,
        other => panic!("not a Sync: {other:?}"),
    }
}

fn answer(rpc: Rpc) {
    let from_id = from_id(&rpc);
    rpc.respond(Ok(Response::Sync(SyncResponse {
        from_id,
        ..Default::default()
    })));
}

/// Waits until the node has received `total` RPCs (queued or taken).
async fn received(node: &NetworkTransport, total: u64) {
    for _ in 0..1000 {
        if node.stats().await.unwrap().total() >= total {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the node never received {total} RPCs");
}

/// Opens a connection from the flood's address, writes a Sync from `id`
/// on it, and waits until the node has received `total` RPCs, so the next
/// request written arrives after this one.
async fn flood_request(node: &NetworkTransport, id: u32, total: u64) -> TcpStream {
    let mut stream = connect_from("127.0.0.2", &node.advertise_addr()).await;
    stream.write_all(&sync_frame(id)).await.unwrap();
    received(node, total).await;
    stream
}

#[actix_rt::test]
async fn an_honest_request_is_served_before_a_floods_queued_ones() {
    let node = NetworkTransport::tcp(&local(Config::default()), logging::discard()).unwrap();
    node.listen().unwrap();
    let addr = node.advertise_addr();
    let mut rpcs = node.consumer();
    // Connections from one address, each with a valid Sync, arriving in
    // the order of their IDs. The node takes the first and is busy with
    // it while the rest wait.
    let mut flood = vec![flood_request(&node, 1000, 1).await];
    let busy = rpcs.recv().await.unwrap();
    assert_eq!(from_id(&busy), 1000);
    for (id, total) in (1001..1033).zip(2..) {
        flood.push(flood_request(&node, id, total).await);
    }
    // The honest request arrives after 32 of the flood's waiting requests
    // and before 16 more of them.
    let call = {
        let addr = addr.clone();
        actix_rt::spawn(async move { honest_call(&honest(), &addr, 7).await })
    };
    received(&node, 34).await;
    for (id, total) in (1033..1049).zip(35..) {
        flood.push(flood_request(&node, id, total).await);
    }
    // The node answers one RPC at a time, in the order it is handed them.
    answer(busy);
    let mut served = Vec::new();
    for _ in 0..49 {
        let rpc = rpcs.recv().await.unwrap();
        served.push(from_id(&rpc));
        answer(rpc);
    }
    // Sources in turn: the honest source's request comes next, or after
    // one more of the flood's (first come, first served would make it
    // wait for 32, last come, first served for 16).
    let before = served.iter().position(|&id| id == 7).unwrap();
    assert!(
        before <= 1,
        "served after {before} of the flood's: {served:?}"
    );
    // Within a source, first come, first served.
    let flood_served: Vec<u32> = served.iter().copied().filter(|&id| id != 7).collect();
    assert_eq!(
        flood_served,
        (1001..1049).collect::<Vec<u32>>(),
        "the flood's requests out of order"
    );
    call.await.unwrap();
    drop(flood);
}

#[actix_rt::test]
async fn a_newcomer_is_let_in_while_every_connection_is_being_answered() {
    let node = NetworkTransport::tcp(
        &local(Config {
            max_inbound: 16,
            ..Config::default()
        }),
        logging::discard(),
    )
    .unwrap();
    node.listen().unwrap();
    let addr = node.advertise_addr();
    // The node holds the flood's RPCs (as a node busy with them would) and
    // answers everyone else's at once.
    let held = Arc::new(Mutex::new(Vec::new()));
    {
        let held = held.clone();
        let mut rpcs = node.consumer();
        actix_rt::spawn(async move {
            while let Some(rpc) = rpcs.recv().await {
                match from_id(&rpc) >= 1000 {
                    true => held.lock().unwrap().push(rpc),
                    false => answer(rpc),
                }
            }
        });
    }
    let mut flood = Vec::new();
    for i in 0..16 {
        let source = ["127.0.0.2", "127.0.0.3"][i % 2];
        let mut stream = connect_from(source, &addr).await;
        stream
            .write_all(&sync_frame(1000 + i as u32))
            .await
            .unwrap();
        flood.push(stream);
    }
    super::eventually(Duration::from_secs(5), "the node holds 16 RPCs", || {
        held.lock().unwrap().len() == 16
    })
    .await;
    // Every slot holds a request being answered; a newcomer gets in and is
    // answered.
    honest_call(&honest(), &addr, 7).await;
    // One of the flood's RPCs was evicted for it: the node sees it
    // abandoned.
    let abandoned = held
        .lock()
        .unwrap()
        .iter()
        .filter(|rpc| rpc.is_abandoned())
        .count();
    assert_eq!(abandoned, 1);
    assert_eq!(node.inbound_connections(), 16);
    drop(flood);
}

/// A connection from `from` whose receive buffer is small, so that a large
/// reply it never reads stays in the node's hands.
async fn sleepy_connection(from: &str, addr: &str) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// The first line `stream` received (empty if the node closed it first).
async fn first_line(stream: &mut TcpStream) -> String {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while line.len() < 256 {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut byte)).await {
            Ok(Ok(1)) if byte[0] == b'\n' => break,
            Ok(Ok(1)) => line.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&line).into_owned()
}

#[actix_rt::test]
async fn peers_that_never_read_their_replies_neither_lock_out_a_newcomer_nor_pass_the_budget() {
    const BUDGET: usize = 16 << 20;
    // A long timeout: a reply that waited for the budget instead of being
    // refused at once would keep its caller waiting past the deadline
    // below.
    let node = NetworkTransport::tcp(
        &local(Config {
            max_inbound: 16,
            max_reply_size: 8 << 20,
            outbound_buffer_budget: BUDGET,
            timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            ..Config::default()
        }),
        logging::discard(),
    )
    .unwrap();
    node.listen().unwrap();
    let addr = node.advertise_addr();
    // The flood's Syncs get 6 MiB replies each (more than the kernel
    // buffers of a connection that never reads), the honest peer a small
    // one.
    let mut rpcs = node.consumer();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            let id = from_id(&rpc);
            let events = (id >= 1000).then(|| {
                vec![WireEvent {
                    body: WireBody {
                        transactions: Some(vec![Some(vec![7u8; 6 << 20])]),
                        ..Default::default()
                    },
                    ..Default::default()
                }]
            });
            rpc.respond(Ok(Response::Sync(SyncResponse {
                from_id: id,
                events,
                known: None,
            })));
        }
    });
    let mut flood = Vec::new();
    for i in 0..16 {
        let source = ["127.0.0.2", "127.0.0.3"][i % 2];
        let mut stream = sleepy_connection(source, &addr).await;
        stream
            .write_all(&sync_frame(1000 + i as u32))
            .await
            .unwrap();
        flood.push(stream);
    }
    received(&node, 16).await;
    super::eventually(Duration::from_secs(5), "the flood holds the budget", || {
        node.outbound_buffered_bytes() > 0
    })
    .await;
    honest_call(&honest(), &addr, 7).await;
    // One 6 MiB reply (with its 9 MiB frame while encoded) fits in the
    // budget at once: the others were refused at once (an error line the
    // flood reads first), rather than held in memory waiting for room.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let lines = join_all(
        flood
            .iter_mut()
            .map(|stream| tokio::time::timeout_at(deadline, first_line(stream))),
    )
    .await;
    let refused = lines
        .iter()
        .filter(|line| matches!(line, Ok(line) if line.contains("outbound buffer budget")))
        .count();
    assert!(refused >= 16 - 1 - 1, "only {refused} replies refused");
    // Once the flood is gone, so is its hold on the budget.
    drop(flood);
    super::eventually(Duration::from_secs(10), "the budget is free again", || {
        node.outbound_buffered_bytes() == 0
    })
    .await;
}
