//! The QUIC transport over real UDP sockets: the shared transport suite,
//! who may talk to whom, what a node sees when a peer breaks the rules,
//! and an independent QUIC implementation (Python's aioquic) on the
//! other end.

#[macro_use]
mod common;

use std::sync::Arc;

use babble_net::secure::{NodeKey, PeerKey};
use babble_net::*;
use common::suite::{self, Pair};

/// A QUIC node's configuration: `base`, bound to a free loopback port,
/// keyed to `key` (written to a file in `dir`), with `peers`.
fn quic_config(
    base: &Config,
    dir: &std::path::Path,
    key: &NodeKey,
    peers: &[(String, PeerKey)],
) -> Config {
    let key_file = dir.join(format!("{}.key", key.public()));
    key.save(&key_file).unwrap();
    Config {
        bind_addr: "127.0.0.1:0".into(),
        quic: true,
        key_file: Some(key_file),
        peer_keys: peers
            .iter()
            .map(|(address, key)| (address.clone(), key.to_string()))
            .collect(),
        ..base.clone()
    }
}

/// A listening QUIC node.
fn quic_node(config: &Config) -> NetworkTransport {
    let node = NetworkTransport::quic(config, logging::discard()).unwrap();
    node.listen().unwrap();
    node
}

/// A loopback address with a UDP port free a moment ago.
fn free_udp_addr() -> String {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().to_string()
}

/// Two QUIC nodes, each expecting the other's key at its address.
async fn pair(config: Config) -> Pair {
    let dir = tempfile::tempdir().unwrap();
    let (client_key, server_key) = (NodeKey::generate(), NodeKey::generate());
    let (client_addr, target) = (free_udp_addr(), free_udp_addr());
    let node = |key: &NodeKey, at: &String, peer: (&String, &NodeKey)| {
        let config = Config {
            bind_addr: at.clone(),
            ..quic_config(
                &config,
                dir.path(),
                key,
                &[(peer.0.clone(), peer.1.public())],
            )
        };
        quic_node(&config)
    };
    let server = node(&server_key, &target, (&client_addr, &client_key));
    let client = node(&client_key, &client_addr, (&target, &server_key));
    Pair {
        client: Arc::new(client),
        server: Arc::new(server),
        target,
        client_addr,
    }
}

transport_suite!(pair);
