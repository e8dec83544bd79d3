/*
 * cm_store.c - the core: a signed append-only log in a store directory
 * (docs/format.md): header slots, write-ahead records, tree and data files,
 * open/replay/sanitize, append/truncate, verified reads, proofs and
 * replica proof application.
 *
 * Single-threaded: the Python layer serialises calls on one core.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cm.h"
#include "cm_internal.h"

/* ------------------------------------------------------------------------ */
/* Constants of the on-disk format                                          */
/* ------------------------------------------------------------------------ */

#define SLOT_SIZE 4096u
#define BODY_FIXED 136u
#define HF_COMPAT 1u
#define HF_MANIFEST 2u

#define REC_FIXED 144u
#define RF_TRUNCATE 1u
#define RF_SIGNATURE 2u
#define RF_MANIFEST 4u

#define NODE_SLOT 40u
#define CM_VCACHE 1024u
#define NODE_ENTRY 48u

#define MAX_APPEND_BLOCKS (UINT64_C(1) << 20)
#define MAX_RECORD ((uint64_t)256 << 20) /* payload bytes accepted on replay */
#define SCRATCH_KEEP ((size_t)1 << 20)

const char *const cm_file_names[6] = {"", "header", "wal", "tree", "data", "secret_key"};

const char *cm_strerror(int err) {
    switch (err) {
    case CM_OK: return "ok";
    case CM_ERR_INVALID: return "invalid argument";
    case CM_ERR_IO: return "a file operation failed";
    case CM_ERR_CORRUPT: return "the store is damaged";
    case CM_ERR_VERSION: return "the store was written by a newer format version";
    case CM_ERR_NOMEM: return "out of memory";
    case CM_ERR_RANGE: return "out of range";
    case CM_ERR_READONLY: return "the core was opened without its secret key";
    case CM_ERR_LOCKED: return "the store is open in another core or process";
    case CM_ERR_BAD_PROOF: return "the proof does not verify";
    case CM_ERR_BAD_SIGNATURE: return "the signature does not verify";
    case CM_ERR_DECODE: return "malformed encoding";
    case CM_ERR_TOO_LARGE: return "over its size limit";
    case CM_ERR_NOT_FOUND: return "no such store";
    case CM_ERR_KEY: return "the key does not belong to this core";
    case CM_ERR_UNAVAILABLE: return "not held locally (yet)";
    case CM_ERR_FORK: return "the proof is for another fork";
    case CM_ERR_CLOSED: return "the core is closed";
    case CM_ERR_AUTH: return "an encrypted message failed authentication";
    default: return "unknown error";
    }
}

/* ------------------------------------------------------------------------ */
/* The core                                                                 */
/* ------------------------------------------------------------------------ */

struct cm_core {
    cm_io io;
    void *f[6]; /* by cm_file_id */
    int poisoned;

    /* identity */
    uint32_t flags; /* HF_* */
    uint8_t key[32];
    uint8_t dkey[32];
    uint8_t manifest[CM_MAX_MANIFEST];
    size_t manifest_len;
    cm_verifier ver;
    int writable;
    uint8_t secret[64];

    /* state */
    uint64_t fork, length, contiguous, byte_length;
    uint64_t cbytes; /* byte length of blocks 0..contiguous-1 */
    uint8_t tree_hash[32];
    cm_node roots[CM_MAX_ROOTS];
    size_t n_roots;
    uint8_t sig[CM_MAX_SIGNATURE];
    size_t sig_len;
    int sig_cached; /* writer: sig holds the signature of the current state */

    /* header and write-ahead file */
    uint64_t hdr_seq, wal_gen;
    uint64_t wal_seq;    /* records written in this generation */
    uint64_t wal_synced; /* of which known durable */
    uint64_t wal_end;    /* where the next record goes */
    uint32_t prev_crc;

    /* options */
    cm_durability durability;
    uint64_t checkpoint_bytes, max_block;

    /* scratch buffer for records; message/check structs reused by proofs */
    uint8_t *scratch;
    size_t scratch_cap;
    cm_data_msg *msg;
    cm_proof_check *chk;

    cm_file_id err_file;
    int err_errno;

    /* Tree nodes verified by earlier walks (a node never changes until a
     * truncation, which bumps vgen): sequential reads and proofs then
     * re-verify only the few lowest levels. Fixed size, by index. */
    struct {
        cm_node node;
        uint64_t gen;
    } vcache[CM_VCACHE];
    uint64_t vgen;
};

static cm_file_id g_open_err_file = CM_FILE_NONE;

cm_file_id cm_open_err_file(void) {
    return g_open_err_file;
}

static int fail(cm_core *c, int rc, cm_file_id f) {
    c->err_file = f;
    c->err_errno = rc == CM_ERR_IO ? errno : 0;
    return rc;
}

/* ---- I/O wrappers that record the failing file ---- */

static int io_read(cm_core *c, cm_file_id fid, uint8_t *buf, size_t len, uint64_t off,
                   size_t *got) {
    int64_t n;
    *got = 0;
    errno = 0;
    n = c->io.read(c->io.ctx, c->f[fid], buf, len, off);
    if (n < 0) return fail(c, (int)n, fid);
    *got = (size_t)n;
    return CM_OK;
}

static int io_write(cm_core *c, cm_file_id fid, const uint8_t *buf, size_t len, uint64_t off) {
    int rc;
    errno = 0;
    rc = c->io.write(c->io.ctx, c->f[fid], buf, len, off);
    return rc < 0 ? fail(c, rc, fid) : CM_OK;
}

static int io_sync(cm_core *c, cm_file_id fid) {
    int rc;
    errno = 0;
    rc = c->io.sync(c->io.ctx, c->f[fid]);
    return rc < 0 ? fail(c, rc, fid) : CM_OK;
}

static int io_truncate(cm_core *c, cm_file_id fid, uint64_t size) {
    int rc;
    errno = 0;
    rc = c->io.truncate(c->io.ctx, c->f[fid], size);
    return rc < 0 ? fail(c, rc, fid) : CM_OK;
}

static int io_size(cm_core *c, cm_file_id fid, uint64_t *size) {
    int rc;
    errno = 0;
    rc = c->io.size(c->io.ctx, c->f[fid], size);
    return rc < 0 ? fail(c, rc, fid) : CM_OK;
}

static int io_open(cm_core *c, cm_file_id fid, int flags) {
    int rc;
    errno = 0;
    rc = c->io.open(c->io.ctx, cm_file_names[fid], flags, &c->f[fid]);
    if (rc < 0) {
        c->f[fid] = NULL;
        return fail(c, rc, fid);
    }
    return CM_OK;
}

static int poisoned(cm_core *c) {
    return c->poisoned ? CM_ERR_IO : CM_OK;
}

/* ---- scratch ---- */

static int scratch_reserve(cm_core *c, uint64_t n) {
    size_t want;
    uint8_t *p;
    if (n > (uint64_t)SIZE_MAX - 4096) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    if ((size_t)n <= c->scratch_cap) return CM_OK;
    want = ((size_t)n + 4095) & ~(size_t)4095;
    p = (uint8_t *)malloc(want);
    if (!p) return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    free(c->scratch);
    c->scratch = p;
    c->scratch_cap = want;
    return CM_OK;
}

static void scratch_trim(cm_core *c) {
    if (c->scratch_cap > SCRATCH_KEEP) {
        free(c->scratch);
        c->scratch = NULL;
        c->scratch_cap = 0;
    }
}

/* ------------------------------------------------------------------------ */
/* Tree nodes                                                               */
/* ------------------------------------------------------------------------ */

/* Raw slot read. *present = 0 for an all-zero (or missing) slot. */
static int tree_read(cm_core *c, uint64_t index, cm_node *out, int *present) {
    uint8_t buf[NODE_SLOT];
    size_t got;
    int rc;
    *present = 0;
    out->index = index;
    out->size = 0;
    memset(out->hash, 0, 32);
    if (index > (UINT64_MAX / NODE_SLOT) - 1) return CM_OK;
    memset(buf, 0, sizeof(buf));
    rc = io_read(c, CM_FILE_TREE, buf, NODE_SLOT, index * NODE_SLOT, &got);
    if (rc != CM_OK) return rc;
    if (cm__is_zero(buf, NODE_SLOT)) return CM_OK;
    out->size = cm__get_u64(buf);
    memcpy(out->hash, buf + 8, 32);
    *present = 1;
    return CM_OK;
}

static int vcache_get(const cm_core *c, uint64_t index, cm_node *out) {
    size_t slot = (size_t)(index % CM_VCACHE);
    if (c->vcache[slot].gen != c->vgen || c->vcache[slot].node.index != index) return 0;
    *out = c->vcache[slot].node;
    return 1;
}

static void vcache_put(cm_core *c, const cm_node *n) {
    size_t slot = (size_t)(n->index % CM_VCACHE);
    c->vcache[slot].node = *n;
    c->vcache[slot].gen = c->vgen;
}

/* Verified walk from the trusted root covering `target` down to it.
 * Missing node -> CM_ERR_UNAVAILABLE (caller decides), mismatch -> CORRUPT
 * naming tree.  *offset = byte offset of the node's first block. */
static int walk_to(cm_core *c, uint64_t target, cm_node *out, uint64_t *offset) {
    size_t i;
    uint64_t off = 0;
    cm_node cur;
    int found = 0, guard = 0;
    for (i = 0; i < c->n_roots; i++) {
        if (cm_ft_contains(c->roots[i].index, target)) {
            cur = c->roots[i];
            found = 1;
            break;
        }
        off += c->roots[i].size;
    }
    if (!found) return CM_ERR_RANGE;
    while (cur.index != target) {
        cm_node l, r, p;
        int pl, pr, rc;
        uint64_t li, ri;
        if ((cur.index & 1) == 0 || ++guard > 64) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        li = cm_ft_left_child(cur.index);
        ri = cm_ft_right_child(cur.index);
        if (vcache_get(c, li, &l) && vcache_get(c, ri, &r)) {
            /* both children were verified against this same parent before */
        } else {
            if ((rc = tree_read(c, li, &l, &pl)) != CM_OK) return rc;
            if ((rc = tree_read(c, ri, &r, &pr)) != CM_OK) return rc;
            if (!pl || !pr) return CM_ERR_UNAVAILABLE;
            if (l.size + r.size < l.size || l.size + r.size != cur.size)
                return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            cm_hash_parent(&l, &r, &p);
            if (memcmp(p.hash, cur.hash, 32) != 0) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            vcache_put(c, &l);
            vcache_put(c, &r);
        }
        if (cm_ft_contains(l.index, target)) {
            cur = l;
        } else {
            off += l.size;
            cur = r;
        }
    }
    *out = cur;
    if (offset) *offset = off;
    return CM_OK;
}

