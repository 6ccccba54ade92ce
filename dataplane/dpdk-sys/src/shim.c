/* See shim.h: out-of-line copies of DPDK static inline functions, for Rust. */
#include <errno.h>

#include "wrapper.h"

#include <rte_mbuf_pool_ops.h>

int sy_rte_errno(void) { return rte_errno; }

unsigned sy_rte_lcore_id(void) { return rte_lcore_id(); }

uint16_t sy_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **rx_pkts,
                             uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t sy_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id, struct rte_mbuf **tx_pkts,
                             uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *sy_rte_pktmbuf_alloc(struct rte_mempool *mp) { return rte_pktmbuf_alloc(mp); }

int sy_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs, unsigned count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void sy_rte_pktmbuf_free(struct rte_mbuf *m) { rte_pktmbuf_free(m); }

size_t sy_pktmbuf_pool_mem_size(unsigned n, uint16_t data_room)
{
	size_t obj = rte_mempool_calc_obj_size(sizeof(struct rte_mbuf) + data_room,
					       RTE_MEMPOOL_F_NO_IOVA_CONTIG, NULL);
	/* A cache line more: the first object starts at an aligned address. */
	return (size_t)n * obj + RTE_CACHE_LINE_SIZE;
}

struct rte_mempool *sy_pktmbuf_pool_create_in(const char *name, unsigned n, unsigned cache_size,
                                              uint16_t data_room, int socket_id, void *addr,
                                              size_t len)
{
	struct rte_pktmbuf_pool_private priv = {
		.mbuf_data_room_size = data_room,
		.mbuf_priv_size = 0,
		.flags = 0,
	};
	if (rte_eal_iova_mode() != RTE_IOVA_VA) {
		rte_errno = ENOTSUP;
		return NULL;
	}
	/* Objects packed without regard to 4 KiB page ends (the mempool would otherwise keep
	 * each one inside a page, one per 4 KiB, since the EAL has no hugepages): in VA mode an
	 * object's IOVA is its address, contiguous across pages. */
	struct rte_mempool *mp = rte_mempool_create_empty(
		name, n, sizeof(struct rte_mbuf) + data_room, cache_size,
		sizeof(struct rte_pktmbuf_pool_private), socket_id, RTE_MEMPOOL_F_NO_IOVA_CONTIG);
	if (mp == NULL)
		return NULL;
	int ret = rte_mempool_set_ops_byname(mp, rte_mbuf_best_mempool_ops(), NULL);
	if (ret != 0) {
		rte_mempool_free(mp);
		rte_errno = -ret;
		return NULL;
	}
	rte_pktmbuf_pool_init(mp, &priv);
	ret = rte_mempool_populate_iova(mp, addr, (rte_iova_t)(uintptr_t)addr, len, NULL, NULL);
	if (ret < 0 || mp->populated_size < n) {
		rte_mempool_free(mp);
		rte_errno = ret < 0 ? -ret : ENOMEM;
		return NULL;
	}
	rte_mempool_obj_iter(mp, rte_pktmbuf_init, NULL);
	return mp;
}

void *sy_rte_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t sy_rte_pktmbuf_data_len(const struct rte_mbuf *m) { return rte_pktmbuf_data_len(m); }

uint32_t sy_rte_pktmbuf_pkt_len(const struct rte_mbuf *m) { return rte_pktmbuf_pkt_len(m); }

uint16_t sy_rte_pktmbuf_nb_segs(const struct rte_mbuf *m) { return m->nb_segs; }

uint16_t sy_rte_pktmbuf_headroom(const struct rte_mbuf *m) { return rte_pktmbuf_headroom(m); }

uint16_t sy_rte_pktmbuf_tailroom(const struct rte_mbuf *m) { return rte_pktmbuf_tailroom(m); }

void sy_rte_pktmbuf_reset(struct rte_mbuf *m) { rte_pktmbuf_reset(m); }

char *sy_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_prepend(m, len); }

char *sy_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_adj(m, len); }

char *sy_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_append(m, len); }

int sy_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len) { return rte_pktmbuf_trim(m, len); }

int sy_rte_pktmbuf_linearize(struct rte_mbuf *m) { return rte_pktmbuf_linearize(m); }

uint16_t sy_rte_cryptodev_enqueue_burst(uint8_t dev_id, uint16_t qp_id, struct rte_crypto_op **ops,
                                        uint16_t nb_ops)
{
	return rte_cryptodev_enqueue_burst(dev_id, qp_id, ops, nb_ops);
}

