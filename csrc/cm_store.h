/*
 * cm_store.h - the store's private state, shared by the files that implement
 * the cm_core_* API (docs/format.md, docs/architecture.md).  Not installed,
 * not seen by the Cython layer.  Each file has a pure-Python twin of the same
 * name in coremachine_embedded/_pure/:
 *
 *   cm_store.c     store.py     errors, file I/O wrappers, state accessors, signature
 *   cm_snapshot.c  snapshot.py  a read-only snapshot's overlay of the records in memory
 *   cm_wal.c       wal.py       header slots, write-ahead records, commit, replay
 *   cm_treefile.c  treefile.py  tree file: node I/O, verified walks and their cache
 *   cm_blocks.c    blocks.py    data file: verified reads of blocks, proofs
 *   cm_opening.c   opening.py   opening and creating a store, the secret key, closing
 *   cm_writer.c    writer.py    append, truncate
 *   cm_replica.c   replica.py   apply_proof, apply_run, sanitize on open
 *
 * Layers (a file calls only the ones listed before it): store; snapshot;
 * wal, treefile; blocks; writer, replica; opening.
 */
#ifndef CM_STORE_H
#define CM_STORE_H

#include <errno.h>

#include "cm.h"
#include "cm_internal.h"

/* ---- the on-disk format (docs/format.md); _pure/store.py has the same ---- */

#define SLOT_SIZE 4096u   /* a header slot */
#define BODY_STABLE 16u   /* magic, format_version, seq: the same in every format version */
#define BODY_FIXED 136u   /* fixed part of a slot body */
#define HF_COMPAT 1u      /* header flags */
#define HF_MANIFEST 2u

#define REC_FIXED 144u    /* fixed part of a record payload */
#define RF_TRUNCATE 1u    /* record flags */
#define RF_SIGNATURE 2u
#define RF_MANIFEST 4u

#define NODE_SLOT 40u     /* a node in `tree`: u64 size, hash */
#define NODE_ENTRY 48u    /* a node in a record: u64 index, u64 size, hash */

#define MAX_RECORD ((uint64_t)256 << 20) /* payload bytes accepted on replay */

/* ---- the C implementation only ---- */

#define CM_VCACHE 1024u                   /* verified nodes kept, by index */
#define RANGE_RUN 64u  /* blocks verified as one subtree in cm_core_get_range */
#define SCRATCH_KEEP ((size_t)1 << 20)    /* record buffer kept between appends */

/* A read-only snapshot keeps what the write-ahead records since the last
 * checkpoint wrote in memory (cm_snapshot.c), over the tree and data files
 * the writer may not have updated yet: node slots by index (sorted once the
 * records are read) and data segments (disjoint, sorted by offset). */
typedef struct cm__ov_entry {
    cm_node node;
    uint64_t order;  /* which record wrote it: the last one wins */
    int present;     /* 0: zeroed by a truncation */
} cm__ov_entry;

typedef struct cm__ov_segment {
    uint64_t offset, len;
    size_t at;       /* where its bytes are in `bytes` */
} cm__ov_segment;

typedef struct cm__overlay {
    cm__ov_entry *nodes;
    size_t n_nodes, cap_nodes;
    uint64_t tree_limit;   /* slots at or past it were cut (unless in nodes) */
    cm__ov_segment *segments;
    size_t n_segments, cap_segments;
    uint8_t *bytes;
    size_t n_bytes, cap_bytes;
    uint64_t data_limit;   /* bytes at or past it were cut (unless in segments) */
    uint64_t records;
} cm__overlay;

typedef struct cm__vslot {
    cm_node node;
    uint64_t gen; /* valid while it is the core's vgen (never 0) */
} cm__vslot;

struct cm_core {
    cm_io io;
    void *f[6]; /* by cm_file_id */
    int poisoned;
    int readonly;   /* a snapshot: no lock, no write, records in `ov` */
    cm__overlay ov;

