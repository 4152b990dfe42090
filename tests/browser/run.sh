#!/usr/bin/env bash
# The browser-peer test, inside a network namespace with only loopback up:
# a signaling server, a Rust node (`rpcbench serve`) and headless Chromium
# running peer.js, which calls the Rust node; then `rpcbench call` calls the
# browser with every RPC. Prints the driver's lines and one
# "RESULT <rpc> <json>" per RPC run. Cleans up whatever happens.
#
# Usage: run.sh RPCBENCH BABBLE_SIGNAL NODE_MODULES
set -euo pipefail
if [ -z "${BABBLE_NET_IN_NETNS:-}" ]; then
  ns="bnbrowser$$"
  # Whatever still runs in the namespace goes with it.
  trap 'ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null; ip netns del "$ns" 2>/dev/null || true' EXIT
  trap 'exit 130' INT TERM
  ip netns add "$ns"
  ip netns exec "$ns" ip link set lo up
  BABBLE_NET_IN_NETNS=1 ip netns exec "$ns" "$0" "$@"
  exit $?
fi

rpcbench=$1 signal_bin=$2 modules=$3
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
# Chromium's temporary files go with the rest.
export TMPDIR="$work"

# wait_for FILE PATTERN WHAT [SECONDS]: until FILE shows PATTERN (20 s by
# default).
wait_for() {
  for _ in $(seq $((${4:-20} * 20))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "ERROR $3 did not start: $(tail -n 5 "$1" | tr '\n' ' ')"; exit 1
}

"$signal_bin" --listen 127.0.0.1:8443 --insecure --log-level warn >"$work/signal.log" 2>&1 &
pids+=("$!")
wait_for "$work/signal.log" listening "the signaling server"
webrtc=(--transport webrtc --signal ws://127.0.0.1:8443 --realm main --loopback-only)
"$rpcbench" serve "${webrtc[@]}" --id rust-node >"$work/serve.log" 2>&1 &
pids+=("$!")
wait_for "$work/serve.log" listening "rpcbench serve"

mkfifo "$work/driver-in"
node "$here/run.mjs" "$modules" ws://127.0.0.1:8443/ browser-peer rust-node \
  <"$work/driver-in" >"$work/driver.out" 2>"$work/driver.err" &
pids+=("$!")
exec 3>"$work/driver-in"
# The browser starts, connects through signaling, then makes its calls:
# on a loaded machine (CI runs the test binaries beside it) that has taken
# over 20 s.
wait_for "$work/driver.out" "CALLS\|FAILED" "the browser peer" 60
grep -E "READY|CALLS|FAILED" "$work/driver.out"

for rpc in sync eager join fastforward; do
  "$rpcbench" call "${webrtc[@]}" --id "rust-caller-$rpc" --target browser-peer --rpc "$rpc" \
    --calls 20 --concurrency 1 --max-pool 2 --sync-limit 5 --timeout-ms 10000 \
    >"$work/$rpc.out" 2>"$work/$rpc.err" || true
  echo "RESULT $rpc $(tail -n 1 "$work/$rpc.out")"
done
echo "finish" >&3
exec 3>&-
for _ in $(seq 200); do grep -q SERVED "$work/driver.out" && break; sleep 0.05; done
grep SERVED "$work/driver.out" || { echo "ERROR the driver did not finish"; tail -n 20 "$work/driver.err"; }
