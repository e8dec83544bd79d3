/*
 * cm_opening.c - opening a store (docs/format.md, "Opening"): pick the
 * header slot, replay, check the roots and the signature, sanitize a replica,
 * checkpoint after a torn tail; creating one; the secret key; closing.
 * Twin: _pure/opening.py.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <sodium.h>

#include "cm_store.h"

static void close_files(cm_core *c) {
    int i;
    for (i = 5; i >= 1; i--) {
        if (c->f[i]) c->io.close(c->io.ctx, c->f[i]);
        c->f[i] = NULL;
    }
}

static void core_free(cm_core *c) {
    close_files(c);
    cm__ov_free(&c->ov);
    free(c->scratch);
    free(c->msg);
    free(c->chk);
    free(c->vcache);
    sodium_memzero(c->secret, sizeof(c->secret));
    free(c);
}

/* The secret_key file: *exists if there is one (a writer's store), *readable
 * if `out` holds it (a snapshot may not be allowed to read it). */
static int read_secret(cm_core *c, uint8_t out[64], int *exists, int *readable) {
    size_t got;
    uint64_t size;
    int rc;
    *exists = *readable = 0;
    if (c->f[CM_FILE_SECRET_KEY]) { /* a snapshot's next try */
        c->io.close(c->io.ctx, c->f[CM_FILE_SECRET_KEY]);
        c->f[CM_FILE_SECRET_KEY] = NULL;
    }
    rc = cm__io_open(c, CM_FILE_SECRET_KEY, CM_IO_PRIVATE | (c->readonly ? CM_IO_READONLY : 0));
    if (rc == CM_ERR_NOT_FOUND || (c->readonly && rc == CM_ERR_IO && c->err_errno == EACCES)) {
        c->err_file = CM_FILE_NONE;  /* no key (or not ours to read): nothing signs */
        *exists = rc != CM_ERR_NOT_FOUND;
        return CM_OK;
    }
    if (rc != CM_OK) return rc;
    *exists = *readable = 1;
    if ((rc = cm__io_size(c, CM_FILE_SECRET_KEY, &size)) != CM_OK) return rc;
    if (size != 64) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
    if ((rc = cm__io_read(c, CM_FILE_SECRET_KEY, out, 64, 0, &got)) != CM_OK) return rc;
    if (got != 64) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
    return CM_OK;
}