    /* identity */
    uint32_t flags; /* HF_* */
    uint8_t key[32];
    uint8_t dkey[32];
    uint8_t manifest[CM_MAX_MANIFEST];
    size_t manifest_len;
    cm_verifier ver;
    int writable;     /* has_secret and not readonly */
    int has_secret;   /* signs the state lazily */
    int writer_store; /* has a secret_key file (a snapshot may not read it) */
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

    /* header and write-ahead file (cm_wal.c) */
    uint64_t hdr_seq, wal_gen;
    uint32_t hdr_version;        /* the format version of the slot opened */
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

    /* Tree nodes verified by earlier walks (cm_treefile.c; a node never
     * changes until a truncation, which bumps vgen): sequential reads and
     * proofs then re-verify only the few lowest levels. CM_VCACHE slots by
     * index, allocated zeroed at the first walk (an open that reads nothing
     * clears none of them). */
    cm__vslot *vcache;
    uint64_t vgen;
};

/* A decoded header slot (cm_wal.c); sig and manifest point into the slot. */
typedef struct cm__hdr {
    uint32_t format_version;
    uint64_t seq;
    uint32_t flags;
    uint8_t key[32];
    uint64_t fork, length, contiguous, byte_length;
    uint8_t tree_hash[32];
    uint64_t wal_gen;
    uint16_t sig_len, manifest_len;
    const uint8_t *sig, *manifest;
} cm__hdr;

/* A record read back (CRC checked): fields, and pointers into the payload. */
typedef struct cm__rec_view {
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
} cm__rec_view;

/* What a write-ahead record says (cm__rec_build lays it out). */
typedef struct cm__rec_spec {
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
} cm__rec_spec;

/* ---- cm_store.c ---- */

/* Record the failing file (and errno for CM_ERR_IO) on the core; returns rc. */
int cm__fail(cm_core *c, int rc, cm_file_id f);
int cm__io_open(cm_core *c, cm_file_id fid, int flags);

/* File operations through c->io that record the failing file (inline: they
 * are on every read and write of every store file). */
static inline int cm__io_read(cm_core *c, cm_file_id fid, uint8_t *buf, size_t len,
                              uint64_t off, size_t *got) {
    int64_t n;
    *got = 0;
    errno = 0;
    n = c->io.read(c->io.ctx, c->f[fid], buf, len, off);
    if (n < 0) return cm__fail(c, (int)n, fid);
    *got = (size_t)n;
    return CM_OK;
}

static inline int cm__io_write(cm_core *c, cm_file_id fid, const uint8_t *buf, size_t len,
                               uint64_t off) {
    int rc;
    errno = 0;
    rc = c->io.write(c->io.ctx, c->f[fid], buf, len, off);
    return rc < 0 ? cm__fail(c, rc, fid) : CM_OK;
}

static inline int cm__io_sync(cm_core *c, cm_file_id fid) {
    int rc;
    errno = 0;
    rc = c->io.sync(c->io.ctx, c->f[fid]);
    return rc < 0 ? cm__fail(c, rc, fid) : CM_OK;
}

static inline int cm__io_flush(cm_core *c, cm_file_id fid) {
    int rc;
    if (!c->io.flush || !c->f[fid]) return CM_OK;
    errno = 0;
    rc = c->io.flush(c->io.ctx, c->f[fid]);
    return rc < 0 ? cm__fail(c, rc, fid) : CM_OK;
}

static inline int cm__io_truncate(cm_core *c, cm_file_id fid, uint64_t size) {
    int rc;
    errno = 0;
    rc = c->io.truncate(c->io.ctx, c->f[fid], size);
    return rc < 0 ? cm__fail(c, rc, fid) : CM_OK;
}

static inline int cm__io_size(cm_core *c, cm_file_id fid, uint64_t *size) {
    int rc;
    errno = 0;
    rc = c->io.size(c->io.ctx, c->f[fid], size);
    return rc < 0 ? cm__fail(c, rc, fid) : CM_OK;
}

