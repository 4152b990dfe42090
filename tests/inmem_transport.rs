//! The in-memory transport: the shared transport suite, plus what only it
//! has (explicit routes).

#[macro_use]
mod common;

use std::sync::Arc;

use actix::{Actor, Context, Handler};
use babble_net::*;
use common::suite::{self, Pair};

async fn pair(config: Config) -> Pair {
    let client = InmemTransport::with_config(None, &config, logging::discard());
    let server = InmemTransport::with_config(None, &config, logging::discard());
    client.connect(server.local_addr(), &server);
    server.connect(client.local_addr(), &client);
    Pair {
        target: server.local_addr(),
        client_addr: client.local_addr(),
        client: Arc::new(client),
        server: Arc::new(server),
    }
}

transport_suite!(pair);

#[actix_rt::test]
async fn a_transport_without_an_address_gets_a_random_uuid() {
    let a = InmemTransport::new(None);
    let b = InmemTransport::new(None);
    assert_ne!(a.local_addr(), b.local_addr());
    assert_eq!(a.local_addr(), a.advertise_addr());
    assert!(
        uuid::Uuid::parse_str(&a.local_addr()).is_ok(),
        "{}",
        a.local_addr()
    );
    assert_eq!(
        InmemTransport::new(Some("node7".into())).local_addr(),
        "node7"
    );
}

#[actix_rt::test]
async fn calling_an_unknown_peer_fails_at_once() {
    let a = InmemTransport::new(None);
    let err = a.sync("nobody", SyncRequest::default()).await.unwrap_err();
    assert!(
        matches!(&err, TransportError::UnknownPeer(p) if p == "nobody"),
        "{err}"
    );
}

#[actix_rt::test]
async fn disconnect_removes_routes() {
    let a = InmemTransport::new(None);
    let b = InmemTransport::new(None);
    let c = InmemTransport::new(None);
    suite::serve(&b, suite::echo_from_id);
    suite::serve(&c, suite::echo_from_id);
    a.connect(b.local_addr(), &b);
    a.connect(c.local_addr(), &c);
    a.sync(&b.local_addr(), SyncRequest::default())
        .await
        .unwrap();

    a.disconnect(&b.local_addr());
    let err = a
        .sync(&b.local_addr(), SyncRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::UnknownPeer(_)), "{err}");
    a.sync(&c.local_addr(), SyncRequest::default())
        .await
        .unwrap();

    a.disconnect_all();
    let err = a
        .sync(&c.local_addr(), SyncRequest::default())
        .await
        .unwrap_err();
    assert!(matches!(err, TransportError::UnknownPeer(_)), "{err}");
}

#[actix_rt::test]
async fn calling_a_closed_peer_is_a_connect_error() {
    let a = InmemTransport::new(None);
    let b = InmemTransport::new(None);
    a.connect("b", &b);
    b.close().await.unwrap();
    let err = a.sync("b", SyncRequest::default()).await.unwrap_err();
    assert!(err.is_connect(), "{err}");
}

#[actix_rt::test]
async fn the_dispatcher_counts_rpcs_by_type() {
    let a = InmemTransport::new(None);
    let b = InmemTransport::new(None);
    a.connect("b", &b);
    suite::serve(&b, suite::vector_answer);
    a.sync("b", SyncRequest::default()).await.unwrap();
    a.sync("b", SyncRequest::default()).await.unwrap();
    a.join("b", JoinRequest::default()).await.unwrap();
    let stats = b.stats().await.unwrap();
    assert_eq!(
        (stats.sync, stats.join, stats.eager_sync, stats.total()),
        (2, 1, 0, 3)
    );
    assert_eq!(a.stats().await.unwrap().total(), 0);
}

/// A node written as an actor receives RPCs as messages.
struct NodeActor;

impl Actor for NodeActor {
    type Context = Context<Self>;
}

impl Handler<Rpc> for NodeActor {
    type Result = ();

    fn handle(&mut self, rpc: Rpc, _: &mut Context<Self>) {
        let answer = suite::echo_from_id(&rpc.command);
        rpc.respond(answer);
    }
}

#[actix_rt::test]
async fn rpcs_can_be_delivered_to_an_actor() {
    let a = InmemTransport::new(None);
    let b = InmemTransport::new(None);
    a.connect("b", &b);
    b.consume_with(NodeActor.start().recipient());
    let request = SyncRequest {
        from_id: 42,
        ..Default::default()
    };
    assert_eq!(a.sync("b", request).await.unwrap().from_id, 42);
}

#[actix_rt::test]
async fn answering_with_the_wrong_kind_of_response_is_an_error_for_the_caller() {
    let pair = pair(Config::default()).await;
    suite::serve(&*pair.server, |_| {
        Ok(Response::Join(JoinResponse::default()))
    });
    let err = pair
        .client
        .sync(&pair.target, SyncRequest::default())
        .await
        .unwrap_err();
    // The mismatch is the serving side's error, sent back as Go sends
    // handler errors: text is all the wire carries.
    assert!(
        matches!(&err, TransportError::Remote(why)
            if why == "the node answered a sync request with a join response"),
        "{err:?}"
    );
}
