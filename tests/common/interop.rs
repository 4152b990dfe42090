//! Finding the tools the interoperability, NAT and browser tests run
//! against, and reading what their scripts print.

use std::path::PathBuf;

/// The path of `tool` in the interop virtualenv, or `None` (after saying
/// the test is skipped) when it is not installed. With
/// `BABBLE_NET_REQUIRE_INTEROP=1` (as CI sets) a missing tool is a failure.
pub fn venv_tool(tool: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("BABBLE_NET_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv"));
    let path = venv.join("bin").join(tool);
    let what = format!("{} (run scripts/interop-setup.sh)", path.display());
    available_or_skip(path.exists(), &what).then_some(path)
}

/// Whether a test that needs `what` may run: true when `available`;
/// otherwise says why it is skipped and returns false, or panics with
/// `BABBLE_NET_REQUIRE_INTEROP=1` (CI), where skipping would hide a gap.
pub fn available_or_skip(available: bool, what: &str) -> bool {
    if available {
        return true;
    }
    if std::env::var("BABBLE_NET_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{what} is missing (BABBLE_NET_REQUIRE_INTEROP=1)");
    }
    eprintln!("skipped: {what} is missing");
    false
}

/// Whether `program` is on the PATH (or in /usr/sbin, /sbin, where root's
/// tools live even when the PATH leaves them out).
pub fn has_program(program: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(program).is_file())
}

/// Whether this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The `rpcbench` example binary, built if this test run did not build it.
pub fn rpcbench() -> PathBuf {
    example("rpcbench")
}

/// The binary of example `name`, built if this test run did not build it
/// (`cargo test` builds examples, `cargo test --test NAME` does not: run
/// `cargo build --examples` first so that it is not stale).
pub fn example(name: &str) -> PathBuf {
    let target_dir = std::env::current_exe()
        .expect("test binary path")
        .parent() // deps
        .and_then(|deps| deps.parent())
        .expect("target profile directory")
        .to_path_buf();
    let path = target_dir.join("examples").join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args(["build", "--example", name])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --example {name} failed");
    }
    path
}

/// One `RESULT <rpc> <json>` line of a test bed script, parsed.
#[derive(Debug)]
pub struct RpcResult {
    /// sync, eager, fastforward or join.
    pub rpc: String,
    /// Calls made.
    pub calls: u64,
    /// Calls that failed or got a wrong answer.
    pub errors: u64,
}

/// Every `RESULT` line of `output`.
pub fn rpc_results(output: &str) -> Vec<RpcResult> {
    output
        .lines()
        .filter_map(|line| line.strip_prefix("RESULT "))
        .map(|rest| {
            let (rpc, json) = rest.split_once(' ').unwrap_or((rest, ""));
            let report: serde_json::Value = serde_json::from_str(json)
                .unwrap_or_else(|_| panic!("{rpc}: no rpcbench report in {rest:?}"));
            // A report without its counts is a broken run, not a clean one.
            let field = |name: &str| {
                report[name]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{rpc}: no {name:?} count in {rest:?}"))
            };
            RpcResult {
                rpc: rpc.to_owned(),
                calls: field("calls"),
                errors: field("errors"),
            }
        })
        .collect()
}

/// The number after `prefix` on the first line that starts with it.
pub fn number_after(output: &str, prefix: &str) -> Option<u64> {
    output
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
