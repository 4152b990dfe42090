#!/usr/bin/env bash
# Runs every standard run of BENCH.md against our TCP transport, plus the
# physical limits measured by the same tool (raw blocking echo, codec-only
# serde_json), and writes the table to docs/PERFORMANCE.md.
#
#   scripts/bench.sh            # full runs (a few minutes)
#   QUICK=1 scripts/bench.sh    # a tenth of the calls, to try it out
#   OUT=/tmp/perf.md scripts/bench.sh
#                               # the table somewhere else
#   GOPEER=target/gopeer/gopeer scripts/bench.sh
#                               # also every standard run against Go Babble's
#                               # own transport (../shared/gopeer), interleaved
set -euo pipefail
cd "$(dirname "$0")/.."

scale=1
[ "${QUICK:-0}" = 1 ] && scale=10
out=${OUT:-docs/PERFORMANCE.md}
work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

cargo build --release --example rpcbench --bin babble-signal >&2
bench=target/release/examples/rpcbench
signal_bin=target/release/babble-signal

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a server role; prints its pid. Waits until it listens.
start() {
  local port=$1; shift
  "$bench" "$@" --listen "127.0.0.1:$port" >"$work/server-$port.log" 2>&1 &
  local pid=$!
  pids+=("$pid")
  for _ in $(seq 100); do
    grep -q "listening" "$work/server-$port.log" 2>/dev/null && { echo "$pid"; return; }
    sleep 0.05
  done
  echo "server on $port did not start" >&2; cat "$work/server-$port.log" >&2; exit 1
}

# Stops a server started with --tick-ms and keeps the line it prints last
# (its ticker's figures) as NAME.json.
server_exit_line() { # pid, log, name
  kill -TERM "$1"
  for _ in $(seq 200); do kill -0 "$1" 2>/dev/null || break; sleep 0.05; done
  grep '"exit":true' "$2" | tail -n 1 >"$work/$3.json"
  [ -s "$work/$3.json" ] || { echo "the $3 server printed no exit line" >&2; exit 1; }
}

run() { # name, then call arguments
  local name=$1; shift
  echo "== $name: $*" >&2
  "$bench" "$@" | tail -n 1 | tee "$work/$name.json" >&2
}

echo_port=$(free_port); serve_port=$(free_port)
start "$echo_port" echo-serve >/dev/null
serve_pid=$(start "$serve_port" serve)
calls() { echo $(( $1 / scale )); }

run echo           echo-call --target "127.0.0.1:$echo_port" --calls "$(calls 20000)" --concurrency 1
run echo-parallel  echo-call --target "127.0.0.1:$echo_port" --calls "$(calls 50000)" --concurrency 16
run codec          codec --sync-limit 1000 --iterations "$(calls 300)"
run ping           call --target "127.0.0.1:$serve_port" --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run pool-contention call --target "127.0.0.1:$serve_port" --rpc sync --calls "$(calls 20000)" --concurrency 16 --max-pool 2 --sync-limit 0
run sync-1000      call --target "127.0.0.1:$serve_port" --rpc sync --calls "$(calls 500)" --concurrency 1 --max-pool 2 --sync-limit 1000
run eager-1000     call --target "127.0.0.1:$serve_port" --rpc eager --calls "$(calls 500)" --concurrency 4 --max-pool 4 --sync-limit 1000
run fastforward    call --target "127.0.0.1:$serve_port" --rpc fastforward --calls "$(calls 200)" --concurrency 1 --max-pool 2 --sync-limit 0
run inmem-ping     call --transport inmem --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0

# The secure channel over TCP: the same runs against a server with a key.
secure_port=$(free_port)
"$bench" serve --listen "127.0.0.1:$secure_port" --secure --key-file "$work/server.key" >"$work/server-$secure_port.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q listening "$work/server-$secure_port.log" 2>/dev/null && break; sleep 0.05; done
server_key=$(grep -o '0X04[0-9A-F]*' "$work/server-$secure_port.log" | head -1)
secure=(--secure --key-file "$work/client.key" --target-key "$server_key")
run secure-ping      call --target "127.0.0.1:$secure_port" "${secure[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run secure-sync-1000 call --target "127.0.0.1:$secure_port" "${secure[@]}" --rpc sync --calls "$(calls 500)" --concurrency 1 --max-pool 2 --sync-limit 1000
run secure-pool-contention call --target "127.0.0.1:$secure_port" "${secure[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 16 --max-pool 2 --sync-limit 0
run secure-eager-1000 call --target "127.0.0.1:$secure_port" "${secure[@]}" --rpc eager --calls "$(calls 500)" --concurrency 4 --max-pool 4 --sync-limit 1000
run secure-fastforward call --target "127.0.0.1:$secure_port" "${secure[@]}" --rpc fastforward --calls "$(calls 200)" --concurrency 1 --max-pool 2 --sync-limit 0

# QUIC: every standard run against a QUIC server with a key (docs/QUIC.md),
# to compare with the plaintext and secure TCP runs above.
quic_port=$(free_port)
"$bench" serve --transport quic --listen "127.0.0.1:$quic_port" --key-file "$work/quic-server.key" >"$work/server-quic.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q listening "$work/server-quic.log" 2>/dev/null && break; sleep 0.05; done
quic_key=$(grep -o '0X04[0-9A-F]*' "$work/server-quic.log" | tail -1)
quic=(--transport quic --key-file "$work/quic-client.key" --target-key "$quic_key")
run quic-ping            call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run quic-pool-contention call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 16 --max-pool 2 --sync-limit 0
run quic-sync-1000       call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc sync --calls "$(calls 500)" --concurrency 1 --max-pool 2 --sync-limit 1000
run quic-eager-1000      call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc eager --calls "$(calls 500)" --concurrency 4 --max-pool 4 --sync-limit 1000
run quic-fastforward     call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc fastforward --calls "$(calls 200)" --concurrency 1 --max-pool 2 --sync-limit 0
# The caller's thread while five large QUIC replies arrive: a 1 ms ticker
# on it (as the stall runs below do for TCP).
run quic-stall-caller call --target "127.0.0.1:$quic_port" "${quic[@]}" --rpc sync --sync-limit 50000 --calls 5 --tick-ms 1 --timeout-ms 60000

