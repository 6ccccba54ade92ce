/* Out-of-line wrappers for DPDK's static inline functions and macros, prefixed `sy_` so they
 * can be bound by bindgen and called from Rust. Each one does nothing but call what it wraps,
 * except the pool helper (rte_pktmbuf_pool_create's steps, with the caller's memory) and the
 * cryptodev helpers at the end, which fill DPDK's union-heavy transform and operation
 * structures (simpler and safer in C than through bindgen's unions). */
#ifndef SWITCHYARD_DPDK_SHIM_H
#define SWITCHYARD_DPDK_SHIM_H

#include <stddef.h>
#include <stdint.h>

struct rte_mbuf;
struct rte_mempool;
struct rte_crypto_op;

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

/* A pktmbuf pool made as rte_pktmbuf_pool_create makes it (the best mempool ops, no private
 * area per mbuf), but with its objects packed into `len` bytes at `addr` that the caller mapped,
 * instead of in memory from the EAL: for mbufs on transparent huge pages when the EAL runs
 * without hugetlbfs. Only in IOVA-as-VA mode, where an object's IOVA is its address. NULL on
 * failure, rte_errno set. The memory stays the caller's: freeing the pool does not unmap it. */
struct rte_mempool *sy_pktmbuf_pool_create_in(const char *name, unsigned n, unsigned cache_size,
                                              uint16_t data_room, int socket_id, void *addr,
                                              size_t len);
/* Bytes of memory that `n` objects of such a pool take. */
size_t sy_pktmbuf_pool_mem_size(unsigned n, uint16_t data_room);

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

/* cryptodev fast path. */
uint16_t sy_rte_cryptodev_enqueue_burst(uint8_t dev_id, uint16_t qp_id, struct rte_crypto_op **ops,
                                        uint16_t nb_ops);
uint16_t sy_rte_cryptodev_dequeue_burst(uint8_t dev_id, uint16_t qp_id, struct rte_crypto_op **ops,
                                        uint16_t nb_ops);
int sy_rte_crypto_op_bulk_alloc(struct rte_mempool *mp, struct rte_crypto_op **ops, uint16_t n);
void sy_rte_crypto_op_free(struct rte_crypto_op *op);

/* Where an operation's private area starts: the IV, then the AAD (up to SY_CRYPTO_AAD_MAX
 * bytes), then the digest (up to SY_CRYPTO_DIGEST_MAX bytes). */
#define SY_CRYPTO_IV_MAX 16
#define SY_CRYPTO_AAD_MAX 16
#define SY_CRYPTO_DIGEST_MAX 64
#define SY_CRYPTO_OP_PRIV (SY_CRYPTO_IV_MAX + SY_CRYPTO_AAD_MAX + SY_CRYPTO_DIGEST_MAX)

/* Symmetric sessions: NULL on failure (rte_errno set). `encrypt`/`generate` choose the
 * direction; `cbc_256`/`auth_algo` pick the algorithm (0: SHA-256, 1: SHA-384, 2: SHA-512). */
void *sy_crypto_session_aes_gcm(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                const uint8_t *key, uint16_t key_len, uint16_t aad_len);
void *sy_crypto_session_aes_cbc(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                const uint8_t *key, uint16_t key_len);
void *sy_crypto_session_hmac(uint8_t dev_id, struct rte_mempool *mp, int generate, int auth_algo,
                             const uint8_t *key, uint16_t key_len, uint16_t digest_len);
/* AES-CBC chained with HMAC as ESP does it: encrypt then generate, or verify then decrypt. */
void *sy_crypto_session_cbc_hmac(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                 const uint8_t *cipher_key, uint16_t cipher_key_len,
                                 int auth_algo, const uint8_t *auth_key, uint16_t auth_key_len,
                                 uint16_t digest_len);

/* Points a scratch mbuf at `len` bytes at `data` (one segment, in place), with the IOVA the
 * EAL's mode asks for. */
void sy_crypto_mbuf_point(struct rte_mbuf *m, void *data, uint16_t len);

/* Fills a symmetric operation on `len` bytes at `offset` in mbuf `m` with session `sess`: the
 * IV is copied into the private area; for AEAD the AAD too. Returns the digest area (read the
 * tag from it after an encryption, write it there before a decryption). */
uint8_t *sy_crypto_op_aead(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                           uint32_t offset, uint32_t len, const uint8_t *iv, uint16_t iv_len,
                           const uint8_t *aad, uint16_t aad_len);
/* As sy_crypto_op_aead, but the digest lies in the mbuf, `digest_offset` bytes into its data
 * (where the packet's tag goes, or already is): the device writes or reads the tag there, with
 * no copy through the private area. */
void sy_crypto_op_aead_in_place(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                                uint32_t offset, uint32_t len, uint32_t digest_offset,
                                const uint8_t *iv, uint16_t iv_len, const uint8_t *aad,
                                uint16_t aad_len);
/* sy_crypto_mbuf_point and sy_crypto_op_aead_in_place in one call (one per packet where
 * there were two): points scratch mbuf `m` at `data_len` bytes at `data` and fills the AEAD
 * operation on `len` bytes at `offset`, the tag at `digest_offset`, all in those bytes. `iv`
 * is SY_CRYPTO_IV_MAX bytes (the nonce and its unused tail, copied whole); `aad` holds
 * `aad_len` bytes, at most SY_CRYPTO_AAD_MAX (copied with a fixed size for ESP's 8 and 12). */
void sy_crypto_op_aead_point(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m, void *data,
                             uint16_t data_len, uint32_t offset, uint32_t len,
                             uint32_t digest_offset, const uint8_t *iv, const uint8_t *aad,
                             uint16_t aad_len);
/* A chained cipher + HMAC operation: the cipher on `cipher_len` bytes at `cipher_offset`, the
 * HMAC on `auth_len` bytes at `auth_offset`. Returns the digest area. */
uint8_t *sy_crypto_op_chain(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                            uint32_t cipher_offset, uint32_t cipher_len, uint32_t auth_offset,
                            uint32_t auth_len, const uint8_t *iv, uint16_t iv_len);
void sy_crypto_op_cipher(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                         const uint8_t *iv, uint16_t iv_len);
uint8_t *sy_crypto_op_auth(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m);
/* RTE_CRYPTO_OP_STATUS_* of a dequeued operation. */
int sy_crypto_op_status(const struct rte_crypto_op *op);

#endif
