//! WebRTC through NATs, with STUN and TURN from coturn.
//!
//! Each test builds the bed of `tests/nat/testbed.sh`: two peers, each
//! behind its own masquerading NAT, in network namespaces; a signaling
//! server and coturn on a "public" host. `rpcbench serve` runs behind one
//! NAT, `rpcbench call` behind the other makes every RPC and checks each
//! answer. Needs root, iproute2, iptables and coturn; skipped with a
//! message without them, unless BABBLE_NET_REQUIRE_INTEROP=1 (CI).

mod common;

use std::process::Command;

use common::interop::{
    available_or_skip, has_program, is_root, number_after, rpc_results, rpcbench,
};

/// Calls per RPC in a scenario.
const CALLS: u32 = 20;

/// The output of one scenario of the test bed, or `None` if skipped.
fn run_bed(scenario: &str) -> Option<String> {
    let ready = available_or_skip(is_root(), "root (for network namespaces)")
        && ["ip", "iptables", "turnserver"]
            .iter()
            .all(|tool| available_or_skip(has_program(tool), tool));
    if !ready {
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/nat/testbed.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(scenario)
        .arg(rpcbench())
        .arg(env!("CARGO_BIN_EXE_babble-signal"))
        .env("CALLS", CALLS.to_string())
        .output()
        .expect("bash runs the test bed");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    // What each scenario measured, for whoever reads the test log.
    eprintln!(
        "{scenario}:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "the {scenario} test bed failed: {stdout}"
    );
    Some(stdout)
}

/// Every RPC ran all its calls, each with the exact expected answer.
fn assert_all_rpcs_succeeded(output: &str) {
    let results = rpc_results(output);
    let rpcs: Vec<&str> = results.iter().map(|r| r.rpc.as_str()).collect();
    assert_eq!(rpcs, ["sync", "eager", "fastforward", "join"], "{output}");
    for result in &results {
        assert_eq!(result.calls, u64::from(CALLS), "{result:?}");
        assert_eq!(result.errors, 0, "{result:?}\n{output}");
    }
    assert!(!output.contains("ERROR"), "{output}");
}

#[test]
fn peers_behind_two_nats_connect_with_stun() {
    let Some(output) = run_bed("stun") else {
        return;
    };
    assert_all_rpcs_succeeded(&output);
}

#[test]
fn peers_whose_nats_block_direct_udp_connect_through_turn() {
    let Some(output) = run_bed("turn") else {
        return;
    };
    assert_all_rpcs_succeeded(&output);
    let dropped = number_after(&output, "DROPPED ").expect("DROPPED line");
    assert!(dropped > 0, "the direct path was never tried: {output}");
    let allocations = number_after(&output, "ALLOCATIONS ").expect("ALLOCATIONS line");
    assert!(allocations > 0, "no TURN allocation: {output}");
}

#[test]
fn a_wrong_turn_credential_fails_clearly_within_the_timeout() {
    let Some(output) = run_bed("badauth") else {
        return;
    };
    let results = rpc_results(&output);
    assert_eq!(results.len(), 1, "{output}");
    assert_eq!(results[0].errors, u64::from(CALLS), "{output}");
    let error = output
        .lines()
        .find_map(|line| line.strip_prefix("ERROR sync "))
        .unwrap_or_else(|| panic!("no error reported: {output}"));
    assert!(
        error.contains("no candidates") && error.contains("credentials"),
        "unclear error: {error}"
    );
    // Not a timeout: the failure is known at once, well within the 10 s
    // call timeout.
    assert!(
        !error.contains("no answer"),
        "a timeout, not a clear error: {error}"
    );
}