/* walk_to for a node that must be held (inside the contiguous region). */
static int walk_held(cm_core *c, uint64_t target, cm_node *out, uint64_t *offset) {
    int rc = walk_to(c, target, out, offset);
    if (rc == CM_ERR_UNAVAILABLE) {
        if (c->contiguous > 0 && cm_ft_right_span(target) <= 2 * c->contiguous - 2)
            return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        return fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    }
    if (rc == CM_ERR_RANGE) return fail(c, rc, CM_FILE_NONE);
    return rc;
}

/* Ancestors of leaf 2n-2 below 2n-1 whose span reaches past it, ascending. */
static size_t clear_list(uint64_t n, uint64_t out[CM_MAX_ROOTS]) {
    uint64_t leaf, a;
    size_t k = 0, i, j;
    if (n == 0) return 0;
    leaf = 2 * n - 2;
    a = leaf;
    for (;;) {
        if (a < 2 * n - 1 && cm_ft_right_span(a) > leaf && k < CM_MAX_ROOTS) out[k++] = a;
        if (cm_ft_offset(a) == 0 || cm_ft_depth(a) >= 62) break;
        a = cm_ft_parent(a);
    }
    for (i = 1; i < k; i++) {
        uint64_t x = out[i];
        j = i;
        while (j > 0 && out[j - 1] > x) {
            out[j] = out[j - 1];
            j--;
        }
        out[j] = x;
    }
    return k;
}

/* ------------------------------------------------------------------------ */
/* Header slots                                                             */
/* ------------------------------------------------------------------------ */

typedef struct hdr {
    uint32_t format_version;
    uint64_t seq;
    uint32_t flags;
    uint8_t key[32];
    uint64_t fork, length, contiguous, byte_length;
    uint8_t tree_hash[32];
    uint64_t wal_gen;
    uint16_t sig_len, manifest_len;
    const uint8_t *sig, *manifest;
} hdr;

static size_t hdr_encode(const cm_core *c, uint64_t seq, uint64_t gen, uint8_t *slot) {
    uint8_t *b = slot + 8;
    size_t sig_len = c->writable ? 0 : c->sig_len;
    size_t man_len = (c->flags & HF_MANIFEST) ? c->manifest_len : 0;
    uint32_t body_len = (uint32_t)(BODY_FIXED + sig_len + man_len);
    memset(slot, 0, 8 + BODY_FIXED);
    memcpy(b, "CMEH", 4);
    cm__put_u32(b + 4, CM_FORMAT_VERSION);
    cm__put_u64(b + 8, seq);
    cm__put_u32(b + 16, c->flags);
    cm__put_u32(b + 20, 0);
    memcpy(b + 24, c->key, 32);
    cm__put_u64(b + 56, c->fork);
    cm__put_u64(b + 64, c->length);
    cm__put_u64(b + 72, c->contiguous);
    cm__put_u64(b + 80, c->byte_length);
    memcpy(b + 88, c->tree_hash, 32);
    cm__put_u64(b + 120, gen);
    cm__put_u16(b + 128, (uint16_t)sig_len);
    cm__put_u16(b + 130, (uint16_t)man_len);
    cm__put_u32(b + 132, 0);
    if (sig_len) memcpy(b + BODY_FIXED, c->sig, sig_len);
    if (man_len) memcpy(b + BODY_FIXED + sig_len, c->manifest, man_len);
    cm__put_u32(slot + 4, body_len);
    cm__put_u32(slot, cm_crc32(0, slot + 4, 4 + (size_t)body_len));
    return 8 + (size_t)body_len;
}

/* 1 if the slot bytes hold a valid slot (CRC, magic, consistent lengths). */
static int hdr_parse(const uint8_t *slot, size_t n, hdr *h) {
    uint32_t body_len;
    const uint8_t *b = slot + 8;
    if (n < 8 + BODY_FIXED) return 0;
    body_len = cm__get_u32(slot + 4);
    if (body_len < BODY_FIXED || body_len > SLOT_SIZE - 8 || body_len > n - 8) return 0;
    if (cm_crc32(0, slot + 4, 4 + (size_t)body_len) != cm__get_u32(slot)) return 0;
    if (memcmp(b, "CMEH", 4) != 0) return 0;
    h->format_version = cm__get_u32(b + 4);
    h->seq = cm__get_u64(b + 8);
    h->flags = cm__get_u32(b + 16);
    memcpy(h->key, b + 24, 32);
    h->fork = cm__get_u64(b + 56);
    h->length = cm__get_u64(b + 64);
    h->contiguous = cm__get_u64(b + 72);
    h->byte_length = cm__get_u64(b + 80);
    memcpy(h->tree_hash, b + 88, 32);
    h->wal_gen = cm__get_u64(b + 120);
    h->sig_len = cm__get_u16(b + 128);
    h->manifest_len = cm__get_u16(b + 130);
    h->sig = b + BODY_FIXED;
    h->manifest = b + BODY_FIXED + h->sig_len;
    if (h->format_version != CM_FORMAT_VERSION) return 1; /* checked by the caller */
    if ((uint32_t)BODY_FIXED + h->sig_len + h->manifest_len != body_len) return 0;
    return 1;
}

static int write_header(cm_core *c, uint64_t seq, uint64_t gen) {
    uint8_t slot[SLOT_SIZE];
    size_t n = hdr_encode(c, seq, gen, slot);
    int rc = io_write(c, CM_FILE_HEADER, slot, n, SLOT_SIZE * (seq % 2));
    if (rc != CM_OK) return rc;
    return io_sync(c, CM_FILE_HEADER);
}

