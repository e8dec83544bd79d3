/*
 * cm_crypto.c - BLAKE2b tree hashing, namespaces, signables, Ed25519,
 * CRC-32, the default manifest and manifest hashes, and the signature
 * verifier (hypercore-format §2, §3).
 *
 * Hashing uses libsodium's crypto_generichash with the state on the stack:
 * nothing here allocates.
 */
#include <sodium.h>
#include <string.h>

#include "cm.h"
#include "cm_internal.h"
#include "cm_crc32_table.h"

/* namespace('hypercore', 6): H(H("hypercore") || byte(i)) */
const uint8_t CM_NS_TREE[32] = {
    0x9f, 0xac, 0x70, 0xb5, 0x0c, 0xa1, 0x4e, 0xfc, 0x4e, 0x91, 0xc8, 0x33,
    0xb2, 0x04, 0xe7, 0x5b, 0x8b, 0x5a, 0xad, 0x8b, 0x58, 0x81, 0xbf, 0xc0,
    0xad, 0xb5, 0xef, 0x38, 0xa3, 0x27, 0x5b, 0x9c,
};
const uint8_t CM_NS_REPLICATE_INITIATOR[32] = {
    0x51, 0x81, 0x2a, 0x2a, 0x35, 0x9b, 0x50, 0x36, 0x95, 0x36, 0x77, 0x5d,
    0xf8, 0x9e, 0x18, 0xe4, 0x77, 0x40, 0xf3, 0xdb, 0x72, 0xac, 0x0a, 0xe7,
    0x0b, 0x29, 0x59, 0x4c, 0x19, 0x4d, 0xc3, 0x16,
};
const uint8_t CM_NS_REPLICATE_RESPONDER[32] = {
    0x04, 0x38, 0x49, 0x2d, 0x02, 0x97, 0x0c, 0xc1, 0x35, 0x28, 0xac, 0x02,
    0x62, 0xbc, 0xa0, 0x07, 0x4e, 0x09, 0x26, 0x26, 0x02, 0x56, 0x86, 0x5a,
    0xcc, 0xc0, 0xbf, 0x15, 0xbd, 0x79, 0x12, 0x7d,
};
const uint8_t CM_NS_MANIFEST[32] = {
    0xe6, 0x4b, 0x71, 0x08, 0xea, 0xcc, 0xe4, 0x7c, 0xfc, 0x61, 0xac, 0x85,
    0x05, 0x68, 0xf5, 0x5f, 0x8b, 0x15, 0xb8, 0x2e, 0xc5, 0xed, 0x78, 0xc4,
    0xec, 0x59, 0x7b, 0x03, 0x6e, 0x2a, 0x14, 0x98,
};
const uint8_t CM_NS_DEFAULT[32] = {
    0x41, 0x44, 0xee, 0xa5, 0x31, 0xe4, 0x83, 0xd5, 0x4e, 0x0c, 0x14, 0xf4,
    0xca, 0x68, 0xe0, 0x64, 0x4f, 0x35, 0x53, 0x43, 0xff, 0x6f, 0xcb, 0x0f,
    0x00, 0x52, 0x00, 0xe1, 0x2c, 0xd7, 0x47, 0xcb,
};
const uint8_t CM_NS_ENCRYPTION[32] = {
    0x9a, 0xed, 0xb6, 0xf1, 0xde, 0xa8, 0x48, 0x7c, 0xc1, 0xe1, 0x69, 0x8f,
    0x97, 0xeb, 0x2f, 0x06, 0x3f, 0x6d, 0xb4, 0xc6, 0x49, 0x69, 0x56, 0x22,
    0xe7, 0xb6, 0x75, 0xe2, 0xce, 0xaf, 0xa6, 0xe9,
};

int cm_init(void) {
    /* sodium_init is thread-safe and returns 1 when already initialised. */
    return sodium_init() < 0 ? CM_ERR_INVALID : CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Hashing                                                                  */
/* ------------------------------------------------------------------------ */

void cm_hash_leaf(uint64_t block_index, const uint8_t *data, size_t len, cm_node *out) {
    crypto_generichash_state st;
    uint8_t hdr[9];
    hdr[0] = 0x00;
    cm__put_u64(hdr + 1, (uint64_t)len);
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, hdr, sizeof(hdr));
    if (len > 0) crypto_generichash_update(&st, data, (unsigned long long)len);
    crypto_generichash_final(&st, out->hash, 32);
    out->index = 2 * block_index;
    out->size = (uint64_t)len;
}

