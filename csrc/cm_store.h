/*
 * cm_store.h - the store's private state, shared by the files that implement
 * the cm_core_* API (docs/format.md, docs/architecture.md).  Not installed,
 * not seen by the Cython layer.  Each file has a pure-Python twin of the same
 * name in coremachine_embedded/_pure/:
 *
 *   cm_store.c     store.py     errors, file I/O wrappers, state accessors, signature
 *   cm_wal.c       wal.py       header slots, write-ahead records, commit, replay
 *   cm_treefile.c  treefile.py  tree file: node I/O, verified walks and their cache
 *   cm_blocks.c    blocks.py    data file: verified reads of blocks, proofs
 *   cm_opening.c   opening.py   opening and creating a store, the secret key, closing
 *   cm_writer.c    writer.py    append, truncate
 *   cm_replica.c   replica.py   apply_proof, apply_run, sanitize on open
 *
 * Layers (a file calls only the ones listed before it): store; wal, treefile;
 * blocks; writer, replica; opening.
 */
#ifndef CM_STORE_H
#define CM_STORE_H

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
#define SCRATCH_KEEP ((size_t)1 << 20)    /* record buffer kept between appends */

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

    /* header and write-ahead file (cm_wal.c) */
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

    /* Tree nodes verified by earlier walks (cm_treefile.c; a node never
     * changes until a truncation, which bumps vgen): sequential reads and
     * proofs then re-verify only the few lowest levels. Fixed size, by index. */
    struct {
        cm_node node;
        uint64_t gen;
    } vcache[CM_VCACHE];
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
/* File operations through c->io that record the failing file. */
int cm__io_read(cm_core *c, cm_file_id fid, uint8_t *buf, size_t len, uint64_t off,
                size_t *got);
int cm__io_write(cm_core *c, cm_file_id fid, const uint8_t *buf, size_t len, uint64_t off);
int cm__io_sync(cm_core *c, cm_file_id fid);
int cm__io_truncate(cm_core *c, cm_file_id fid, uint64_t size);
int cm__io_size(cm_core *c, cm_file_id fid, uint64_t *size);
int cm__io_open(cm_core *c, cm_file_id fid, int flags);
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
/* Apply the records of the current generation; *torn if the tail was torn. */
int cm__replay(cm_core *c, cm_recovery *rec, int *torn);

/* ---- cm_treefile.c ---- */

/* Raw slot read; *present = 0 for an all-zero (or missing) slot. */
int cm__tree_read(cm_core *c, uint64_t index, cm_node *out, int *present);
/* Verified walk from the trusted root down to node `target` (which must be
 * held); *offset = byte offset of its first block. */
int cm__walk_held(cm_core *c, uint64_t target, cm_node *out, uint64_t *offset);
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
