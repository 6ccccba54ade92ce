#!/usr/bin/env bash
# The same three-namespace topology forwarded four ways, measured in one run:
#
#   client ns                node ns                          server ns
#   c0 198.18.1.2/24 ── veth ── n0 | forwarder | n1 ── veth ── s0 198.18.2.2/24
#
#   kernel      the node namespace's own IPv4 forwarding (ip_forward=1, addresses on n0/n1),
#               with RPS steering n0/n1 receive processing (and so the forwarding) to CPU 1
#   afpacket    switchyard router --dataplane afpacket -i n0 -i n1
#   afxdp       switchyard router --dataplane afxdp    -i n0 -i n1   (generic/SKB mode)
#   dpdk        switchyard router --dataplane dpdk with net_af_packet vdevs on n0 and n1
#
# For each: (1) UDP: udp_flood (benches/examples) sends 60-byte IPv4/UDP frames (1024 flows)
# from c0 for UDP_SECONDS; the figure is the packets the server's s0 received (its rx_packets
# counter) per second; (2) TCP: iperf3, one stream, TCP_SECONDS, received Gbit/s. Ratios are
# against the kernel in the same run. For the switchyard runs the node namespace's kernel has no
# addresses and ip_forward=0, so it forwards nothing itself. Offloads (TSO/GSO/GRO, checksum)
# are off on every veth so every forwarder sees real 1500-byte frames. The flood runs on CPU 0,
# every forwarder on CPU 1 (switchyard pinned with taskset / -l 1, the kernel by RPS). veth is
# the bottleneck of all of this; the figures compare forwarders on it, not NICs.
#
# usage: benches/kernel_vs_userspace.sh [MODE...]     (default: kernel afpacket afxdp dpdk)
# Environment: UDP_SECONDS (default 5), TCP_SECONDS (default 5), SWITCHYARD (router binary;
# default: built with cargo build --release -p switchyard).
#
# Network safety: everything lives in three namespaces created here (veths created inside them,
# never in the root namespace), addresses from 198.18.0.0/15 only; all is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
for c in ip ethtool nft iperf3 python3 taskset; do
  command -v "$c" >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }
done

UDP_SECONDS="${UDP_SECONDS:-5}"
TCP_SECONDS="${TCP_SECONDS:-5}"
MODES=("${@:-kernel}")
[ "$#" -gt 0 ] || MODES=(kernel afpacket afxdp dpdk)
TARGET="${CARGO_TARGET_DIR:-target}"

C="sybench-c-$$" N="sybench-n-$$" S="sybench-s-$$"
C0_MAC=02:00:00:00:01:02 N0_MAC=02:00:00:00:01:01 N1_MAC=02:00:00:00:02:01 S0_MAC=02:00:00:00:02:02
WORK="$(mktemp -d /tmp/sy-kvu-bench.XXXXXX)"
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  for ns in "$C" "$N" "$S"; do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- build --------------------------------------------------------------------------------------
cargo build --release -q -p switchyard-benches --example udp_flood
FLOOD="$TARGET/release/examples/udp_flood"
if [ -z "${SWITCHYARD:-}" ]; then
  cargo build --release -q -p switchyard
  SWITCHYARD="$TARGET/release/switchyard"
fi
SWITCHYARD="$(realpath "$SWITCHYARD")" FLOOD="$(realpath "$FLOOD")"

# --- topology -----------------------------------------------------------------------------------
for ns in "$C" "$N" "$S"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  # No IPv6 chatter (router solicitations, MLD) on the links.
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
done
ip -n "$N" link add n0 address "$N0_MAC" type veth peer name c0 address "$C0_MAC" netns "$C"
ip -n "$N" link add n1 address "$N1_MAC" type veth peer name s0 address "$S0_MAC" netns "$S"
for pair in "$C c0" "$N n0" "$N n1" "$S s0"; do
  set -- $pair
  ip netns exec "$1" ethtool -K "$2" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
  ip -n "$1" link set "$2" mtu 1500 up
