#!/usr/bin/env bash
# Instructions per packet through the router graph, from callgrind: runs the forward_n example
# twice (N1 and N2 packets) and divides the difference in instructions executed by N2 - N1, so
# start-up and the one-off checks cancel out. Deterministic, unlike a time.
#
# usage: benches/callgrind.sh [v4|v6|svc|esp|esp-dev]...      (default: v4 v6)
#
# `esp` runs the esp_n example instead: ESP GCM-128 encapsulation and decapsulation of 64 and
# 512-byte packets, and ring's raw seal and open of 64, 80, 512 and 528 bytes (what ESP seals
# once padded to the AES block), in instructions per operation.
#
# `esp-dev` runs esp_dev_n: ESP decapsulation of 64 and 512-byte packets in bursts of 32 on the
# crypto_aesni_gcm cryptodev against the device opening the same sizes alone, and the two ESP
# halves (prepare, finish) alone, in instructions per packet.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind not found (apt-get install valgrind)" >&2; exit 1; }
N1="${N1:-25600}"
N2="${N2:-281600}"
WORK="$(mktemp -d /tmp/sy-callgrind.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT

cargo build --release -q -p switchyard-benches --example forward_n --example esp_n --example esp_dev_n
BIN="${CARGO_TARGET_DIR:-target}/release/examples/forward_n"
ESP_BIN="${CARGO_TARGET_DIR:-target}/release/examples/esp_n"
ESP_DEV_BIN="${CARGO_TARGET_DIR:-target}/release/examples/esp_dev_n"

# Total instructions (Ir) of one run of "$@".
ir_of() {
  timeout 300 valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out" "$@" \
    >"$WORK/run.log" 2>&1 || { cat "$WORK/run.log" >&2; exit 1; }
  awk '/^(summary|totals):/ { print $2; exit }' "$WORK/cg.out"
}

esp() {
  printf '%-14s %16s\n' operation instr/op
  for op in seal:64 seal:80 seal:512 seal:528 encap:64 encap:512 \
    open:64 open:80 open:512 open:528 decap:64 decap:512; do
    a="$(ir_of "$ESP_BIN" "${op%:*}" "${op#*:}" 2000)"
    b="$(ir_of "$ESP_BIN" "${op%:*}" "${op#*:}" 12000)"
    printf '%-14s %16s\n' "$op" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", (b - a) / 10000 }')"
  done
}

esp_dev() {
  printf '%-14s %16s\n' operation instr/packet
  for op in open:64 decap:64 prepare:64 finish:64 open:512 decap:512; do
    a="$(ir_of "$ESP_DEV_BIN" "${op%:*}" "${op#*:}" 200)"
    b="$(ir_of "$ESP_DEV_BIN" "${op%:*}" "${op#*:}" 1200)"
    printf '%-14s %16s\n' "$op" "$(awk -v a="$a" -v b="$b" 'BEGIN { printf "%.1f", (b - a) / 32000 }')"
  done
}

printf '%-8s %14s %14s %16s\n' family "Ir(N1=$N1)" "Ir(N2=$N2)" "instr/packet"
for fam in "${@:-v4 v6}"; do
  for f in $fam; do
    if [ "$f" = esp ]; then esp; continue; fi
    if [ "$f" = esp-dev ]; then esp_dev; continue; fi
    a="$(ir_of "$BIN" "$f" "$N1")"
    b="$(ir_of "$BIN" "$f" "$N2")"
    printf '%-8s %14s %14s %16s\n' "$f" "$a" "$b" \
      "$(awk -v a="$a" -v b="$b" -v n1="$N1" -v n2="$N2" 'BEGIN { printf "%.1f", (b - a) / (n2 - n1) }')"
  done
done