static int check_secret(cm_core *c, const uint8_t sk[64]) {
    uint8_t pk[32], sk2[64];
    if (cm_keypair_from_seed(sk, pk, sk2) != CM_OK) return CM_ERR_KEY;
    if (memcmp(pk, sk + 32, 32) != 0) return CM_ERR_KEY;
    if ((c->flags & HF_MANIFEST) && c->ver.manifest.n_signers == 0) return CM_ERR_KEY;
    if (!(c->flags & (HF_MANIFEST | HF_COMPAT))) return CM_ERR_KEY;
    if (memcmp(pk, cm__signer_pk(c), 32) != 0) return CM_ERR_KEY;
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
            return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
        if (o->compat) {
            if (o->manifest) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
            c->flags = HF_COMPAT;
            memcpy(c->key, pk, 32);
            cm_verifier_init(&c->ver, c->key, NULL, 0);
        } else {
            cm_manifest m;
            uint8_t h[32];
            if (o->manifest) {
                if (o->manifest_len > CM_MAX_MANIFEST)
                    return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
                memcpy(man, o->manifest, o->manifest_len);
                man_len = o->manifest_len;
            } else {
                cm_manifest_default(pk, &m);
                if ((rc = cm_manifest_encode(&m, man, sizeof(man), &man_len)) != CM_OK)
                    return cm__fail(c, rc, CM_FILE_NONE);
            }
            if ((rc = cm_manifest_decode(man, man_len, &m)) != CM_OK)
                return cm__fail(c, rc, CM_FILE_NONE);
            if (m.n_signers == 0 || m.quorum != 1 || memcmp(m.signers[0].public_key, pk, 32) != 0)
                return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
            cm_manifest_hash(man, man_len, h);
            memcpy(c->key, h, 32);
            if ((rc = cm__set_manifest(c, man, man_len)) != CM_OK)
                return cm__fail(c, rc, CM_FILE_NONE);
        }
        if (o->key && memcmp(o->key, c->key, 32) != 0) return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
        c->writer_store = c->has_secret = c->writable = 1;
        memcpy(c->secret, o->secret_key, 64);
    } else if (o->key) {
        memcpy(c->key, o->key, 32);
        /* `compat` is a writer option: a replica learns its mode from the
         * manifest (flags 0 = the key is used as a public key until then). */
        if (o->manifest) {
            if ((rc = cm__set_manifest(c, o->manifest, o->manifest_len)) != CM_OK)
                return cm__fail(c, rc, CM_FILE_NONE);
        } else {
            c->flags = 0;
            cm_verifier_init(&c->ver, c->key, NULL, 0);
        }
    } else {
        return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    }

    if (c->writable) {
        /* A secret_key file left by an interrupted creation is reused only if
         * it holds this very key (or was torn before reaching 64 bytes). */
        rc = cm__io_open(c, CM_FILE_SECRET_KEY, CM_IO_PRIVATE);
        if (rc == CM_OK) {
            uint8_t existing[64];
            size_t got;
            if ((rc = cm__io_size(c, CM_FILE_SECRET_KEY, &size)) != CM_OK) return rc;
            if (size == 64) {
                if ((rc = cm__io_read(c, CM_FILE_SECRET_KEY, existing, 64, 0, &got)) != CM_OK)
                    return rc;
                if (got != 64 || memcmp(existing, c->secret, 64) != 0)
                    return cm__fail(c, CM_ERR_KEY, CM_FILE_SECRET_KEY);
            }
        } else if (rc == CM_ERR_NOT_FOUND) {
            c->err_file = CM_FILE_NONE;
            rc = cm__io_open(c, CM_FILE_SECRET_KEY, CM_IO_CREATE | CM_IO_PRIVATE);
            if (rc != CM_OK) return rc;
        } else {
            return rc;
        }
        if ((rc = cm__io_truncate(c, CM_FILE_SECRET_KEY, 0)) != CM_OK) return rc;
        if ((rc = cm__io_write(c, CM_FILE_SECRET_KEY, c->secret, 64, 0)) != CM_OK) return rc;
        if ((rc = cm__io_sync(c, CM_FILE_SECRET_KEY)) != CM_OK) return rc;
    }
    if (!c->f[CM_FILE_WAL] && (rc = cm__io_open(c, CM_FILE_WAL, CM_IO_CREATE)) != CM_OK) return rc;
    if (!c->f[CM_FILE_TREE] && (rc = cm__io_open(c, CM_FILE_TREE, CM_IO_CREATE)) != CM_OK)
        return rc;
    if (!c->f[CM_FILE_DATA] && (rc = cm__io_open(c, CM_FILE_DATA, CM_IO_CREATE)) != CM_OK)
        return rc;
    if ((rc = cm__io_size(c, CM_FILE_WAL, &size)) != CM_OK) return rc;
    if (size && (rc = cm__io_truncate(c, CM_FILE_WAL, 0)) != CM_OK) return rc;
    if ((rc = cm__io_size(c, CM_FILE_TREE, &size)) != CM_OK) return rc;
    if (size && (rc = cm__io_truncate(c, CM_FILE_TREE, 0)) != CM_OK) return rc;
    if ((rc = cm__io_size(c, CM_FILE_DATA, &size)) != CM_OK) return rc;
    if (size && (rc = cm__io_truncate(c, CM_FILE_DATA, 0)) != CM_OK) return rc;

    c->fork = c->length = c->contiguous = c->byte_length = c->cbytes = 0;
    cm_hash_tree(NULL, 0, c->tree_hash);
    c->n_roots = 0;
    c->sig_len = 0;
    c->hdr_seq = 0;
    c->hdr_version = CM_FORMAT_VERSION;
    c->wal_gen = 0;
    return cm__write_header(c, 0, 0);
}

/* wal, tree and data (a snapshot opens them once, read-only; they must exist). */
static int open_data_files(cm_core *c) {
    cm_file_id fid;
    int rc;
    for (fid = CM_FILE_WAL; fid <= CM_FILE_DATA; fid++) {
        if (c->f[fid]) continue;
        rc = cm__io_open(c, fid, c->readonly ? CM_IO_READONLY : CM_IO_CREATE);
        if (rc == CM_ERR_NOT_FOUND) return cm__fail(c, CM_ERR_CORRUPT, fid);
        if (rc != CM_OK) return rc;
    }
    return CM_OK;
}