uint16_t sy_rte_cryptodev_dequeue_burst(uint8_t dev_id, uint16_t qp_id, struct rte_crypto_op **ops,
                                        uint16_t nb_ops)
{
	return rte_cryptodev_dequeue_burst(dev_id, qp_id, ops, nb_ops);
}

int sy_rte_crypto_op_bulk_alloc(struct rte_mempool *mp, struct rte_crypto_op **ops, uint16_t n)
{
	return rte_crypto_op_bulk_alloc(mp, RTE_CRYPTO_OP_TYPE_SYMMETRIC, ops, n) == n ? 0 : -1;
}

void sy_rte_crypto_op_free(struct rte_crypto_op *op) { rte_crypto_op_free(op); }

/* The private area follows the symmetric operation. */
#define SY_IV_OFFSET (sizeof(struct rte_crypto_op) + sizeof(struct rte_crypto_sym_op))
#define SY_AAD_OFFSET (SY_IV_OFFSET + SY_CRYPTO_IV_MAX)
#define SY_DIGEST_OFFSET (SY_AAD_OFFSET + SY_CRYPTO_AAD_MAX)

void *sy_crypto_session_aes_gcm(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                const uint8_t *key, uint16_t key_len, uint16_t aad_len)
{
	struct rte_crypto_sym_xform x = {0};
	x.type = RTE_CRYPTO_SYM_XFORM_AEAD;
	x.aead.op = encrypt ? RTE_CRYPTO_AEAD_OP_ENCRYPT : RTE_CRYPTO_AEAD_OP_DECRYPT;
	x.aead.algo = RTE_CRYPTO_AEAD_AES_GCM;
	x.aead.key.data = key;
	x.aead.key.length = key_len;
	x.aead.iv.offset = SY_IV_OFFSET;
	x.aead.iv.length = 12;
	x.aead.digest_length = 16;
	x.aead.aad_length = aad_len;
	return rte_cryptodev_sym_session_create(dev_id, &x, mp);
}


static const enum rte_crypto_auth_algorithm sy_auth_algos[] = {
	RTE_CRYPTO_AUTH_SHA256_HMAC,
	RTE_CRYPTO_AUTH_SHA384_HMAC,
	RTE_CRYPTO_AUTH_SHA512_HMAC,
};

static int sy_auth_xform(struct rte_crypto_sym_xform *x, int generate, int auth_algo,
                         const uint8_t *key, uint16_t key_len, uint16_t digest_len)
{
	if (auth_algo < 0 || auth_algo > 2) {
		rte_errno = EINVAL;
		return -1;
	}
	x->type = RTE_CRYPTO_SYM_XFORM_AUTH;
	x->auth.op = generate ? RTE_CRYPTO_AUTH_OP_GENERATE : RTE_CRYPTO_AUTH_OP_VERIFY;
	x->auth.algo = sy_auth_algos[auth_algo];
	x->auth.key.data = key;
	x->auth.key.length = key_len;
	x->auth.digest_length = digest_len;
	return 0;
}

static void sy_cbc_xform(struct rte_crypto_sym_xform *x, int encrypt, const uint8_t *key,
                         uint16_t key_len)
{
	x->type = RTE_CRYPTO_SYM_XFORM_CIPHER;
	x->cipher.op = encrypt ? RTE_CRYPTO_CIPHER_OP_ENCRYPT : RTE_CRYPTO_CIPHER_OP_DECRYPT;
	x->cipher.algo = RTE_CRYPTO_CIPHER_AES_CBC;
	x->cipher.key.data = key;
	x->cipher.key.length = key_len;
	x->cipher.iv.offset = SY_IV_OFFSET;
	x->cipher.iv.length = 16;
}

void *sy_crypto_session_aes_cbc(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                const uint8_t *key, uint16_t key_len)
{
	struct rte_crypto_sym_xform x = {0};
	sy_cbc_xform(&x, encrypt, key, key_len);
	return rte_cryptodev_sym_session_create(dev_id, &x, mp);
}

void *sy_crypto_session_hmac(uint8_t dev_id, struct rte_mempool *mp, int generate, int auth_algo,
                             const uint8_t *key, uint16_t key_len, uint16_t digest_len)
{
	struct rte_crypto_sym_xform x = {0};
	if (sy_auth_xform(&x, generate, auth_algo, key, key_len, digest_len) < 0)
		return NULL;
	return rte_cryptodev_sym_session_create(dev_id, &x, mp);
}

