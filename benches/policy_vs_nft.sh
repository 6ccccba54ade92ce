#!/usr/bin/env bash
# Issue 5: first-packet latency under N NetworkPolicies, Switchyard against the same policies as
# kernel nftables rules in the style of kube-router and Calico, measured in one run.
#
#   client ns  c0 198.18.1.2 + 100 "pods"  ── veth ── n0 | node | n1 ── veth ──  s0 198.18.2.2 + 100 "pods"
#              198.18.1.10-109                                                 198.18.2.10-109, TCP 8080
#
# benches/policy_vs_nft.py writes the cluster (10 namespaces, 100 client and 100 server pods,
# all on node-a) and N ingress policies twice: as manifests and as an nftables ruleset (per-pod
# chains through a verdict map on the destination, a chain and an address set per policy,
# established/related accepted first). For each N:
#   kernel      the node namespace forwards (ip_forward=1) with the ruleset loaded (`nft -f`,
#               timed);
#   switchyard  `switchyard agent --manifests` owns n0/n1 (AF_XDP by default, DATAPLANE=afpacket
#               for AF_PACKET), the kernel forwards nothing;
# then SAMPLES TCP connect()s (python3, time.perf_counter around connect(), RST on close) from
# random allowed (client pod, server pod) pairs, after WARMUP untimed ones: p50 and p99. Each run
# also checks that a pair the policies refuse is refused.
#
# usage: benches/policy_vs_nft.sh [N...]          (default: 100 1000)
# Environment: SAMPLES (1000), WARMUP (100), DATAPLANE (afxdp or afpacket), SWITCHYARD (binary; default
# cargo build --release).
#
# Network safety: three namespaces made here (veths created inside them), addresses from
# 198.18.0.0/15 only, rules loaded only inside the node namespace; removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip nft python3 ethtool timeout; do
  command -v "$c" >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }
done
SAMPLES="${SAMPLES:-1000}"
DATAPLANE="${DATAPLANE:-afxdp}"
WARMUP="${WARMUP:-100}"
COUNTS=("$@")
[ "$#" -gt 0 ] || COUNTS=(100 1000)
TARGET="${CARGO_TARGET_DIR:-target}"
C="sypol-c-$$" N="sypol-n-$$" S="sypol-s-$$"
WORK="$(mktemp -d /tmp/sy-pol-bench.XXXXXX)"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "$C" "$N" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SWITCHYARD:-}" ]; then
  cargo build --release -q -p switchyard
  SWITCHYARD="$TARGET/release/switchyard"
fi
SWITCHYARD="$(realpath "$SWITCHYARD")"

# --- topology -------------------------------------------------------------------------------
for ns in "$C" "$N" "$S"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$N" link add n0 type veth peer name c0 netns "$C"
ip -n "$N" link add n1 type veth peer name s0 netns "$S"
for pair in "$C c0" "$N n0" "$N n1" "$S s0"; do
  set -- $pair
  ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n "$1" link set "$2" up
done
ip -n "$C" addr add 198.18.1.2/24 dev c0
ip -n "$S" addr add 198.18.2.2/24 dev s0
for i in $(seq 10 109); do
  ip -n "$C" addr add "198.18.1.$i/32" dev c0
  ip -n "$S" addr add "198.18.2.$i/32" dev s0
done
ip -n "$C" route add 198.18.2.0/24 via 198.18.1.1
ip -n "$S" route add 198.18.1.0/24 via 198.18.2.1
# Every server pod answers on 8080 (one listener on all addresses; the handshake is what the
# client times).
ip netns exec "$S" python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(4096)
while True:
    c, _ = s.accept(); c.close()
' &
PIDS+=($!)

cat >"$WORK/probe.py" <<'EOF'
import json, random, socket, struct, sys, time
probes = json.load(open(sys.argv[1]))
samples, warmup, mode = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
linger = struct.pack("ii", 1, 0)

def connect(src, dst, timeout):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.settimeout(timeout)
    s.bind((src, 0))
    t0 = time.perf_counter()
    try:
        s.connect((dst, 8080))
        return time.perf_counter() - t0
    except OSError:
        return None
    finally:
        s.close()

if mode == "ready":  # allowed passes and denied is refused
    a = probes["allowed"][0]
    d = probes["denied"]
    ok = connect(a[0], a[1], 1) is not None and (d is None or connect(d[0], d[1], 0.3) is None)
    sys.exit(0 if ok else 1)
random.seed(7)
pairs = probes["allowed"]
for _ in range(warmup):
    connect(*random.choice(pairs), 2)
lat, fail = [], 0
for _ in range(samples):
    t = connect(*random.choice(pairs), 2)
    if t is None:
        fail += 1
    else:
        lat.append(t * 1e6)
lat.sort()
d = probes["denied"]
refused = d is None or connect(d[0], d[1], 0.5) is None
pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] if lat else float("nan")
print(json.dumps({"p50": round(pct(0.5), 1), "p99": round(pct(0.99), 1), "failed": fail,
                  "denied_refused": refused}))
EOF

probe() { # probe DIR MODE
  ip netns exec "$C" timeout 600 python3 "$WORK/probe.py" "$1/probes.json" "$SAMPLES" "$WARMUP" "$2"
}

declare -A OUT
for n in "${COUNTS[@]}"; do
  dir="$WORK/n$n"
  python3 benches/policy_vs_nft.py "$dir" "$n"

  # kernel + nftables
  ip -n "$N" addr add 198.18.1.1/24 dev n0
  ip -n "$N" addr add 198.18.2.1/24 dev n1
  ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1
  t0=$(date +%s%N)
  ip netns exec "$N" timeout 300 nft -f "$dir/ruleset.nft"
  load_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  OUT[kernel-$n]="$(probe "$dir" measure) load ${load_ms} ms"
  ip netns exec "$N" nft flush ruleset
  ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=0
  ip -n "$N" addr flush dev n0
  ip -n "$N" addr flush dev n1

  # switchyard
  ip netns exec "$N" "$SWITCHYARD" agent --manifests "$dir/manifests" --node-name node-a \
    --dataplane "$DATAPLANE" -i n0 -i n1 -a n0=198.18.1.1/24 -a n1=198.18.2.1/24 \
    --admin-socket "$WORK/admin.sock" --metrics-bind-address off --healthz-bind-address off \
    >"$WORK/agent-$n.out" 2>"$WORK/agent-$n.err" &
  agent=$!
  PIDS+=($agent)
  t0=$(date +%s%N)
  ready=""
  for _ in $(seq 120); do
    if probe "$dir" ready; then ready=1; break; fi
    sleep 0.25
  done
  ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  if [ -n "$ready" ]; then
    OUT[switchyard-$n]="$(probe "$dir" measure) ready ${ready_ms} ms"
  else
    OUT[switchyard-$n]="not enforcing after 30 s"
    tail -5 "$WORK/agent-$n.err" >&2
  fi
  kill -TERM "$agent" 2>/dev/null || true
  wait "$agent" 2>/dev/null || true
done

rules() { python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["rules"], d["isolated"])' "$1"; }
printf '\n%-6s %-11s %s\n' "N" "enforcer" "first packet (TCP connect) µs, checks"
for n in "${COUNTS[@]}"; do
  read -r r iso < <(rules "$WORK/n$n/probes.json")
  for m in kernel switchyard; do
    printf '%-6s %-11s %s  (%s peer rules, %s isolated pods)\n' "$n" "$m" "${OUT[$m-$n]}" "$r" "$iso"
  done
done