# QUIC with its drivers on the node's thread (io-threads 0, both sides):
# no hand-off between threads, the floor of the ping over QUIC here.
quic0_port=$(free_port)
"$bench" serve --transport quic --io-threads 0 --listen "127.0.0.1:$quic0_port" --key-file "$work/quic0-server.key" >"$work/server-quic0.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q listening "$work/server-quic0.log" 2>/dev/null && break; sleep 0.05; done
quic0_key=$(grep -o '0X04[0-9A-F]*' "$work/server-quic0.log" | tail -1)
quic0=(--transport quic --io-threads 0 --key-file "$work/quic0-client.key" --target-key "$quic0_key")
run quic-inline-ping        call --target "127.0.0.1:$quic0_port" "${quic0[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run quic-inline-fastforward call --target "127.0.0.1:$quic0_port" "${quic0[@]}" --rpc fastforward --calls "$(calls 200)" --concurrency 1 --max-pool 2 --sync-limit 0

# The raw QUIC limit: the same request and reply bytes over quinn alone
# (one thread per side, no codec, no actors, no node keys).
raw_quic_port=$(free_port)
start "$raw_quic_port" quic-echo-serve --cert-file "$work/raw-quic.der" >/dev/null
raw_quic=(quic-echo-call --target "127.0.0.1:$raw_quic_port" --cert-file "$work/raw-quic.der")
run raw-quic-ping            "${raw_quic[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 1
run raw-quic-pool-contention "${raw_quic[@]}" --rpc sync --calls "$(calls 20000)" --concurrency 16
run raw-quic-sync-1000       "${raw_quic[@]}" --rpc sync --calls "$(calls 500)" --concurrency 1 --sync-limit 1000
run raw-quic-eager-1000      "${raw_quic[@]}" --rpc eager --calls "$(calls 500)" --concurrency 4 --sync-limit 1000
run raw-quic-fastforward     "${raw_quic[@]}" --rpc fastforward --calls "$(calls 200)" --concurrency 1

# WebRTC: the same server role behind a signaling server, ICE on loopback.
signal_port=$(free_port)
"$signal_bin" --listen "127.0.0.1:$signal_port" --insecure --log-level warn >"$work/signal.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do grep -q listening "$work/signal.log" 2>/dev/null && break; sleep 0.05; done
webrtc=(--transport webrtc --signal "ws://127.0.0.1:$signal_port" --loopback-only)
"$bench" serve "${webrtc[@]}" --id rpcbench-server >"$work/webrtc-serve.log" 2>&1 &
pids+=("$!")
for _ in $(seq 200); do grep -q listening "$work/webrtc-serve.log" 2>/dev/null && break; sleep 0.05; done
run webrtc-ping      call "${webrtc[@]}" --id rpcbench-client1 --target rpcbench-server --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run webrtc-sync-1000 call "${webrtc[@]}" --id rpcbench-client2 --target rpcbench-server --rpc sync --calls "$(calls 500)" --concurrency 1 --max-pool 2 --sync-limit 1000
run webrtc-eager-1000 call "${webrtc[@]}" --id rpcbench-client3 --target rpcbench-server --rpc eager --calls "$(calls 200)" --concurrency 4 --max-pool 4 --sync-limit 1000
run webrtc-pool-contention call "${webrtc[@]}" --id rpcbench-client4 --target rpcbench-server --rpc sync --calls "$(calls 20000)" --concurrency 16 --max-pool 2 --sync-limit 0
run webrtc-fastforward call "${webrtc[@]}" --id rpcbench-client5 --target rpcbench-server --rpc fastforward --calls "$(calls 200)" --concurrency 1 --max-pool 2 --sync-limit 0
# The caller's thread while five large WebRTC replies arrive (a 1 ms
# ticker on it, as the stall runs below do for TCP).
run webrtc-stall-caller call "${webrtc[@]}" --id rpcbench-client6 --target rpcbench-server --rpc sync --sync-limit 50000 --calls 5 --tick-ms 1 --timeout-ms 60000

# The raw WebRTC limit: the same request and reply bytes over webrtc-rs
# data channels alone (both sides in one process, a thread each, a channel
# per caller; no codec, no actors, no signaling).
run raw-rtc-ping            rtc-echo --rpc sync --calls "$(calls 20000)" --concurrency 1
run raw-rtc-pool-contention rtc-echo --rpc sync --calls "$(calls 20000)" --concurrency 16
run raw-rtc-sync-1000       rtc-echo --rpc sync --calls "$(calls 500)" --concurrency 1 --sync-limit 1000
run raw-rtc-eager-1000      rtc-echo --rpc eager --calls "$(calls 200)" --concurrency 4 --sync-limit 1000
run raw-rtc-fastforward     rtc-echo --rpc fastforward --calls "$(calls 200)" --concurrency 1

