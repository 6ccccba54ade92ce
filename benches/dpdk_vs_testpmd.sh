#!/usr/bin/env bash
# DPDK forwarding rate, Switchyard's router against dpdk-testpmd, on the same vdev pair in the
# same run:
#
#   port 0: net_pcap0,rx_pcap=IN,infinite_rx=1   replays 256 64-byte IPv4/UDP frames endlessly
#           (one source port and destination each, dst MAC = the router's port 0)
#   port 1: net_null0,no-rx=1                    a free sink that receives nothing
#
#   1. dpdk-testpmd --forward-mode=io          the limit: no look at the packet at all
#      dpdk-testpmd --forward-mode=mac         (context) rewrites both MACs of every packet
#   2. dpdk_fwd (switchyard-io example)        Switchyard's DPDK driver alone, no graph
#   3. switchyard router --dataplane dpdk      ethernet-input, ip4-input (checksum, TTL),
#                                              FIB lookup of a /16 with two ECMP gateways
#                                              (GATEWAYS=1: one),
#                                              ip4-rewrite (TTL, checksum, Ethernet header)
#
# One direction only (port 0 -> port 1), one forwarding lcore each. Rates are packets forwarded
# per second; every ratio is against testpmd measured in this run. No traffic leaves the
# process: the vdevs are in-memory.
#
# usage: benches/dpdk_vs_testpmd.sh [DURATION_SECONDS]
#
# Environment:
#   DURATION       seconds per run (default 10; the first argument wins; at most 60)
#   FWD_LCORE      the core the forwarding loop runs on (default 1; testpmd uses lcores
#                  0,FWD_LCORE with 0 as its idle main lcore)
#   SWITCHYARD     router binary (default: built with cargo build --release -p switchyard)
#   SKIP_DPDK_FWD  set to 1 to skip the dpdk_fwd baseline
#   WORKERS        also run the router with this many workers on as many lcores (0..N-1),
#                  the pcap port replaying the file on each receive queue
#   HUGE_DIR       a hugetlbfs mount with at least 128 free 2 MiB pages: every forwarder then
#                  runs on it (-m 256) instead of --no-huge. Without hugetlbfs the EAL's memory
#                  is in 4 KiB pages, and Switchyard's driver puts its mbuf pool on transparent
#                  huge pages of its own (DpdkConfig::transparent_huge_pages) while testpmd and
#                  its PMDs stay on 4 KiB pages; with HUGE_DIR every forwarder has 2 MiB pages.
#   GATEWAYS       1 or 2 (default 2): the /16's next hops. With 1 there is no path to choose
#                  and so no flow hash: the plain lookup and rewrite of DPDK's l3fwd
#   RT_PRIORITY    run every forwarder with this SCHED_FIFO priority (chrt -f, e.g. 50): on a
#                  machine busy with other work (builds) the forwarding lcore then keeps its
#                  core, and the rates hold within a few percent from run to run, where
#                  without it they swing by a third. The kernel still reserves 5% of each
#                  second for other tasks (sched_rt_runtime_us), for every forwarder alike.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION="${1:-${DURATION:-10}}"
[ "$DURATION" -ge 1 ] && [ "$DURATION" -le 60 ] || { echo "DURATION must be 1..60" >&2; exit 2; }
FWD_LCORE="${FWD_LCORE:-1}"
TARGET="${CARGO_TARGET_DIR:-target}"
WORK="$(mktemp -d /tmp/sy-dpdk-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

for c in dpdk-testpmd python3; do
  command -v "$c" >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }
done

MAC0=02:00:00:00:00:10 MAC1=02:00:00:00:00:11
case "${GATEWAYS:-2}" in
  1) ROUTE=198.19.0.0/16=198.18.2.3 ;;
  2) ROUTE=198.19.0.0/16=198.18.2.3,198.18.2.4 ;;
  *) echo "GATEWAYS must be 1 or 2" >&2; exit 2 ;;
esac
python3 benches/tools/udp_pcap.py "$WORK/in.pcap" "$MAC0" 02:00:00:00:00:c1 256

PORTS="net_pcap0,net_null0"
VDEVS="--vdev net_pcap0,rx_pcap=$WORK/in.pcap,infinite_rx=1 --vdev net_null0,no-rx=1"
# --no-shconf and a per-run prefix keep runs from seeing each other's files.
if [ -n "${HUGE_DIR:-}" ]; then
  EAL_COMMON="--huge-dir $HUGE_DIR --huge-unlink -m 256 --no-pci --no-shconf"
  MEMORY="hugetlbfs ($HUGE_DIR)"