void *sy_crypto_session_cbc_hmac(uint8_t dev_id, struct rte_mempool *mp, int encrypt,
                                 const uint8_t *cipher_key, uint16_t cipher_key_len,
                                 int auth_algo, const uint8_t *auth_key, uint16_t auth_key_len,
                                 uint16_t digest_len)
{
	struct rte_crypto_sym_xform cipher = {0}, auth = {0};
	sy_cbc_xform(&cipher, encrypt, cipher_key, cipher_key_len);
	if (sy_auth_xform(&auth, encrypt, auth_algo, auth_key, auth_key_len, digest_len) < 0)
		return NULL;
	/* Encrypt-then-MAC out, verify-then-decrypt in. */
	if (encrypt) {
		cipher.next = &auth;
		return rte_cryptodev_sym_session_create(dev_id, &cipher, mp);
	}
	auth.next = &cipher;
	return rte_cryptodev_sym_session_create(dev_id, &auth, mp);
}

/* sy_crypto_mbuf_point, inlined into its callers; returns the bytes' IOVA. */
static inline __attribute__((always_inline)) rte_iova_t
sy_crypto_mbuf_point_inline(struct rte_mbuf *m, void *data, uint16_t len)
{
	/* The EAL's IOVA mode is fixed once it is up: asked once, not per operation (a call
	 * into the EAL each time). Relaxed atomics: every thread computes the same value. */
	static int iova_va = -1;
	int va = __atomic_load_n(&iova_va, __ATOMIC_RELAXED);
	if (va < 0) {
		va = rte_eal_iova_mode() == RTE_IOVA_VA;
		__atomic_store_n(&iova_va, va, __ATOMIC_RELAXED);
	}
	rte_iova_t iova = va ? (rte_iova_t)(uintptr_t)data : rte_mem_virt2iova(data);
	m->buf_addr = data;
	rte_mbuf_iova_set(m, iova);
	m->buf_len = len;
	m->data_off = 0;
	m->data_len = len;
	m->pkt_len = len;
	m->nb_segs = 1;
	m->next = NULL;
	return iova;
}

void sy_crypto_mbuf_point(struct rte_mbuf *m, void *data, uint16_t len)
{
	sy_crypto_mbuf_point_inline(m, data, len);
}

static void sy_crypto_op_start(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                               const uint8_t *iv, uint16_t iv_len)
{
	__rte_crypto_op_reset(op, RTE_CRYPTO_OP_TYPE_SYMMETRIC);
	rte_crypto_op_attach_sym_session(op, sess);
	op->sym->m_src = m;
	op->sym->m_dst = NULL;
	rte_memcpy(rte_crypto_op_ctod_offset(op, uint8_t *, SY_IV_OFFSET), iv, iv_len);
}

/* Everything of an AEAD operation but its digest, inlined into both callers below: the
 * in-place one, taken for every ESP packet, was a call to sy_crypto_op_aead (its ten
 * arguments passed again on the stack) that set the digest only for it to be set again. */
static inline __attribute__((always_inline)) void
sy_crypto_op_aead_fill(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m, uint32_t offset,
                       uint32_t len, const uint8_t *iv, uint16_t iv_len, const uint8_t *aad,
                       uint16_t aad_len)
{
	sy_crypto_op_start(op, sess, m, iv, iv_len);
	op->sym->aead.data.offset = offset;
	op->sym->aead.data.length = len;
	uint8_t *aad_area = rte_crypto_op_ctod_offset(op, uint8_t *, SY_AAD_OFFSET);
	memset(aad_area, 0, SY_CRYPTO_AAD_MAX);
	rte_memcpy(aad_area, aad, aad_len);
	op->sym->aead.aad.data = aad_area;
	op->sym->aead.aad.phys_addr = rte_crypto_op_ctophys_offset(op, SY_AAD_OFFSET);
}

uint8_t *sy_crypto_op_aead(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                           uint32_t offset, uint32_t len, const uint8_t *iv, uint16_t iv_len,
                           const uint8_t *aad, uint16_t aad_len)
{
	sy_crypto_op_aead_fill(op, sess, m, offset, len, iv, iv_len, aad, aad_len);
	op->sym->aead.digest.data = rte_crypto_op_ctod_offset(op, uint8_t *, SY_DIGEST_OFFSET);
	op->sym->aead.digest.phys_addr = rte_crypto_op_ctophys_offset(op, SY_DIGEST_OFFSET);
	return op->sym->aead.digest.data;
}