void cm_hash_parent(const cm_node *a, const cm_node *b, cm_node *out) {
    uint8_t buf[1 + 8 + 32 + 32];
    uint64_t size = a->size + b->size;
    buf[0] = 0x01;
    cm__put_u64(buf + 1, size);
    memcpy(buf + 9, a->hash, 32);
    memcpy(buf + 41, b->hash, 32);
    crypto_generichash(out->hash, 32, buf, sizeof(buf), NULL, 0);
    out->index = cm_ft_parent(a->index);
    out->size = size;
}

void cm_hash_tree(const cm_node *roots, size_t n, uint8_t out[32]) {
    crypto_generichash_state st;
    uint8_t t = 0x02;
    uint8_t item[48];
    size_t i;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, &t, 1);
    for (i = 0; i < n; i++) {
        memcpy(item, roots[i].hash, 32);
        cm__put_u64(item + 32, roots[i].index);
        cm__put_u64(item + 40, roots[i].size);
        crypto_generichash_update(&st, item, sizeof(item));
    }
    crypto_generichash_final(&st, out, 32);
}

void cm_discovery_key(const uint8_t key[32], uint8_t out[32]) {
    static const uint8_t msg[9] = {'h', 'y', 'p', 'e', 'r', 'c', 'o', 'r', 'e'};
    crypto_generichash(out, 32, msg, sizeof(msg), key, 32);
}

void cm_blake2b(const uint8_t *msg, size_t len, const uint8_t *key, size_t key_len,
                uint8_t out[32]) {
    crypto_generichash(out, 32, msg, (unsigned long long)len, key, key ? key_len : 0);
}

size_t cm_signable(uint8_t out[CM_SIGNABLE_MAX], int compat, const uint8_t manifest_hash[32],
                   const uint8_t tree_hash[32], uint64_t length, uint64_t fork) {
    size_t o = 0;
    memcpy(out, CM_NS_TREE, 32);
    o = 32;
    if (!compat) {
        memcpy(out + o, manifest_hash, 32);
        o += 32;
    }
    memcpy(out + o, tree_hash, 32);
    o += 32;
    cm__put_u64(out + o, length);
    cm__put_u64(out + o + 8, fork);
    return o + 16;
}

/* ------------------------------------------------------------------------ */
/* Keys and signatures                                                      */
/* ------------------------------------------------------------------------ */

int cm_keypair_from_seed(const uint8_t seed[32], uint8_t public_key[32],
                         uint8_t secret_key[64]) {
    return crypto_sign_seed_keypair(public_key, secret_key, seed) == 0 ? CM_OK : CM_ERR_KEY;
}

int cm_keypair_generate(uint8_t public_key[32], uint8_t secret_key[64]) {
    return crypto_sign_keypair(public_key, secret_key) == 0 ? CM_OK : CM_ERR_KEY;
}

int cm_sign(const uint8_t *msg, size_t len, const uint8_t secret_key[64], uint8_t sig[64]) {
    return crypto_sign_detached(sig, NULL, msg, (unsigned long long)len, secret_key) == 0
               ? CM_OK
               : CM_ERR_KEY;
}

int cm_verify(const uint8_t *msg, size_t len, const uint8_t sig[64],
              const uint8_t public_key[32]) {
    return crypto_sign_verify_detached(sig, msg, (unsigned long long)len, public_key) == 0
               ? CM_OK
               : CM_ERR_BAD_SIGNATURE;
}

int cm_aead_seal(const uint8_t key[CM_AEAD_KEY], const uint8_t nonce[CM_AEAD_NONCE],
                 const uint8_t *ad, size_t ad_len, const uint8_t *msg, size_t len, uint8_t *out) {
    unsigned long long out_len = 0;
    crypto_aead_xchacha20poly1305_ietf_encrypt(out, &out_len, msg, (unsigned long long)len, ad,
                                               (unsigned long long)ad_len, NULL, nonce, key);
    return CM_OK;
}