/* Existing store: state from the chosen header slot. */
static int load_header(cm_core *c, const cm__hdr *h, const cm_open_opts *o) {
    int rc;
    c->writer_store = c->has_secret = c->writable = 0;
    if (h->flags & ~(HF_COMPAT | HF_MANIFEST)) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if ((h->flags & HF_COMPAT) && (h->flags & HF_MANIFEST))
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (h->sig_len > CM_MAX_SIGNATURE || h->manifest_len > CM_MAX_MANIFEST ||
        h->contiguous > h->length || h->length > CM_MAX_LENGTH)
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (((h->flags & HF_MANIFEST) != 0) != (h->manifest_len != 0))
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    memcpy(c->key, h->key, 32);
    c->flags = h->flags & HF_COMPAT;
    cm_verifier_init(&c->ver, c->key, NULL, 0);
    if (h->flags & HF_MANIFEST) {
        if (cm__set_manifest(c, h->manifest, h->manifest_len) != CM_OK)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    }
    if (o->key && memcmp(o->key, c->key, 32) != 0) return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
    if (o->manifest && (!(c->flags & HF_MANIFEST) || o->manifest_len != c->manifest_len ||
                        memcmp(o->manifest, c->manifest, c->manifest_len) != 0))
        return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
    c->fork = h->fork;
    c->length = h->length;
    c->contiguous = h->contiguous;
    c->byte_length = h->byte_length;
    memcpy(c->tree_hash, h->tree_hash, 32);
    memcpy(c->sig, h->sig, h->sig_len);
    c->sig_len = h->sig_len;
    c->hdr_seq = h->seq;
    c->hdr_version = h->format_version;
    c->wal_gen = h->wal_gen;

    {
        uint8_t sk[64];
        int exists, readable;
        if ((rc = read_secret(c, sk, &exists, &readable)) != CM_OK) return rc;
        c->writer_store = exists;
        if (readable) {
            if (check_secret(c, sk) != CM_OK)
                return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_SECRET_KEY);
            if (o->secret_key && memcmp(o->secret_key, sk, 64) != 0)
                return cm__fail(c, CM_ERR_KEY, CM_FILE_SECRET_KEY);
            memcpy(c->secret, sk, 64);
            c->has_secret = 1;
            c->writable = !c->readonly;
        } else if (o->secret_key && !exists) {
            /* The signer's key for a store without one: it becomes a writer,
             * which needs every block. */
            if (check_secret(c, o->secret_key) != CM_OK)
                return cm__fail(c, CM_ERR_KEY, CM_FILE_NONE);
            if (c->contiguous != c->length) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
            memcpy(c->secret, o->secret_key, 64);
            if ((rc = cm__io_open(c, CM_FILE_SECRET_KEY, CM_IO_CREATE | CM_IO_PRIVATE)) != CM_OK)
                return rc;
            if ((rc = cm__io_truncate(c, CM_FILE_SECRET_KEY, 0)) != CM_OK) return rc;
            if ((rc = cm__io_write(c, CM_FILE_SECRET_KEY, c->secret, 64, 0)) != CM_OK) return rc;
            if ((rc = cm__io_sync(c, CM_FILE_SECRET_KEY)) != CM_OK) return rc;
            c->writer_store = c->has_secret = c->writable = 1;
            c->sig_len = 0; /* a writer keeps no signature in its header */
        }
    }
    return open_data_files(c);
}

/* Both header slots, in one read: valid[i] if slot i parses at its place. */
static int read_slots(cm_core *c, uint8_t slots[2][SLOT_SIZE], cm__hdr h[2], int valid[2]) {
    size_t got;
    int i, rc;
    memset(slots, 0, 2 * SLOT_SIZE);
    rc = cm__io_read(c, CM_FILE_HEADER, slots[0], 2 * SLOT_SIZE, 0, &got);
    if (rc != CM_OK) return rc;
    for (i = 0; i < 2; i++) {
        size_t in_slot = got > (size_t)i * SLOT_SIZE ? got - (size_t)i * SLOT_SIZE : 0;
        if (in_slot > SLOT_SIZE) in_slot = SLOT_SIZE;
        valid[i] = cm__hdr_parse(slots[i], in_slot, &h[i]) && (h[i].seq % 2) == (uint64_t)i;
    }
    return CM_OK;
}

/* A writer whose tree or data file holds more than its state (records were
 * written and applied, then lost: a power cut before their sync, or damage
 * to the wal) may have handed out signatures of states it no longer has:
 * signing new states on the same fork could contradict them, so it moves to
 * a new fork at what it holds (a truncation, checkpointed). */