/* CM_ERR_IO once a failed write left memory and files apart. */
int cm__poisoned(cm_core *c);
int cm__scratch_reserve(cm_core *c, uint64_t n);
void cm__scratch_trim(cm_core *c);
/* Learn an encoded manifest whose hash is the key (manifest mode from now). */
int cm__set_manifest(cm_core *c, const uint8_t *m, size_t len);
/* The public key that signs this core (signer 0). */
const uint8_t *cm__signer_pk(const cm_core *c);
/* Writer: sign the current state if it has not been signed yet. */
int cm__ensure_signature(cm_core *c);

/* ---- cm_snapshot.c ---- */

void cm__ov_init(cm__overlay *ov);
void cm__ov_free(cm__overlay *ov);
/* Keep what a record writes to tree and data (in replay order). */
int cm__ov_apply(cm_core *c, const cm__rec_view *v);
/* After the last record: sort the nodes and segments for lookups. */
void cm__ov_seal(cm__overlay *ov);
/* 1 if the overlay decides node `index` (*present says whether it is there,
 * *out holds it), 0 if the tree file does. */
int cm__ov_node(const cm__overlay *ov, uint64_t index, cm_node *out, int *present);
/* Read data bytes [off, off+len) as the core's state has them (the data file,
 * under a snapshot's overlay); bytes past the file read as zero. */
int cm__read_data(cm_core *c, uint8_t *buf, size_t len, uint64_t off, size_t *got);

/* ---- cm_wal.c ---- */

/* 1 if the slot bytes hold a valid slot (CRC, magic, consistent lengths). */
int cm__hdr_parse(const uint8_t *slot, size_t n, cm__hdr *h);
int cm__write_header(cm_core *c, uint64_t seq, uint64_t gen);
/* Sync tree and data, write the next header slot, start a new generation. */
int cm__checkpoint(cm_core *c);
int cm__maybe_checkpoint(cm_core *c);
/* Lay out a record in the scratch buffer; *total = bytes to write. */
int cm__rec_build(cm_core *c, const cm__rec_spec *s, uint8_t **nodes_at, uint8_t **data_at,
                  size_t *total);
/* Write the record in scratch, sync as asked, apply it to the files and state. */
int cm__wal_commit(cm_core *c, size_t total, int force_sync);
/* Apply the records of the current generation (to the overlay in a
 * snapshot); *torn if the tail was torn. */
int cm__replay(cm_core *c, cm_recovery *rec, int *torn);

/* ---- cm_treefile.c ---- */

/* Raw slot read; *present = 0 for an all-zero (or missing) slot. */
int cm__tree_read(cm_core *c, uint64_t index, cm_node *out, int *present);
/* Verified walk from the trusted root down to node `target` (which must be
 * held); *offset = byte offset of its first block. */
int cm__walk_held(cm_core *c, uint64_t target, cm_node *out, uint64_t *offset);
/* Slots [first, first+count) (count < 2 * RANGE_RUN) in one read, under a
 * snapshot's overlay; CM_ERR_CORRUPT naming tree if one is absent. */
int cm__tree_read_slots(cm_core *c, uint64_t first, size_t count, cm_node *out);
/* Ancestors of leaf 2n-2 below 2n-1 whose span reaches past it, ascending. */
size_t cm__clear_list(uint64_t n, uint64_t out[CM_MAX_ROOTS]);
/* Read the roots of `length` and check them against the state. */
int cm__load_roots(cm_core *c);
/* A node of the current tree: a root, or a stored slot (cm__get_node_fn). */
int cm__get_node(void *ctx, uint64_t index, cm_node *out);

/* ---- cm_replica.c ---- */

/* Roots of the contiguous region and the nodes tying them to the roots of
 * `length` (the sanitize record's nodes, sorted, when nodes != NULL). */
int cm__contiguous_plan(cm_core *c, cm_node *nodes, size_t *n_nodes, uint64_t *cbytes);
/* Drop the sparse region's slots, keep the roots and the path to them. */
int cm__sanitize(cm_core *c);

#endif /* CM_STORE_H */