# The server's thread while five large requests arrive over QUIC and over
# WebRTC: a server of each with a 1 ms ticker, as `stall` below for TCP.
quic_tick_port=$(free_port)
"$bench" serve --tick-ms 1 --transport quic --listen "127.0.0.1:$quic_tick_port" --key-file "$work/quic-tick.key" >"$work/server-quic-tick.log" 2>&1 &
quic_tick_pid=$!
pids+=("$quic_tick_pid")
for _ in $(seq 100); do grep -q listening "$work/server-quic-tick.log" 2>/dev/null && break; sleep 0.05; done
quic_tick_key=$(grep -o '0X04[0-9A-F]*' "$work/server-quic-tick.log" | tail -1)
run quic-stall-eager call --target "127.0.0.1:$quic_tick_port" --transport quic --key-file "$work/quic-client.key" \
  --target-key "$quic_tick_key" --rpc eager --sync-limit 20000 --calls 5 --timeout-ms 60000
"$bench" serve --tick-ms 1 "${webrtc[@]}" --id rpcbench-ticker >"$work/server-webrtc-tick.log" 2>&1 &
webrtc_tick_pid=$!
pids+=("$webrtc_tick_pid")
for _ in $(seq 200); do grep -q listening "$work/server-webrtc-tick.log" 2>/dev/null && break; sleep 0.05; done
run webrtc-stall-eager call "${webrtc[@]}" --id rpcbench-client7 --target rpcbench-ticker --rpc eager --sync-limit 20000 --calls 5 --timeout-ms 60000
server_exit_line "$quic_tick_pid" "$work/server-quic-tick.log" quic-stall-server
server_exit_line "$webrtc_tick_pid" "$work/server-webrtc-tick.log" webrtc-stall-server

# ping-parallel against a fresh server, so that its peak RSS is this run's.
kill "$serve_pid"
fresh_port=$(free_port)
fresh_pid=$(start "$fresh_port" serve)
run ping-parallel  call --target "127.0.0.1:$fresh_port" --rpc sync --calls "$(calls 50000)" --concurrency 16 --max-pool 16 --sync-limit 0
grep VmHWM "/proc/$fresh_pid/status" | awk '{print $2}' >"$work/serve-rss-kib"

# The transport's I/O threads against none (io-threads 0: everything on
# the main thread, as before they existed), both sides, same binary.
inline_port=$(free_port)
inline_pid=$(start "$inline_port" serve --io-threads 0)
run inline-ping call --target "127.0.0.1:$inline_port" --io-threads 0 --rpc sync --calls "$(calls 20000)" --concurrency 1 --max-pool 2 --sync-limit 0
run inline-ping-parallel call --target "127.0.0.1:$inline_port" --io-threads 0 --rpc sync --calls "$(calls 50000)" --concurrency 16 --max-pool 16 --sync-limit 0
run inline-pool-contention call --target "127.0.0.1:$inline_port" --io-threads 0 --rpc sync --calls "$(calls 20000)" --concurrency 16 --max-pool 2 --sync-limit 0
run inline-sync-1000 call --target "127.0.0.1:$inline_port" --io-threads 0 --rpc sync --calls "$(calls 500)" --concurrency 1 --max-pool 2 --sync-limit 1000
kill "$inline_pid"

# Against Go Babble (when GOPEER names a gopeer binary): every standard run
# against `gopeer serve`, against our server (default) and against our
# server with io-threads 0 on both sides, interleaved, twice.
standard_runs=(
  "ping:sync:20000:1:2:0"
  "ping-parallel:sync:50000:16:16:0"
  "pool-contention:sync:20000:16:2:0"
  "sync-1000:sync:500:1:2:1000"
  "eager-1000:eager:500:4:4:1000"
  "fastforward:fastforward:200:1:2:0"
)
if [ -n "${GOPEER:-}" ]; then
  go_port=$(free_port); ours_port=$(free_port); ours0_port=$(free_port)
  "$GOPEER" serve --listen "127.0.0.1:$go_port" >"$work/gopeer.log" 2>&1 &
  pids+=("$!")
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$go_port") 2>/dev/null && break; sleep 0.05; done
  ours_pid=$(start "$ours_port" serve)
  ours0_pid=$(start "$ours0_port" serve --io-threads 0)
  for round in 1 2; do
    for spec in "${standard_runs[@]}"; do
      IFS=: read -r name rpc c p m n <<<"$spec"
      args=(--rpc "$rpc" --calls "$(calls "$c")" --concurrency "$p" --max-pool "$m" --sync-limit "$n")
      echo "== go-$name-$round" >&2
      "$GOPEER" call --target "127.0.0.1:$go_port" "${args[@]}" | tail -n 1 | tee "$work/go-$name-$round.json" >&2
      run "ours-$name-$round" call --target "127.0.0.1:$ours_port" "${args[@]}"
      run "ours0-$name-$round" call --target "127.0.0.1:$ours0_port" --io-threads 0 "${args[@]}"
    done
  done
  kill "$ours_pid" "$ours0_pid"
fi

# The node's thread while large frames pass (DESIGN.md "Threads"): a 1 ms
# ticker on it, default against io-threads 0. Caller side: five Sync
# replies of 50,000 events; server side: five EagerSync requests of
# 20,000 events, the ticker in the server (its last line, on exit).
stall() { # name, then serve arguments
  local name=$1; shift
  local port; port=$(free_port)
  local pid; pid=$(start "$port" serve "$@")
  run "$name-caller" call --target "127.0.0.1:$port" "$@" --rpc sync --sync-limit 50000 --calls 5 --tick-ms 1 --timeout-ms 60000
  kill "$pid"
  # A server of its own, so that its ticker sees only the EagerSync run.
  port=$(free_port)
  pid=$(start "$port" serve --tick-ms 1 "$@")
  run "$name-eager" call --target "127.0.0.1:$port" "$@" --rpc eager --sync-limit 20000 --calls 5 --timeout-ms 60000
  server_exit_line "$pid" "$work/server-$port.log" "$name-server"
}
stall stall-default
stall stall-inline --io-threads 0

