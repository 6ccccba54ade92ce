#!/usr/bin/env bash
# IPsec tunnel throughput, side by side in one run: the same two-gateway topology with
# Switchyard at both ends and with strongSwan (charon, kernel-libipsec: userspace ESP over a
# TUN, as it must run here without kernel ESP) at both ends.
#
#   ${P}client           ${P}edge (gateway A)        ${P}node1 (gateway B)         ${P}pod1
#   eth0 198.18.1.2 ── c0 198.18.1.1 | n1 198.18.3.1 ── e0 198.18.3.2 | p0 198.18.4.1 ── eth0 198.18.4.2
#
# (lab/edge-topology.sh). The tunnel protects 198.18.1.0/24 ⇄ 198.18.4.0/24 with IKEv2 (PSK,
# AES-GCM-128, x25519) and ESP AES-GCM-128; A initiates. The figure is iperf3's received TCP
# throughput, one stream, client → pod1, for TCP_SECONDS.
#
#   switchyard            both gateways `switchyard router --ipsec`, crypto in software
#   switchyard-cryptodev  the same with --crypto cryptodev:crypto_aesni_gcm0 (DPDK software PMD)
#   strongswan            both gateways charon + kernel-libipsec, the kernel forwarding
#
# Every veth has its offloads off (edge-topology.sh), so each gateway sees 1500-byte frames.
# Two cores run all of it (two gateways, iperf3 at both ends): the figures compare the
# gateways against each other on this machine, not against a NIC.
#
# usage: benches/ipsec_tunnel_vs_strongswan.sh [MODE...]   (default: all three)
# Environment: TCP_SECONDS (default 5), SWITCHYARD (binary; default: cargo build --release).
#
# Network safety: only namespaces made by lab/edge-topology.sh under a prefix of this run,
# addresses from 198.18.0.0/15; removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "needs root (network namespaces)" >&2; exit 1; }
CHARON=/usr/lib/ipsec/charon
for c in ip iperf3 swanctl unshare "$CHARON"; do
  command -v "$c" >/dev/null || { echo "$c not found (scripts/install-deps.sh)" >&2; exit 1; }
done

TCP_SECONDS="${TCP_SECONDS:-5}"
MODES=("$@")
[ "$#" -gt 0 ] || MODES=(switchyard switchyard-cryptodev strongswan)
TARGET="${CARGO_TARGET_DIR:-target}"
P="sytun$$"
WORK="$(mktemp -d /tmp/sy-ipsec-bench.XXXXXX)"
PIDS=()
PSK="switchyard-bench-psk"

stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
}
cleanup() {
  stop_all
  lab/edge-topology.sh down "$P" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SWITCHYARD:-}" ]; then
  cargo build --release -q -p switchyard
  SWITCHYARD="$TARGET/release/switchyard"
fi
SWITCHYARD="$(realpath "$SWITCHYARD")"

in_ns() { local n="$P$1"; shift; ip netns exec "$n" "$@"; }

# The SD-EWAN resources of one Switchyard gateway.
site() { # site REMOTE LOCAL_NET REMOTE_NET MODE
  cat <<EOF
apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecProposal
metadata: {name: ike}
spec: {encryption_algorithm: aes128gcm16-prfsha256-x25519, hash_algorithm: "", dh_group: ""}
---
apiVersion: batch.sdewan.akraino.org/v1alpha1
kind: IpsecSite
metadata: {name: bench}
spec:
  remote: $1
  local_identifier: ""
  remote_identifier: "$1"
  authentication_method: psk
  pre_shared_key: "$PSK"
  crypto_proposal: [ike]
  connections:
    - {name: net, conn_type: tunnel, mode: $4, local_subnet: $2, remote_subnet: $3, crypto_proposal: [aes128gcm16]}
EOF
}

start_switchyard() { # start_switchyard NS CRYPTO PORT=ADDR PORT=ADDR ROUTE YAML
  local ns=$1 crypto=$2 a=$3 b=$4 route=$5 yaml=$6
  local eal="--no-huge --no-pci --no-shconf -m 256 -l 0 --log-level lib.eal:error --file-prefix $P$ns --vdev crypto_aesni_gcm0"
  local args=(router --dataplane afpacket --punt-tun sy0 --ipsec "$yaml" --route "$route"
    -i "${a%%=*}" -a "$a" -i "${b%%=*}" -a "$b" --duration $((TCP_SECONDS + 60)))
  if [ "$crypto" != software ]; then
    args+=(--crypto "$crypto" --eal "$eal")
  fi
  in_ns "$ns" "$SWITCHYARD" "${args[@]}" >"$WORK/$ns.out" 2>"$WORK/$ns.err" &
  PIDS+=($!)
}