static int checkpoint(cm_core *c) {
    int rc;
    if ((rc = io_sync(c, CM_FILE_DATA)) != CM_OK) return rc;
    if ((rc = io_sync(c, CM_FILE_TREE)) != CM_OK) return rc;
    if ((rc = write_header(c, c->hdr_seq + 1, c->wal_gen + 1)) != CM_OK) return rc;
    c->hdr_seq++;
    c->wal_gen++;
    c->wal_seq = 0;
    c->wal_synced = 0;
    c->wal_end = 0;
    c->prev_crc = 0;
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Write-ahead records                                                      */
/* ------------------------------------------------------------------------ */

typedef struct rec_spec {
    uint32_t flags;
    uint64_t fork, length, contiguous, byte_length;
    const uint8_t *tree_hash;
    uint64_t tree_truncate, data_truncate, data_offset, data_len;
    uint32_t n_clear, n_nodes;
    const uint64_t *clear;
    const cm_node *nodes; /* NULL: the caller fills the node area */
    const uint8_t *data;  /* NULL: the caller fills the data area */
    const uint8_t *sig;
    size_t sig_len;
    const uint8_t *manifest;
    size_t manifest_len;
} rec_spec;

typedef struct rec_view {
    uint32_t payload_len;
    uint64_t gen, seq, durable_count;
    uint32_t prev_crc, flags;
    uint64_t fork, length, contiguous, byte_length;
    const uint8_t *tree_hash;
    uint64_t tree_truncate, data_truncate, data_offset, data_len;
    uint32_t n_clear, n_nodes;
    uint16_t sig_len, manifest_len;
    const uint8_t *sig, *manifest, *clear, *data;
    uint8_t *nodes;
} rec_view;

static uint64_t pad8(uint64_t n) {
    return (n + 7) & ~(uint64_t)7;
}

/* Lay out a record in the scratch buffer.  *total = bytes to write. */
static int rec_build(cm_core *c, const rec_spec *s, uint8_t **nodes_at, uint8_t **data_at,
                     size_t *total) {
    uint64_t sm = pad8((uint64_t)s->sig_len + s->manifest_len);
    uint64_t plen = REC_FIXED + sm + 8 * (uint64_t)s->n_clear +
                    NODE_ENTRY * (uint64_t)s->n_nodes + s->data_len;
    uint64_t tot = pad8(8 + plen);
    uint8_t *r, *p;
    uint32_t i;
    int rc;
    if (plen > MAX_RECORD || s->sig_len > CM_MAX_SIGNATURE || s->manifest_len > CM_MAX_MANIFEST)
        return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    if ((rc = scratch_reserve(c, tot)) != CM_OK) return rc;
    r = c->scratch;
    p = r + 8;
    memset(r, 0, 8 + REC_FIXED + (size_t)sm);
    cm__put_u32(r + 4, (uint32_t)plen);
    /* generation, seq, durable_count, prev_crc: filled by wal_commit */
    cm__put_u32(p + 28, s->flags);
    cm__put_u64(p + 32, s->fork);
    cm__put_u64(p + 40, s->length);
    cm__put_u64(p + 48, s->contiguous);
    cm__put_u64(p + 56, s->byte_length);
    memcpy(p + 64, s->tree_hash, 32);
    cm__put_u64(p + 96, s->tree_truncate);
    cm__put_u64(p + 104, s->data_truncate);
    cm__put_u64(p + 112, s->data_offset);
    cm__put_u64(p + 120, s->data_len);
    cm__put_u32(p + 128, s->n_clear);
    cm__put_u32(p + 132, s->n_nodes);
    cm__put_u16(p + 136, (uint16_t)s->sig_len);
    cm__put_u16(p + 138, (uint16_t)s->manifest_len);
    cm__put_u32(p + 140, 0);
    p += REC_FIXED;
    if (s->sig_len) memcpy(p, s->sig, s->sig_len);
    if (s->manifest_len) memcpy(p + s->sig_len, s->manifest, s->manifest_len);
    p += sm;
    for (i = 0; i < s->n_clear; i++, p += 8) cm__put_u64(p, s->clear[i]);
    *nodes_at = p;
    if (s->nodes) {
        for (i = 0; i < s->n_nodes; i++, p += NODE_ENTRY) {
            cm__put_u64(p, s->nodes[i].index);
            cm__put_u64(p + 8, s->nodes[i].size);
            memcpy(p + 16, s->nodes[i].hash, 32);
        }
    } else {
        p += NODE_ENTRY * (size_t)s->n_nodes;
    }
    *data_at = p;
    if (s->data && s->data_len) memcpy(p, s->data, (size_t)s->data_len);
    p += s->data_len;
    memset(p, 0, (size_t)(tot - (8 + plen))); /* frame padding */
    *total = (size_t)tot;
    return CM_OK;
}

/* Parse a CRC-checked payload.  0 on success, -1 if inconsistent. */
static int rec_parse(uint8_t *payload, uint32_t plen, rec_view *v) {
    uint64_t need, sm;
    const uint8_t *p = payload;
    if (plen < REC_FIXED) return -1;
    v->payload_len = plen;
    v->gen = cm__get_u64(p);
    v->seq = cm__get_u64(p + 8);
    v->durable_count = cm__get_u64(p + 16);
    v->prev_crc = cm__get_u32(p + 24);
    v->flags = cm__get_u32(p + 28);
    v->fork = cm__get_u64(p + 32);
    v->length = cm__get_u64(p + 40);
    v->contiguous = cm__get_u64(p + 48);
    v->byte_length = cm__get_u64(p + 56);
    v->tree_hash = p + 64;
    v->tree_truncate = cm__get_u64(p + 96);
    v->data_truncate = cm__get_u64(p + 104);
    v->data_offset = cm__get_u64(p + 112);
    v->data_len = cm__get_u64(p + 120);
    v->n_clear = cm__get_u32(p + 128);
    v->n_nodes = cm__get_u32(p + 132);
    v->sig_len = cm__get_u16(p + 136);
    v->manifest_len = cm__get_u16(p + 138);
    if (v->flags & ~(uint32_t)(RF_TRUNCATE | RF_SIGNATURE | RF_MANIFEST)) return -1;
    if (v->sig_len > CM_MAX_SIGNATURE || v->manifest_len > CM_MAX_MANIFEST) return -1;
    if (v->contiguous > v->length || v->length > CM_MAX_LENGTH) return -1;
    if (v->data_len > plen) return -1;
    sm = pad8((uint64_t)v->sig_len + v->manifest_len);
    need = REC_FIXED + sm + 8 * (uint64_t)v->n_clear + NODE_ENTRY * (uint64_t)v->n_nodes +
           v->data_len;
    if (need != plen) return -1;
    if (v->data_offset > UINT64_MAX - v->data_len) return -1;
    if (v->tree_truncate > UINT64_MAX / NODE_SLOT) return -1;
    v->sig = p + REC_FIXED;
    v->manifest = p + REC_FIXED + v->sig_len;
    v->clear = p + REC_FIXED + sm;
    v->nodes = payload + REC_FIXED + sm + 8 * (size_t)v->n_clear;
    v->data = v->nodes + NODE_ENTRY * (size_t)v->n_nodes;
    {
        uint32_t i;
        for (i = 0; i < v->n_nodes; i++) {
            if (cm__get_u64(v->nodes + NODE_ENTRY * (size_t)i) > UINT64_MAX / NODE_SLOT - 1)
                return -1;
        }
        for (i = 0; i < v->n_clear; i++) {
            uint64_t x = cm__get_u64(v->clear + 8 * (size_t)i);
            if (!(v->flags & RF_TRUNCATE) || x >= v->tree_truncate) return -1;
        }
    }
    if ((v->flags & RF_MANIFEST) && v->manifest_len == 0) return -1;
    return 0;
}

/* In-place heapsort of 48-byte node entries by index. */
static void entry_swap(uint8_t *a, uint8_t *b) {
    uint8_t t[NODE_ENTRY];
    memcpy(t, a, NODE_ENTRY);
    memcpy(a, b, NODE_ENTRY);
    memcpy(b, t, NODE_ENTRY);
}

static void sift_down(uint8_t *e, size_t start, size_t end) {
    size_t root = start;
    while (2 * root + 1 < end) {
        size_t child = 2 * root + 1, sw = root;
        if (cm__get_u64(e + sw * NODE_ENTRY) < cm__get_u64(e + child * NODE_ENTRY)) sw = child;
        if (child + 1 < end &&
            cm__get_u64(e + sw * NODE_ENTRY) < cm__get_u64(e + (child + 1) * NODE_ENTRY))
            sw = child + 1;
        if (sw == root) return;
        entry_swap(e + root * NODE_ENTRY, e + sw * NODE_ENTRY);
        root = sw;
    }
}

static void entries_sort(uint8_t *e, size_t n) {
    size_t i, sorted = 1;
    for (i = 1; i < n && sorted; i++)
        if (cm__get_u64(e + (i - 1) * NODE_ENTRY) > cm__get_u64(e + i * NODE_ENTRY)) sorted = 0;
    if (sorted) return;
    for (i = n / 2; i-- > 0;) sift_down(e, i, n);
    for (i = n - 1; i > 0; i--) {
        entry_swap(e, e + i * NODE_ENTRY);
        sift_down(e, 0, i);
    }
}

/* Apply a record to tree/data (steps 1-3 of docs/format.md).  Node entries
 * are sorted in place so adjacent slots go out in one write. */
static int rec_apply_files(cm_core *c, rec_view *v) {
    uint8_t run[NODE_SLOT * 100];
    size_t run_n = 0;
    uint64_t run_start = 0;
    uint32_t i;
    int rc;
    if (v->flags & RF_TRUNCATE) {
        static const uint8_t zero[NODE_SLOT];
        c->vgen++; /* nodes of the old history may be rewritten: forget verified ones */
        if ((rc = io_truncate(c, CM_FILE_TREE, v->tree_truncate * NODE_SLOT)) != CM_OK) return rc;
        if ((rc = io_truncate(c, CM_FILE_DATA, v->data_truncate)) != CM_OK) return rc;
        for (i = 0; i < v->n_clear; i++) {
            uint64_t x = cm__get_u64(v->clear + 8 * (size_t)i);
            if ((rc = io_write(c, CM_FILE_TREE, zero, NODE_SLOT, x * NODE_SLOT)) != CM_OK)
                return rc;
        }
    }
    entries_sort(v->nodes, v->n_nodes);
    for (i = 0; i < v->n_nodes; i++) {
        const uint8_t *e = v->nodes + NODE_ENTRY * (size_t)i;
        uint64_t idx = cm__get_u64(e);
        if (run_n > 0 && (idx != run_start + run_n || run_n == 100)) {
            rc = io_write(c, CM_FILE_TREE, run, run_n * NODE_SLOT, run_start * NODE_SLOT);
            if (rc != CM_OK) return rc;
            run_n = 0;
        }
        if (run_n == 0) run_start = idx;
        memcpy(run + run_n * NODE_SLOT, e + 8, NODE_SLOT);
        run_n++;
    }
    if (run_n > 0) {
        rc = io_write(c, CM_FILE_TREE, run, run_n * NODE_SLOT, run_start * NODE_SLOT);
        if (rc != CM_OK) return rc;
    }
    if (v->data_len > 0) {
        rc = io_write(c, CM_FILE_DATA, v->data, (size_t)v->data_len, v->data_offset);
        if (rc != CM_OK) return rc;
    }
    return CM_OK;
}

static int set_manifest(cm_core *c, const uint8_t *m, size_t len) {
    cm_verifier v;
    int rc = cm_verifier_init(&v, c->key, m, len);
    if (rc != CM_OK) return rc;
    memcpy(c->manifest, m, len);
    c->manifest_len = len;
    c->flags = (c->flags & ~HF_COMPAT) | HF_MANIFEST;
    c->ver = v;
    return CM_OK;
}

/* Step 4: the state becomes the record's (roots and cbytes are the caller's). */
static int rec_apply_state(cm_core *c, const rec_view *v) {
    c->fork = v->fork;
    c->length = v->length;
    c->contiguous = v->contiguous;
    c->byte_length = v->byte_length;
    memcpy(c->tree_hash, v->tree_hash, 32);
    if (v->flags & RF_SIGNATURE) {
        memcpy(c->sig, v->sig, v->sig_len);
        c->sig_len = v->sig_len;
    } else {
        c->sig_len = 0;
    }
    c->sig_cached = 0;
    if (v->flags & RF_MANIFEST) {
        if (set_manifest(c, v->manifest, v->manifest_len) != CM_OK)
            return fail(c, CM_ERR_CORRUPT, CM_FILE_WAL);
    }
    return CM_OK;
}

/* Write the record in scratch to `wal` (sync per durability or when forced),
 * then apply it.  Any failure poisons the core: memory and disk may differ. */
static int wal_commit(cm_core *c, size_t total, int force_sync) {
    uint8_t *r = c->scratch;
    uint32_t plen = cm__get_u32(r + 4), crc;
    rec_view v;
    int rc;
    cm__put_u64(r + 8, c->wal_gen);
    cm__put_u64(r + 16, c->wal_seq);
    cm__put_u64(r + 24, c->wal_synced);
    cm__put_u32(r + 32, c->prev_crc);
    crc = cm_crc32(0, r + 4, 4 + (size_t)plen);
    cm__put_u32(r, crc);
    if (rec_parse(r + 8, plen, &v) != 0) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    rc = io_write(c, CM_FILE_WAL, r, total, c->wal_end);
    if (rc == CM_OK && (force_sync || c->durability == CM_DURABLE_SYNC))
        rc = io_sync(c, CM_FILE_WAL);
    if (rc != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    c->wal_end += total;
    c->wal_seq++;
    c->prev_crc = crc;
    if (force_sync || c->durability == CM_DURABLE_SYNC) c->wal_synced = c->wal_seq;
    rc = rec_apply_files(c, &v);
    if (rc == CM_OK) rc = rec_apply_state(c, &v);
    if (rc != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    return CM_OK;
}

static int maybe_checkpoint(cm_core *c) {
    int rc = CM_OK;
    if (c->wal_end >= c->checkpoint_bytes) {
        rc = checkpoint(c);
        if (rc != CM_OK) c->poisoned = 1;
    }
    scratch_trim(c);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Replay                                                                   */
/* ------------------------------------------------------------------------ */

/* Read and check the record at `off`: 1 if it is a valid record (CRC and
 * layout) of generation `gen` (any generation if any_gen), with the payload
 * left in scratch + 8 and *v filled. */
static int frame_at(cm_core *c, uint64_t off, uint64_t size, uint64_t gen, int any_gen,
                    rec_view *v, uint32_t *crc_out, int *err) {
    uint8_t head[8 + REC_FIXED];
    size_t got;
    uint32_t plen;
    uint64_t g;
    *err = CM_OK;
    if (off > size || size - off < sizeof(head)) return 0;
    if ((*err = io_read(c, CM_FILE_WAL, head, sizeof(head), off, &got)) != CM_OK) return 0;
    if (got < sizeof(head)) return 0;
    plen = cm__get_u32(head + 4);
    g = cm__get_u64(head + 8);
    if (plen < REC_FIXED || plen > MAX_RECORD || plen > size - off - 8) return 0;
    if (!any_gen && g != gen) return 0; /* another generation: no need to hash it */
    if ((*err = scratch_reserve(c, (uint64_t)plen + 8)) != CM_OK) return 0;
    memcpy(c->scratch, head, sizeof(head));
    if (plen > REC_FIXED) {
        *err = io_read(c, CM_FILE_WAL, c->scratch + sizeof(head), plen - REC_FIXED,
                       off + sizeof(head), &got);
        if (*err != CM_OK || got != plen - REC_FIXED) return 0;
    }
    if (cm_crc32(0, c->scratch + 4, 4 + (size_t)plen) != cm__get_u32(c->scratch)) return 0;
    if (rec_parse(c->scratch + 8, plen, v) != 0) return 0;
    *crc_out = cm__get_u32(c->scratch);
    return 1;
}

/* Replay stopped at `from` on a bad frame: is there a valid record of this
 * generation at or after it claiming that record `seq` had been fsync'ed?
 * (Then a durable record was lost: corruption, not a torn write.) */
static int later_durable(cm_core *c, uint64_t from, uint64_t size, uint64_t seq, int *found) {
    const size_t win = (size_t)1 << 20;
    uint8_t *buf;
    uint64_t base;
    int rc = CM_OK;
    *found = 0;
    if (size < from + 8 + REC_FIXED) return CM_OK;
    buf = (uint8_t *)malloc(win + 32);
    if (!buf) return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    for (base = from; base + 32 <= size && !*found && rc == CM_OK; base += win) {
        size_t got, i;
        uint64_t want = size - base;
        if (want > win + 32) want = win + 32;
        if ((rc = io_read(c, CM_FILE_WAL, buf, (size_t)want, base, &got)) != CM_OK) break;
        for (i = 0; i + 32 <= got && i < win; i += 8) {
            uint64_t pos = base + i;
            rec_view v;
            uint32_t crc;
            int err;
            if (cm__get_u64(buf + i + 8) != c->wal_gen || cm__get_u64(buf + i + 24) <= seq)
                continue; /* cheap filter: generation and durable_count */
            if (frame_at(c, pos, size, c->wal_gen, 0, &v, &crc, &err) && v.durable_count > seq) {
                *found = 1;
                break;
            }
            if (err != CM_OK) {
                rc = err;
                break;
            }
        }
    }
    free(buf);
    return rc;
}

static int replay(cm_core *c, cm_recovery *rec, int *torn) {
    uint64_t size, off = 0, seq = 0;
    uint32_t prev = 0;
    int rc, found;
    *torn = 0;
    if ((rc = io_size(c, CM_FILE_WAL, &size)) != CM_OK) return rc;
    for (;;) {
        rec_view v;
        uint32_t crc;
        if (!frame_at(c, off, size, c->wal_gen, 0, &v, &crc, &rc)) {
            if (rc != CM_OK) return rc;
            break;
        }
        if (v.seq != seq || v.prev_crc != prev) break;
        if ((rc = rec_apply_files(c, &v)) != CM_OK) return rc;
        if ((rc = rec_apply_state(c, &v)) != CM_OK) return rc;
        seq++;
        prev = crc;
        off += pad8(8 + (uint64_t)v.payload_len);
        rec->records_replayed++;
    }
    c->wal_seq = seq;
    c->wal_synced = 0;
    c->wal_end = off;
    c->prev_crc = prev;
    if (off < size) {
        /* Where replay stopped: an older generation (read without its CRC)
         * is a clean end; a valid record of a newer one means the header
         * slot that started it was lost; anything else is a torn tail. */
        uint8_t head[8 + REC_FIXED];
        size_t got = 0;
        int older = 0;
        if (size - off >= sizeof(head)) {
            uint64_t g;
            if ((rc = io_read(c, CM_FILE_WAL, head, sizeof(head), off, &got)) != CM_OK) return rc;
            g = cm__get_u64(head + 8);
            if (got == sizeof(head) && g < c->wal_gen) older = 1;
            if (got == sizeof(head) && g > c->wal_gen) {
                rec_view v;
                uint32_t crc;
                if (frame_at(c, off, size, 0, 1, &v, &crc, &rc))
                    return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
                if (rc != CM_OK) return rc;
            }
        }
        if (!older) {
            if ((rc = later_durable(c, off, size, seq, &found)) != CM_OK) return rc;
            if (found) return fail(c, CM_ERR_CORRUPT, CM_FILE_WAL);
            rec->bytes_discarded = size - off;
            *torn = 1;
        }
    }
    scratch_trim(c);
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Opening                                                                  */
/* ------------------------------------------------------------------------ */

static void close_files(cm_core *c) {
    int i;
    for (i = 5; i >= 1; i--) {
        if (c->f[i]) c->io.close(c->io.ctx, c->f[i]);
        c->f[i] = NULL;
    }
}

static void core_free(cm_core *c) {
    close_files(c);
    free(c->scratch);
    free(c->msg);
    free(c->chk);
    sodium_memzero(c->secret, sizeof(c->secret));
    free(c);
}

/* Read the roots of `length` from tree and check them against the state. */
static int load_roots(cm_core *c) {
    uint64_t idx[CM_MAX_ROOTS], bytes = 0;
    size_t n = cm_ft_full_roots(c->length, idx), i;
    uint8_t th[32];
    int rc;
    for (i = 0; i < n; i++) {
        int present;
        if ((rc = tree_read(c, idx[i], &c->roots[i], &present)) != CM_OK) return rc;
        if (!present) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        if (bytes + c->roots[i].size < bytes) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        bytes += c->roots[i].size;
    }
    c->n_roots = n;
    cm_hash_tree(c->roots, n, th);
    if (memcmp(th, c->tree_hash, 32) != 0 || bytes != c->byte_length)
        return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    return CM_OK;
}

/* Contiguous-region roots and the nodes that tie them to the roots of
 * `length` (see docs/format.md, replica sanitize).  Fills `nodes` with the
 * sanitize record's nodes (sorted) when nodes != NULL, and *cbytes. */
static int contiguous_plan(cm_core *c, cm_node *nodes, size_t *n_nodes, uint64_t *cbytes) {
    uint64_t cidx[CM_MAX_ROOTS], bytes = 0, C = c->contiguous;
    size_t nc = cm_ft_full_roots(C, cidx), j = 0, k, nn = 0;
    int rc;
    for (k = 0; k < nc; k++) {
        if (j < c->n_roots && c->roots[j].index == cidx[k]) {
            bytes += c->roots[j].size;
            j++;
            continue;
        }
        break;
    }
    if (k < nc) {
        /* roots of C inside root R = roots[j]: grow them into R */
        cm_node st[CM_MAX_ROOTS + 2];
        size_t sn = 0;
        uint64_t p;
        int guard = 0;
        if (j >= c->n_roots) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        for (; k < nc; k++) {
            int present;
            if ((rc = tree_read(c, cidx[k], &st[sn], &present)) != CM_OK) return rc;
            if (!present) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            bytes += st[sn].size;
            sn++;
        }
        p = st[sn - 1].index;
        while (p != c->roots[j].index) {
            cm_node sib;
            int present;
            if (++guard > 64 || sn >= CM_MAX_ROOTS + 1) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            if ((rc = tree_read(c, cm_ft_sibling(p), &sib, &present)) != CM_OK) return rc;
            if (sib.index < p) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            if (!present) {
                /* The path is gone (a store sanitized without it): keep the
                 * plain sanitize; reads of these blocks will fail. */
                nn = 0;
                sn = 0;
                break;
            }
            if (nodes) nodes[nn++] = sib;
            st[sn++] = sib;
            while (sn >= 2 && cm_ft_sibling(st[sn - 1].index) == st[sn - 2].index) {
                cm_node par;
                if (st[sn - 2].size + st[sn - 1].size < st[sn - 2].size)
                    return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
                cm_hash_parent(&st[sn - 2], &st[sn - 1], &par);
                if (nodes) nodes[nn++] = par;
                sn -= 2;
                st[sn++] = par;
            }
            p = st[sn - 1].index;
        }
        if (sn > 0 && (sn != 1 || !cm__node_eq(&st[0], &c->roots[j])))
            return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    }
    if (nodes) {
        uint64_t edge = C > 0 ? 2 * C - 2 : 0;
        size_t i;
        for (i = 0; i < c->n_roots; i++)
            if (C == 0 || cm_ft_right_span(c->roots[i].index) > edge) nodes[nn++] = c->roots[i];
        if (cm__nodes_sort_unique(nodes, &nn) != CM_OK) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        *n_nodes = nn;
    }
    *cbytes = bytes;
    return CM_OK;
}

static int sig_spec(cm_core *c, rec_spec *s) {
    s->flags |= RF_SIGNATURE;
    s->sig = c->sig;
    s->sig_len = c->sig_len;
    return CM_OK;
}

/* Replica whose signed length is above contiguous_length: drop the sparse
 * region, keep the roots and the path tying the contiguous region to them. */
static int sanitize(cm_core *c) {
    cm_node nodes[3 * CM_MAX_ROOTS + 4];
    uint64_t clear[CM_MAX_ROOTS];
    size_t nn = 0, total;
    uint64_t cbytes, C = c->contiguous;
    rec_spec s;
    uint8_t *na, *da;
    int rc;
    if ((rc = contiguous_plan(c, nodes, &nn, &cbytes)) != CM_OK) return rc;
    memset(&s, 0, sizeof(s));
    s.flags = RF_TRUNCATE;
    s.fork = c->fork;
    s.length = c->length;
    s.contiguous = C;
    s.byte_length = c->byte_length;
    s.tree_hash = c->tree_hash;
    s.tree_truncate = C > 0 ? 2 * C - 1 : 0;
    s.data_truncate = cbytes;
    s.n_clear = (uint32_t)clear_list(C, clear);
    s.clear = clear;
    s.n_nodes = (uint32_t)nn;
    s.nodes = nodes;
    sig_spec(c, &s);
    if ((rc = rec_build(c, &s, &na, &da, &total)) != CM_OK) return rc;
    if ((rc = wal_commit(c, total, 1)) != CM_OK) return rc;
    c->cbytes = cbytes;
    return CM_OK;
}

static int read_secret(cm_core *c, uint8_t out[64], int *exists) {
    size_t got;
    uint64_t size;
    int rc = io_open(c, CM_FILE_SECRET_KEY, 0);
    *exists = 0;
    if (rc == CM_ERR_NOT_FOUND) {
        c->err_file = CM_FILE_NONE;
        return CM_OK;
    }
    if (rc != CM_OK) return rc;
    *exists = 1;
    if ((rc = io_size(c, CM_FILE_SECRET_KEY, &size)) != CM_OK) return rc;
    if (size != 64) return fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
    if ((rc = io_read(c, CM_FILE_SECRET_KEY, out, 64, 0, &got)) != CM_OK) return rc;
    if (got != 64) return fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
    return CM_OK;
}

/* The public key that signs this core (signer 0). */
static const uint8_t *signer_pk(const cm_core *c) {
    if (c->flags & HF_MANIFEST) return c->ver.manifest.signers[0].public_key;
    return c->key;
}

static int check_secret(cm_core *c, const uint8_t sk[64]) {
    uint8_t pk[32], sk2[64];
    if (cm_keypair_from_seed(sk, pk, sk2) != CM_OK) return CM_ERR_KEY;
    if (memcmp(pk, sk + 32, 32) != 0) return CM_ERR_KEY;
    if ((c->flags & HF_MANIFEST) && c->ver.manifest.n_signers == 0) return CM_ERR_KEY;
    if (!(c->flags & (HF_MANIFEST | HF_COMPAT))) return CM_ERR_KEY;
    if (memcmp(pk, signer_pk(c), 32) != 0) return CM_ERR_KEY;
    return CM_OK;
}

/* New store: identity from the options, header slot 0. */
static int create_store(cm_core *c, const cm_open_opts *o) {
    uint8_t man[CM_MAX_MANIFEST];
    size_t man_len = 0;
    int rc;
    uint64_t size;
    if (o->secret_key) {
        uint8_t pk[32], sk2[64];
        if (cm_keypair_from_seed(o->secret_key, pk, sk2) != CM_OK ||
            memcmp(pk, o->secret_key + 32, 32) != 0)
            return fail(c, CM_ERR_KEY, CM_FILE_NONE);
        if (o->compat) {
            if (o->manifest) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
            c->flags = HF_COMPAT;
            memcpy(c->key, pk, 32);
            cm_verifier_init(&c->ver, c->key, NULL, 0);
        } else {
            cm_manifest m;
            uint8_t h[32];
            if (o->manifest) {
                if (o->manifest_len > CM_MAX_MANIFEST) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
                memcpy(man, o->manifest, o->manifest_len);
                man_len = o->manifest_len;
            } else {
                cm_manifest_default(pk, &m);
                if ((rc = cm_manifest_encode(&m, man, sizeof(man), &man_len)) != CM_OK)
                    return fail(c, rc, CM_FILE_NONE);
            }
            if ((rc = cm_manifest_decode(man, man_len, &m)) != CM_OK) return fail(c, rc, CM_FILE_NONE);
            if (m.n_signers == 0 || m.quorum != 1 || memcmp(m.signers[0].public_key, pk, 32) != 0)
                return fail(c, CM_ERR_KEY, CM_FILE_NONE);
            cm_manifest_hash(man, man_len, h);
            memcpy(c->key, h, 32);
            if ((rc = set_manifest(c, man, man_len)) != CM_OK) return fail(c, rc, CM_FILE_NONE);
        }
        if (o->key && memcmp(o->key, c->key, 32) != 0) return fail(c, CM_ERR_KEY, CM_FILE_NONE);
        c->writable = 1;
        memcpy(c->secret, o->secret_key, 64);
    } else if (o->key) {
        memcpy(c->key, o->key, 32);
        /* `compat` is a writer option: a replica learns its mode from the
         * manifest (flags 0 = the key is used as a public key until then). */
        if (o->manifest) {
            if ((rc = set_manifest(c, o->manifest, o->manifest_len)) != CM_OK)
                return fail(c, rc, CM_FILE_NONE);
        } else {
            c->flags = 0;
            cm_verifier_init(&c->ver, c->key, NULL, 0);
        }
    } else {
        return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    }

    if (c->writable) {
        /* A secret_key file left by an interrupted creation is reused only if
         * it holds this very key (or was torn before reaching 64 bytes). */
        rc = io_open(c, CM_FILE_SECRET_KEY, 0);
        if (rc == CM_OK) {
            uint8_t existing[64];
            size_t got;
            if ((rc = io_size(c, CM_FILE_SECRET_KEY, &size)) != CM_OK) return rc;
            if (size == 64) {
                if ((rc = io_read(c, CM_FILE_SECRET_KEY, existing, 64, 0, &got)) != CM_OK)
                    return rc;
                if (got != 64 || memcmp(existing, c->secret, 64) != 0)
                    return fail(c, CM_ERR_KEY, CM_FILE_SECRET_KEY);
            }
        } else if (rc == CM_ERR_NOT_FOUND) {
            rc = io_open(c, CM_FILE_SECRET_KEY, CM_IO_CREATE | CM_IO_PRIVATE);
            if (rc != CM_OK) return rc;
        } else {
            return rc;
        }
        if ((rc = io_truncate(c, CM_FILE_SECRET_KEY, 0)) != CM_OK) return rc;
        if ((rc = io_write(c, CM_FILE_SECRET_KEY, c->secret, 64, 0)) != CM_OK) return rc;
        if ((rc = io_sync(c, CM_FILE_SECRET_KEY)) != CM_OK) return rc;
    }
    if (!c->f[CM_FILE_WAL] && (rc = io_open(c, CM_FILE_WAL, CM_IO_CREATE)) != CM_OK) return rc;
    if (!c->f[CM_FILE_TREE] && (rc = io_open(c, CM_FILE_TREE, CM_IO_CREATE)) != CM_OK) return rc;
    if (!c->f[CM_FILE_DATA] && (rc = io_open(c, CM_FILE_DATA, CM_IO_CREATE)) != CM_OK) return rc;
    if ((rc = io_size(c, CM_FILE_WAL, &size)) != CM_OK) return rc;
    if (size && (rc = io_truncate(c, CM_FILE_WAL, 0)) != CM_OK) return rc;
    if ((rc = io_size(c, CM_FILE_TREE, &size)) != CM_OK) return rc;
    if (size && (rc = io_truncate(c, CM_FILE_TREE, 0)) != CM_OK) return rc;
    if ((rc = io_size(c, CM_FILE_DATA, &size)) != CM_OK) return rc;
    if (size && (rc = io_truncate(c, CM_FILE_DATA, 0)) != CM_OK) return rc;

    c->fork = c->length = c->contiguous = c->byte_length = c->cbytes = 0;
    cm_hash_tree(NULL, 0, c->tree_hash);
    c->n_roots = 0;
    c->sig_len = 0;
    c->hdr_seq = 0;
    c->wal_gen = 0;
    return write_header(c, 0, 0);
}

/* Existing store: state from the chosen header slot. */
static int load_header(cm_core *c, const hdr *h, const cm_open_opts *o) {
    int rc;
    if (h->flags & ~(HF_COMPAT | HF_MANIFEST)) return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if ((h->flags & HF_COMPAT) && (h->flags & HF_MANIFEST))
        return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (h->sig_len > CM_MAX_SIGNATURE || h->manifest_len > CM_MAX_MANIFEST ||
        h->contiguous > h->length || h->length > CM_MAX_LENGTH)
        return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (((h->flags & HF_MANIFEST) != 0) != (h->manifest_len != 0))
        return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    memcpy(c->key, h->key, 32);
    c->flags = h->flags & HF_COMPAT;
    cm_verifier_init(&c->ver, c->key, NULL, 0);
    if (h->flags & HF_MANIFEST) {
        if (set_manifest(c, h->manifest, h->manifest_len) != CM_OK)
            return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    }
    if (o->key && memcmp(o->key, c->key, 32) != 0) return fail(c, CM_ERR_KEY, CM_FILE_NONE);
    if (o->manifest && (!(c->flags & HF_MANIFEST) || o->manifest_len != c->manifest_len ||
                        memcmp(o->manifest, c->manifest, c->manifest_len) != 0))
        return fail(c, CM_ERR_KEY, CM_FILE_NONE);
    c->fork = h->fork;
    c->length = h->length;
    c->contiguous = h->contiguous;
    c->byte_length = h->byte_length;
    memcpy(c->tree_hash, h->tree_hash, 32);
    memcpy(c->sig, h->sig, h->sig_len);
    c->sig_len = h->sig_len;
    c->hdr_seq = h->seq;
    c->wal_gen = h->wal_gen;

    {
        uint8_t sk[64];
        int exists;
        if ((rc = read_secret(c, sk, &exists)) != CM_OK) return rc;
        if (exists) {
            if (check_secret(c, sk) != CM_OK) return fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
            if (o->secret_key && memcmp(o->secret_key, sk, 64) != 0)
                return fail(c, CM_ERR_KEY, CM_FILE_SECRET_KEY);
            memcpy(c->secret, sk, 64);
            c->writable = 1;
        } else if (o->secret_key) {
            /* The signer's key for a store without one: it becomes a writer,
             * which needs every block. */
            if (check_secret(c, o->secret_key) != CM_OK) return fail(c, CM_ERR_KEY, CM_FILE_NONE);
            if (c->contiguous != c->length) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
            memcpy(c->secret, o->secret_key, 64);
            if ((rc = io_open(c, CM_FILE_SECRET_KEY, CM_IO_CREATE | CM_IO_PRIVATE)) != CM_OK)
                return rc;
            if ((rc = io_truncate(c, CM_FILE_SECRET_KEY, 0)) != CM_OK) return rc;
            if ((rc = io_write(c, CM_FILE_SECRET_KEY, c->secret, 64, 0)) != CM_OK) return rc;
            if ((rc = io_sync(c, CM_FILE_SECRET_KEY)) != CM_OK) return rc;
            c->writable = 1;
            c->sig_len = 0; /* a writer keeps no signature in its header */
        }
    }
    if ((rc = io_open(c, CM_FILE_WAL, CM_IO_CREATE)) != CM_OK) return rc;
    if ((rc = io_open(c, CM_FILE_TREE, CM_IO_CREATE)) != CM_OK) return rc;
    if ((rc = io_open(c, CM_FILE_DATA, CM_IO_CREATE)) != CM_OK) return rc;
    return CM_OK;
}

static int open_core(cm_core *c, const cm_open_opts *o, cm_recovery *rec) {
    uint8_t slots[2][SLOT_SIZE];
    size_t got[2];
    hdr h[2];
    int valid[2], use, rc, torn = 0, i;
    uint64_t wal_size = 0;

    rc = io_open(c, CM_FILE_HEADER, o->create ? CM_IO_CREATE : 0);
    if (rc != CM_OK) return rc;
    if ((rc = c->io.lock(c->io.ctx, c->f[CM_FILE_HEADER])) != CM_OK)
        return fail(c, rc, CM_FILE_HEADER);
    for (i = 0; i < 2; i++) {
        memset(slots[i], 0, SLOT_SIZE);
        if ((rc = io_read(c, CM_FILE_HEADER, slots[i], SLOT_SIZE, (uint64_t)i * SLOT_SIZE,
                          &got[i])) != CM_OK)
            return rc;
        valid[i] = hdr_parse(slots[i], got[i], &h[i]) && (h[i].seq % 2) == (uint64_t)i;
    }
    if (!valid[0] && !valid[1]) {
        /* No valid slot: if wal, tree and data are all empty, creation was
         * interrupted before anything else was written - no store yet. */
        cm_file_id fid;
        for (fid = CM_FILE_WAL; fid <= CM_FILE_DATA; fid++) {
            uint64_t sz;
            if ((rc = io_open(c, fid, CM_IO_CREATE)) != CM_OK) return rc;
            if ((rc = io_size(c, fid, &sz)) != CM_OK) return rc;
            wal_size += sz;
        }
        if (wal_size > 0) return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
        if (!o->create) return fail(c, CM_ERR_NOT_FOUND, CM_FILE_HEADER);
        rec->header_slot = 0;
        return create_store(c, o);
    }
    use = (valid[0] && valid[1]) ? (h[1].seq > h[0].seq ? 1 : 0) : (valid[0] ? 0 : 1);
    rec->header_slot = use;
    if (!valid[1 - use] && !cm__is_zero(slots[1 - use], SLOT_SIZE)) rec->header_fallback = 1;
    if (h[use].format_version > CM_FORMAT_VERSION) return fail(c, CM_ERR_VERSION, CM_FILE_HEADER);
    if (h[use].format_version != CM_FORMAT_VERSION) return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if ((rc = load_header(c, &h[use], o)) != CM_OK) return rc;

    if ((rc = replay(c, rec, &torn)) != CM_OK) return rc;
    if ((rc = load_roots(c)) != CM_OK) return rc;
    if (!c->writable && c->sig_len == 0 && (c->length > 0 || c->fork > 0))
        return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (!c->writable && c->sig_len > 0 &&
        cm_verifier_check(&c->ver, c->tree_hash, c->length, c->fork, c->sig, c->sig_len) != CM_OK)
        return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (c->writable && c->contiguous != c->length) return fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);

    if (rec->records_replayed > 0) {
        /* Replayed records may sit in the page cache only (kill -9): make
         * them durable before later records claim them in durable_count. */
        if ((rc = io_sync(c, CM_FILE_WAL)) != CM_OK) return rc;
        c->wal_synced = c->wal_seq;
    }
    c->cbytes = c->byte_length;
    if (!c->writable) {
        /* Replica: anything past the contiguous region may hold writes of
         * records that never became durable. */
        uint64_t tsize, dsize, C = c->contiguous, cbytes = c->byte_length;
        if ((rc = io_size(c, CM_FILE_TREE, &tsize)) != CM_OK) return rc;
        if ((rc = io_size(c, CM_FILE_DATA, &dsize)) != CM_OK) return rc;
        if (C < c->length && (rc = contiguous_plan(c, NULL, NULL, &cbytes)) != CM_OK) return rc;
        c->cbytes = cbytes;
        if (C < c->length || tsize > (C > 0 ? (2 * C - 1) * NODE_SLOT : 0) || dsize > cbytes) {
            if ((rc = sanitize(c)) != CM_OK) return rc;
        }
    }
    if (torn && (rc = checkpoint(c)) != CM_OK) return rc;
    scratch_trim(c);
    return CM_OK;
}

int cm_core_open(const cm_open_opts *opts, cm_core **out, cm_recovery *recovery) {
    cm_core *c;
    cm_recovery dummy;
    int rc;
    cm_recovery *rec = recovery ? recovery : &dummy;
    memset(rec, 0, sizeof(*rec));
    g_open_err_file = CM_FILE_NONE;
    if (out) *out = NULL;
    if (!opts || !out || !opts->io) return CM_ERR_INVALID;
    if (opts->durability != CM_DURABLE_SYNC && opts->durability != CM_DURABLE_BATCH &&
        opts->durability != CM_DURABLE_NONE)
        return CM_ERR_INVALID;
    if (opts->manifest && (opts->manifest_len == 0 || opts->manifest_len > CM_MAX_MANIFEST))
        return CM_ERR_INVALID;
    if (cm_init() != CM_OK) return CM_ERR_INVALID;
    c = (cm_core *)calloc(1, sizeof(*c));
    if (!c) return CM_ERR_NOMEM;
    c->vgen = 1; /* cache entries start at generation 0: all invalid */
    c->io = *opts->io;
    c->durability = opts->durability;
    c->checkpoint_bytes = opts->checkpoint_bytes ? opts->checkpoint_bytes : CM_DEFAULT_CHECKPOINT_BYTES;
    c->max_block = opts->max_block_size ? opts->max_block_size : CM_DEFAULT_MAX_BLOCK;
    rc = open_core(c, opts, rec);
    if (rc != CM_OK) {
        g_open_err_file = c->err_file;
        core_free(c);
        return rc;
    }
    cm_discovery_key(c->key, c->dkey);
    c->err_file = CM_FILE_NONE;
    c->err_errno = 0;
    *out = c;
    return CM_OK;
}

int cm_core_close(cm_core *c) {
    int rc = CM_OK;
    if (!c) return CM_ERR_INVALID;
    if (!c->poisoned && c->wal_seq > 0) rc = checkpoint(c);
    core_free(c);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* State accessors                                                          */
/* ------------------------------------------------------------------------ */

cm_file_id cm_core_err_file(const cm_core *c) {
    return c ? c->err_file : CM_FILE_NONE;
}
int cm_core_errno(const cm_core *c) {
    return c ? c->err_errno : 0;
}
uint64_t cm_core_length(const cm_core *c) {
    return c->length;
}
uint64_t cm_core_contiguous_length(const cm_core *c) {
    return c->contiguous;
}
uint64_t cm_core_fork(const cm_core *c) {
    return c->fork;
}
uint64_t cm_core_byte_length(const cm_core *c) {
    return c->byte_length;
}
int cm_core_writable(const cm_core *c) {
    return c->writable;
}
int cm_core_compat(const cm_core *c) {
    return (c->flags & HF_MANIFEST) == 0;
}
const uint8_t *cm_core_key(const cm_core *c) {
    return c->key;
}
const uint8_t *cm_core_discovery_key(const cm_core *c) {
    return c->dkey;
}
const uint8_t *cm_core_manifest(const cm_core *c, size_t *len) {
    if (!(c->flags & HF_MANIFEST)) {
        if (len) *len = 0;
        return NULL;
    }
    if (len) *len = c->manifest_len;
    return c->manifest;
}
void cm_core_tree_hash(const cm_core *c, uint8_t out[32]) {
    memcpy(out, c->tree_hash, 32);
}
size_t cm_core_roots(const cm_core *c, cm_node out[CM_MAX_ROOTS]) {
    memcpy(out, c->roots, c->n_roots * sizeof(cm_node));
    return c->n_roots;
}

int cm_core_public_key(const cm_core *c, uint8_t out[32]) {
    if (c->writable)
        memcpy(out, c->secret + 32, 32);
    else
        memcpy(out, signer_pk(c), 32);
    return CM_OK;
}

static int ensure_signature(cm_core *c) {
    int rc;
    if (!c->writable || c->sig_cached) return CM_OK;
    if (c->length == 0 && c->fork == 0) {
        c->sig_len = 0;
        c->sig_cached = 1;
        return CM_OK;
    }
    rc = cm_verifier_sign(&c->ver, c->secret, c->tree_hash, c->length, c->fork, c->sig,
                          sizeof(c->sig), &c->sig_len);
    if (rc != CM_OK) return fail(c, rc, CM_FILE_NONE);
    c->sig_cached = 1;
    return CM_OK;
}

int cm_core_signature(cm_core *c, uint8_t *out, size_t cap, size_t *len) {
    int rc = ensure_signature(c);
    if (rc != CM_OK) return rc;
    *len = c->sig_len;
    if (cap < c->sig_len) return CM_ERR_TOO_LARGE;
    if (c->sig_len) memcpy(out, c->sig, c->sig_len);
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                   */
/* ------------------------------------------------------------------------ */

int cm_core_append(cm_core *c, const cm_buf *blocks, size_t n, uint64_t *new_length) {
    uint64_t total = 0, L = c->length, n_par, n_nodes, i;
    cm_node roots[CM_MAX_ROOTS + 1];
    size_t nr = c->n_roots, tot;
    rec_spec s;
    uint8_t *na, *da;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (!c->writable) return fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if ((rc = poisoned(c)) != CM_OK) return rc;
    if (n == 0) {
        if (new_length) *new_length = c->length;
        return CM_OK;
    }
    if (!blocks) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if ((uint64_t)n > MAX_APPEND_BLOCKS) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    for (i = 0; i < n; i++) {
        if (blocks[i].len > 0 && blocks[i].data == NULL) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
        if ((uint64_t)blocks[i].len > c->max_block) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
        total += blocks[i].len;
        if (total > CM_MAX_APPEND_BYTES) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    }
    if (L + n > CM_MAX_LENGTH || c->byte_length + total < c->byte_length)
        return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    n_par = (uint64_t)__builtin_popcountll(L) + n - (uint64_t)__builtin_popcountll(L + n);
    n_nodes = n + n_par;

    memset(&s, 0, sizeof(s));
    s.fork = c->fork;
    s.length = L + n;
    s.contiguous = L + n;
    s.byte_length = c->byte_length + total;
    s.tree_hash = c->tree_hash; /* patched below */
    s.data_offset = total ? c->byte_length : 0; /* 0 when there is no data */
    s.data_len = total;
    s.n_nodes = (uint32_t)n_nodes;
    if ((rc = rec_build(c, &s, &na, &da, &tot)) != CM_OK) return rc;

    memcpy(roots, c->roots, nr * sizeof(cm_node));
    for (i = 0; i < n; i++) {
        cm_node leaf;
        cm_hash_leaf(L + i, blocks[i].data, blocks[i].len, &leaf);
        if (blocks[i].len) memcpy(da, blocks[i].data, blocks[i].len);
        da += blocks[i].len;
        cm__put_u64(na, leaf.index);
        cm__put_u64(na + 8, leaf.size);
        memcpy(na + 16, leaf.hash, 32);
        na += NODE_ENTRY;
        roots[nr++] = leaf;
        while (nr >= 2 && cm_ft_sibling(roots[nr - 1].index) == roots[nr - 2].index) {
            cm_node p;
            cm_hash_parent(&roots[nr - 2], &roots[nr - 1], &p);
            cm__put_u64(na, p.index);
            cm__put_u64(na + 8, p.size);
            memcpy(na + 16, p.hash, 32);
            na += NODE_ENTRY;
            nr -= 2;
            roots[nr++] = p;
        }
    }
    {
        uint8_t th[32];
        cm_hash_tree(roots, nr, th);
        memcpy(c->scratch + 8 + 64, th, 32);
    }
    if ((rc = wal_commit(c, tot, 0)) != CM_OK) return rc;
    memcpy(c->roots, roots, nr * sizeof(cm_node));
    c->n_roots = nr;
    c->cbytes = c->byte_length;
    if (new_length) *new_length = c->length;
    return maybe_checkpoint(c);
}

int cm_core_truncate(cm_core *c, uint64_t length, uint64_t fork) {
    uint64_t idx[CM_MAX_ROOTS], clear[CM_MAX_ROOTS], bytes = 0;
    cm_node roots[CM_MAX_ROOTS];
    uint8_t th[32];
    size_t nr, i, tot;
    rec_spec s;
    uint8_t *na, *da;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (!c->writable) return fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if ((rc = poisoned(c)) != CM_OK) return rc;
    if (length > c->length) return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (fork <= c->fork) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    nr = cm_ft_full_roots(length, idx);
    for (i = 0; i < nr; i++) {
        if ((rc = walk_held(c, idx[i], &roots[i], NULL)) != CM_OK) return rc;
        bytes += roots[i].size;
    }
    cm_hash_tree(roots, nr, th);
    memset(&s, 0, sizeof(s));
    s.flags = RF_TRUNCATE;
    s.fork = fork;
    s.length = length;
    s.contiguous = length;
    s.byte_length = bytes;
    s.tree_hash = th;
    s.tree_truncate = length > 0 ? 2 * length - 1 : 0;
    s.data_truncate = bytes;
    s.n_clear = (uint32_t)clear_list(length, clear);
    s.clear = clear;
    if ((rc = rec_build(c, &s, &na, &da, &tot)) != CM_OK) return rc;
    if ((rc = wal_commit(c, tot, 1)) != CM_OK) return rc;
    memcpy(c->roots, roots, nr * sizeof(cm_node));
    c->n_roots = nr;
    c->cbytes = bytes;
    return maybe_checkpoint(c);
}

int cm_core_flush(cm_core *c) {
    int rc;
    c->err_file = CM_FILE_NONE;
    if ((rc = poisoned(c)) != CM_OK) return rc;
    if (c->wal_synced == c->wal_seq) return CM_OK;
    if ((rc = io_sync(c, CM_FILE_WAL)) != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    c->wal_synced = c->wal_seq;
    return CM_OK;
}

int cm_core_checkpoint(cm_core *c) {
    int rc;
    c->err_file = CM_FILE_NONE;
    if ((rc = poisoned(c)) != CM_OK) return rc;
    if (c->wal_seq == 0) return CM_OK;
    rc = checkpoint(c);
    if (rc != CM_OK) c->poisoned = 1;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Reading                                                                  */
/* ------------------------------------------------------------------------ */

int cm_core_block_size(cm_core *c, uint64_t index, uint64_t *size) {
    cm_node leaf;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (index >= c->length) return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if ((rc = walk_held(c, 2 * index, &leaf, NULL)) != CM_OK) return rc;
    *size = leaf.size;
    return CM_OK;
}

/* Read the bytes of a verified leaf at `off` into buf and check them. */
static int read_leaf(cm_core *c, const cm_node *leaf, uint64_t off, uint8_t *buf) {
    cm_node chk;
    size_t got;
    int rc;
    if (leaf->size > 0) {
        if ((rc = io_read(c, CM_FILE_DATA, buf, (size_t)leaf->size, off, &got)) != CM_OK)
            return rc;
        if (got != leaf->size) return fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    }
    cm_hash_leaf(leaf->index / 2, buf, (size_t)leaf->size, &chk);
    if (memcmp(chk.hash, leaf->hash, 32) != 0) return fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    return CM_OK;
}

/* Verified read of block `index` into buf (cap >= its size). */
static int read_block(cm_core *c, uint64_t index, uint8_t *buf, size_t cap, size_t *len) {
    cm_node leaf;
    uint64_t off;
    int rc;
    if (index >= c->length) return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (index >= c->contiguous) return fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if ((rc = walk_held(c, 2 * index, &leaf, &off)) != CM_OK) return rc;
    if (leaf.size > (uint64_t)SIZE_MAX) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    *len = (size_t)leaf.size;
    if (cap < leaf.size) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    return read_leaf(c, &leaf, off, buf);
}

int cm_core_get(cm_core *c, uint64_t index, uint8_t *buf, size_t cap, size_t *len) {
    c->err_file = CM_FILE_NONE;
    return read_block(c, index, buf, cap, len);
}

#define RANGE_RUN 64u   /* blocks verified as one subtree in cm_core_get_range */

/* Aligned run [pos, pos+n) (n a power of two, 2..RANGE_RUN) into buf (at the
 * run's first byte): its 2n-1 tree slots in one read, each parent re-hashed
 * from its children, the top checked against the verified walk, then the
 * data in one read with every leaf re-hashed. */
static int read_run(cm_core *c, uint64_t pos, uint64_t n, uint8_t *buf, uint64_t *sizes) {
    uint8_t slab[(2 * RANGE_RUN - 1) * NODE_SLOT];
    cm_node t[2 * RANGE_RUN - 1], top, chk;
    uint64_t base = 2 * pos, count = 2 * n - 1, i, off, at;
    size_t got;
    int rc;
    if ((rc = walk_held(c, base + n - 1, &top, &off)) != CM_OK) return rc;
    if ((rc = io_read(c, CM_FILE_TREE, slab, (size_t)(count * NODE_SLOT), base * NODE_SLOT,
                      &got)) != CM_OK)
        return rc;
    if (got != count * NODE_SLOT) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    for (i = 0; i < count; i++) {
        const uint8_t *slot = slab + i * NODE_SLOT;
        if (cm__is_zero(slot, NODE_SLOT)) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        t[i].index = base + i;
        t[i].size = cm__get_u64(slot);
        memcpy(t[i].hash, slot + 8, 32);
    }
    for (i = 1; i < count; i += 2) {  /* parents sit at the odd relative indexes */
        const cm_node *l = &t[cm_ft_left_child(base + i) - base];
        const cm_node *r = &t[cm_ft_right_child(base + i) - base];
        if (l->size + r->size < l->size || l->size + r->size != t[i].size)
            return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        cm_hash_parent(l, r, &chk);
        if (memcmp(chk.hash, t[i].hash, 32) != 0) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    }
    if (!cm__node_eq(&t[n - 1], &top)) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    if (top.size > 0) {
        if ((rc = io_read(c, CM_FILE_DATA, buf, (size_t)top.size, off, &got)) != CM_OK) return rc;
        if (got != top.size) return fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    }
    for (i = 0, at = 0; i < n; i++) {
        cm_hash_leaf(pos + i, buf + at, (size_t)t[2 * i].size, &chk);
        if (memcmp(chk.hash, t[2 * i].hash, 32) != 0) return fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
        sizes[i] = t[2 * i].size;
        at += t[2 * i].size;
    }
    return CM_OK;
}

int cm_core_get_range(cm_core *c, uint64_t start, uint64_t end, uint8_t *buf, size_t cap,
                      uint64_t *sizes, uint64_t *total) {
    cm_node first, last;
    uint64_t off0, offl, pos, n, at;
    int rc;
    c->err_file = CM_FILE_NONE;
    *total = 0;
    if (start > end || end > c->length) return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (start == end) return CM_OK;
    if (end > c->contiguous) return fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if ((rc = walk_held(c, 2 * start, &first, &off0)) != CM_OK) return rc;
    if ((rc = walk_held(c, 2 * (end - 1), &last, &offl)) != CM_OK) return rc;
    if (offl < off0 || offl + last.size < offl) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    *total = offl + last.size - off0;
    if (*total > (uint64_t)cap) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    for (pos = start, at = 0; pos < end; pos += n) {
        for (n = RANGE_RUN; n > 1 && (pos % n != 0 || pos + n > end); n /= 2) {
        }
        if (n == 1) {
            cm_node leaf;
            uint64_t off;
            if ((rc = walk_held(c, 2 * pos, &leaf, &off)) != CM_OK) return rc;
            if (off != off0 + at) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            if ((rc = read_leaf(c, &leaf, off, buf + at)) != CM_OK) return rc;
            sizes[pos - start] = leaf.size;
            at += leaf.size;
            continue;
        }
        if ((rc = read_run(c, pos, n, buf + at, sizes + (pos - start))) != CM_OK) return rc;
        {
            uint64_t k;
            for (k = 0; k < n; k++) at += sizes[pos - start + k];
        }
    }
    if (at != *total) return fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    return CM_OK;
}

int cm_core_get_node(cm_core *c, uint64_t index, cm_node *out) {
    c->err_file = CM_FILE_NONE;
    if (c->length == 0 || index >= 2 * CM_MAX_LENGTH ||
        cm_ft_right_span(index) > 2 * c->length - 2)
        return fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    return walk_held(c, index, out, NULL);
}

int cm_core_has_node(cm_core *c, uint64_t index) {
    cm_node n;
    int present, rc;
    c->err_file = CM_FILE_NONE;
    if (c->length == 0 || index >= 2 * CM_MAX_LENGTH ||
        cm_ft_right_span(index) > 2 * c->length - 2)
        return 0;
    if ((rc = tree_read(c, index, &n, &present)) != CM_OK) return rc;
    return present;
}

int cm_core_missing_nodes(cm_core *c, uint64_t index, uint64_t *nodes) {
    uint64_t head = 2 * c->length, ite, cnt = 0;
    c->err_file = CM_FILE_NONE;
    *nodes = 0;
    if (index >= c->length) return CM_OK;
    ite = 2 * index;
    while (!cm_ft_contains(ite, head)) {
        cm_node n;
        int present, rc;
        if ((rc = tree_read(c, ite, &n, &present)) != CM_OK) return rc;
        if (present) break;
        if (++cnt > 64) break;
        ite = cm_ft_parent(ite);
    }
    *nodes = cnt;
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Proofs                                                                   */
/* ------------------------------------------------------------------------ */

static int gen_get_node(void *ctx, uint64_t index, cm_node *out) {
    cm_core *c = (cm_core *)ctx;
    int present, rc;
    size_t i;
    for (i = 0; i < c->n_roots; i++) {
        if (c->roots[i].index == index) {
            *out = c->roots[i];
            return CM_OK;
        }
    }
    if ((rc = tree_read(c, index, out, &present)) != CM_OK) return rc;
    return present ? CM_OK : fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
}

int cm_core_proof(cm_core *c, const cm_proof_request *req, uint8_t *out, size_t cap,
                  size_t *len) {
    cm_data_msg *m;
    cm_node leaf;
    uint64_t leaf_off = 0;
    size_t value_off = 0;
    int rc;
    c->err_file = CM_FILE_NONE;
    *len = 0;
    if ((rc = ensure_signature(c)) != CM_OK) return rc;
    if (!c->msg && !(c->msg = (cm_data_msg *)malloc(sizeof(*c->msg))))
        return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    m = c->msg;
    memset(m, 0, sizeof(*m));
    m->request = req->request;
    m->fork = c->fork;
    rc = cm__proof_generate(c->length, req, gen_get_node, c, m);
    if (rc == CM_OK && m->has_block) {
        if (req->block_index >= c->contiguous)
            rc = fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
        else if ((rc = walk_held(c, 2 * req->block_index, &leaf, &leaf_off)) == CM_OK) {
            if (leaf.size > (uint64_t)SIZE_MAX) rc = fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
            m->block_len = (size_t)leaf.size;
        }
    }
    if (rc == CM_OK && m->has_upgrade) {
        m->signature = c->sig_len ? c->sig : NULL;
        m->signature_len = c->sig_len;
    }
    if (rc == CM_OK && req->manifest && (c->flags & HF_MANIFEST)) {
        m->has_manifest = 1;
        m->manifest = c->manifest;
        m->manifest_len = c->manifest_len;
    }
    if (rc == CM_OK) {
        rc = cm__data_encode_ex(m, out, cap, len, m->has_block ? &value_off : NULL);
        if (rc == CM_ERR_TOO_LARGE) rc = fail(c, rc, CM_FILE_NONE);
    }
    if (rc == CM_OK && m->has_block) rc = read_leaf(c, &leaf, leaf_off, out + value_off);
    if (rc == CM_ERR_INVALID || rc == CM_ERR_RANGE) c->err_file = CM_FILE_NONE;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Replicas: applying proofs                                                */
/* ------------------------------------------------------------------------ */

/* The local (old-fork) tree holds node x with the same size and hash. */
static int local_equal(cm_core *c, const cm_node *x, int *eq) {
    cm_node n;
    int present, rc;
    *eq = 0;
    if (c->length == 0 || cm_ft_right_span(x->index) > 2 * c->length - 2) return CM_OK;
    if ((rc = tree_read(c, x->index, &n, &present)) != CM_OK) return rc;
    *eq = present && n.size == x->size && memcmp(n.hash, x->hash, 32) == 0;
    return CM_OK;
}

/* Prefix kept by a reorg (docs/format.md, "Replicas"): the leading roots of
 * the new length that the local tree holds unchanged. */
static int reorg_prefix(cm_core *c, const cm_proof_check *chk, uint64_t *p_out,
                        uint64_t *bytes_out) {
    uint64_t p = 0, bytes = 0;
    size_t i;
    int rc, eq;
    for (i = 0; i < chk->n_roots; i++) {
        if ((rc = local_equal(c, &chk->roots[i], &eq)) != CM_OK) return rc;
        if (!eq) break;
        p += cm_ft_count_leaves(chk->roots[i].index);
        bytes += chk->roots[i].size;
    }
    *p_out = p;
    *bytes_out = bytes;
    return CM_OK;
}

int cm_core_apply_proof(cm_core *c, const uint8_t *msg, size_t len, cm_apply_result *res) {
    cm_data_msg *m = NULL;
    cm_proof_check *chk = NULL;
    cm_verifier ver, *vp = &c->ver;
    cm_apply_result r;
    const cm_node *trusted = c->roots;
    size_t n_trusted = c->n_roots, tot;
    int rc, learn = 0, newer, block_ok = 0, store_block = 0, upgraded = 0;
    uint64_t p = 0, pbytes = 0, contiguous, cbytes;
    uint64_t clear[CM_MAX_ROOTS];
    rec_spec s;
    uint8_t *na, *da;

    c->err_file = CM_FILE_NONE;
    memset(&r, 0, sizeof(r));
    if (res) *res = r;
    if (c->writable) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if ((rc = poisoned(c)) != CM_OK) return rc;
    if (!c->msg && !(c->msg = (cm_data_msg *)malloc(sizeof(*c->msg))))
        return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    if (!c->chk && !(c->chk = (cm_proof_check *)malloc(sizeof(*c->chk))))
        return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    m = c->msg;
    chk = c->chk;
    if ((rc = cm_data_decode(msg, len, m)) != CM_OK) goto out;

    /* fork */
    if (m->fork < c->fork) {
        rc = CM_ERR_FORK;
        goto out;
    }
    newer = m->fork > c->fork;
    if (newer) {
        if (!m->has_upgrade || m->upgrade_start != 0) {
            rc = CM_ERR_FORK; /* a newer fork needs an upgrade from 0 */
            goto out;
        }
        trusted = NULL;
        n_trusted = 0;
    } else if (m->has_upgrade && m->upgrade_start != c->length) {
        rc = CM_ERR_BAD_PROOF;
        goto out;
    }
    if (m->has_block && m->block_len > c->max_block) {
        rc = CM_ERR_TOO_LARGE;
        goto out;
    }

    /* verifier */
    if (!(c->flags & (HF_MANIFEST | HF_COMPAT)) && m->has_manifest) {
        uint8_t h[32];
        cm_manifest_hash(m->manifest, m->manifest_len, h);
        if (memcmp(h, c->key, 32) == 0) {
            if ((rc = cm_verifier_init(&ver, c->key, m->manifest, m->manifest_len)) != CM_OK)
                goto out;
            vp = &ver;
            learn = 1;
        } else {
            cm_manifest mf;
            if (cm_manifest_decode(m->manifest, m->manifest_len, &mf) != CM_OK ||
                mf.n_signers != 1 || memcmp(mf.signers[0].public_key, c->key, 32) != 0) {
                rc = CM_ERR_BAD_PROOF; /* a manifest of another core */
                goto out;
            }
            /* a compat core described by its default manifest: stay compat */
        }
    }

    if ((rc = cm_proof_check_msg(vp, trusted, n_trusted, m, chk)) != CM_OK) goto out;
    if (chk->has_unverified) {
        cm_node n;
        int present;
        if (newer || c->length == 0 || cm_ft_right_span(chk->unverified.index) > 2 * c->length - 2) {
            rc = CM_ERR_BAD_PROOF;
            goto out;
        }
        if ((rc = tree_read(c, chk->unverified.index, &n, &present)) != CM_OK) goto out;
        if (!present) {
            /* Nothing to check it against yet (the proof of an earlier block
             * that brings this node may still be on its way): not invalid. */
            rc = CM_ERR_UNAVAILABLE;
            goto out;
        }
        if (!cm__node_eq(&n, &chk->unverified)) {
            rc = CM_ERR_BAD_PROOF;
            goto out;
        }
    }
    if ((rc = cm__nodes_sort_unique(chk->nodes, &chk->n_nodes)) != CM_OK) goto out;
    block_ok = m->has_block;
    upgraded = chk->upgraded;

    /* what changes */
    contiguous = c->contiguous;
    cbytes = c->cbytes;
    if (newer) {
        if ((rc = reorg_prefix(c, chk, &p, &pbytes)) != CM_OK) goto out;
        if (contiguous > p) {
            contiguous = p;
            cbytes = pbytes;
        }
        pbytes = cbytes; /* data is cut after the blocks still held */
    }
    if (block_ok && m->block_index == contiguous &&
        m->block_index < (upgraded ? chk->length : c->length))
        store_block = 1;

    r.fork = newer ? m->fork : c->fork;
    r.upgraded = upgraded;
    r.reorg = newer;
    r.reorg_length = newer ? p : 0;
    r.has_block = m->has_block;
    r.block_index = m->block_index;
    r.block_stored = store_block;
    r.manifest_learned = learn;
    if (!upgraded && !newer && !learn && !store_block) {
        rc = CM_OK;
        goto out;
    }

    memset(&s, 0, sizeof(s));
    s.flags = RF_SIGNATURE | (learn ? RF_MANIFEST : 0) | (newer ? RF_TRUNCATE : 0);
    s.fork = newer ? m->fork : c->fork;
    s.length = upgraded ? chk->length : c->length;
    s.contiguous = contiguous + (store_block ? 1 : 0);
    s.byte_length = upgraded ? chk->byte_length : c->byte_length;
    s.tree_hash = upgraded ? chk->tree_hash : c->tree_hash;
    if (newer) {
        s.tree_truncate = p > 0 ? 2 * p - 1 : 0;
        s.data_truncate = pbytes;
        s.n_clear = (uint32_t)clear_list(p, clear);
        s.clear = clear;
    }
    if (store_block) {
        s.data_offset = m->block_len ? cbytes : 0; /* 0 when there is no data */
        s.data_len = m->block_len;
        s.data = m->block_value;
    }
    s.n_nodes = (uint32_t)chk->n_nodes;
    s.nodes = chk->nodes;
    if (upgraded) {
        s.sig = m->signature;
        s.sig_len = m->signature_len;
    } else {
        s.sig = c->sig;
        s.sig_len = c->sig_len;
    }
    if (learn) {
        s.manifest = m->manifest;
        s.manifest_len = m->manifest_len;
    }
    if ((rc = rec_build(c, &s, &na, &da, &tot)) != CM_OK) goto out;
    if ((rc = wal_commit(c, tot, newer)) != CM_OK) goto out;
    if (upgraded) {
        memcpy(c->roots, chk->roots, chk->n_roots * sizeof(cm_node));
        c->n_roots = chk->n_roots;
    }
    c->cbytes = cbytes + (store_block ? m->block_len : 0);
    rc = maybe_checkpoint(c);

out:
    if (res) *res = r;
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Runs: blocks proven by the node over them                                */
/* ------------------------------------------------------------------------ */

int cm_core_apply_run(cm_core *c, uint64_t start, const cm_buf *values, size_t n,
                      uint64_t *stored) {
    cm_node *t = NULL, root;
    rec_spec s;
    uint8_t *na, *da;
    size_t tot, i, width;
    uint64_t base = 2 * start, total = 0, from;
    int rc, present;
    c->err_file = CM_FILE_NONE;
    *stored = 0;
    if (c->writable) return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if (n < 2 || n > 256 || (n & (n - 1)) != 0 || start % n != 0 ||
        start >= CM_MAX_LENGTH || start + n > c->length)
        return fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if (c->contiguous <= start) return fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if (c->contiguous >= start + n) return CM_OK; /* nothing new */
    from = c->contiguous - start;
    for (i = 0; i < n; i++) {
        if (values[i].len > c->max_block) return fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
        if (i >= from) total += values[i].len;
    }
    /* The run's subtree occupies node indexes [2*start, 2*start + 2n - 2]. */
    t = (cm_node *)malloc((2 * n - 1) * sizeof(cm_node));
    if (!t) return fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    for (i = 0; i < n; i++) cm_hash_leaf(start + i, values[i].data, values[i].len, &t[2 * i]);
    /* Parents level by level.  Relative to `base` the subtree is laid out as
     * a tree from 0: at depth d nodes sit at 2^d - 1 + k * 2^(d+1), with
     * children 2^(d-1) to either side. */
    for (width = 1; (width << 1) <= n; width <<= 1) {
        size_t r;
        for (r = 2 * width - 1; r < 2 * n - 1; r += 4 * width)
            cm_hash_parent(&t[r - width], &t[r + width], &t[r]);
    }
    rc = gen_get_node(c, base + n - 1, &root);
    present = rc == CM_OK;
    if (rc != CM_OK && rc != CM_ERR_UNAVAILABLE) goto out;
    if (!present) {
        rc = fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
        goto out;
    }
    if (!cm__node_eq(&root, &t[n - 1])) {
        rc = fail(c, CM_ERR_BAD_PROOF, CM_FILE_NONE);
        goto out;
    }
    memset(&s, 0, sizeof(s));
    s.flags = RF_SIGNATURE;
    s.fork = c->fork;
    s.length = c->length;
    s.contiguous = start + n;
    s.byte_length = c->byte_length;
    s.tree_hash = c->tree_hash;
    s.data_offset = total ? c->cbytes : 0;
    s.data_len = total;
    s.n_nodes = (uint32_t)(2 * n - 1);
    s.sig = c->sig;
    s.sig_len = c->sig_len;
    if ((rc = rec_build(c, &s, &na, &da, &tot)) != CM_OK) goto out;
    for (i = 0; i < 2 * n - 1; i++) {
        cm__put_u64(na, t[i].index);
        cm__put_u64(na + 8, t[i].size);
        memcpy(na + 16, t[i].hash, 32);
        na += NODE_ENTRY;
    }
    for (i = (size_t)from; i < n; i++) {
        if (values[i].len) memcpy(da, values[i].data, values[i].len);
        da += values[i].len;
    }
    if ((rc = wal_commit(c, tot, 0)) != CM_OK) goto out;
    c->cbytes += total;
    *stored = n - from;
    rc = maybe_checkpoint(c);
out:
    free(t);
    return rc;
}
