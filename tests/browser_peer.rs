//! A browser as a babble-net peer: headless Chromium runs
//! `tests/browser/peer.js` (the framing over an RTCDataChannel, signaling
//! with the autobahn WAMP client from npm). The page calls a Rust node
//! with every RPC and checks the answers; then a Rust node calls the page
//! with every RPC and checks its answers. Runs in a network namespace with
//! only loopback up. Needs root, Debian's chromium and
//! `scripts/browser-setup.sh`; skipped with a message without them, unless
//! BABBLE_NET_REQUIRE_INTEROP=1 (CI).

mod common;

use std::path::Path;
use std::process::Command;

use common::interop::{
    available_or_skip, has_program, is_root, number_after, rpc_results, rpcbench,
};

#[test]
fn a_browser_peer_answers_and_calls_rust_nodes() {
    let modules = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/browser/node_modules");
    let ready = available_or_skip(is_root(), "root (for a network namespace)")
        && available_or_skip(has_program("ip"), "ip")
        && available_or_skip(has_program("chromium"), "chromium")
        && available_or_skip(has_program("node"), "node")
        && available_or_skip(
            modules.join("playwright-core").is_dir() && modules.join("autobahn-browser").is_dir(),
            "target/browser (run scripts/browser-setup.sh)",
        );
    if !ready {
        return;
    }
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser/run.sh"))
        .arg(rpcbench())
        .arg(env!("CARGO_BIN_EXE_babble-signal"))
        .arg(&modules)
        .output()
        .expect("bash runs the browser test");
    let output = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{output}{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser test failed: {output}");

    // The browser called the Rust node; each answer was as expected.
    let calls = output
        .lines()
        .find_map(|line| line.strip_prefix("CALLS "))
        .unwrap_or_else(|| panic!("the browser made no calls: {output}"));
    let calls: serde_json::Value = serde_json::from_str(calls).expect("CALLS is JSON");
    for rpc in ["sync", "eager", "join", "fastforward"] {
        assert_eq!(calls[rpc], "ok", "the browser's {rpc}: {calls}");
    }

    // The Rust node called the browser; every answer was exactly right.
    let results = rpc_results(&output);
    let rpcs: Vec<&str> = results.iter().map(|r| r.rpc.as_str()).collect();
    assert_eq!(rpcs, ["sync", "eager", "join", "fastforward"], "{output}");
    for result in &results {
        assert!(result.calls > 0, "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}\n{output}");
    }
    let total: u64 = results.iter().map(|r| r.calls).sum();
    let served = number_after(&output, "SERVED ")
        .unwrap_or_else(|| panic!("the browser did not say what it served: {output}"));
    assert_eq!(served, total, "{output}");
}