else
  EAL_COMMON="--no-huge --no-pci --no-shconf -m 512"
  MEMORY="--no-huge"
fi
eal_args() { echo "$EAL_COMMON --file-prefix sy_bench_$1_$$ -l $2 $VDEVS"; }

# Bounds a run: SIGINT after DURATION + 5 s of start-up (testpmd then prints its totals and
# exits), SIGKILL 10 s later if it hangs.
RT=()
[ -z "${RT_PRIORITY:-}" ] || RT=(chrt -f "$RT_PRIORITY")
bounded() { "${RT[@]}" timeout -s INT -k 10 "$((DURATION + 5))" "$@"; }

# --- 1. testpmd ------------------------------------------------------------------------------
# io: the limit, never touches the packet. mac: also rewrites both MAC addresses of every
# packet (the cheapest forwarder that reads and writes headers), for context.
testpmd_mpps() { # forward mode
  echo "testpmd: $1-forward ${PORTS} for ${DURATION}s" >&2
  # shellcheck disable=SC2046
  bounded dpdk-testpmd $(eal_args "tp_$1" "0,$FWD_LCORE") -- --total-num-mbufs=16384 --no-flush-rx \
    --forward-mode="$1" --stats-period 1 >"$WORK/testpmd-$1.log" 2>&1 &
  local pid=$!
  sleep "$DURATION"
  kill -INT "$pid" 2>/dev/null || true
  wait "$pid" || true
  # One "Rx-pps:" line per port per period: sum the two ports of each period, skip the first
  # period (start-up) and average the rest.
  awk '
    /Rx-pps:/ { v[n++] = $2 }
    END {
      periods = int(n / 2); sum = 0; k = 0
      for (p = 1; p < periods; p++) { s = v[2 * p] + v[2 * p + 1]; if (s > 0) { sum += s; k++ } }
      if (k == 0) { print "0"; exit }
      printf "%.3f", sum / k / 1e6
    }' "$WORK/testpmd-$1.log"
}
TESTPMD_MPPS="$(testpmd_mpps io)"
if [ "$TESTPMD_MPPS" = "0" ]; then
  echo "testpmd produced no rate; log follows" >&2
  cat "$WORK/testpmd-io.log" >&2
  exit 1
fi
TESTPMD_MAC_MPPS="$(testpmd_mpps mac)"

# --- 2. dpdk_fwd: the driver alone ------------------------------------------------------------
FWD_MPPS=""
if [ "${SKIP_DPDK_FWD:-0}" != 1 ]; then
  cargo build --release -q -p switchyard-io --example dpdk_fwd ||
    echo "dpdk_fwd: build failed; using the last built binary if there is one" >&2
  FWD_BIN="$TARGET/release/examples/dpdk_fwd"
  if [ -x "$FWD_BIN" ]; then
    echo "dpdk_fwd: forwarding ${PORTS} for ${DURATION}s" >&2
    # shellcheck disable=SC2046
    bounded "$FWD_BIN" --seconds "$DURATION" --ports "$PORTS" -- $(eal_args fwd "$FWD_LCORE") \
      >"$WORK/fwd.log" 2>&1 || true
    FWD_MPPS="$(grep -o 'Mpps=[0-9.]*' "$WORK/fwd.log" | tail -1 | cut -d= -f2)"
    [ -n "$FWD_MPPS" ] || { echo "dpdk_fwd produced no rate; log follows" >&2; cat "$WORK/fwd.log" >&2; }
  fi
fi

# --- 3. the router -----------------------------------------------------------------------------
if [ -z "${SWITCHYARD:-}" ]; then
  cargo build --release -q -p switchyard
  SWITCHYARD="$TARGET/release/switchyard"
fi
echo "switchyard router: forwarding ${PORTS} for ${DURATION}s" >&2
bounded "$SWITCHYARD" router --dataplane dpdk -i net_pcap0 -i net_null0 \
  --mac "net_pcap0=$MAC0" --mac "net_null0=$MAC1" \
  -a net_pcap0=198.18.1.1/24 -a net_null0=198.18.2.1/24 \
  -r "$ROUTE" \
  --neighbor net_null0=198.18.2.3,02:00:00:00:00:53 \
  --neighbor net_null0=198.18.2.4,02:00:00:00:00:54 \
  --eal "$(eal_args router "$FWD_LCORE")" \
  --duration "$DURATION" --stats-json "$WORK/router.json" >"$WORK/router.log" 2>&1 || true
