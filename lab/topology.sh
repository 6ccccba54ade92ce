#!/usr/bin/env bash
# Builds (or removes) the three-namespace lab used by the demo and the end-to-end tests.
#
#   ${P}client            ${P}node                 ${P}server
#   eth0  <---veth--->  c0   [router]   s0  <---veth--->  eth0
#   198.18.1.2/24                                         198.18.2.2/24
#   2001:db8:1::2/64                                      2001:db8:2::2/64
#   default via .1.1 / 1::1                               default via .2.1 / 2::1
#
# Usage: lab/topology.sh up|kernel|down PREFIX
#        lab/topology.sh prune
#   up      node namespace left to a userspace router: no addresses on c0/s0, IPv6 disabled on
#           them, forwarding off, links up. The router owns 198.18.1.1, 198.18.2.1,
#           2001:db8:1::1 and 2001:db8:2::1.
#   kernel  same wiring, but the node namespace's kernel is the router (the baseline, and a way
#           to check the tests without the switchyard binary).
#   down    removes the three namespaces (and with them the veths). Idempotent.
#   prune   removes labs left behind by a killed test or demo: namespaces named like the tests'
#           (sy<PID>t<N>...) and the demo's (sd<PID>x...) prefixes whose process is gone.
#
# Everything is created inside the namespaces: the veth pairs are made in the client/server
# namespace with their peer directly in the node namespace, so the root namespace never sees an
# interface, an address or a route from this script.
set -euo pipefail

usage() {
  echo "usage: $0 up|kernel|down PREFIX | $0 prune" >&2
  exit 2
}

if [ $# -eq 1 ] && [ "$1" = prune ]; then
  ip netns list | awk '{print $1}' | sed -nE 's/^((sy([0-9]+)t[0-9]+)|(sd([0-9]+)x))(client|node|server)$/\1 \3\5/p' |
    sort -u | while read -r stale pid; do
      if [ ! -d "/proc/$pid" ]; then
        echo "topology: removing stale lab $stale (pid $pid is gone)"
        "$0" down "$stale"
      fi
    done
  exit 0
fi

[ $# -eq 2 ] || usage
cmd=$1
prefix=$2
case "$prefix" in
  *[!A-Za-z0-9_-]* | "") echo "topology: PREFIX must be [A-Za-z0-9_-]+" >&2; exit 2 ;;
esac

CLIENT=${prefix}client
NODE=${prefix}node
SERVER=${prefix}server
T=10 # seconds: bound on each command

in_ns() { # in_ns NS CMD...
  local ns=$1
  shift
  timeout "$T" ip netns exec "$ns" "$@"
}

ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

down() {
  local ns pids
  for ns in "$CLIENT" "$NODE" "$SERVER"; do
    ns_exists "$ns" || continue
    # Stop anything still running in the namespace (a leftover router, listener, capture):
    # only processes whose network namespace is this one, by pid.
    pids=$(timeout "$T" ip netns pids "$ns" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      pids=$(timeout "$T" ip netns pids "$ns" 2>/dev/null || true)
      # shellcheck disable=SC2086
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    timeout "$T" ip netns del "$ns" 2>/dev/null || true
  done
}

# Offloads: a userspace dataplane forwards frames as they are, so the ends must put full
# checksums on the wire (tx off, which also drops TSO) and send MTU-sized frames (no GSO/GRO
# super-packets reaching a packet socket). Some features are fixed on veth; ignore those.
offloads_off() { # offloads_off NS IFACE
  in_ns "$1" ethtool -K "$2" tx off >/dev/null
  in_ns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
}

end_host() { # end_host NS V4/LEN V6/LEN GW4 GW6
  local ns=$1 a4=$2 a6=$3 gw4=$4 gw6=$5
  in_ns "$ns" sysctl -qw net.ipv6.conf.eth0.accept_dad=0
  in_ns "$ns" sysctl -qw net.ipv6.conf.eth0.accept_ra=0
  in_ns "$ns" sysctl -qw net.ipv6.conf.eth0.autoconf=0
  in_ns "$ns" ip link set lo up
  in_ns "$ns" ip link set eth0 up
  offloads_off "$ns" eth0
  in_ns "$ns" ip addr add "$a4" dev eth0
  in_ns "$ns" ip -6 addr add "$a6" dev eth0 nodad
  in_ns "$ns" ip route add default via "$gw4" dev eth0
  in_ns "$ns" ip -6 route add default via "$gw6" dev eth0
}

up() { # up userspace|kernel
  local mode=$1
  ip netns add "$CLIENT"
  ip netns add "$NODE"
  ip netns add "$SERVER"

  in_ns "$CLIENT" ip link add eth0 type veth peer name c0 netns "$NODE"
  in_ns "$SERVER" ip link add eth0 type veth peer name s0 netns "$NODE"

  in_ns "$NODE" ip link set lo up
  for i in c0 s0; do
    offloads_off "$NODE" "$i"
  done

  if [ "$mode" = userspace ]; then
    # The kernel stays out of the way: no addresses (so no ARP replies, no local delivery), no
    # IPv6 on the ports (no link-local, ND, MLD, RS), no forwarding (no ICMP from the kernel).
    in_ns "$NODE" sysctl -qw net.ipv4.ip_forward=0
    in_ns "$NODE" sysctl -qw net.ipv6.conf.all.forwarding=0
    for i in c0 s0; do
      in_ns "$NODE" sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
      in_ns "$NODE" ip link set "$i" up
    done
  else
    # The kernel as router. IPv6 ICMP error rate limit off so each hop-limit/no-route probe is
    # answered. IPv4's is left at its default on purpose: net.ipv4.icmp_ratelimit=0 empties the
    # per-peer token bucket that ip_error() shares, so "no route" errors would then never be
    # sent (the default allows a burst of several errors, then one a second).
    in_ns "$NODE" sysctl -qw net.ipv4.ip_forward=1
    in_ns "$NODE" sysctl -qw net.ipv6.conf.all.forwarding=1
    in_ns "$NODE" sysctl -qw net.ipv6.icmp.ratelimit=0
    for i in c0 s0; do
      in_ns "$NODE" sysctl -qw "net.ipv6.conf.$i.accept_dad=0"
      in_ns "$NODE" ip link set "$i" up
    done
    in_ns "$NODE" ip addr add 198.18.1.1/24 dev c0
    in_ns "$NODE" ip addr add 198.18.2.1/24 dev s0
    in_ns "$NODE" ip -6 addr add 2001:db8:1::1/64 dev c0 nodad
    in_ns "$NODE" ip -6 addr add 2001:db8:2::1/64 dev s0 nodad
  fi

  end_host "$CLIENT" 198.18.1.2/24 2001:db8:1::2/64 198.18.1.1 2001:db8:1::1
  end_host "$SERVER" 198.18.2.2/24 2001:db8:2::2/64 198.18.2.1 2001:db8:2::1
}

case "$cmd" in
  up | kernel)
    for ns in "$CLIENT" "$NODE" "$SERVER"; do
      if ns_exists "$ns"; then
        echo "topology: namespace $ns already exists (run: $0 down $prefix)" >&2
        exit 1
      fi
    done
    # A half-built lab is removed again before reporting the failure.
    trap 'rc=$?; [ $rc -eq 0 ] || { echo "topology: setup failed, tearing down" >&2; down; }' EXIT
    if [ "$cmd" = up ]; then up userspace; else up kernel; fi
    ;;
  down) down ;;
  *) usage ;;
esac
