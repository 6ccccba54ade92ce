//! Bindings to DPDK (being generated).
