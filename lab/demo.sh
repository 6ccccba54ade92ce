#!/usr/bin/env bash
# Switchyard in a box: three network namespaces (client, node, server), the switchyard router in
# the node namespace, and a few things a person would try from the client; then the node agent
# with the manifests in examples/ (on DPDK by default), serving real requests to Services.
#
#   cargo build --release -p switchyard && sudo lab/demo.sh
#
# Environment:
#   SWITCHYARD=PATH           router binary (default: target/release/switchyard; never built here)
#   DATAPLANE=afpacket|afxdp  dataplane driver of the router part (default afpacket)
#   AGENT_DATAPLANE=dpdk|afpacket|afxdp  dataplane of the agent part (default dpdk)
#   SWITCHYARD_LAB_KERNEL=1   let the node namespace's kernel route instead (baseline / no binary)
#
# Exits non-zero if any check fails. Everything created is removed on exit, also on failure or ^C.
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TOPO="$ROOT/lab/topology.sh"
SWITCHYARD=${SWITCHYARD:-$ROOT/target/release/switchyard}
DATAPLANE=${DATAPLANE:-afpacket}
KERNEL=${SWITCHYARD_LAB_KERNEL:-0}
[ "$KERNEL" = 0 ] || [ -z "$KERNEL" ] && KERNEL=0 || KERNEL=1

P="sd$$x"
CLIENT=${P}client NODE=${P}node SERVER=${P}server
WORK=$(mktemp -d /tmp/switchyard-demo.XXXXXX)
ROUTER_PID=
FAILED=0
PASSED=0

if [ -t 1 ]; then B=$'\e[1m' G=$'\e[32m' R=$'\e[31m' D=$'\e[2m' N=$'\e[0m'; else B= G= R= D= N=; fi
heading() { printf '\n%s== %s ==%s\n' "$B" "$*" "$N"; }
ok() { PASSED=$((PASSED + 1)); printf '  %s✓%s %s\n' "$G" "$N" "$*"; }
bad() { FAILED=$((FAILED + 1)); printf '  %s✗%s %s\n' "$R" "$N" "$*"; }
detail() { sed "s/^/      $D/; s/\$/$N/" ; }
in_ns() { local ns=$1 t=$2; shift 2; timeout -k 2 "$t" ip netns exec "$ns" "$@"; }

stop_router() {
  [ -n "$ROUTER_PID" ] || return 0
  kill -TERM "$ROUTER_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 50); do # up to 10 s for counters and traces to be printed
    kill -0 "$ROUTER_PID" 2>/dev/null || break
    sleep 0.2
  done
  if kill -0 "$ROUTER_PID" 2>/dev/null; then
    echo "  router did not stop after SIGTERM within 10 s; killing it" >&2
    kill -KILL "$ROUTER_PID" 2>/dev/null || true
  fi
  wait "$ROUTER_PID" 2>/dev/null
  ROUTER_RC=$?
  ROUTER_PID=
}

