/* Out-of-line wrappers for DPDK's static inline functions and macros, prefixed `sy_` so they
 * can be bound by bindgen and called from Rust. Each one does nothing but call what it wraps. */
#ifndef SWITCHYARD_DPDK_SHIM_H
#define SWITCHYARD_DPDK_SHIM_H

#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;

/* Per-lcore (thread-local) state. */
int sy_rte_errno(void);
unsigned sy_rte_lcore_id(void);

/* ethdev fast path. */
uint16_t sy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                             uint16_t nb_pkts);
uint16_t sy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                             uint16_t nb_pkts);

/* mbuf allocation. */
struct rte_mbuf *sy_rte_pktmbuf_alloc(struct rte_mempool *mp);
int sy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count);
void sy_rte_pktmbuf_free(struct rte_mbuf *m);

/* mbuf data (single segment: the first segment's data). */
void *sy_rte_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t sy_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t sy_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
uint16_t sy_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t sy_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t sy_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
void sy_rte_pktmbuf_reset(struct rte_mbuf *m);

/* mbuf length changes: NULL / -1 on failure, mbuf unchanged. */
char *sy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *sy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
char *sy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
int sy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
int sy_rte_pktmbuf_linearize(struct rte_mbuf *m);

#endif
