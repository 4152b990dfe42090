//! The behaviour every transport must show, written once and run against
//! each of them through [`transport_suite!`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use babble_net::wire::*;
use babble_net::*;
use futures::future::join_all;
use tokio::sync::mpsc;

use super::vectors;

/// A client transport, a server transport, and each one's address as the
/// other must name it. Both are listening.
pub struct Pair {
    pub client: Arc<dyn Transport>,
    pub server: Arc<dyn Transport>,
    /// The server, as the client names it.
    pub target: String,
    /// The client, as the server names it.
    pub client_addr: String,
}

/// Commands a test server received, in order.
pub type Received = Arc<Mutex<Vec<Command>>>;

/// Answers every RPC of `transport` with `handler(&command)`, recording
/// the commands.
pub fn serve<F>(transport: &dyn Transport, handler: F) -> Received
where
    F: Fn(&Command) -> Result<Response, String> + 'static,
{
    let received = Received::default();
    let log = received.clone();
    let mut rpcs = transport.consumer();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            log.lock().unwrap().push(rpc.command.clone());
            let answer = handler(&rpc.command);
            rpc.respond(answer);
        }
    });
    received
}

/// Takes every RPC of `transport` without answering, and reports each on
/// the returned channel (holding it, so it stays unanswered).
pub fn hold(transport: &dyn Transport) -> mpsc::UnboundedReceiver<Rpc> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut rpcs = transport.consumer();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            if tx.send(rpc).is_err() {
                break;
            }
        }
    });
    rx
}

/// The answers the Go vectors hold, by RPC.
pub fn vector_answer(command: &Command) -> Result<Response, String> {
    Ok(match command {
        Command::Sync(_) => vectors::response("sync_response", RpcType::Sync),
        Command::EagerSync(_) => vectors::response("eager_sync_response", RpcType::EagerSync),
        Command::FastForward(_) => vectors::response("fast_forward_response", RpcType::FastForward),
        Command::Join(_) => vectors::response("join_response", RpcType::Join),
    })
}

pub async fn start_and_stop(pair: Pair) {
    pair.server.listen().unwrap();
    pair.server.listen().unwrap();
    assert!(!pair.server.is_shutdown());
    pair.server.close().await.unwrap();
    pair.server.close().await.unwrap();
    assert!(pair.server.is_shutdown());
    pair.client.close().await.unwrap();
}

async fn round_trip(pair: Pair, request: &str) {
    let received = serve(&*pair.server, vector_answer);
    let command = vectors::request(request);
    let expected = vector_answer(&command).unwrap();
    let target = pair.target.as_str();
    let got = match command.clone() {
        Command::Sync(r) => Response::Sync(pair.client.sync(target, r).await.unwrap()),
        Command::EagerSync(r) => {
            Response::EagerSync(pair.client.eager_sync(target, r).await.unwrap())
        }
        Command::FastForward(r) => {
            Response::FastForward(pair.client.fast_forward(target, r).await.unwrap())
        }
        Command::Join(r) => Response::Join(pair.client.join(target, r).await.unwrap()),
    };
    assert_eq!(got, expected);
    assert_eq!(*received.lock().unwrap(), vec![command]);
    pair.client.close().await.unwrap();
    pair.server.close().await.unwrap();
}

pub async fn sync_round_trip(pair: Pair) {
    round_trip(pair, "sync_request").await
}

pub async fn eager_sync_round_trip(pair: Pair) {
    round_trip(pair, "eager_sync_request").await
}

pub async fn fast_forward_round_trip(pair: Pair) {
    round_trip(pair, "fast_forward_request").await
}

pub async fn join_round_trip(pair: Pair) {
    round_trip(pair, "join_request").await
}

pub async fn handler_error_reaches_the_caller_verbatim(pair: Pair) {
    serve(&*pair.server, |_| Err("100% sure: <boom>".to_owned()));
    let err = pair
        .client
        .sync(&pair.target, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Remote(message) if message == "100% sure: <boom>"),
        "{err}"
    );
}

/// Builds the pair with this timeout.
pub fn short_timeout() -> Config {
    Config {
        timeout: Duration::from_millis(300),
        ..Config::default()
    }
}

