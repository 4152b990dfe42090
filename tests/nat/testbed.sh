#!/usr/bin/env bash
# NAT test bed for the WebRTC transport, in Linux network namespaces.
#
#   peer1 (192.168.1.2) -- nat1 -- pub -- nat2 -- peer2 (192.168.2.2)
#                                  |
#                                 srv: signaling server + coturn
#                                      (STUN/TURN) on 10.99.0.1
#
# nat1 and nat2 masquerade their private network behind 10.99.1.2 and
# 10.99.2.2; pub routes between them and the servers' host. peer2 runs
# `rpcbench serve`, peer1 calls it with every RPC through the NATs.
#
# Usage: testbed.sh SCENARIO RPCBENCH BABBLE_SIGNAL
#   stun     ICE with STUN only: the peers meet through their NATs' mappings
#   turn     direct UDP between the NATs dropped in pub: only TURN relays work
#   badauth  relay only, with a wrong TURN password: must fail clearly
# Prints one line per RPC run: "RESULT <rpc> <rpcbench JSON>" and
# "FIRST <rpc> <microseconds>" (the first call includes connecting), or
# "ERROR <rpc> <message>"; for turn also "DROPPED <direct packets dropped>"
# and "ALLOCATIONS <TURN allocations>". Needs root, iproute2, iptables and coturn.
# Every namespace, process and rule is removed on exit, failed or not.
set -euo pipefail

scenario=$1 rpcbench=$2 signal_bin=$3
p="bn$$"                      # prefix: namespaces and links of this run
work=$(mktemp -d)
pids=()

ns() { local name=$1; shift; ip netns exec "$p$name" "$@"; }

names=(pub srv nat1 nat2 peer1 peer2)

# Every process inside this run's namespaces (the background jobs' PIDs
# are those of subshells, not of the programs they started).
ns_pids() { for name in "${names[@]}"; do ip netns pids "$p$name" 2>/dev/null || true; done; }

cleanup() {
  ns_pids | xargs -r kill 2>/dev/null || true
  for _ in $(seq 100); do [ -z "$(ns_pids)" ] && break; sleep 0.05; done
  ns_pids | xargs -r kill -9 2>/dev/null || true
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for name in "${names[@]}"; do ip netns del "$p$name" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap "exit 130" INT TERM

# Leftovers of runs that were killed before they could clean up.
for stale in $(ip netns list | awk '{print $1}' | grep -E '^bn[0-9]+(peer[12]|nat[12]|pub|srv)$' || true); do
  pid=${stale#bn}; pid=${pid%%[a-z]*}
  kill -0 "$pid" 2>/dev/null || ip netns del "$stale" 2>/dev/null || true
done

for name in "${names[@]}"; do
  ip netns add "$p$name"
  ns "$name" ip link set lo up
done

# pub: the "internet" router.
ns pub sysctl -qw net.ipv4.ip_forward=1

link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$p$2" type veth peer name "$p$5"
  ip link set "$p$2" netns "$p$1"
  ip link set "$p$5" netns "$p$4"
  ns "$1" ip addr add "$3" dev "$p$2"
  ns "$4" ip addr add "$6" dev "$p$5"
  ns "$1" ip link set "$p$2" up
  ns "$4" ip link set "$p$5" up
}

link pub u0 10.99.0.254/24 srv s0 10.99.0.1/24
ns srv ip route add default via 10.99.0.254
for i in 1 2; do
  link pub "u$i" "10.99.$i.1/24" "nat$i" "w$i" "10.99.$i.2/24"
  link "nat$i" "l$i" "192.168.$i.1/24" "peer$i" "h$i" "192.168.$i.2/24"
  ns "nat$i" ip route add default via "10.99.$i.1"
  ns "nat$i" sysctl -qw net.ipv4.ip_forward=1
  ns "nat$i" iptables -t nat -A POSTROUTING -o "${p}w$i" -j MASQUERADE
  # Like a home router, drop unsolicited UDP to the NAT itself. Without
  # this, a peer's hole-punching packet that arrives first leaves a
  # conntrack entry that makes MASQUERADE pick a new port for the reply:
  # Linux would act as a symmetric NAT, where only TURN can help.
  ns "nat$i" iptables -A INPUT -i "${p}w$i" -p udp -m conntrack --ctstate NEW -j DROP
  ns "peer$i" ip route add default via "192.168.$i.1"
done

if [ "$scenario" = turn ]; then
  # No direct UDP between the two NATs: only the relay can carry data.
  ns pub iptables -A FORWARD -p udp -s 10.99.1.0/24 -d 10.99.2.0/24 -j DROP
  ns pub iptables -A FORWARD -p udp -s 10.99.2.0/24 -d 10.99.1.0/24 -j DROP
fi

# coturn with long-term credentials.
cat >"$work/turnserver.conf" <<CONF
listening-ip=10.99.0.1
relay-ip=10.99.0.1
listening-port=3478
min-port=49152
max-port=49999
lt-cred-mech
user=babble:secret
realm=babble.test
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
pidfile=$work/turnserver.pid
log-file=stdout
simple-log
verbose
CONF
ns srv turnserver -c "$work/turnserver.conf" >"$work/turn.log" 2>&1 &
pids+=("$!")
ns srv "$signal_bin" --listen 10.99.0.1:8443 --insecure --log-level warn >"$work/signal.log" 2>&1 &
pids+=("$!")

wait_for() { # wait_for FILE PATTERN WHAT
  for _ in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "ERROR setup $3 did not start: $(tail -n 5 "$1" | tr '\n' ' ')"; exit 1
}
wait_for "$work/signal.log" listening "the signaling server"
# coturn is ready once its UDP listener is bound.
for _ in $(seq 200); do
  [ -n "$(ns srv ss -Hlun src 10.99.0.1:3478)" ] && break
  sleep 0.05
done

case "$scenario" in
  stun) ice=(--ice-server stun:10.99.0.1:3478) ;;
  turn) ice=(--ice-server "turn:10.99.0.1:3478?transport=udp" --ice-username babble --ice-password secret) ;;
  badauth) ice=(--ice-server "turn:10.99.0.1:3478?transport=udp" --ice-username babble --ice-password wrong --relay-only) ;;
  *) echo "ERROR setup unknown scenario $scenario"; exit 2 ;;