# What a node spends while 64 peers hold idle connections to it (a thread
# that expects I/O polls for a few tens of microseconds after each exchange,
# never while nothing happens): CPU of a fresh server over 5 s.
idle_port=$(free_port)
idle_pid=$(start "$idle_port" serve)
python3 - "$idle_port" "$idle_pid" "$bench" >"$work/idle-cpu.json" <<'IDLE'
import json, os, socket, subprocess, sys, time
port, pid, bench = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ping = b'\x01{"FromID":0,"Known":{"0":1,"1":2,"2":3},"SyncLimit":0}\n'
peers = []
for _ in range(64):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(ping)
    got = b""
    while got.count(b"\n") < 2:
        got += s.recv(4096)
    peers.append(s)
def cpu():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
t0, c0 = time.monotonic(), cpu()
time.sleep(5)
t1, c1 = time.monotonic(), cpu()
print(json.dumps({"peers": len(peers), "secs": round(t1 - t0, 1), "core_percent": round(100 * (c1 - c0) / (t1 - t0), 2)}))
IDLE
kill "$idle_pid"

# Fairness (DESIGN.md "Limits and deadlines"): a node spending 500 us of
# CPU on each RPC, one at a time; an honest caller from 127.0.0.1 making
# one Sync every 10 ms, alone, beside 256 connections of valid Syncs from
# 127.0.0.2, and beside four such floods (1024 connections).
ulimit -n 8192 2>/dev/null || true
fair_port=$(free_port)
fair_pid=$(start "$fair_port" serve --work-us 500)
fair_calls=$(calls 1000)
fair() { # name, then the flood's source addresses (none: alone)
  local name=$1 sources=${2:-}
  local flood_pid=""
  if [ -n "$sources" ]; then
    "$bench" flood --target "127.0.0.1:$fair_port" --sources "$sources" --connections 256 \
      --secs $(( fair_calls / 100 + 6 )) >"$work/$name-flood.log" 2>&1 &
    flood_pid=$!
    for _ in $(seq 400); do grep -q "connections open" "$work/$name-flood.log" && break; sleep 0.05; done
    sleep 1
  fi
  run "$name" call --target "127.0.0.1:$fair_port" --calls "$fair_calls" --pace-ms 10 --timeout-ms 1000
  if [ -n "$flood_pid" ]; then
    wait "$flood_pid"
    tail -n 1 "$work/$name-flood.log" >"$work/$name-flood.json"
  fi
}
fair fair-alone
fair fair-flood-1 127.0.0.2
fair fair-flood-4 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5
kill "$fair_pid"

# Lock-out: 256 connections from each of six addresses send a Sync for
# 20,000 events (~14 MB) and never read the reply; then an honest newcomer
# calls once. The server's peak memory is read from /proc.
lock_port=$(free_port)
lock_pid=$(start "$lock_port" serve)
"$bench" flood --target "127.0.0.1:$lock_port" --never-read --sync-limit 20000 --connections 256 \
  --sources 127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6,127.0.0.7 --secs 30 >"$work/lockout-flood.log" 2>&1 &
lock_flood=$!
for _ in $(seq 400); do grep -q "connections open" "$work/lockout-flood.log" && break; sleep 0.05; done
sleep 5
run lockout-newcomer call --target "127.0.0.1:$lock_port" --calls 1 --timeout-ms 5000
grep VmHWM "/proc/$lock_pid/status" | awk '{print $2}' >"$work/lockout-rss-kib"
kill "$lock_flood" "$lock_pid"

# Scale: one fresh server, 4 -> 256 calling peers at a fixed total rate,
# then the memory of an idle connection on each side.
kill "$fresh_pid"
scale_port=$(free_port)
scale_pid=$(start "$scale_port" serve)
echo "== scale" >&2
"$bench" scale --target "127.0.0.1:$scale_port" --server-pid "$scale_pid" \
  --peers 4,16,64,256 --rate 2000 --secs 3 --idle 200 | tee "$work/scale.lines" >&2
kill "$scale_pid"

python3 - "$work" "$out" <<'PY'
import json, os, platform, subprocess, sys, datetime
work, out = sys.argv[1], sys.argv[2]
r = {n[:-5]: json.load(open(os.path.join(work, n))) for n in os.listdir(work) if n.endswith(".json")}
rss_mib = int(open(os.path.join(work, "serve-rss-kib")).read()) / 1024
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
echo, codec = r["echo"], r["codec"]
limit_eps = codec["serde_json_events_per_s"]
def eps(run, n=1000): return run["calls"] and (run["calls"] - run["errors"]) * n / run["secs"]
def mbps(run): return (run["bytes_in"] + run["bytes_out"]) / run["secs"] / 1e6
rows = []
def row(name, run, figure, ratio, target, ok):
    rows.append(f"| {name} | {run['calls']} | {run['errors']} | {run['rpcs_per_s']:.0f} | {run['p50_us']} | {run['p99_us']} | {run['max_us']} | {figure} | {ratio} | {target} | {'yes' if ok else 'no'} |")
