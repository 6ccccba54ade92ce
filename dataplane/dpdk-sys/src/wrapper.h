/* The DPDK headers Switchyard binds to. build.rs runs bindgen over this file with the flags from
 * `pkg-config --cflags libdpdk`, and compiles shim.c (which includes this file) with the same. */
#ifndef SWITCHYARD_DPDK_WRAPPER_H
#define SWITCHYARD_DPDK_WRAPPER_H

#include <rte_config.h>
#include <rte_build_config.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_ethdev.h>
#include <rte_ether.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_crypto.h>
#include <rte_cryptodev.h>

#include "shim.h"

#endif