ROUTER_MPPS="$(python3 - "$WORK/router.json" <<'PY' 2>>"$WORK/router.log" || true
import json, sys
s = json.load(open(sys.argv[1]))
out = {n["name"]: n["packets"] for n in s["nodes"]}.get("ip4-rewrite", 0)
# Every received frame must have gone through the whole IPv4 path and out, or the figure is
# not the forwarding rate (ip4-rewrite puts the Ethernet header on for a known next hop).
if s["rx"] == 0 or s["tx"] != s["rx"] or out != s["rx"]:
    sys.exit("router did not forward every frame: rx=%d tx=%d ip4-rewrite=%d" % (s["rx"], s["tx"], out))
print("%.3f" % (s["tx"] / s["seconds"] / 1e6))
PY
)"
[ -n "$ROUTER_MPPS" ] || { echo "the router produced no rate; log follows" >&2; cat "$WORK/router.log" >&2; }

# --- 4. the router on WORKERS lcores (optional) ---------------------------------------------
# The pcap port gets WORKERS receive queues (each replaying the file) and as many transmit
# queues (to /dev/null: it sends nothing), the null port as many of each.
MULTI_MPPS=""
if [ "${WORKERS:-1}" -gt 1 ]; then
  QUEUES="$(for _ in $(seq "$WORKERS"); do printf ',rx_pcap=%s,tx_pcap=/dev/null' "$WORK/in.pcap"; done)"
  LCORES="$(seq -s, 0 $((WORKERS - 1)))"
  echo "switchyard router: ${WORKERS} workers on lcores ${LCORES} for ${DURATION}s" >&2
  bounded "$SWITCHYARD" router --dataplane dpdk -i net_pcap0 -i net_null0 --workers "$WORKERS" \
    --mac "net_pcap0=$MAC0" --mac "net_null0=$MAC1" \
    -a net_pcap0=198.18.1.1/24 -a net_null0=198.18.2.1/24 \
    -r "$ROUTE" \
    --neighbor net_null0=198.18.2.3,02:00:00:00:00:53 \
    --neighbor net_null0=198.18.2.4,02:00:00:00:00:54 \
    --eal "$EAL_COMMON --file-prefix sy_bench_multi_$$ -l $LCORES --vdev net_pcap0${QUEUES},infinite_rx=1 --vdev net_null0,no-rx=1" \
    --duration "$DURATION" --stats-json "$WORK/multi.json" >"$WORK/multi.log" 2>&1 || true
  MULTI_MPPS="$(python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print("%.3f" % (s["tx"] / s["seconds"] / 1e6))' "$WORK/multi.json" 2>/dev/null || true)"
  [ -n "$MULTI_MPPS" ] || { echo "the router on ${WORKERS} workers produced no rate; log follows" >&2; cat "$WORK/multi.log" >&2; }
fi

# --- table -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$TESTPMD_MPPS" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "DPDK, 64-byte IPv4/UDP, net_pcap0 (infinite_rx) -> net_null0, ${DURATION}s each, one lcore, $MEMORY${RT_PRIORITY:+, SCHED_FIFO $RT_PRIORITY}, ${GATEWAYS:-2} gateway(s)"
printf '| %-44s | %8s | %10s |\n' "forwarder" "Mpps" "vs testpmd"
printf '| %-44s | %8s | %10s |\n' "--------------------------------------------" "--------" "----------"
printf '| %-44s | %8s | %10s |\n' "dpdk-testpmd --forward-mode=io" "$TESTPMD_MPPS" "1.00"
[ "$TESTPMD_MAC_MPPS" = 0 ] ||
  printf '| %-44s | %8s | %10s |\n' "dpdk-testpmd --forward-mode=mac" "$TESTPMD_MAC_MPPS" "$(ratio "$TESTPMD_MAC_MPPS")"
[ -z "$FWD_MPPS" ] ||
  printf '| %-44s | %8s | %10s |\n' "switchyard-io dpdk_fwd (driver, no graph)" "$FWD_MPPS" "$(ratio "$FWD_MPPS")"
if [ -n "$ROUTER_MPPS" ]; then
  printf '| %-44s | %8s | %10s |\n' "switchyard router (lookup + rewrite)" "$ROUTER_MPPS" "$(ratio "$ROUTER_MPPS")"
else
  printf '| %-44s | %8s | %10s |\n' "switchyard router (lookup + rewrite)" "-" "failed"
  exit 1
fi
[ -z "$MULTI_MPPS" ] ||
  printf '| %-44s | %8s | %10s |\n' "switchyard router, ${WORKERS} workers (${WORKERS} lcores)" "$MULTI_MPPS" "$(ratio "$MULTI_MPPS")"
