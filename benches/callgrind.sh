#!/usr/bin/env bash
# Instructions per packet through the router graph, from callgrind: runs the forward_n example
# twice (N1 and N2 packets) and divides the difference in instructions executed by N2 - N1, so
# start-up and the one-off checks cancel out. Deterministic, unlike a time.
#
# usage: benches/callgrind.sh [v4|v6]...      (default: v4 v6)
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
N1="${N1:-25600}"
N2="${N2:-281600}"
WORK="$(mktemp -d /tmp/sy-callgrind.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p switchyard-benches --example forward_n
BIN="${CARGO_TARGET_DIR:-target}/release/examples/forward_n"

# Total instructions (Ir) of one run.
ir_of() {
  timeout 300 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$BIN" "$1" "$2" \
    >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; exit 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$WORK/cg.out"
}

printf '%-8s %14s %14s %16s\n' family "Ir(N1=$N1)" "Ir(N2=$N2)" "instr/packet"
for fam in "${@:-v4 v6}"; do
  for f in $fam; do
    a="$(ir_of "$f" "$N1")"
    b="$(ir_of "$f" "$N2")"
    printf '%-8s %14s %14s %16s\n' "$f" "$a" "$b" \
      "$(awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')"
  done
done