pub async fn unanswered_call_times_out(pair: Pair) {
    let mut held = hold(&*pair.server);
    let started = Instant::now();
    let err = pair
        .client
        .sync(&pair.target, SyncRequest::default())
        .await
        .unwrap_err();
    let timeout = short_timeout().timeout;
    assert!(
        matches!(&err, TransportError::Timeout { after, .. } if *after == timeout),
        "{err:?}"
    );
    // Not before the deadline, and not long after it: a call to a peer
    // that stops answering ends after about one timeout (Config::call_bound);
    // ten of them is a margin only a missed deadline uses up.
    let elapsed = started.elapsed();
    assert!(
        elapsed >= timeout && elapsed < timeout * 10,
        "gave up after {elapsed:?}"
    );
    assert!(held.recv().await.is_some(), "the server got the request");
}

pub async fn calls_after_close_fail_with_shutdown(pair: Pair) {
    serve(&*pair.server, vector_answer);
    pair.client.close().await.unwrap();
    let err = pair
        .client
        .sync(&pair.target, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_shutdown(), "{err}");
    let err = pair
        .client
        .join(&pair.target, JoinRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_shutdown(), "{err}");
}

pub async fn close_fails_calls_in_flight_with_shutdown(pair: Pair) {
    let mut held = hold(&*pair.server);
    let client = pair.client.clone();
    let target = pair.target.clone();
    let call = actix_rt::spawn(async move {
        client
            .join(&target, JoinRequest::default())
            .await
            .unwrap_err()
    });
    let _rpc = held.recv().await.expect("the call reached the server");
    pair.client.close().await.unwrap();
    let err = call.await.unwrap();
    assert!(err.is_shutdown(), "{err}");
}

pub async fn dropped_consumer_gives_callers_an_error(pair: Pair) {
    drop(pair.server.consumer());
    let err = pair
        .client
        .sync(&pair.target, SyncRequest::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, TransportError::Remote(why) if why == "the node is not consuming RPCs"),
        "{err}"
    );
}

pub async fn dropped_responder_gives_the_caller_an_error(pair: Pair) {
    let mut rpcs = pair.server.consumer();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            drop(rpc);
        }
    });
    let err = pair
        .client
        .eager_sync(&pair.target, EagerSyncRequest::default())
        .await
        .unwrap_err();
    assert!(err.is_unanswered() && !err.is_refused(), "{err}");
}

/// Answers each Sync with the caller's `from_id`, so that every caller can
/// check it got its own answer.
pub fn echo_from_id(command: &Command) -> Result<Response, String> {
    match command {
        Command::Sync(r) => Ok(Response::Sync(SyncResponse {
            from_id: r.from_id,
            events: None,
            known: r.known.clone(),
        })),
        _ => Err("only sync".to_owned()),
    }
}

pub async fn hundred_concurrent_callers_get_their_own_answers(pair: Pair) {
    let received = serve(&*pair.server, echo_from_id);
    let calls = (0..100u32).map(|id| {
        let client = pair.client.clone();
        let target = pair.target.clone();
        async move {
            let request = SyncRequest {
                from_id: id,
                known: Some([(id, i64::from(id))].into_iter().collect()),
                sync_limit: 10,
            };
            let response = client.sync(&target, request.clone()).await.unwrap();
            assert_eq!(response.from_id, id);
            assert_eq!(response.known, request.known);
        }
    });
    join_all(calls).await;
    assert_eq!(received.lock().unwrap().len(), 100);
}

/// `count` events of one `size`-byte transaction each, every byte derived
/// from `seed` and the event's index, so each call carries its own data.
pub fn bulky_events(count: usize, size: usize, seed: u32) -> Vec<WireEvent> {
    (0..count)
        .map(|i| {
            let tx: Vec<u8> = (0..size)
                .map(|j| (seed as usize + i * 7 + j) as u8)
                .collect();
            WireEvent {
                body: WireBody {
                    transactions: Some(vec![Some(tx)]),
                    index: i as i64,
                    creator_id: seed,
                    ..WireBody::default()
                },
                signature: format!("{seed:x}-{i:x}"),
            }
        })
        .collect()
}

/// Events of about 1 KiB each: 1000 of them make a 1.3 MB frame.
const BULKY_EVENT: usize = 1000;

/// Answers a Sync with `SyncLimit` bulky events seeded by the caller's
/// `FromID`, and an EagerSync with `Success` once its events are exactly
/// those bulky events, `FromID` being their count.
pub fn bulky_answer(command: &Command) -> Result<Response, String> {
    match command {
        Command::Sync(r) => Ok(Response::Sync(SyncResponse {
            from_id: r.from_id,
            events: Some(bulky_events(r.sync_limit as usize, BULKY_EVENT, r.from_id)),
            known: r.known.clone(),
        })),
        Command::EagerSync(r) => {
            let events = r.events.clone().unwrap_or_default();
            let expected = bulky_events(events.len(), BULKY_EVENT, r.from_id);
            Ok(Response::EagerSync(EagerSyncResponse {
                from_id: events.len() as u32,
                success: events == expected,
            }))
        }
        _ => Err("only sync and eager sync".to_owned()),
    }
}