esac
common=(--transport webrtc --signal ws://10.99.0.1:8443 --realm main "${ice[@]}")

ns peer2 "$rpcbench" serve "${common[@]}" --id nat-server >"$work/serve.log" 2>&1 &
pids+=("$!")
wait_for "$work/serve.log" listening "rpcbench serve"

# TESTBED_PAUSE=seconds keeps the bed up for a look from another shell.
if [ -n "${TESTBED_PAUSE:-}" ]; then echo "PAUSED prefix $p work $work" >&2; sleep "$TESTBED_PAUSE"; fi

for rpc in sync eager fastforward join; do
  if ns peer1 "$rpcbench" call "${common[@]}" --id "nat-client-$rpc" --target nat-server \
      --rpc "$rpc" --calls "${CALLS:-20}" --concurrency 1 --max-pool 2 --sync-limit 10 --timeout-ms 10000 \
      >"$work/$rpc.out" 2>"$work/$rpc.err"; then
    echo "RESULT $rpc $(tail -n 1 "$work/$rpc.out")"
  else
    echo "RESULT $rpc $(tail -n 1 "$work/$rpc.out" 2>/dev/null)"
  fi
  first=$(grep -o 'first call took [0-9]*' "$work/$rpc.err" | awk '{print $4}' || true)
  [ -n "$first" ] && echo "FIRST $rpc $first"
  err=$(grep -v 'first call took' "$work/$rpc.err" | head -n 1 || true)
  [ -n "$err" ] && echo "ERROR $rpc $err"
  [ "$scenario" = badauth ] && break
done
if [ "$scenario" = turn ]; then
  # Proof that the peers tried the direct path and only the relay carried
  # data: packets dropped between the NATs, and coturn's allocations.
  echo "DROPPED $(ns pub iptables -L FORWARD -v -x -n | awk '/DROP/ {n += $1} END {print n + 0}')"
  echo "ALLOCATIONS $(grep -c "ALLOCATE processed, success" "$work/turn.log" || true)"
fi