done
ip -n "$C" addr add 198.18.1.2/24 dev c0
ip -n "$C" route add 198.18.2.0/24 via 198.18.1.1
ip -n "$C" neigh replace 198.18.1.1 lladdr "$N0_MAC" dev c0 nud permanent
ip -n "$S" addr add 198.18.2.2/24 dev s0
ip -n "$S" route add 198.18.1.0/24 via 198.18.2.1
ip -n "$S" neigh replace 198.18.2.1 lladdr "$N1_MAC" dev s0 nud permanent
# The flood's destination port has no listener: drop it quietly instead of answering with ICMP.
ip netns exec "$S" nft -f - <<'NFT'
table inet sybench {
  chain input {
    type filter hook input priority 0;
    udp dport 5001 drop
  }
}
NFT

# Receive packet steering of the node's veths: the CPU mask that processes what they receive.
# The kernel forwards in that softirq; without RPS it would run on the sender's CPU (veth
# delivers in the sender's context), sharing CPU 0 with the flood, while switchyard gets CPU 1.
rps() { # hex CPU mask, 0 = off
  for dev in n0 n1; do
    ip netns exec "$N" sh -c "echo $1 > /sys/class/net/$dev/queues/rx-0/rps_cpus"
  done
}

node_kernel_forwarding() { # on|off
  ip -n "$N" addr flush dev n0
  ip -n "$N" addr flush dev n1
  ip -n "$N" neigh flush all 2>/dev/null || true
  if [ "$1" = on ]; then
    ip -n "$N" addr add 198.18.1.1/24 dev n0
    ip -n "$N" addr add 198.18.2.1/24 dev n1
    ip -n "$N" neigh replace 198.18.1.2 lladdr "$C0_MAC" dev n0 nud permanent
    ip -n "$N" neigh replace 198.18.2.2 lladdr "$S0_MAC" dev n1 nud permanent
    ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1
    rps 2
  else
    ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=0
    rps 0
  fi
}

# The switchyard router for MODE, in the background, bounded in time; sets ROUTER_PID.
start_router() {
  local mode="$1" ports eal=()
  local limit=$((UDP_SECONDS + TCP_SECONDS + 30))
  case "$mode" in
    afpacket | afxdp) ports=(-i n0 -i n1); P0=n0 P1=n1 ;;
    dpdk)
      ports=(-i net_af_packet0 -i net_af_packet1); P0=net_af_packet0 P1=net_af_packet1
      eal=(--eal "--no-huge --no-pci --no-shconf -m 512 --file-prefix sybench_$$ -l 1
        --vdev net_af_packet0,iface=n0 --vdev net_af_packet1,iface=n1")
      ;;
  esac
  ( ulimit -l unlimited 2>/dev/null || true
    exec timeout -s INT -k 5 "$limit" ip netns exec "$N" taskset -c 1 "$SWITCHYARD" router \
      --dataplane "$mode" "${ports[@]}" "${eal[@]}" \
      --mac "$P0=$N0_MAC" --mac "$P1=$N1_MAC" \
      -a "$P0=198.18.1.1/24" -a "$P1=198.18.2.1/24" \
      --neighbor "$P0=198.18.1.2,$C0_MAC" --neighbor "$P1=198.18.2.2,$S0_MAC" \
      --duration "$limit" --stats-json "$WORK/$mode.json" ) >"$WORK/$mode.log" 2>&1 &
  ROUTER_PID=$!
  PIDS+=("$ROUTER_PID")
  for _ in $(seq 150); do
    grep -q "forwarding" "$WORK/$mode.log" 2>/dev/null && return 0
    kill -0 "$ROUTER_PID" 2>/dev/null || break
    sleep 0.1
  done
  echo "$mode: the router did not start; log follows" >&2
  cat "$WORK/$mode.log" >&2
  return 1
}

stop_router() {
  kill -INT "$ROUTER_PID" 2>/dev/null || true
  wait "$ROUTER_PID" 2>/dev/null || true
}

s0_rx() { ip netns exec "$S" cat /sys/class/net/s0/statistics/rx_packets; }

