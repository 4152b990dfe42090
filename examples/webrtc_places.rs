//! One sender takes every inbound WebRTC place of a node under IDs it
//! makes up (anonymous signaling lets it), each link called once and then
//! left trickling; then an honest peer from another address connects and
//! calls. Reports whether, and how fast, the honest peer was served.
//!
//! Everything runs in this process on loopback: a router, the node
//! (`webrtc-max-peers` = `--links`), `--links` peer connections from
//! 127.0.0.1, the honest peer's from 127.0.0.2.
//!
//! Run it in release mode, `--links 256` (the default cap) for the
//! standard run. Prints one JSON line.

use std::sync::Arc;
use std::time::{Duration, Instant};

use babble_net::rtc::{IceOptions, RtcLimits, WebRtcStreamLayer};
use babble_net::signal::router::{Router, RouterConfig};
use babble_net::signal::{Signal, SignalSettings, WampSignal};
use babble_net::{
    logging, Config, NetworkTransport, Response, SyncRequest, SyncResponse, Transport,
};
use clap::Parser;
use futures::stream::{self, StreamExt};

#[derive(Parser)]
#[command(about = "One sender holds every WebRTC place; an honest peer connects")]
struct Args {
    /// The node's place count, all taken by the one sender.
    #[arg(long, default_value_t = 256)]
    links: usize,
    /// Calls the honest peer makes once connected.
    #[arg(long, default_value_t = 20)]
    honest_calls: usize,
}

fn main() {
    let args = Args::parse();
    actix_rt::System::new().block_on(run(args));
}

fn config() -> Config {
    Config {
        timeout: Duration::from_secs(10),
        ..Config::default()
    }
}

fn ice(ip: [u8; 4]) -> IceOptions {
    IceOptions {
        loopback_only: true,
        bind_ip: Some(ip.into()),
        ..IceOptions::default()
    }
}

fn signal(url: &str, id: &str) -> Arc<dyn Signal> {
    let settings = SignalSettings::new(url, "main", id);
    Arc::new(WampSignal::new(
        settings,
        Duration::from_secs(10),
        logging::discard(),
    ))
}

async fn node(url: &str, id: &str, ip: [u8; 4]) -> NetworkTransport {
    NetworkTransport::webrtc(signal(url, id), &ice(ip), &config(), logging::discard())
        .await
        .expect("a WebRTC node")
}

async fn run(args: Args) {
    // The sender's sessions all come from 127.0.0.1 here: the router's
    // per-address cap (its own defence) is raised out of the way.
    let router = Router::start(
        RouterConfig {
            listen: "127.0.0.1:0".into(),
            realms: vec!["main".into()],
            insecure: true,
            max_sessions_per_address: args.links + 16,
            ..RouterConfig::default()
        },
        logging::discard(),
    )
    .await
    .expect("router");
    let url = format!("ws://{}", router.local_addr());
    let limits = RtcLimits {
        max_peers: args.links,
        ..babble_net::limits::rtc(&config())
    };
    let layer = Arc::new(
        WebRtcStreamLayer::start(
            signal(&url, "server"),
            &ice([127, 0, 0, 1]),
            limits,
            logging::discard(),
        )
        .await
        .expect("the node"),
    );
    let server = NetworkTransport::new(layer.clone(), &config(), logging::discard());
    server.listen().expect("listen");
    let mut rpcs = server.consumer();
    actix_rt::spawn(async move {
        while let Some(rpc) = rpcs.recv().await {
            rpc.respond(Ok(Response::Sync(SyncResponse::default())));
        }
    });

    // The sender: one made-up ID per link, each called once.
    let started = Instant::now();
    let url_ = url.clone();
    let sender: Vec<(NetworkTransport, bool)> = stream::iter(0..args.links)
        .map(|n| {
            let url = url_.clone();
            async move {
                let node = node(&url, &format!("made-up-{n}"), [127, 0, 0, 1]).await;
                let served = node.sync("server", SyncRequest::default()).await.is_ok();
                (node, served)
            }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    let sender_served = sender.iter().filter(|(_, served)| *served).count();
    let held = layer.inbound_peer_connections();
    let took_places_s = started.elapsed().as_secs_f64();

    // The honest peer, from another address.
    let honest = node(&url, "honest", [127, 0, 0, 2]).await;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let first = Instant::now();
    for _ in 0..args.honest_calls {
        let call = Instant::now();
        match honest.sync("server", SyncRequest::default()).await {
            Ok(_) => latencies.push(call.elapsed()),
            Err(err) => errors.push(err.to_string()),
        }
    }
    let honest_total_s = first.elapsed().as_secs_f64();
    let first_ms = latencies.first().map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    latencies.sort();
    let median_ms = latencies
        .get(latencies.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    // The sender's links, trickling: one more call each.
    let trickled = stream::iter(&sender)
        .map(|(node, _)| node.sync("server", SyncRequest::default()))
        .buffer_unordered(8)
        .filter(|result| futures::future::ready(result.is_ok()))
        .count()
        .await;
    let error_count = errors.len();
    errors.sort();
    errors.dedup();
    println!(
        "{}",
        serde_json::json!({
            "links": args.links,
            "sender_served": sender_served,
            "places_held_by_sender": held,
            "sender_took_places_s": (took_places_s * 10.0).round() / 10.0,
            "honest_calls": args.honest_calls,
            "honest_failed": error_count,
            "honest_errors": errors,
            "honest_first_call_ms": first_ms,
            "honest_median_ms": median_ms,
            "honest_total_s": honest_total_s,
            "sender_trickle_calls_served_after": trickled,
            "inbound_after": layer.inbound_peer_connections(),
        })
    );
}