cleanup() {
  stop_router
  "$TOPO" down "$P" || true
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'echo "interrupted"; exit 130' INT TERM

if [ "$(id -u)" != 0 ]; then
  echo "demo: needs root (network namespaces)" >&2
  exit 1
fi
for tool in ip ping socat ss sha256sum timeout; do
  command -v "$tool" >/dev/null || { echo "demo: missing $tool (scripts/install-deps.sh)" >&2; exit 1; }
done
if [ "$KERNEL" = 0 ] && [ ! -x "$SWITCHYARD" ]; then
  echo "demo: no router binary at $SWITCHYARD (cargo build --release -p switchyard, or set SWITCHYARD=)" >&2
  exit 1
fi

heading "Lab"
if [ "$KERNEL" = 1 ]; then
  "$TOPO" kernel "$P" || exit 1
  echo "  namespaces ${P}{client,node,server}; the node's KERNEL routes (SWITCHYARD_LAB_KERNEL=1)"
else
  "$TOPO" up "$P" || exit 1
  echo "  namespaces ${P}{client,node,server}; node ports c0, s0 have no kernel addresses"
fi
cat <<EOF
  client eth0 198.18.1.2 2001:db8:1::2 ── c0 [node] s0 ── eth0 198.18.2.2 2001:db8:2::2 server
                                          .1.1 / 1::1   .2.1 / 2::1
EOF

if [ "$KERNEL" = 0 ]; then
  heading "Router"
  # Let the end hosts' link-up chatter (MLD reports, repeated once after ~1 s) pass, so the
  # router's packet trace shows the demo's own packets.
  sleep 2
  ROUTER_ARGS=(router --dataplane "$DATAPLANE"
    --interface c0 --interface s0
    --address c0=198.18.1.1/24 --address c0=2001:db8:1::1/64
    --address s0=198.18.2.1/24 --address s0=2001:db8:2::1/64
    --trace 3 --duration 120)
  echo "  ip netns exec $NODE $SWITCHYARD ${ROUTER_ARGS[*]}"
  NO_COLOR=1 ip netns exec "$NODE" "$SWITCHYARD" "${ROUTER_ARGS[@]}" >"$WORK/router.out" 2>"$WORK/router.err" &
  ROUTER_PID=$!
  ready=0
  for _ in $(seq 1 20); do # up to ~20 s
    if ! kill -0 "$ROUTER_PID" 2>/dev/null; then break; fi
    if in_ns "$CLIENT" 3 ping -q -c 1 -W 1 198.18.1.1 >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.2
  done
  if [ "$ready" = 1 ]; then
    ok "router is up and answers ping on 198.18.1.1"
  else
    if kill -0 "$ROUTER_PID" 2>/dev/null; then
      bad "router did not come up (no ping reply from 198.18.1.1 within ~20 s)"
    else
      bad "router exited during startup"
    fi
    stop_router
    echo "  exit status: ${ROUTER_RC:-?}"
    echo "  stdout:"; detail <"$WORK/router.out"
    echo "  stderr:"; tail -n 30 "$WORK/router.err" | detail
    exit 1
  fi
fi

# check_ping NAME NS ADDR [PING ARGS...]: three echo requests, all answered.
check_ping() {
  local what=$1 ns=$2 dst=$3 out
  shift 3
  if out=$(in_ns "$ns" 10 ping -c 3 -i 0.2 -W 2 "$@" "$dst" 2>&1); then
    ok "$what: $(grep -E 'packets transmitted' <<<"$out"), $(grep -oE 'rtt [^ ]+ = [0-9./]+ ms' <<<"$out")"
  else
    bad "$what"
    detail <<<"$out"
  fi
}

heading "Ping through the router"
check_ping "IPv4 client → server 198.18.2.2" "$CLIENT" 198.18.2.2
check_ping "IPv6 client → server 2001:db8:2::2" "$CLIENT" 2001:db8:2::2

heading "Ping the router itself"
check_ping "IPv4 198.18.1.1 (near side)" "$CLIENT" 198.18.1.1
check_ping "IPv6 2001:db8:1::1 (near side)" "$CLIENT" 2001:db8:1::1
check_ping "IPv4 3000-byte echo to 198.18.1.1 (reassembled, reply fragmented)" "$CLIENT" 198.18.1.1 -s 3000
check_ping "IPv4 3000-byte echo through the router (fragments forwarded)" "$CLIENT" 198.18.2.2 -s 3000

# tcp_transfer FAMILY: 1 MiB of random bytes client → server over TCP, compared by sha256.
head -c 1048576 /dev/urandom >"$WORK/in.bin"
tcp_transfer() {
  local fam=$1 port listen connect
  if [ "$fam" = 4 ]; then
    port=5004 listen="TCP4-LISTEN:$port,bind=198.18.2.2,reuseaddr" connect="TCP4:198.18.2.2:$port"
  else
    port=5006 listen="TCP6-LISTEN:$port,bind=[2001:db8:2::2],reuseaddr" connect="TCP6:[2001:db8:2::2]:$port"
  fi
  rm -f "$WORK/out.bin"
  in_ns "$SERVER" 30 socat -u "$listen" "CREATE:$WORK/out.bin" 2>"$WORK/socat-server.err" &
  local spid=$! i
  for i in $(seq 1 50); do # up to 5 s for the listener
    in_ns "$SERVER" 3 ss -Hltn "sport = :$port" 2>/dev/null | grep -q . && break
    sleep 0.1
  done
  local t0 t1 crc
  t0=$(date +%s.%N)
  in_ns "$CLIENT" 30 socat -u "OPEN:$WORK/in.bin" "$connect" 2>"$WORK/socat-client.err"
  crc=$?
  wait "$spid"
  local src=$?
  t1=$(date +%s.%N)
  local want got size
  want=$(sha256sum <"$WORK/in.bin" | cut -c1-64)
  got=$(sha256sum <"$WORK/out.bin" 2>/dev/null | cut -c1-64)
  size=$(stat -c %s "$WORK/out.bin" 2>/dev/null || echo 0)
  if [ "$crc" = 0 ] && [ "$src" = 0 ] && [ "$want" = "$got" ]; then
    ok "IPv$fam: 1 MiB sent, $size bytes received, sha256 ${got:0:16}… matches ($(awk "BEGIN{printf \"%.2f\", $t1-$t0}") s)"
  else
    bad "IPv$fam: client rc=$crc server rc=$src, received $size bytes, sha256 ${got:0:16} (want ${want:0:16})"
    cat "$WORK/socat-client.err" "$WORK/socat-server.err" | detail
  fi
}