p = r["ping"]
row("ping", p, f"p50 {p['p50_us']} µs vs echo {echo['p50_us']} µs", f"{p['p50_us']/echo['p50_us']:.2f}x p50", "≤ 1.2x", p['p50_us'] <= 1.2*echo['p50_us'])
row("ping (throughput)", p, f"{p['rpcs_per_s']:.0f} vs echo {echo['rpcs_per_s']:.0f} rpcs/s", f"{p['rpcs_per_s']/echo['rpcs_per_s']:.2f}x", "≥ 0.85x", p['rpcs_per_s'] >= 0.85*echo['rpcs_per_s'])
pp = r["ping-parallel"]
row("ping-parallel", pp, f"{pp['rpcs_per_s']:.0f} rpcs/s (echo x16: {r['echo-parallel']['rpcs_per_s']:.0f})", f"{pp['rpcs_per_s']/r['echo-parallel']['rpcs_per_s']:.2f}x echo x16", "no errors (vs Go below)", pp['errors'] == 0)
pc = r["pool-contention"]
row("pool-contention", pc, f"p99/p50 = {pc['p99_us']}/{pc['p50_us']}", f"{pc['p99_us']/max(pc['p50_us'],1):.1f}x", "< 20x, no errors", pc['p99_us'] < 20*pc['p50_us'] and pc['errors'] == 0)
s = r["sync-1000"]
row("sync-1000", s, f"{eps(s):.0f} events/s vs codec-only serde_json {limit_eps:.0f}", f"{eps(s)/limit_eps:.2f}x", "≥ 0.7x", eps(s) >= 0.7*limit_eps)
e = r["eager-1000"]
row("eager-1000", e, f"{eps(e):.0f} events/s vs codec-only serde_json {limit_eps:.0f}", f"{eps(e)/limit_eps:.2f}x", "(none)", True)
f = r["fastforward"]
row("fastforward", f, f"{mbps(f):.0f} MB/s on the wire vs codec-only serde_json {codec['serde_json_mb_per_s']:.0f} MB/s", f"{mbps(f)/codec['serde_json_mb_per_s']:.2f}x", "(none)", True)
wp = r["webrtc-ping"]
row("webrtc ping", wp, f"p50 {wp['p50_us']} µs vs TCP ping {p['p50_us']} µs", f"{wp['p50_us']/p['p50_us']:.1f}x TCP p50", "(none)", wp['errors'] == 0)
ws = r["webrtc-sync-1000"]
row("webrtc sync-1000", ws, f"{eps(ws):.0f} events/s vs TCP {eps(s):.0f}", f"{eps(ws)/eps(s):.2f}x TCP", "≥ 0.6x TCP", eps(ws) >= 0.6*eps(s) and ws['errors'] == 0)
we = r["webrtc-eager-1000"]
row("webrtc eager-1000", we, f"{eps(we):.0f} events/s vs TCP {eps(e):.0f}", f"{eps(we)/eps(e):.2f}x TCP", "0 errors", we['errors'] == 0)
sp = r["secure-ping"]
row("secure ping", sp, f"p50 {sp['p50_us']} µs vs plaintext {p['p50_us']} µs", f"{sp['p50_us']/p['p50_us']:.2f}x p50", "≤ 1.15x", sp['p50_us'] <= 1.15*p['p50_us'] and sp['errors'] == 0)
ss = r["secure-sync-1000"]
row("secure sync-1000", ss, f"{eps(ss):.0f} events/s vs plaintext {eps(s):.0f}", f"{eps(ss)/eps(s):.2f}x", "≥ 0.8x", eps(ss) >= 0.8*eps(s) and ss['errors'] == 0)
io_rows = []
for name in ["ping", "ping-parallel", "pool-contention", "sync-1000"]:
    a, b = r[name], r["inline-" + name]
    io_rows.append(f"| {name} | {a['rpcs_per_s']:.0f} | {a['p50_us']} | {a['p99_us']} | {b['rpcs_per_s']:.0f} | {b['p50_us']} | {b['p99_us']} | {a['rpcs_per_s']/b['rpcs_per_s']:.2f}x | {a['p50_us']/max(b['p50_us'],1):.2f}x |")
io_rows = "\n".join(io_rows)
quic_rows = []
# Goals against quinn alone (raw quinn); sync-1000 and eager-1000 against
# their serial bound: a call's codec time (our codec's rate on 1,000
# events) plus raw quinn's time for the same bytes.
codec_calls = codec["ours_events_per_s"] / 1000
for name in ["ping", "pool-contention", "sync-1000", "eager-1000", "fastforward"]:
    t, sec, q, raw = r[name], r["secure-" + name], r["quic-" + name], r["raw-quic-" + name]
    vs_t, vs_s = q["rpcs_per_s"] / t["rpcs_per_s"], q["rpcs_per_s"] / sec["rpcs_per_s"]
    vs_raw, raw_t = q["rpcs_per_s"] / raw["rpcs_per_s"], raw["rpcs_per_s"] / t["rpcs_per_s"]
    p50 = q["p50_us"] / max(t["p50_us"], 1)
    raw_p50 = raw["p50_us"] / max(t["p50_us"], 1)
    if name == "ping":
        vs_quinn_p50 = q["p50_us"] / max(raw["p50_us"], 1)
        target, ok = f"p50 ≤ 1.3x raw quinn ({vs_quinn_p50:.2f}x)", vs_quinn_p50 <= 1.3
    elif name in ("sync-1000", "eager-1000"):
        bound = 1 / (1 / codec_calls + 1 / raw["rpcs_per_s"])
        target, ok = f"≥ 0.9x serial bound {bound:.0f} ({q['rpcs_per_s'] / bound:.2f}x)", q["rpcs_per_s"] >= 0.9 * bound
    else:
        goal = 0.5 if name == "pool-contention" else 0.9
        target, ok = f"≥ {goal}x raw quinn", vs_raw >= goal
    quic_rows.append(
        f"| {name} | {t['rpcs_per_s']:.0f} | {sec['rpcs_per_s']:.0f} | {q['rpcs_per_s']:.0f} | {raw['rpcs_per_s']:.0f} | {q['errors']} "
        f"| {t['p50_us']} / {sec['p50_us']} / {q['p50_us']} / {raw['p50_us']} | {vs_t:.2f}x | {vs_s:.2f}x | {vs_raw:.2f}x "
        f"| {raw_t:.2f}x, p50 {raw_p50:.2f}x | {p50:.2f}x | {target} | {'yes' if ok and q['errors'] == 0 else 'no'} |")
