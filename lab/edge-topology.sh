#!/usr/bin/env bash
# Builds (or removes) the edge load-balancer lab: a client, an edge node, two nodes, a pod
# behind each node. Three Switchyard instances own the edge and node namespaces' ports.
#
#   ${P}client             ${P}edge                  ${P}node1             ${P}pod1
#   eth0 ──────────── c0 [switchyard] n1 ────── e0 [switchyard] p0 ──── eth0
#   198.18.1.2/24     198.18.1.1     198.18.3.1/30  198.18.3.2/30       198.18.4.2/24
#                                    n2 ───┐        198.18.4.1/24 (p0)
#                                          │        ${P}node2             ${P}pod2
#                              198.18.3.5/30└── e0 [switchyard] p0 ──── eth0
#                                               198.18.3.6/30           198.18.5.2/24
#                                               198.18.5.1/24 (p0)
#
# The pods hold the direct-server-return service address 198.51.100.30/32 on their loopback,
# as a DSR backend must, and route everything through their node. The nodes' default route
# is the edge.
#
# Usage: lab/edge-topology.sh up|down PREFIX
#
# As lab/topology.sh: everything is made inside the namespaces (veths created in one namespace
# with the peer placed straight into the other), nothing touches the root namespace, and a
# half-built lab is removed again.
set -euo pipefail

usage() {
  echo "usage: $0 up|down PREFIX" >&2
  exit 2
}

[ $# -eq 2 ] || usage
cmd=$1
prefix=$2
case "$prefix" in
  *[!A-Za-z0-9_-]* | "") echo "edge-topology: PREFIX must be [A-Za-z0-9_-]+" >&2; exit 2 ;;
esac

NAMES="client edge node1 node2 pod1 pod2"
T=10

ns() { echo "${prefix}$1"; }
in_ns() { # in_ns NAME CMD...
  local n
  n=$(ns "$1")
  shift
  timeout "$T" ip netns exec "$n" "$@"
}
ns_exists() { ip netns list | awk '{print $1}' | grep -qx -- "$1"; }

down() {
  local name n pids
  for name in $NAMES; do
    n=$(ns "$name")
    ns_exists "$n" || continue
    pids=$(timeout "$T" ip netns pids "$n" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      sleep 0.5
      pids=$(timeout "$T" ip netns pids "$n" 2>/dev/null || true)
      # shellcheck disable=SC2086
      [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
    fi
    timeout "$T" ip netns del "$n" 2>/dev/null || true
  done
}

offloads_off() { # offloads_off NAME IFACE
  in_ns "$1" ethtool -K "$2" tx off >/dev/null
  in_ns "$1" ethtool -K "$2" tso off gso off gro off >/dev/null 2>&1 || true
}

# A link between two namespaces: link NAME_A IFACE_A NAME_B IFACE_B
link() {
  in_ns "$1" ip link add "$2" type veth peer name "$4" netns "$(ns "$3")"
  offloads_off "$1" "$2"
  offloads_off "$3" "$4"
}

# A namespace whose ports belong to a userspace dataplane: the kernel keeps out of the way.
switchyard_ns() { # switchyard_ns NAME IFACES...
  local name=$1
  shift
  in_ns "$name" ip link set lo up
  in_ns "$name" sysctl -qw net.ipv4.ip_forward=0
  in_ns "$name" sysctl -qw net.ipv6.conf.all.forwarding=0
  for i in "$@"; do
    in_ns "$name" sysctl -qw "net.ipv6.conf.$i.disable_ipv6=1"
    in_ns "$name" ip link set "$i" up
  done
}

end_host() { # end_host NAME ADDR/LEN GW
  in_ns "$1" sysctl -qw net.ipv6.conf.all.disable_ipv6=1
  in_ns "$1" ip link set lo up
  in_ns "$1" ip link set eth0 up
  in_ns "$1" ip addr add "$2" dev eth0
  in_ns "$1" ip route add default via "$3" dev eth0
}

up() {
  for name in $NAMES; do
    ip netns add "$(ns "$name")"
  done
  link client eth0 edge c0
  link edge n1 node1 e0
  link edge n2 node2 e0
  link pod1 eth0 node1 p0
  link pod2 eth0 node2 p0
  switchyard_ns edge c0 n1 n2
  switchyard_ns node1 e0 p0
  switchyard_ns node2 e0 p0
  end_host client 198.18.1.2/24 198.18.1.1
  end_host pod1 198.18.4.2/24 198.18.4.1
  end_host pod2 198.18.5.2/24 198.18.5.1
  for pod in pod1 pod2; do
    in_ns "$pod" ip addr add 198.51.100.30/32 dev lo
    # The DSR address is the pod's own: answer for it, but never ARP for it on eth0.
    in_ns "$pod" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
  done
}

case "$cmd" in
  up)
    for name in $NAMES; do
      if ns_exists "$(ns "$name")"; then
        echo "edge-topology: namespace $(ns "$name") already exists (run: $0 down $prefix)" >&2
        exit 1
      fi
    done
    trap 'rc=$?; [ $rc -eq 0 ] || { echo "edge-topology: setup failed, tearing down" >&2; down; }' EXIT
    up
    ;;
  down) down ;;
  *) usage ;;
esac