heading "TCP transfer through the router"
tcp_transfer 4
tcp_transfer 6

# check_icmp_error NAME EXPECT PING-ARGS...: at least one ICMP error line matching EXPECT.
check_icmp_error() {
  local what=$1 expect=$2 out line
  shift 2
  out=$(in_ns "$CLIENT" 10 ping -c 2 -i 0.5 -W 2 "$@" 2>&1)
  line=$(grep -E "$expect" <<<"$out" | head -n 1)
  if [ -n "$line" ]; then
    ok "$what: \"$line\""
  else
    bad "$what: no line matching /$expect/"
    detail <<<"$out"
  fi
}

heading "Traceroute-style probes and ICMP errors"
check_icmp_error "TTL=1 to 198.18.2.2 → time exceeded from the router" \
  '^From 198\.18\.1\.1 .*Time to live exceeded' -t 1 198.18.2.2
check_icmp_error "hop limit 1 to 2001:db8:2::2 → time exceeded from the router" \
  '^From 2001:db8:1::1 .*Time exceeded' -6 -t 1 2001:db8:2::2
check_icmp_error "unrouted 198.19.255.9 → destination unreachable" \
  '^From 198\.18\.1\.1 .*Unreachable' 198.19.255.9
check_icmp_error "unrouted 2001:db8:ff::9 → destination unreachable" \
  '^From 2001:db8:1::1 .*[Uu]nreachable' 2001:db8:ff::9

if [ "$KERNEL" = 0 ]; then
  heading "Router output (counters and first packet traces)"
  stop_router
  if [ "${ROUTER_RC:-1}" = 0 ]; then ok "router exited cleanly on SIGTERM"; else bad "router exit status ${ROUTER_RC:-?}"; fi
  if [ -s "$WORK/router.out" ]; then
    sed 's/^/  │ /' "$WORK/router.out"
  else
    bad "router printed nothing on stdout"
  fi
  if [ -s "$WORK/router.err" ]; then
    echo "  stderr (last 20 lines):"
    tail -n 20 "$WORK/router.err" | sed 's/^/  │ /'
  fi
fi