static int refork_if_lost(cm_core *c, cm_recovery *rec) {
    uint64_t tsize, dsize;
    int rc;
    if ((rc = cm__io_size(c, CM_FILE_TREE, &tsize)) != CM_OK) return rc;
    if ((rc = cm__io_size(c, CM_FILE_DATA, &dsize)) != CM_OK) return rc;
    if (tsize <= (c->length > 0 ? (2 * c->length - 1) * NODE_SLOT : 0) && dsize <= c->byte_length)
        return CM_OK;
    rec->forked = 1;
    return cm_core_truncate(c, c->length, c->fork + 1);
}

/* Format 1 -> 2 (and the checkpoint after a torn tail): the layout is the
 * same; format 2 only checkpoints every truncation, which a header slot of
 * version 2 written now (crash-safe as any checkpoint) starts to promise. */
static int migrate(cm_core *c) {
    return cm__checkpoint(c);
}

/* No valid slot: if wal, tree and data are all empty (or, for a snapshot,
 * missing), creation was interrupted before anything else was written or is
 * under way - no store yet.  Otherwise the header is damaged. */
static int no_header(cm_core *c, const cm_open_opts *o) {
    cm_file_id fid;
    uint64_t bytes = 0;
    int rc;
    for (fid = CM_FILE_WAL; fid <= CM_FILE_DATA; fid++) {
        uint64_t sz;
        rc = cm__io_open(c, fid, c->readonly ? CM_IO_READONLY : CM_IO_CREATE);
        if (rc == CM_ERR_NOT_FOUND && c->readonly) continue;
        if (rc != CM_OK) return rc;
        if ((rc = cm__io_size(c, fid, &sz)) != CM_OK) return rc;
        bytes += sz;
    }
    if (bytes > 0) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (!o->create) return cm__fail(c, CM_ERR_NOT_FOUND, CM_FILE_HEADER);
    return create_store(c, o);
}

/* The state of the newest valid slot plus the records after it, checked:
 * the roots against the tree hash, a replica's signature.  *seq = the slot's. */
static int load_state(cm_core *c, const cm_open_opts *o, cm_recovery *rec, int *torn,
                      uint64_t *seq) {
    uint8_t slots[2][SLOT_SIZE];
    cm__hdr h[2];
    int valid[2], use, rc;
    if ((rc = read_slots(c, slots, h, valid)) != CM_OK) return rc;
    if (!valid[0] && !valid[1]) {
        rec->header_slot = 0;
        *seq = UINT64_MAX;
        return no_header(c, o);
    }
    use = (valid[0] && valid[1]) ? (h[1].seq > h[0].seq ? 1 : 0) : (valid[0] ? 0 : 1);
    rec->header_slot = use;
    if (!valid[1 - use] && !cm__is_zero(slots[1 - use], SLOT_SIZE)) rec->header_fallback = 1;
    *seq = h[use].seq;
    /* Older versions too: a store of a format without a migration to this
     * one is not read (docs/format.md, "Changing the format"). */
    if (h[use].format_version < CM_FORMAT_OLDEST || h[use].format_version > CM_FORMAT_VERSION)
        return cm__fail(c, CM_ERR_VERSION, CM_FILE_HEADER);
    if ((rc = load_header(c, &h[use], o)) != CM_OK) return rc;
    if ((rc = cm__replay(c, rec, torn)) != CM_OK) return rc;
    if ((rc = cm__load_roots(c)) != CM_OK) return rc;
    if (!c->writer_store && c->sig_len == 0 && (c->length > 0 || c->fork > 0))
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (!c->writer_store && c->sig_len > 0 &&
        cm_verifier_check(&c->ver, c->tree_hash, c->length, c->fork, c->sig, c->sig_len) != CM_OK)
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    if (c->writer_store && c->contiguous != c->length)
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
    c->cbytes = c->byte_length;
    if (c->contiguous < c->length) return cm__contiguous_plan(c, NULL, NULL, &c->cbytes);
    return CM_OK;
}