int cm_aead_open(const uint8_t key[CM_AEAD_KEY], const uint8_t nonce[CM_AEAD_NONCE],
                 const uint8_t *ad, size_t ad_len, const uint8_t *ct, size_t ct_len,
                 uint8_t *out) {
    unsigned long long out_len = 0;
    if (ct_len < CM_AEAD_TAG) return CM_ERR_BAD_SIGNATURE;
    return crypto_aead_xchacha20poly1305_ietf_decrypt(out, &out_len, NULL, ct,
                                                      (unsigned long long)ct_len, ad,
                                                      (unsigned long long)ad_len, nonce,
                                                      key) == 0
               ? CM_OK
               : CM_ERR_BAD_SIGNATURE;
}

/* ------------------------------------------------------------------------ */
/* CRC-32 (slicing by 8)                                                    */
/* ------------------------------------------------------------------------ */

uint32_t cm_crc32(uint32_t crc, const uint8_t *buf, size_t len) {
    uint32_t c = ~crc;
    while (len && ((uintptr_t)buf & 7)) {
        c = cm_crc32_tab[0][(c ^ *buf++) & 0xff] ^ (c >> 8);
        len--;
    }
    while (len >= 8) {
        uint32_t lo = c ^ cm__get_u32(buf);
        uint32_t hi = cm__get_u32(buf + 4);
        c = cm_crc32_tab[7][lo & 0xff] ^ cm_crc32_tab[6][(lo >> 8) & 0xff] ^
            cm_crc32_tab[5][(lo >> 16) & 0xff] ^ cm_crc32_tab[4][lo >> 24] ^
            cm_crc32_tab[3][hi & 0xff] ^ cm_crc32_tab[2][(hi >> 8) & 0xff] ^
            cm_crc32_tab[1][(hi >> 16) & 0xff] ^ cm_crc32_tab[0][hi >> 24];
        buf += 8;
        len -= 8;
    }
    while (len--) c = cm_crc32_tab[0][(c ^ *buf++) & 0xff] ^ (c >> 8);
    return ~c;
}

/* ------------------------------------------------------------------------ */
/* Manifests: the default one and the hash (the codec is in cm_encoding.c) */
/* ------------------------------------------------------------------------ */

void cm_manifest_default(const uint8_t public_key[32], cm_manifest *out) {
    memset(out, 0, sizeof(*out));
    out->version = 1;
    out->quorum = 1;
    out->n_signers = 1;
    memcpy(out->signers[0].namespace_, CM_NS_DEFAULT, 32);
    memcpy(out->signers[0].public_key, public_key, 32);
}

void cm_manifest_hash(const uint8_t *encoded, size_t len, uint8_t out[32]) {
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, CM_NS_MANIFEST, 32);
    crypto_generichash_update(&st, encoded, (unsigned long long)len);
    crypto_generichash_final(&st, out, 32);
}

/* ------------------------------------------------------------------------ */
/* Verifier                                                                 */
/* ------------------------------------------------------------------------ */

int cm_verifier_init(cm_verifier *v, const uint8_t key[32], const uint8_t *manifest,
                     size_t manifest_len) {
    uint8_t h[32];
    int rc;
    memset(v, 0, sizeof(*v));
    memcpy(v->key, key, 32);
    if (manifest == NULL || manifest_len == 0) {
        v->compat = 1;
        cm_manifest_default(key, &v->manifest);
        return CM_OK;
    }
    rc = cm_manifest_decode(manifest, manifest_len, &v->manifest);
    if (rc != CM_OK) return rc;
    cm_manifest_hash(manifest, manifest_len, h);
    if (sodium_memcmp(h, key, 32) != 0) return CM_ERR_KEY;
    /* The verifier outlives the buffer: keep no pointers into it. */
    v->manifest.linked = NULL;
    v->manifest.user_data = NULL;
    v->manifest.user_data_len = 0;
    v->compat = 0;
    return CM_OK;
}