start_charon() { # start_charon NS LOCAL_ADDR REMOTE_ADDR LOCAL_NET REMOTE_NET START
  local ns=$1 dir="$WORK/ss-$1"
  mkdir -p "$dir/swanctl" "$dir/run"
  cat >"$dir/strongswan.conf" <<EOF
charon {
  load_modular = no
  load = random nonce aes sha1 sha2 hmac gcm kdf openssl curve25519 gmp pem pkcs1 x509 kernel-libipsec kernel-netlink socket-default vici
  plugins { vici { socket = unix://$dir/run/charon.vici } }
  filelog { charon { path = $dir/charon.log
    default = 1 } }
}
EOF
  cat >"$dir/swanctl/swanctl.conf" <<EOF
connections {
  bench {
    version = 2
    local_addrs = $2
    remote_addrs = $3
    proposals = aes128gcm16-prfsha256-x25519
    local { auth = psk
      id = $2 }
    remote { auth = psk
      id = $3 }
    children { net { local_ts = $4
        remote_ts = $5
        esp_proposals = aes128gcm16
        start_action = $6 } }
  }
}
secrets { ike-bench { id-1 = $2
    id-2 = $3
    secret = "$PSK" } }
EOF
  in_ns "$ns" env STRONGSWAN_CONF="$dir/strongswan.conf" unshare -m --propagation private \
    sh -c "mount --bind $dir/run /run && exec $CHARON" >"$dir/charon.out" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do
    [ -S "$dir/run/charon.vici" ] && break
    sleep 0.1
  done
  in_ns "$ns" env SWANCTL_DIR="$dir/swanctl" swanctl --load-all --noprompt --uri "unix://$dir/run/charon.vici" >/dev/null 2>&1
}

# Kernel gateway addresses and forwarding, for strongSwan (the Switchyard modes leave the
# gateways' kernels without addresses and forwarding off, as edge-topology.sh makes them).
kernel_gateway() { # kernel_gateway NS IF=ADDR IF=ADDR
  local ns=$1
  shift
  for ia in "$@"; do in_ns "$ns" ip addr add "${ia#*=}" dev "${ia%%=*}"; done
  in_ns "$ns" sysctl -qw net.ipv4.ip_forward=1
}

wait_tunnel() {
  for _ in $(seq 60); do
    in_ns client ping -c 1 -W 1 198.18.4.2 >/dev/null 2>&1 && return 0
  done
  return 1
}

measure() { # prints received Gbit/s
  in_ns pod1 iperf3 -s -1 -B 198.18.4.2 >/dev/null 2>&1 &
  local srv=$!
  sleep 0.5
  in_ns client timeout $((TCP_SECONDS + 20)) iperf3 -c 198.18.4.2 -t "$TCP_SECONDS" -J >"$WORK/iperf.json" || true
  wait "$srv" 2>/dev/null || true
  python3 -c 'import json,sys; print("%.3f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$WORK/iperf.json" 2>/dev/null || echo 0
}

declare -A RESULT
for mode in "${MODES[@]}"; do
  lab/edge-topology.sh up "$P" >/dev/null
  case "$mode" in
    switchyard | switchyard-cryptodev)
      crypto=software
      [ "$mode" = switchyard-cryptodev ] && crypto=cryptodev:crypto_aesni_gcm0
      site 198.18.3.2 198.18.1.0/24 198.18.4.0/24 start >"$WORK/a.yaml"
      site 198.18.3.1 198.18.4.0/24 198.18.1.0/24 add >"$WORK/b.yaml"
      start_switchyard edge "$crypto" c0=198.18.1.1/24 n1=198.18.3.1/30 198.18.4.0/24=198.18.3.2 "$WORK/a.yaml"
      start_switchyard node1 "$crypto" e0=198.18.3.2/30 p0=198.18.4.1/24 198.18.1.0/24=198.18.3.1 "$WORK/b.yaml"
      ;;
    strongswan)
      kernel_gateway edge c0=198.18.1.1/24 n1=198.18.3.1/30
      kernel_gateway node1 e0=198.18.3.2/30 p0=198.18.4.1/24
      start_charon node1 198.18.3.2 198.18.3.1 198.18.4.0/24 198.18.1.0/24 none
      start_charon edge 198.18.3.1 198.18.3.2 198.18.1.0/24 198.18.4.0/24 start
      ;;
    *) echo "unknown mode $mode" >&2; exit 2 ;;
  esac
  if wait_tunnel; then
    RESULT[$mode]=$(measure)
  else
    echo "$mode: no tunnel after 60 s" >&2
    tail -5 "$WORK"/*.err "$WORK"/ss-*/charon.log 2>/dev/null >&2 || true
    RESULT[$mode]=0
  fi
  stop_all
  lab/edge-topology.sh down "$P" >/dev/null
done

base="${RESULT[strongswan]:-}"
printf '\n%-22s %12s %18s\n' "gateways" "TCP Gbit/s" "vs strongSwan"
for mode in "${MODES[@]}"; do
  ratio=""
  if [ -n "$base" ] && [ "$base" != 0 ]; then
    ratio=$(python3 -c "print('%.2f' % (${RESULT[$mode]} / $base))")
  fi
  printf '%-22s %12s %18s\n' "$mode" "${RESULT[$mode]}" "$ratio"
done
