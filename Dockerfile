# syntax=docker/dockerfile:1
# The Switchyard image: the `switchyard` binary on Debian 12 with the DPDK 22.11 runtime
# libraries and the poll-mode drivers for common NICs and QAT.
#
#   docker build -t switchyard:0.1.0 .
#
# The build stage installs the build group of scripts/install-deps.sh (the packages tests and
# benchmarks need are left out) and runs the same `cargo build --release -p switchyard` as
# `make release`, against the same Debian DPDK the tests use. The runtime stage carries only
# shared libraries the binary links (ldd) and the DPDK plugins the EAL loads at start.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build ------------------------------------------------------------------------------
FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
ENV DEBIAN_FRONTEND=noninteractive
# As scripts/install-deps.sh: bindgen needs libclang; DPDK headers for dataplane/dpdk-sys;
# m4, libelf and zlib for libxdp (AF_XDP), whose XDP programs clang compiles and embeds.
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      build-essential clang libclang-dev pkg-config libdpdk-dev m4 libelf-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchyard \
 && install -D -m 0755 target/release/switchyard /out/switchyard

# ---- runtime ----------------------------------------------------------------------------
FROM debian:${DEBIAN_RELEASE}-slim
ARG DEBIAN_FRONTEND=noninteractive
# librte-{eal,ethdev,mbuf,mempool}23 and their dependencies: what the binary links (the
# pkg-config libdpdk set of dataplane/dpdk-sys). The rest are plugins the EAL loads from
# /usr/lib/x86_64-linux-gnu/dpdk/pmds-23.0: PCI and vdev buses, the ring mempool, NIC drivers
# (Intel i40e/ice/ixgbe, virtio, vmxnet3), the af_packet/af_xdp/tap vdevs, and the QAT and
# software (AES-NI multi-buffer, OpenSSL) crypto drivers for IPsec. libnuma, libelf and zlib
# come with them. Add a driver package here for another NIC (e.g. librte-net-mlx5-23).
RUN apt-get update -q \
 && apt-get install -y -q --no-install-recommends \
      librte-eal23 librte-ethdev23 librte-mbuf23 librte-mempool23 \
      librte-bus-pci23 librte-bus-vdev23 librte-mempool-ring23 \
      librte-net-i40e23 librte-net-ice23 librte-net-ixgbe23 librte-net-virtio23 \
      librte-net-vmxnet3-23 librte-net-af-packet23 librte-net-af-xdp23 librte-net-tap23 \
      librte-common-qat23 librte-crypto-ipsec-mb23 librte-crypto-openssl23 \
      libelf1 zlib1g libnuma1 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/switchyard /usr/bin/switchyard
# The admin socket's directory (an emptyDir in the DaemonSet; the root file system is
# read-only there).
RUN mkdir -p /run/switchyard
# Root with the capabilities the DaemonSet grants (deploy/base/daemonset.yaml): raw sockets,
# XDP and DMA memory need them; nothing else runs in the container.
USER 0
ENTRYPOINT ["/usr/bin/switchyard"]
CMD ["agent", "--help"]
