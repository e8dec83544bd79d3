/*
 * cm_internal.h - private helpers shared by the C core's translation units.
 * Not part of the API; nothing here is exported to the Cython layer.
 */
#ifndef CM_INTERNAL_H
#define CM_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "cm.h"

/* Little-endian integer access, independent of the host byte order. */
static inline void cm__put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}
static inline void cm__put_u32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}
static inline void cm__put_u64(uint8_t *p, uint64_t v) {
    cm__put_u32(p, (uint32_t)v);
    cm__put_u32(p + 4, (uint32_t)(v >> 32));
}
static inline uint16_t cm__get_u16(const uint8_t *p) {
    return (uint16_t)(p[0] | (p[1] << 8));
}
static inline uint32_t cm__get_u32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}
static inline uint64_t cm__get_u64(const uint8_t *p) {
    return (uint64_t)cm__get_u32(p) | ((uint64_t)cm__get_u32(p + 4) << 32);
}

/* 1 if the 32-byte hash is all zero (an absent tree slot). */
static inline int cm__is_zero(const uint8_t *p, size_t n) {
    uint8_t acc = 0;
    size_t i;
    for (i = 0; i < n; i++) acc |= p[i];
    return acc == 0;
}

static inline int cm__node_eq(const cm_node *a, const cm_node *b) {
    return a->index == b->index && a->size == b->size && memcmp(a->hash, b->hash, 32) == 0;
}

/* Data message encoding with the block value left out: the bytes where the
 * value goes are reserved (not written) and their offset is returned in
 * *value_off.  Used by cm_core_proof to read the block straight into place. */
int cm__data_encode_ex(const cm_data_msg *m, uint8_t *out, size_t cap, size_t *len,
                       size_t *value_off);

/* Proof generation (hypercore's generateProof for block + upgrade requests).
 * `get` reads one stored node (CM_ERR_UNAVAILABLE if absent).  Fills the
 * node arrays and has_* fields of `out` (not the block value, the signature
 * or the manifest). */
typedef int (*cm__get_node_fn)(void *ctx, uint64_t index, cm_node *out);
int cm__proof_generate(uint64_t length, const cm_proof_request *req, cm__get_node_fn get,
                       void *ctx, cm_data_msg *out);

/* Sort nodes by index and drop duplicates (CM_ERR_BAD_PROOF if two nodes with
 * the same index differ).  Returns the new count through *n. */
int cm__nodes_sort_unique(cm_node *nodes, size_t *n);

#endif /* CM_INTERNAL_H */