quic_rows = "\n".join(quic_rows)
qi, qf = r["quic-inline-ping"], r["quic-inline-fastforward"]
quic_inline = (f"With QUIC's drivers on the node's thread (`io-threads 0`, both sides; no hand-off "
               f"between threads): ping p50 {qi['p50_us']} µs ({qi['p50_us']/max(p['p50_us'],1):.2f}x TCP), "
               f"fastforward {qf['rpcs_per_s']:.0f} rpcs/s ({qf['rpcs_per_s']/f['rpcs_per_s']:.2f}x TCP), "
               f"{qi['errors'] + qf['errors']} errors.")
rtc_rows = []
for name in ["ping", "pool-contention", "sync-1000", "eager-1000", "fastforward"]:
    w, raw, t = r["webrtc-" + name], r["raw-rtc-" + name], r[name]
    vs_raw = w["rpcs_per_s"] / raw["rpcs_per_s"]
    ok = vs_raw >= 0.8 and w["errors"] == 0 and raw["errors"] == 0
    rtc_rows.append(
        f"| {name} | {t['rpcs_per_s']:.0f} | {w['rpcs_per_s']:.0f} | {raw['rpcs_per_s']:.0f} | {w['errors']} "
        f"| {t['p50_us']} / {w['p50_us']} / {raw['p50_us']} | {vs_raw:.2f}x | {w['p50_us']/max(raw['p50_us'],1):.2f}x "
        f"| {w['rpcs_per_s']/t['rpcs_per_s']:.2f}x | ≥ 0.8x raw | {'yes' if ok else 'no'} |")
rtc_rows = "\n".join(rtc_rows)
goals = {"ping": 1.0, "ping-parallel": 1.5, "pool-contention": 1.5, "sync-1000": 3.5, "eager-1000": 3.5, "fastforward": 4.0}
go_section = ""
if "go-ping-1" in r:
    go_rows = []
    for name, goal in goals.items():
        rounds = [(r[f"ours-{name}-{i}"], r[f"ours0-{name}-{i}"], r[f"go-{name}-{i}"]) for i in (1, 2)]
        ours = [o["rpcs_per_s"] / g["rpcs_per_s"] for o, _, g in rounds]
        ours0 = [o0["rpcs_per_s"] / g["rpcs_per_s"] for _, o0, g in rounds]
        vs0 = [o["rpcs_per_s"] / o0["rpcs_per_s"] for o, o0, _ in rounds]
        errors = sum(o["errors"] + o0["errors"] + g["errors"] for o, o0, g in rounds)
        def figures(values, form):
            return ", ".join(form.format(v) for v in values)
        go_rows.append(
            f"| {name} | {figures([g['rpcs_per_s'] for _, _, g in rounds], '{:.0f}')} "
            f"| {figures([o['rpcs_per_s'] for o, _, _ in rounds], '{:.0f}')} "
            f"| {figures(ours, '{:.2f}x')} | {figures(ours0, '{:.2f}x')} | {figures(vs0, '{:.2f}x')} "
            f"| ≥ {goal:.1f}x | {'yes' if min(ours) >= goal and min(vs0) >= 0.95 and errors == 0 else 'no'} |")
    go_section = f"""
## Against Go Babble

Go Babble v0.8.5's own TCP transport (`../shared/gopeer`, `GOPEER=...
scripts/bench.sh`) serving and calling, against ours on the default
configuration and with `--io-threads 0` on both sides; the three runs of
each row alternate, and the whole table is run twice (both figures shown).
rpcs/s of the caller; "met" asks for the goal vs Go on the default in both
rounds, default ≥ 0.95x of io-threads 0, and no errors.

| run | Go rpcs/s | ours rpcs/s | ours / Go | io-threads 0 / Go | default / io-threads 0 | goal | met |
|---|---|---|---|---|---|---|---|
""" + "\n".join(go_rows) + "\n"
elif os.path.exists(out):
    # No Go Babble in this run: the section of the last run that had it is
    # kept, and says so.
    import re
    previous = open(out).read()
    kept = re.search(r"\n## Against Go Babble\n.*?(?=\n## )", previous, re.S)
    if kept:
        go_section = kept.group(0) + "\n"
        if "*Carried over from" not in go_section:
            when = re.search(r"^(\d{4}-\d{2}-\d{2}):", previous, re.M)
            note = (f"\n*Carried over from the run of {when.group(1) if when else 'an earlier date'}, "
                    f"the last with `GOPEER` set (on that run's machine); every other table on "
                    f"this page is from this run.*\n")
            go_section = go_section.replace("## Against Go Babble\n", "## Against Go Babble\n" + note, 1)