if [ "$KERNEL" = 0 ]; then
  heading "Service proxy: switchyard agent --manifests examples/"
  # The pods of examples/: web's pod-a and pod-b, api-0 (IPv4 and IPv6), all in the server
  # namespace, each answering with its name and the address it saw the client as.
  pod_listen() { # pod_listen NAME ADDR PORT [udp]
    local name=$1 addr=$2 port=$3 proto=${4:-tcp} listen
    local fam=4
    case "$addr" in \[*) fam=6 ;; esac
    if [ "$proto" = udp ]; then listen="UDP$fam-RECVFROM:$port,bind=$addr,fork"; else listen="TCP$fam-LISTEN:$port,bind=$addr,fork,reuseaddr"; fi
    in_ns "$SERVER" 150 socat "$listen" SYSTEM:"echo $name \$SOCAT_PEERADDR" 2>>"$WORK/pods.err" &
  }
  for a in 198.18.2.3 198.18.2.4 198.18.2.10; do in_ns "$SERVER" 5 ip addr add "$a/24" dev eth0; done
  in_ns "$SERVER" 5 ip -6 addr add 2001:db8:2::10/64 dev eth0 nodad
  pod_listen pod-a 198.18.2.3 8080
  pod_listen pod-b 198.18.2.4 8080
  pod_listen api-0 198.18.2.10 8080
  pod_listen api-0 '[2001:db8:2::10]' 8080
  pod_listen api-0 198.18.2.10 5353 udp
  mkdir -p "$WORK/manifests"
  cp "$ROOT"/examples/*.yaml "$WORK/manifests/"
  # The NetworkPolicy is added live, later, to show its effect.
  mv "$WORK/manifests/30-policy.yaml" "$WORK/policy.yaml"
  AGENT_DATAPLANE=${AGENT_DATAPLANE:-dpdk}
  if [ "$AGENT_DATAPLANE" = dpdk ]; then
    PORTS=(--interface net_af_packet0 --interface net_af_packet1
      --address net_af_packet0=198.18.1.1/24 --address net_af_packet0=2001:db8:1::1/64
      --address net_af_packet1=198.18.2.1/24 --address net_af_packet1=2001:db8:2::1/64
      --eal "--no-huge --no-pci --no-shconf -m 512 --file-prefix $P --vdev net_af_packet0,iface=c0 --vdev net_af_packet1,iface=s0")
  else
    PORTS=(--interface c0 --interface s0
      --address c0=198.18.1.1/24 --address c0=2001:db8:1::1/64
      --address s0=198.18.2.1/24 --address s0=2001:db8:2::1/64)
  fi
  AGENT_ARGS=(agent --manifests "$WORK/manifests" --node-name node-a --poll-interval 0.2
    --admin-socket "$WORK/admin.sock" --metrics-bind-address 127.0.0.1:10249
    --healthz-bind-address 127.0.0.1:10256
    --dataplane "$AGENT_DATAPLANE" "${PORTS[@]}" --duration 120)
  echo "  ip netns exec $NODE $SWITCHYARD ${AGENT_ARGS[*]}"
  NO_COLOR=1 ip netns exec "$NODE" "$SWITCHYARD" "${AGENT_ARGS[@]}" >"$WORK/agent.out" 2>"$WORK/agent.err" &
  ROUTER_PID=$!
  ready=0
  for _ in $(seq 1 40); do
    if ! kill -0 "$ROUTER_PID" 2>/dev/null; then break; fi
    if in_ns "$CLIENT" 3 ping -q -c 1 -W 1 198.18.1.1 >/dev/null 2>&1; then ready=1; break; fi
    sleep 0.3
  done
  if [ "$ready" = 1 ]; then
    ok "agent is up ($AGENT_DATAPLANE dataplane): $(grep -o 'services=[0-9]* frontends=[0-9]*' "$WORK/agent.err" | head -n 1)"
  else
    bad "agent did not come up"
    tail -n 30 "$WORK/agent.err" | detail
  fi

  # ask NAME ADDR PORT [udp]: one request from the client; prints the answer.
  ask() {
    local fam=4
    case "$2" in \[*) fam=6 ;; esac
    if [ "${4:-tcp}" = udp ]; then
      echo q | in_ns "$CLIENT" 5 socat -T 2 - "UDP$fam:$2:$3" 2>/dev/null
    else
      in_ns "$CLIENT" 5 socat -T 2 - "TCP$fam:$2:$3,connect-timeout=2" </dev/null 2>/dev/null
    fi
  }
  spread() { # spread ADDR PORT N: which pods answered N requests
    local i
    for i in $(seq 1 "$3"); do ask x "$1" "$2" | cut -d' ' -f1; done | sort | uniq -c | awk '{printf "%s×%s ", $2, $1}'
  }
  answers=$(spread 198.19.0.10 80 12)
  if grep -q pod-a <<<"$answers" && grep -q pod-b <<<"$answers"; then
    ok "ClusterIP web 198.19.0.10:80, 12 connections (Maglev): $answers"
  else
    bad "ClusterIP web 198.19.0.10:80: $answers"
  fi
  a=$(ask x 198.18.1.1 30080)
  if [ "${a#api-0 }" = 198.18.2.1 ]; then
    ok "NodePort api 198.18.1.1:30080 → \"$a\" (masqueraded to the node's address)"
  else
    bad "NodePort api 198.18.1.1:30080 → \"$a\""
  fi
  a=$(ask x '[2001:db8:ffff::20]' 80)
  if [ "${a%% *}" = api-0 ]; then ok "IPv6 ClusterIP api [2001:db8:ffff::20]:80 → \"$a\""; else bad "IPv6 ClusterIP api → \"$a\""; fi
  a=$(ask x 198.18.1.1 30053 udp)
  if [ "${a%% *}" = api-0 ]; then ok "UDP NodePort api 198.18.1.1:30053 → \"$a\""; else bad "UDP NodePort api → \"$a\""; fi

  # Live change: web loses pod-a (as when a Deployment is scaled down).
  sed -i '/- addresses: \[198.18.2.3\]/,/name: pod-a}/d' "$WORK/manifests/10-web.yaml"
  sleep 1
  answers=$(spread 198.19.0.10 80 8)
  if [ "$answers" = "pod-b×8 " ]; then
    ok "after removing pod-a from web's EndpointSlice: $answers"
  else
    bad "after removing pod-a: $answers"
  fi

  # Live change: a NetworkPolicy lets only web pods reach api pods (8080/TCP, 5353/UDP).
  cp "$WORK/policy.yaml" "$WORK/manifests/30-policy.yaml"
  sleep 1
  a=$(ask x '[2001:db8:ffff::20]' 80)
  if [ -z "$a" ]; then
    ok "after adding NetworkPolicy demo/api-from-web: the client can no longer reach api-0 (denied by its ingress ACL)"
  else
    bad "after adding the policy, api-0 still answered the client: \"$a\""
  fi
  # Policy is judged after DNAT and before SNAT: masquerading does not make the client the node.
  a=$(ask x 198.18.1.1 30080)
  if [ -z "$a" ]; then
    ok "NodePort api no longer answers the client either (judged by its own address, not the masqueraded one)"
  else
    bad "NodePort api after the policy → \"$a\" (the masqueraded address stood in for the client)"
  fi
  echo "  switchyard policy explain --manifests examples/ --port 8080/TCP:"
  "$SWITCHYARD" policy explain --manifests "$WORK/manifests" --port 8080/TCP 2>&1 | sed 's/^/  │ /' | head -n 14

  heading "What the agent shows"
  echo "  switchyard show services:"
  "$SWITCHYARD" show services --socket "$WORK/admin.sock" 2>&1 | sed 's/^/  │ /' | head -n 20
  echo "  switchyard show conntrack (first lines):"
  "$SWITCHYARD" show conntrack --socket "$WORK/admin.sock" 2>&1 | sed 's/^/  │ /' | head -n 8
  echo "  switchyard show acl (the policy added live, with its hit counters):"
  "$SWITCHYARD" show acl --socket "$WORK/admin.sock" 2>&1 | sed 's/^/  │ /' | head -n 12
  if out=$(in_ns "$NODE" 5 python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:10256/readyz").status)' 2>&1) && [ "$out" = 200 ]; then
    ok "/readyz answers 200 (first sync programmed)"
  else
    bad "/readyz: $out"
  fi
  echo "  a few metrics (curl http://127.0.0.1:10249/metrics in the node namespace):"
  in_ns "$NODE" 5 python3 -c 'import urllib.request as u; print(u.urlopen("http://127.0.0.1:10249/metrics").read().decode())' 2>&1 |
    grep -E '^switchyard_(service_backend_connections_total|conntrack_entries |sync_duration_seconds_count|node_errors_total\{node="ip6-acl")' |
    head -n 10 | sed 's/^/  │ /'

  stop_router
  if [ "${ROUTER_RC:-1}" = 0 ]; then ok "agent exited cleanly on SIGTERM"; else bad "agent exit status ${ROUTER_RC:-?}"; fi
  echo "  service proxy and policy counters:"
  awk '/^[a-z0-9-]+ +[0-9]+ +[0-9]+$/ { show = ($1 ~ /^ip[46]-(nat|acl)$/) } show' "$WORK/agent.out" | sed 's/^/  │ /'
  grep 'tables programmed' "$WORK/agent.err" | sed -E 's/^.*version=/  │ tables version=/' | head -n 5
fi

heading "Summary"
if [ "$FAILED" = 0 ]; then
  printf '  %s✓ all %d checks passed%s\n' "$G" "$PASSED" "$N"
  exit 0
else
  printf '  %s✗ %d of %d checks failed%s\n' "$R" "$FAILED" "$((PASSED + FAILED))" "$N"
  exit 1
fi