static int open_core(cm_core *c, const cm_open_opts *o, cm_recovery *rec) {
    int rc, torn = 0;
    uint64_t seq;
    rc = cm__io_open(c, CM_FILE_HEADER, o->create ? CM_IO_CREATE : 0);
    if (rc != CM_OK) return rc;
    if ((rc = c->io.lock(c->io.ctx, c->f[CM_FILE_HEADER])) != CM_OK)
        return cm__fail(c, rc, CM_FILE_HEADER);
    if ((rc = load_state(c, o, rec, &torn, &seq)) != CM_OK || seq == UINT64_MAX) return rc;
    if (rec->records_replayed > 0) {
        /* Replayed records may sit in the page cache only (kill -9): make
         * them durable before later records claim them in durable_count. */
        if ((rc = cm__io_sync(c, CM_FILE_WAL)) != CM_OK) return rc;
        c->wal_synced = c->wal_seq;
    }
    if (!c->writable) {
        /* Replica: anything past the contiguous region may hold writes of
         * records that never became durable. */
        uint64_t tsize, dsize, C = c->contiguous;
        if ((rc = cm__io_size(c, CM_FILE_TREE, &tsize)) != CM_OK) return rc;
        if ((rc = cm__io_size(c, CM_FILE_DATA, &dsize)) != CM_OK) return rc;
        if (C < c->length || tsize > (C > 0 ? (2 * C - 1) * NODE_SLOT : 0) || dsize > c->cbytes) {
            if ((rc = cm__sanitize(c)) != CM_OK) return rc;
        }
    }
    if (c->writable && (rc = refork_if_lost(c, rec)) != CM_OK) return rc;
    if ((torn || c->hdr_version < CM_FORMAT_VERSION) && !rec->forked &&
        (rc = migrate(c)) != CM_OK)
        return rc;
    cm__scratch_trim(c);
    return CM_OK;
}

#define SNAPSHOT_TRIES 16

/* A read-only snapshot: no lock, nothing written (docs/format.md, "Read-only
 * snapshots").  If a checkpoint started a new header slot while the records
 * were read, the state read is still one that was committed, but the files
 * may have moved on from it: read again from the new slot.  A check that
 * failed may be the writer changing the files under the read (a truncation
 * the records read do not reach yet): read again too, a few times. */
static int open_snapshot(cm_core *c, const cm_open_opts *o, cm_recovery *rec) {
    int rc = CM_OK, tries, torn;
    if ((rc = cm__io_open(c, CM_FILE_HEADER, CM_IO_READONLY)) != CM_OK) return rc;
    for (tries = 0; tries < SNAPSHOT_TRIES; tries++) {
        uint8_t slots[2][SLOT_SIZE];
        cm__hdr h[2];
        int valid[2];
        uint64_t seq;
        memset(rec, 0, sizeof(*rec));
        cm__ov_free(&c->ov);
        rc = load_state(c, o, rec, &torn, &seq);
        if ((rc != CM_OK && rc != CM_ERR_CORRUPT) || seq == UINT64_MAX) return rc;
        if (rc == CM_OK) {
            if ((rc = read_slots(c, slots, h, valid)) != CM_OK) return rc;
            if (!(valid[0] && h[0].seq > seq) && !(valid[1] && h[1].seq > seq)) return CM_OK;
        }
    }
    return rc;
}

int cm_core_open(const cm_open_opts *opts, cm_core **out, cm_recovery *recovery) {
    cm_core *c;
    cm_recovery dummy;
    int rc;
    cm_recovery *rec = recovery ? recovery : &dummy;
    memset(rec, 0, sizeof(*rec));
    rec->err_file = CM_FILE_NONE;
    if (out) *out = NULL;
    if (!opts || !out || !opts->io) return CM_ERR_INVALID;
    if (opts->durability != CM_DURABLE_SYNC && opts->durability != CM_DURABLE_BATCH &&
        opts->durability != CM_DURABLE_NONE)
        return CM_ERR_INVALID;
    if (opts->manifest && (opts->manifest_len == 0 || opts->manifest_len > CM_MAX_MANIFEST))
        return CM_ERR_INVALID;
    if (opts->readonly && (opts->create || opts->secret_key)) return CM_ERR_INVALID;
    if (cm_init() != CM_OK) return CM_ERR_INVALID;
    c = (cm_core *)calloc(1, sizeof(*c));
    if (!c) return CM_ERR_NOMEM;
    c->vgen = 1; /* cache entries start at generation 0: all invalid */
    c->io = *opts->io;
    c->durability = opts->durability;
    c->checkpoint_bytes =
        opts->checkpoint_bytes ? opts->checkpoint_bytes : CM_DEFAULT_CHECKPOINT_BYTES;
    c->max_block = opts->max_block_size ? opts->max_block_size : CM_DEFAULT_MAX_BLOCK;
    c->readonly = opts->readonly != 0;
    cm__ov_init(&c->ov);
    rc = c->readonly ? open_snapshot(c, opts, rec) : open_core(c, opts, rec);
    if (rc != CM_OK) {
        rec->err_file = c->err_file;
        rec->err_errno = c->err_errno;
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
    if (!c->poisoned && !c->readonly && c->wal_seq > 0) rc = cm__checkpoint(c);
    core_free(c);
    return rc;
}