stall_rows = []
for label, name in [("TCP, default (io-threads = cores)", "stall-default"), ("TCP, io-threads 0", "stall-inline"),
                    ("QUIC, default", "quic-stall"), ("WebRTC, default", "webrtc-stall")]:
    c, e, sv = r[f"{name}-caller"], r[f"{name}-eager"], r[f"{name}-server"]
    ok = c["tick_p99_ms"] <= 10 and c["tick_max_ms"] <= 20 and sv["tick_p99_ms"] <= 10 and sv["tick_max_ms"] <= 20
    stall_rows.append(
        f"| {label} | {c['tick_p99_ms']:.1f} | {c['tick_max_ms']:.1f} | {c['errors']} | {sv['tick_p99_ms']:.1f} | {sv['tick_max_ms']:.1f} | {e['errors']} | {'yes' if ok else 'no'} |")
stall_rows = "\n".join(stall_rows)
idle_cpu = json.load(open(os.path.join(work, "idle-cpu.json")))
scale = [json.loads(l) for l in open(os.path.join(work, "scale.lines")) if l.strip()]
steps = [x for x in scale if x["scale"] == "rate"]
idle = next(x for x in scale if x["scale"] == "idle")
base = steps[0]["p50_us"]
scale_rows = "\n".join(
    f"| {x['peers']} | {x['calls']} | {x['errors']} | {x['rpcs_per_s']:.0f} | {x['p50_us']} | {x['p99_us']} | {x['p50_us']/base:.2f}x | {x['server_rss_kib']/1024:.1f} |"
    for x in steps)
at64 = next((x for x in steps if x["peers"] == 64), steps[-1])
im = r["inmem-ping"]
row("inmem ping", im, f"p50 {im['p50_us']} µs", "-", "(reference)", True)
fa = r["fair-alone"]
fair_rows = []
for label, name, goal in [("alone", "fair-alone", None),
                          ("beside 256 connections from one source", "fair-flood-1", 5.0),
                          ("beside 4 x 256 connections from four sources", "fair-flood-4", 10.0)]:
    h = r[name]
    flood = r.get(name + "-flood", {})
    ok = goal is None or (h["p99_us"] <= goal * 1000 and h["errors"] == 0)
    fair_rows.append(
        f"| {label} | {h['calls']} | {h['errors']} | {h['p50_us']/1000:.2f} | {h['p99_us']/1000:.2f} | {h['max_us']/1000:.2f} "
        f"| {h['p99_us']/max(fa['p99_us'],1):.1f}x | {flood.get('answered', '-')} | {'-' if goal is None else f'p99 ≤ {goal:.0f} ms, 0 errors'} | {'-' if goal is None else ('yes' if ok else 'no')} |")
