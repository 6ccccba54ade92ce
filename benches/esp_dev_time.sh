#!/usr/bin/env bash
# ESP decapsulation on the crypto_aesni_gcm cryptodev against the device's own AES-GCM open of
# the same bytes, timed by user CPU time rather than by wall clock.
#
# Both sides are the esp_dev_n example (the rig `benches/callgrind.sh esp-dev` counts
# instructions on): `open` hands the device bursts of 32 sealed buffers, `decap` runs tunnel-mode
# ESP (GCM-128, UDP-encapsulated IPv4) over bursts of 32 as the decrypt node does: prepare, one
# burst, finish. Each copies its input into place before every burst, the same copy on both
# sides. The two alternate, ROUNDS times each, on one CPU; the report gives each side's user
# seconds sorted, the median and best, and decap's rate as a share of open's (the goal of issue
# 8 is at least 80%).
#
# Why user time: on a shared virtual machine the wall clock of a run includes whatever the host
# takes away (steal), which swung criterion's same-run ratio by ±10%; the CPU time the process
# itself spent in user mode does not. SCHED_FIFO is not used: under it these runs showed tens of
# seconds of system time on this host, which they do not show without it.
#
# usage: benches/esp_dev_time.sh [SIZE]            (default 64)
#
# Environment: ROUNDS (default 10), BATCHES per run (default 300000, i.e. 9.6 M packets),
# CPU (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE="${1:-64}"
ROUNDS="${ROUNDS:-10}"
BATCHES="${BATCHES:-300000}"
CPU="${CPU:-1}"
[[ "$SIZE" =~ ^[0-9]+$ && "$ROUNDS" =~ ^[0-9]+$ && "$BATCHES" =~ ^[0-9]+$ ]] ||
  { echo "usage: $0 [SIZE] (ROUNDS, BATCHES: whole numbers)" >&2; exit 2; }
((ROUNDS >= 1 && ROUNDS <= 50 && BATCHES >= 1 && BATCHES <= 10000000)) ||
  { echo "ROUNDS must be 1-50 and BATCHES 1-10000000" >&2; exit 2; }

cargo build --release -q -p switchyard-benches --example esp_dev_n
BIN="${CARGO_TARGET_DIR:-target}/release/examples/esp_dev_n"

# User CPU seconds of one run of esp_dev_n MODE.
user_seconds() {
  local TIMEFORMAT=%U
  { time timeout 300 taskset -c "$CPU" "$BIN" "$1" "$SIZE" "$BATCHES" >/dev/null 2>&1; } 2>&1
}

open=()
decap=()
for ((i = 0; i < ROUNDS; i++)); do
  open+=("$(user_seconds open)")
  decap+=("$(user_seconds decap)")
done

# Sorted values, median and minimum of a list of seconds.
summary() {
  printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 }
    END {
      m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
      line = ""; for (i = 1; i <= NR; i++) line = line " " v[i]
      printf "%s|%.3f|%.3f\n", line, m, v[1]
    }'
}
IFS='|' read -r open_all open_median open_best <<<"$(summary "${open[@]}")"
IFS='|' read -r decap_all decap_median decap_best <<<"$(summary "${decap[@]}")"
packets=$((BATCHES * 32))
echo "ESP decap on crypto_aesni_gcm, ${SIZE} B, ${ROUNDS} alternating runs of ${packets} packets each (user seconds)"
echo "open :${open_all}"
echo "decap:${decap_all}"
awk -v om="$open_median" -v ob="$open_best" -v dm="$decap_median" -v db="$decap_best" -v n="$packets" 'BEGIN {
  printf "median: open %.1f ns, decap %.1f ns a packet: decap at %.1f%% of the raw open rate\n", om * 1e9 / n, dm * 1e9 / n, 100 * om / dm
  printf "best:   open %.1f ns, decap %.1f ns a packet: decap at %.1f%% of the raw open rate\n", ob * 1e9 / n, db * 1e9 / n, 100 * ob / db
}'
