#!/usr/bin/env bash
# Installs everything Switchyard's build, tests, demo and benchmarks need on a fresh Debian 12
# machine. Idempotent: packages already present are skipped by apt, and the apt index is only
# refreshed when something is missing.
set -euo pipefail

PACKAGES=(
  # build: bindgen needs libclang; DPDK headers/libs for dataplane/dpdk-sys
  build-essential clang libclang-dev pkg-config dpdk libdpdk-dev
  # DPDK benchmark peer: dpdk-testpmd (benches/dpdk_vs_testpmd.sh)
  dpdk-dev
  # AF_XDP driver: libxdp/libbpf built by xsk-rs
  m4 libelf-dev zlib1g-dev
  # lab and tests: namespaces, kernel peers, packet dissection, kernel baseline
  iproute2 iputils-ping tshark tcpdump nftables iptables socat netcat-openbsd ethtool gobgpd bird2
  python3
  # benchmarks: instruction counts
  valgrind
  # benches/kernel_vs_userspace.sh: TCP throughput through each forwarder
  iperf3
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer for it.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
