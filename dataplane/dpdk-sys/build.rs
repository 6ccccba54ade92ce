//! Generates bindings to the system DPDK and compiles the C shim for its static inline
//! functions. Flags come from `pkg-config libdpdk`, kept whole (DPDK's `-march=corei7` and
//! `-include rte_config.h` are part of its ABI).
//!
//! Poll-mode drivers are not linked: Debian ships them as plugins and `librte_eal` loads every
//! plugin in its build-time directory (`RTE_EAL_PMD_PATH`, exported as a constant) at
//! `rte_eal_init`, so `--vdev net_ring0` and friends work without extra flags.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn pkg_config(arg: &str) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args([arg, "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("running pkg-config {arg} libdpdk: {e} (install pkg-config)"));
    if !out.status.success() {
        panic!(
            "pkg-config {arg} libdpdk failed (install libdpdk-dev): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// Functions the Rust side calls; everything they need comes along.
const FUNCTIONS: &[&str] = &[
    "sy_.*",
    "rte_eal_init",
    "rte_strerror",
    "rte_thread_register",
    "rte_get_main_lcore",
    "rte_get_next_lcore",
    "rte_lcore_to_cpu_id",
    "rte_eth_dev_count_avail",
    "rte_eth_dev_get_port_by_name",
    "rte_eth_dev_socket_id",
    "rte_eth_dev_configure",
    "rte_eth_dev_info_get",
    "rte_eth_dev_adjust_nb_rx_tx_desc",
    "rte_eth_rx_queue_setup",
    "rte_eth_tx_queue_setup",
    "rte_eth_dev_start",
    "rte_eth_dev_stop",
    "rte_eth_promiscuous_enable",
    "rte_eth_macaddr_get",
    "rte_eth_dev_get_mtu",
    "rte_eth_stats_get",
    "rte_eth_stats_reset",
    "rte_pktmbuf_pool_create",
    "rte_pktmbuf_free_bulk",
    "rte_mempool_avail_count",
    "rte_mempool_free",
    "rte_eal_has_hugepages",
    "rte_eal_has_pci",
    "rte_cryptodev_count",
    "rte_cryptodev_get_dev_id",
    "rte_cryptodev_socket_id",
    "rte_cryptodev_info_get",
    "rte_cryptodev_configure",
    "rte_cryptodev_queue_pair_setup",
    "rte_cryptodev_start",
    "rte_cryptodev_stop",
    "rte_cryptodev_sym_get_private_session_size",
    "rte_cryptodev_sym_session_pool_create",
    "rte_cryptodev_sym_session_free",
    "rte_crypto_op_pool_create",
];

const TYPES: &[&str] = &[
    "rte_mbuf",
    "rte_mempool",
    "rte_eth_conf",
    "rte_eth_dev_info",
    "rte_eth_stats",
    "rte_ether_addr",
    "rte_crypto_op",
    "rte_crypto_op_status",
    "rte_crypto_op_type",
    "rte_cryptodev_info",
    "rte_cryptodev_config",
    "rte_cryptodev_qp_conf",
];

const VARS: &[&str] = &[
    "RTE_EAL_PMD_PATH",
    "RTE_MAX_ETHPORTS",
    "RTE_MAX_LCORE",
    "RTE_PKTMBUF_HEADROOM",
    "RTE_MBUF_DEFAULT_BUF_SIZE",
    "RTE_MBUF_DEFAULT_DATAROOM",
    "RTE_MEMPOOL_CACHE_MAX_SIZE",
    "RTE_ETHER_ADDR_LEN",
    "RTE_ETHER_MTU",
    "SOCKET_ID_ANY",
    "LCORE_ID_ANY",
    "SY_CRYPTO_.*",
];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let src = manifest.join("src");
    println!("cargo:rerun-if-changed=build.rs");
    for f in ["wrapper.h", "shim.h", "shim.c"] {
        println!("cargo:rerun-if-changed={}", src.join(f).display());
    }
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let cflags = pkg_config("--cflags");
    let libs = pkg_config("--libs");

    // The shim: compiled with DPDK's own flags so the inlined fast paths match its build.
    let mut cc = cc::Build::new();
    cc.file(src.join("shim.c"))
        .include(&src)
        .opt_level(3)
        .warnings(false)
        // DPDK's headers are noisy, but a call to something they do not declare must fail
        // here rather than at link time.
        .flag("-Werror=implicit-function-declaration");
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("switchyard_dpdk_shim");

    // DPDK libraries. `-Wl,--as-needed` is rustc's default already.
    for f in &libs {
        if let Some(dir) = f.strip_prefix("-L") {
            println!("cargo:rustc-link-search=native={dir}");
        } else if let Some(lib) = f.strip_prefix("-l") {
            println!("cargo:rustc-link-lib=dylib={lib}");
        }
    }

    let mut builder = bindgen::Builder::default()
        .header(src.join("wrapper.h").to_string_lossy())
        .clang_args(&cflags)
        .clang_arg(format!("-I{}", src.display()))
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .allowlist_recursively(true)
        // Only pointers to these are used; their insides are DPDK's business.
        .opaque_type("rte_mempool")
        .derive_default(true)
        .derive_debug(true)
        .impl_debug(false)
        .layout_tests(true)
        .generate_comments(false)
        .prepend_enum_name(false)
        .size_t_is_usize(true);
    for f in FUNCTIONS {
        builder = builder.allowlist_function(f);
    }
    for t in TYPES {
        builder = builder.allowlist_type(t);
    }
    for v in VARS {
        builder = builder.allowlist_var(v);
    }
    let bindings = builder
        .generate()
        .expect("bindgen over src/wrapper.h failed (needs clang and libclang-dev)");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("writing bindings.rs");
}