# Runs the UDP and TCP measurements; prints "UDP_SENT_PPS UDP_RX_PPS TCP_GBPS".
measure() {
  local mode="$1" before after sent secs tcp
  # The path works both ways (and neighbors are in place) before anything is timed.
  if ! ip netns exec "$C" ping -c 3 -i 0.2 -W 1 -q 198.18.2.2 >"$WORK/$mode.ping" 2>&1; then
    echo "$mode: no path client -> server" >&2
    cat "$WORK/$mode.ping" >&2
    echo "- - -"
    return
  fi
  before="$(s0_rx)"
  ip netns exec "$C" timeout -k 5 $((UDP_SECONDS + 10)) taskset -c 0 "$FLOOD" c0 "$N0_MAC" \
    198.18.1.2 198.18.2.2 "$UDP_SECONDS" 50000000 >"$WORK/$mode.flood" 2>&1 || true
  sleep 0.5
  after="$(s0_rx)"
  sent="$(grep -o 'pps=[0-9]*' "$WORK/$mode.flood" | cut -d= -f2)"
  secs="$(grep -o 'seconds=[0-9.]*' "$WORK/$mode.flood" | cut -d= -f2)"
  [ -n "$secs" ] || { echo "$mode: flood failed" >&2; cat "$WORK/$mode.flood" >&2; secs=1 sent=0; }
  ip netns exec "$S" timeout -k 2 $((TCP_SECONDS + 15)) iperf3 -s -1 -B 198.18.2.2 \
    >"$WORK/$mode.iperf-s" 2>&1 &
  local srv=$!
  PIDS+=("$srv")
  sleep 0.5
  ip netns exec "$C" timeout -k 2 $((TCP_SECONDS + 10)) iperf3 -c 198.18.2.2 -t "$TCP_SECONDS" -J \
    >"$WORK/$mode.iperf" 2>&1 || true
  wait "$srv" 2>/dev/null || true
  tcp="$(python3 -c '
import json, sys
try:
    print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"] / 1e9))
except Exception:
    print("-")' "$WORK/$mode.iperf")"
  echo "$sent $(awk -v a="$before" -v b="$after" -v s="$secs" 'BEGIN { printf "%.0f", (b - a) / s }') $tcp"
}

declare -A UDP_SENT UDP_RX TCP
for mode in "${MODES[@]}"; do
  echo "== $mode" >&2
  case "$mode" in
    kernel)
      node_kernel_forwarding on
      read -r UDP_SENT[$mode] UDP_RX[$mode] TCP[$mode] < <(measure kernel)
      ;;
    afpacket | afxdp | dpdk)
      node_kernel_forwarding off
      if start_router "$mode"; then
        read -r UDP_SENT[$mode] UDP_RX[$mode] TCP[$mode] < <(measure "$mode")
        stop_router
        python3 -c '
import json, sys
s = json.load(open(sys.argv[1]))
print("  router: %.1f s, rx %d, tx %d, io_errors %d" % (s["seconds"], s["rx"], s["tx"], s["io_errors"]))' \
          "$WORK/$mode.json" >&2 2>/dev/null || tail -5 "$WORK/$mode.log" >&2
      else
        UDP_SENT[$mode]=- UDP_RX[$mode]=- TCP[$mode]=-
      fi
      ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  echo "  udp sent ${UDP_SENT[$mode]} pps, received ${UDP_RX[$mode]} pps; tcp ${TCP[$mode]} Gbit/s" >&2
done

ratio() { # value, kernel value
  awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'
}
K_UDP="${UDP_RX[kernel]:--}" K_TCP="${TCP[kernel]:--}"
echo
echo "veth client -> node -> server; UDP 60-byte frames ${UDP_SECONDS}s, TCP iperf3 1 stream ${TCP_SECONDS}s"
printf '| %-28s | %12s | %14s | %9s | %10s | %9s |\n' forwarder "UDP sent pps" "UDP rx pps" "vs kernel" "TCP Gbit/s" "vs kernel"
printf '| %-28s | %12s | %14s | %9s | %10s | %9s |\n' ---------------------------- ------------ -------------- --------- ---------- ---------
for mode in "${MODES[@]}"; do
  case "$mode" in
    kernel) name="kernel (ip_forward=1)" ;;
    dpdk) name="switchyard dpdk (af_packet)" ;;
    *) name="switchyard $mode" ;;
  esac
  printf '| %-28s | %12s | %14s | %9s | %10s | %9s |\n' "$name" "${UDP_SENT[$mode]}" "${UDP_RX[$mode]}" \
    "$(ratio "${UDP_RX[$mode]}" "$K_UDP")" "${TCP[$mode]}" "$(ratio "${TCP[$mode]}" "$K_TCP")"
done