/// Several calls of `from`, each pushing about 1 MB of events and pulling
/// about 1 MB back, all at once; each answer is checked to be its own.
async fn bulky_calls(from: Arc<dyn Transport>, to: String, calls: u32, events: usize) {
    let all = (0..calls).map(|seed| {
        let (from, to) = (from.clone(), to.clone());
        async move {
            let pushed = from
                .eager_sync(
                    &to,
                    EagerSyncRequest {
                        from_id: seed,
                        events: Some(bulky_events(events, BULKY_EVENT, seed)),
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("eager sync {seed} to {to}: {e}"));
            assert_eq!((pushed.from_id, pushed.success), (events as u32, true));
            let pulled = from
                .sync(
                    &to,
                    SyncRequest {
                        from_id: seed,
                        known: None,
                        sync_limit: events as i64,
                    },
                )
                .await
                .unwrap_or_else(|e| panic!("sync {seed} from {to}: {e}"));
            assert_eq!(pulled.from_id, seed);
            assert!(
                pulled.events == Some(bulky_events(events, BULKY_EVENT, seed)),
                "sync {seed}: the events differ"
            );
        }
    });
    join_all(all).await;
}

pub async fn large_requests_and_replies_cross_both_ways_at_once(pair: Pair) {
    let server_got = serve(&*pair.server, bulky_answer);
    let client_got = serve(&*pair.client, bulky_answer);
    // Each side pushes and pulls 1 MB frames to and from the other, four
    // calls at a time in each direction.
    futures::join!(
        bulky_calls(pair.client.clone(), pair.target.clone(), 4, 800),
        bulky_calls(pair.server.clone(), pair.client_addr.clone(), 4, 800),
    );
    assert_eq!(server_got.lock().unwrap().len(), 8);
    assert_eq!(client_got.lock().unwrap().len(), 8);
}

/// Builds the pair for large transfers: room for every call in the pool,
/// time for a first WebRTC dial.
pub fn bulk_config() -> Config {
    Config {
        max_pool: 4,
        timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

/// Generates one `#[actix_rt::test]` per suite case for a transport.
/// `$pair` is an async fn taking a [`Config`] and returning a [`Pair`].
#[macro_export]
macro_rules! transport_suite {
    ($pair:path) => {
        transport_suite!(suite_cases, $pair);
    };
    ($module:ident, $pair:path) => {
        mod $module {
            use super::*;
            use $crate::common::suite;

            #[actix_rt::test]
            async fn start_and_stop() {
                suite::start_and_stop($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn sync_round_trip() {
                suite::sync_round_trip($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn eager_sync_round_trip() {
                suite::eager_sync_round_trip($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn fast_forward_round_trip() {
                suite::fast_forward_round_trip($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn join_round_trip() {
                suite::join_round_trip($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn handler_error_reaches_the_caller_verbatim() {
                suite::handler_error_reaches_the_caller_verbatim($pair(Config::default()).await)
                    .await
            }
            #[actix_rt::test]
            async fn unanswered_call_times_out() {
                suite::unanswered_call_times_out($pair(suite::short_timeout()).await).await
            }
            #[actix_rt::test]
            async fn calls_after_close_fail_with_shutdown() {
                suite::calls_after_close_fail_with_shutdown($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn close_fails_calls_in_flight_with_shutdown() {
                suite::close_fails_calls_in_flight_with_shutdown($pair(Config::default()).await)
                    .await
            }
            #[actix_rt::test]
            async fn dropped_consumer_gives_callers_an_error() {
                suite::dropped_consumer_gives_callers_an_error($pair(Config::default()).await).await
            }
            #[actix_rt::test]
            async fn dropped_responder_gives_the_caller_an_error() {
                suite::dropped_responder_gives_the_caller_an_error($pair(Config::default()).await)
                    .await
            }
            #[actix_rt::test]
            async fn large_requests_and_replies_cross_both_ways_at_once() {
                suite::large_requests_and_replies_cross_both_ways_at_once(
                    $pair(suite::bulk_config()).await,
                )
                .await
            }
            #[actix_rt::test]
            async fn hundred_concurrent_callers_get_their_own_answers() {
                suite::hundred_concurrent_callers_get_their_own_answers(
                    $pair(Config::default()).await,
                )
                .await
            }
        }
    };
}