void sy_crypto_op_aead_in_place(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                                uint32_t offset, uint32_t len, uint32_t digest_offset,
                                const uint8_t *iv, uint16_t iv_len, const uint8_t *aad,
                                uint16_t aad_len)
{
	sy_crypto_op_aead_fill(op, sess, m, offset, len, iv, iv_len, aad, aad_len);
	op->sym->aead.digest.data = rte_pktmbuf_mtod_offset(m, uint8_t *, digest_offset);
	op->sym->aead.digest.phys_addr = rte_pktmbuf_iova_offset(m, digest_offset);
}

void sy_crypto_op_aead_point(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m, void *data,
                             uint16_t data_len, uint32_t offset, uint32_t len,
                             uint32_t digest_offset, const uint8_t *iv, const uint8_t *aad,
                             uint16_t aad_len)
{
	rte_iova_t iova = sy_crypto_mbuf_point_inline(m, data, data_len);
	__rte_crypto_op_reset(op, RTE_CRYPTO_OP_TYPE_SYMMETRIC);
	rte_crypto_op_attach_sym_session(op, sess);
	op->sym->m_src = m;
	op->sym->m_dst = NULL;
	/* The IV field whole (the nonce and its unused tail): one fixed-size copy. */
	memcpy(rte_crypto_op_ctod_offset(op, uint8_t *, SY_IV_OFFSET), iv, SY_CRYPTO_IV_MAX);
	op->sym->aead.data.offset = offset;
	op->sym->aead.data.length = len;
	/* The AAD zero-padded to the area's length, as sy_crypto_op_aead_fill leaves it, but
	 * with fixed-size copies for ESP's two lengths (8, or 12 with ESN). */
	uint8_t *aad_area = rte_crypto_op_ctod_offset(op, uint8_t *, SY_AAD_OFFSET);
	uint8_t padded[SY_CRYPTO_AAD_MAX] = {0};
	if (aad_len == 8) {
		memcpy(padded, aad, 8);
	} else if (aad_len == 12) {
		memcpy(padded, aad, 12);
	} else {
		memcpy(padded, aad, aad_len < SY_CRYPTO_AAD_MAX ? aad_len : SY_CRYPTO_AAD_MAX);
	}
	memcpy(aad_area, padded, SY_CRYPTO_AAD_MAX);
	op->sym->aead.aad.data = aad_area;
	op->sym->aead.aad.phys_addr = rte_crypto_op_ctophys_offset(op, SY_AAD_OFFSET);
	op->sym->aead.digest.data = (uint8_t *)data + digest_offset;
	op->sym->aead.digest.phys_addr = iova + digest_offset;
}

void sy_crypto_op_cipher(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                         const uint8_t *iv, uint16_t iv_len)
{
	sy_crypto_op_start(op, sess, m, iv, iv_len);
	op->sym->cipher.data.offset = 0;
	op->sym->cipher.data.length = m->data_len;
}

uint8_t *sy_crypto_op_chain(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m,
                            uint32_t cipher_offset, uint32_t cipher_len, uint32_t auth_offset,
                            uint32_t auth_len, const uint8_t *iv, uint16_t iv_len)
{
	sy_crypto_op_start(op, sess, m, iv, iv_len);
	op->sym->cipher.data.offset = cipher_offset;
	op->sym->cipher.data.length = cipher_len;
	op->sym->auth.data.offset = auth_offset;
	op->sym->auth.data.length = auth_len;
	op->sym->auth.digest.data = rte_crypto_op_ctod_offset(op, uint8_t *, SY_DIGEST_OFFSET);
	op->sym->auth.digest.phys_addr = rte_crypto_op_ctophys_offset(op, SY_DIGEST_OFFSET);
	return op->sym->auth.digest.data;
}

uint8_t *sy_crypto_op_auth(struct rte_crypto_op *op, void *sess, struct rte_mbuf *m)
{
	__rte_crypto_op_reset(op, RTE_CRYPTO_OP_TYPE_SYMMETRIC);
	rte_crypto_op_attach_sym_session(op, sess);
	op->sym->m_src = m;
	op->sym->m_dst = NULL;
	op->sym->auth.data.offset = 0;
	op->sym->auth.data.length = m->data_len;
	op->sym->auth.digest.data = rte_crypto_op_ctod_offset(op, uint8_t *, SY_DIGEST_OFFSET);
	op->sym->auth.digest.phys_addr = rte_crypto_op_ctophys_offset(op, SY_DIGEST_OFFSET);
	return op->sym->auth.digest.data;
}

int sy_crypto_op_status(const struct rte_crypto_op *op) { return op->status; }