fair_rows = "\n".join(fair_rows)
lock = r["lockout-newcomer"]
lock_rss_mib = int(open(os.path.join(work, "lockout-rss-kib")).read()) / 1024
lock_ok = lock["errors"] == 0 and lock["max_us"] <= 1_000_000 and lock_rss_mib < 1024
with open(out, "w") as o:
    o.write(f"""# Performance

Measured with `scripts/bench.sh` (rpcbench, BENCH.md's standard runs) on
{datetime.date.today().isoformat()}: {os.cpu_count()} cores ({cpu}), Linux {platform.release()}, {rustc},
release build. Client and server are separate processes on 127.0.0.1; every
figure is a ratio against an anchor measured in the same run:

- **echo**: the physical limit of `ping`, a raw blocking TCP round trip of the
  same bytes (56-byte request, 58-byte reply), no codec, no actors:
  p50 {echo['p50_us']} µs, {echo['rpcs_per_s']:.0f} round trips/s.
- **codec**: serde_json's own rate on the `sync-1000` reply, in one process:
  plain `serde_json::to_vec`/`from_slice` {limit_eps:.0f} events/s
  ({codec['serde_json_mb_per_s']:.0f} MB/s); our codec (Go-exact encoding + frame scanning)
  {codec['ours_events_per_s']:.0f} events/s, {codec['ratio']:.2f}x of it.

| run | calls | errors | rpcs/s | p50 µs | p99 µs | max µs | figure | ratio | target | met |
|---|---|---|---|---|---|---|---|---|---|---|
""" + "\n".join(rows) + f"""

Peak RSS of `serve` during ping-parallel: {rss_mib:.1f} MiB (target < 64 MiB: {'met' if rss_mib < 64 else 'not met'}).

## I/O threads

The rows above run with the default `io-threads` (one per core: frames
larger than `large-frame` are parsed and encoded there, so that a large
frame never stalls the node's thread). The same runs with `--io-threads 0`
on both sides (everything on the main thread):

| run | rpcs/s | p50 µs | p99 µs | io-threads 0: rpcs/s | p50 µs | p99 µs | throughput vs 0 | p50 vs 0 |
|---|---|---|---|---|---|---|---|---|
{io_rows}

A small call stays on the thread that makes or answers it on both
configurations; only frames above `large-frame` (2 MiB) are parsed and
encoded on the I/O threads: no frame of the standard runs is that large
(the FastForward reply is ~1.4 MB), so the two configurations run the same
code and differ only by this machine's spread; the stall runs below show
what the I/O threads are for.

## The node's thread

How late a 1 ms ticker on the node's thread runs while large frames pass
(`--tick-ms 1`, BENCH.md): on the caller while it receives five Sync
replies of 50,000 events (~35 MB each), and on the server while it
receives five EagerSync requests of 20,000 events (~14 MB each); over
TCP with and without I/O threads, and over QUIC and WebRTC (their
default). Goal on every default: p99 ≤ 10 ms and max ≤ 20 ms on both
roles.

| configuration | caller tick p99 ms | caller tick max ms | errors | server tick p99 ms | server tick max ms | errors | goal met |
|---|---|---|---|---|---|---|---|
{stall_rows}

The caller checks (and frees) each answer over 1 MiB on a helper thread
while its next call goes (at most four wait for their check), so that
every figure here is the transport's, not the benchmark's own comparison
(a FastForward's answer, or 50,000 events: about 10 ms of work on the
node's thread).

A thread waiting for a reply, or that has just written one, polls its I/O
driver for 50 µs before it sleeps: at most 50 µs of CPU per exchange on
each side, and none while nothing happens. A fresh server with
{idle_cpu['peers']} peers holding idle connections used {idle_cpu['core_percent']:.2f}% of a core
over {idle_cpu['secs']} s (goal: under 2%).
{go_section}
## QUIC

Every standard run against a QUIC server (`serve --transport quic`), next
to the same run against the plaintext and the secure (Noise) TCP servers,
in the same run. QUIC drives its packets on an I/O thread (docs/QUIC.md,
"Threads"), so each small call pays hand-offs between threads that TCP
does not.

"raw quinn" is QUIC's own limit on this machine: the same request and
reply bytes over quinn alone (`rpcbench quic-echo-serve` /
`quic-echo-call`: one thread per side, no codec, no actors, no node keys,
the transport's socket buffers and reply window). The goals are set
against it, not against kernel TCP, which no transport built on a
user-space stack reaches on loopback: ping p50 ≤ 1.3x raw quinn's,
pool-contention ≥ 0.5x raw quinn, fastforward ≥ 0.9x, and sync-1000 and
eager-1000 ≥ 0.9x of their serial bound (a call's time in our codec, from
the codec run above, plus raw quinn's time for the same bytes).

| run | TCP rpcs/s | secure rpcs/s | QUIC rpcs/s | raw quinn rpcs/s | QUIC errors | p50 µs TCP / secure / QUIC / raw quinn | QUIC vs TCP | QUIC vs secure | QUIC vs raw quinn | raw quinn vs TCP | QUIC p50 vs TCP | goal | met |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{quic_rows}

{quic_inline}

## WebRTC

Every standard run against a WebRTC server (`serve --transport webrtc`,
meeting its callers through `babble-signal`, ICE on loopback), next to
the same run over plaintext TCP. "raw webrtc-rs" is the stack's own
limit on this machine: the same request and reply bytes over webrtc-rs
data channels alone (`rpcbench rtc-echo`: both peer connections in one
process, a thread each, ordered and reliable channels, one per concurrent
caller, the transport's message size, windows and socket buffers; no
codec, no actors, no signaling). Goal: every run ≥ 0.8x raw webrtc-rs.

| run | TCP rpcs/s | WebRTC rpcs/s | raw webrtc-rs rpcs/s | WebRTC errors | p50 µs TCP / WebRTC / raw | WebRTC vs raw | p50 vs raw | WebRTC vs TCP | goal | met |
|---|---|---|---|---|---|---|---|---|---|---|
{rtc_rows}

## Fairness

A server spending 500 µs of CPU on each RPC, one at a time (`serve
--work-us 500`), and an honest caller from 127.0.0.1 making one Sync every
10 ms (`call --pace-ms 10`), alone and while `rpcbench flood` keeps 256
connections per source busy with valid Syncs (each answered and asked
again at once). Sources are served in turn, so a flood gets one share of
the node however many connections it holds.

| honest caller | calls | errors | p50 ms | p99 ms | max ms | p99 vs alone | flood answered | goal | met |
|---|---|---|---|---|---|---|---|---|---|
{fair_rows}

Lock-out: 256 connections from each of six addresses (127.0.0.2-7) send a
Sync for 20,000 events (~14 MB reply) and never read; then an honest
newcomer from 127.0.0.1 calls once. Its call took {lock['max_us']/1000:.0f} ms with
{lock['errors']} errors, and the server's peak memory was {lock_rss_mib:.0f} MiB (goal: answered
within 1 s, peak under 1 GiB: {'met' if lock_ok else 'not met'}). Unread replies are charged to
`outbound-buffer-budget` (256 MiB) from the moment the node hands them
over, the rest are refused at once, and the newcomer evicts a connection
of the heaviest source; the peak also holds the serve's own reply cache
and its reply being made (about 30 MB here) and what the allocator keeps.

## Scale

One `serve` process; `rpcbench scale` starts N caller transports (each its
own pool, one connection) that together make {steps[0]['rpcs_per_s']:.0f} pings a second, spread
evenly, for 3 s per step. The anchor is the same server with 4 peers.

| peers | calls | errors | rpcs/s | p50 µs | p99 µs | p50 vs 4 peers | server RSS MiB |
|---|---|---|---|---|---|---|---|
{scale_rows}

p50 at 64 peers: {at64['p50_us']/base:.2f}x of 4 peers (target ≤ 1.2x: {'met' if at64['p50_us'] <= 1.2*base else 'not met'}).

Memory of an idle connection ({idle['connections']} opened at once from one caller, resident
memory of each process before and after): {idle['pooled_bytes_each']/1024:.1f} KiB per pooled
connection (caller), {idle['inbound_bytes_each']/1024:.1f} KiB per inbound connection (server);
target ≤ 16 KiB each: {'met' if max(idle['pooled_bytes_each'], idle['inbound_bytes_each']) <= 16384 else 'not met'}. Kernel socket buffers are not counted.

Reproduce: `scripts/bench.sh` (writes this file). This machine is a shared
virtual machine: run-to-run spread is about ±10%, so compare ratios from one
run, not absolute figures across runs.
""")
print(open(out).read())
PY