int cm_verifier_check(const cm_verifier *v, const uint8_t tree_hash[32], uint64_t length,
                      uint64_t fork, const uint8_t *sig, size_t sig_len) {
    uint8_t signable[CM_SIGNABLE_MAX];
    size_t slen;
    cm_reader r;
    uint64_t nproofs, npatch, i;
    uint32_t signer_of[CM_MAX_SIGNERS];
    const uint8_t *sig_of[CM_MAX_SIGNERS];
    uint8_t tried[CM_MAX_SIGNERS];
    const cm_manifest *m = &v->manifest;

    if (v->compat) {
        if (sig == NULL || sig_len != 64) return CM_ERR_BAD_SIGNATURE;
        slen = cm_signable(signable, 1, NULL, tree_hash, length, fork);
        return cm_verify(signable, slen, sig, v->key);
    }

    if (m->has_prologue && length <= m->prologue_length) {
        if (length == m->prologue_length && sodium_memcmp(tree_hash, m->prologue_hash, 32) == 0)
            return CM_OK;
        return CM_ERR_BAD_SIGNATURE;
    }
    if (sig == NULL || sig_len == 0 || sig_len > CM_MAX_SIGNATURE) return CM_ERR_BAD_SIGNATURE;
    if (m->quorum == 0 || m->quorum > m->n_signers) return CM_ERR_BAD_SIGNATURE;

    /* multiSignature = array(proof) || array(patchNode) */
    r.p = sig;
    r.end = sig + sig_len;
    r.err = 0;
    nproofs = cm_read_uint(&r);
    for (i = 0; i < nproofs && !r.err; i++) {
        uint64_t signer = cm_read_uint(&r);
        const uint8_t *s = cm_read_fixed(&r, 64);
        uint64_t patch = cm_read_uint(&r);
        if (r.err) break;
        if (i < m->quorum) {
            if (patch != 0) return CM_ERR_BAD_SIGNATURE; /* patches are not supported */
            if (signer >= m->n_signers) return CM_ERR_BAD_SIGNATURE;
            signer_of[i] = (uint32_t)signer;
            sig_of[i] = s;
        }
    }
    npatch = cm_read_uint(&r);
    for (i = 0; i < npatch && !r.err; i++) {
        cm_read_uint(&r);
        cm_read_uint(&r);
        cm_read_fixed(&r, 32);
    }
    if (r.err) return CM_ERR_BAD_SIGNATURE;
    if (nproofs < m->quorum) return CM_ERR_BAD_SIGNATURE;

    slen = cm_signable(signable, 0, v->key, tree_hash, length, fork);
    memset(tried, 0, sizeof(tried));
    for (i = 0; i < m->quorum; i++) {
        uint32_t s = signer_of[i];
        if (tried[s]) return CM_ERR_BAD_SIGNATURE;
        tried[s] = 1;
        if (cm_verify(signable, slen, sig_of[i], m->signers[s].public_key) != CM_OK)
            return CM_ERR_BAD_SIGNATURE;
    }
    return CM_OK;
}

int cm_verifier_sign(const cm_verifier *v, const uint8_t secret_key[64],
                     const uint8_t tree_hash[32], uint64_t length, uint64_t fork,
                     uint8_t *sig, size_t cap, size_t *sig_len) {
    uint8_t signable[CM_SIGNABLE_MAX];
    uint8_t raw[64];
    size_t slen;
    int rc;
    slen = cm_signable(signable, v->compat, v->key, tree_hash, length, fork);
    rc = cm_sign(signable, slen, secret_key, raw);
    if (rc != CM_OK) return rc;
    if (v->compat) {
        *sig_len = 64;
        if (cap < 64) return CM_ERR_TOO_LARGE;
        memcpy(sig, raw, 64);
        return CM_OK;
    }
    *sig_len = 68;
    if (cap < 68) return CM_ERR_TOO_LARGE;
    sig[0] = 0x01; /* one proof */
    sig[1] = 0x00; /* signer 0 */
    memcpy(sig + 2, raw, 64);
    sig[66] = 0x00; /* patch 0 */
    sig[67] = 0x00; /* no patch nodes */
    return CM_OK;
}
