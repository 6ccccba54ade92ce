#!/usr/bin/env bash
# Side-by-side DPDK forwarding rate: dpdk-testpmd io-forward (the limit), Switchyard's bare
# driver loop (dataplane/io/examples/dpdk_fwd.rs) and, when ROUTER_CMD is set, the Switchyard
# forwarder, all between the same two vdevs, each for DURATION seconds, bounded by `timeout`.
#
# usage: benches/dpdk_vs_testpmd.sh [DURATION_SECONDS]
#
# Environment:
#   DURATION      seconds per run (default 10; the first argument wins)
#   FWD_LCORE     the core the forwarding loop runs on (default 1; testpmd uses lcores 0,FWD_LCORE
#                 with 0 as an idle main lcore, the Switchyard runs use FWD_LCORE alone)
#   SKIP_DPDK_FWD set to 1 to skip the dpdk_fwd baseline (else it is built with cargo --release)
#   ROUTER_CMD    hook for the Switchyard forwarder, run with `bash -c` under `timeout`. It gets
#                   SY_BENCH_EAL_ARGS  EAL arguments to use verbatim (vdevs, memory, lcore, prefix)
#                   SY_BENCH_PORTS     the two DPDK device names, comma-separated
#                   SY_BENCH_SECONDS   how long to forward
#                 and must print a line containing `Mpps=<float>` (total packets forwarded, both
#                 directions, per second), as dpdk_fwd does. Example:
#                   ROUTER_CMD='target/release/switchyard forward --dpdk-ports "$SY_BENCH_PORTS" \
#                     --seconds "$SY_BENCH_SECONDS" -- $SY_BENCH_EAL_ARGS'
#
# All rates are total forwarded packets per second (both directions summed), and every ratio is
# against testpmd measured in the same run. No traffic leaves the process: the vdevs are
# in-memory.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION="${1:-${DURATION:-10}}"
FWD_LCORE="${FWD_LCORE:-1}"
WORK="$(mktemp -d /tmp/sy-dpdk-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

# net_null: an endless source and a free sink, so the figure is the forwarding loop's own cost.
PORTS="net_null0,net_null1"
VDEVS=(--vdev net_null0 --vdev net_null1)
# --no-shconf and a per-run prefix keep runs from seeing each other's files.
EAL_COMMON=(--no-huge --no-pci --no-shconf -m 512)

command -v dpdk-testpmd >/dev/null || { echo "dpdk-testpmd not found (apt-get install dpdk-dev)" >&2; exit 1; }

# Bounds a run: SIGINT after DURATION + 3 s of startup (testpmd then prints its totals and
# exits), SIGKILL 10 s later if it hangs.
bounded() { timeout -s INT -k 10 "$((DURATION + 3))" "$@"; }

# --- testpmd -------------------------------------------------------------------------------
echo "testpmd: io-forward ${PORTS} for ${DURATION}s" >&2
bounded dpdk-testpmd "${EAL_COMMON[@]}" --file-prefix "sy_bench_tp_$$" -l "0,${FWD_LCORE}" \
  "${VDEVS[@]}" -- --total-num-mbufs=16384 --no-flush-rx --forward-mode=io --stats-period 1 \
  >"$WORK/testpmd.log" 2>&1 || true

# testpmd prints one "Rx-pps:" line per port per period; sum the two ports of each period, drop
# the first two periods (start-up) and average the rest.
TESTPMD_MPPS="$(awk '
  /Rx-pps:/ { v[n++] = $2 }
  END {
    periods = int(n / 2); first = (periods > 4) ? 1 : 0; sum = 0; k = 0
    for (p = first; p < periods; p++) { s = v[2 * p] + v[2 * p + 1]; if (s > 0) { sum += s; k++ } }
    if (k == 0) { print "0"; exit }
    printf "%.3f", sum / k / 1e6
  }' "$WORK/testpmd.log")"
if [ "$TESTPMD_MPPS" = "0" ]; then
  echo "testpmd produced no rate; log follows" >&2
  cat "$WORK/testpmd.log" >&2
  exit 1
fi

# EAL arguments for the Switchyard runs: same memory and vdevs, one lcore.
sy_eal_args() { echo "${EAL_COMMON[*]} --file-prefix sy_bench_$1_$$ -l ${FWD_LCORE} ${VDEVS[*]}"; }

mpps_of() { grep -o 'Mpps=[0-9.]*' "$1" | tail -1 | cut -d= -f2; }

# --- dpdk_fwd: the driver alone --------------------------------------------------------------
FWD_MPPS=""
if [ "${SKIP_DPDK_FWD:-0}" != 1 ]; then
  FWD_BIN=target/release/examples/dpdk_fwd
  echo "dpdk_fwd: building" >&2
  cargo build --release -q -p switchyard-io --example dpdk_fwd ||
    echo "dpdk_fwd: build failed; using the last built binary if there is one" >&2
  if [ -x "$FWD_BIN" ]; then
    echo "dpdk_fwd: forwarding ${PORTS} for ${DURATION}s" >&2
    # shellcheck disable=SC2046
    bounded "$FWD_BIN" --seconds "$DURATION" --ports "$PORTS" \
      -- $(sy_eal_args fwd) >"$WORK/fwd.log" 2>&1 || true
    FWD_MPPS="$(mpps_of "$WORK/fwd.log")"
    [ -n "$FWD_MPPS" ] || { echo "dpdk_fwd produced no rate; log follows" >&2; cat "$WORK/fwd.log" >&2; }
  fi
fi

# --- the Switchyard forwarder (hook) ---------------------------------------------------------
ROUTER_MPPS=""
if [ -n "${ROUTER_CMD:-}" ]; then
  echo "router: running ROUTER_CMD for ${DURATION}s" >&2
  SY_BENCH_EAL_ARGS="$(sy_eal_args router)" SY_BENCH_PORTS="$PORTS" SY_BENCH_SECONDS="$DURATION" \
    bounded bash -c "$ROUTER_CMD" >"$WORK/router.log" 2>&1 || true
  ROUTER_MPPS="$(mpps_of "$WORK/router.log")"
  [ -n "$ROUTER_MPPS" ] || { echo "ROUTER_CMD printed no Mpps=; log follows" >&2; cat "$WORK/router.log" >&2; }
fi

# --- table -----------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$TESTPMD_MPPS" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "DPDK io-forward, ${PORTS}, ${DURATION}s each, total Mpps (both directions)"
printf '%-32s %10s %14s\n' "forwarder" "Mpps" "vs testpmd"
printf '%-32s %10s %14s\n' "dpdk-testpmd --forward-mode=io" "$TESTPMD_MPPS" "1.00"
if [ -n "$FWD_MPPS" ]; then
  printf '%-32s %10s %14s\n' "switchyard dpdk_fwd (driver)" "$FWD_MPPS" "$(ratio "$FWD_MPPS")"
fi
if [ -n "$ROUTER_MPPS" ]; then
  printf '%-32s %10s %14s\n' "switchyard router" "$ROUTER_MPPS" "$(ratio "$ROUTER_MPPS")"
else
  printf '%-32s %10s %14s\n' "switchyard router" "-" "(set ROUTER_CMD)"
fi
