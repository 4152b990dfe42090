//! Finding the tools interop tests run against (installed by
//! `scripts/interop-setup.sh` into `target/interop-venv`).

use std::path::PathBuf;

/// The path of `tool` in the interop virtualenv, or `None` (after saying
/// the test is skipped) when it is not installed. With
/// `BABBLE_NET_REQUIRE_INTEROP=1` (as CI sets) a missing tool is a failure.
pub fn venv_tool(tool: &str) -> Option<PathBuf> {
    let venv = std::env::var_os("BABBLE_NET_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv"));
    let path = venv.join("bin").join(tool);
    if path.exists() {
        return Some(path);
    }
    let message = format!("{} not found: run scripts/interop-setup.sh", path.display());
    if std::env::var("BABBLE_NET_REQUIRE_INTEROP").as_deref() == Ok("1") {
        panic!("{message}");
    }
    eprintln!("skipped: {message}");
    None
}
