/*
 * cm_blocks.c - the data file and verified reads (docs/format.md,
 * "Reading"): get, get_range (aligned runs checked as subtrees), block sizes,
 * and proofs (a block with its Merkle path).  Twin: _pure/blocks.py.
 */
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

int cm_core_block_size(cm_core *c, uint64_t index, uint64_t *size) {
    cm_node leaf;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (index >= c->length) return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if ((rc = cm__walk_held(c, 2 * index, &leaf, NULL)) != CM_OK) return rc;
    *size = leaf.size;
    return CM_OK;
}

/* Read the bytes of a verified leaf at `off` into buf and check them. */
static int read_leaf(cm_core *c, const cm_node *leaf, uint64_t off, uint8_t *buf) {
    cm_node chk;
    size_t got;
    int rc;
    if (leaf->size > 0) {
        if ((rc = cm__read_data(c, buf, (size_t)leaf->size, off, &got)) != CM_OK)
            return rc;
        if (got != leaf->size) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    }
    cm_hash_leaf(leaf->index / 2, buf, (size_t)leaf->size, &chk);
    if (memcmp(chk.hash, leaf->hash, 32) != 0) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    return CM_OK;
}

/* Verified read of block `index` into buf (cap >= its size). */
static int read_block(cm_core *c, uint64_t index, uint8_t *buf, size_t cap, size_t *len) {
    cm_node leaf;
    uint64_t off;
    int rc;
    if (index >= c->length) return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (index >= c->contiguous) return cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if ((rc = cm__walk_held(c, 2 * index, &leaf, &off)) != CM_OK) return rc;
    if (leaf.size > (uint64_t)SIZE_MAX) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    *len = (size_t)leaf.size;
    if (cap < leaf.size) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    return read_leaf(c, &leaf, off, buf);
}

int cm_core_get(cm_core *c, uint64_t index, uint8_t *buf, size_t cap, size_t *len) {
    c->err_file = CM_FILE_NONE;
    return read_block(c, index, buf, cap, len);
}


/* Aligned run [pos, pos+n) (n a power of two, 2..RANGE_RUN) into buf (at the
 * run's first byte): its 2n-1 tree slots in one read, each parent re-hashed
 * from its children, the top checked against the verified walk, then the
 * data in one read with every leaf re-hashed. */
static int read_run(cm_core *c, uint64_t pos, uint64_t n, uint8_t *buf, uint64_t *sizes) {
    cm_node t[2 * RANGE_RUN - 1], top, chk;
    uint64_t base = 2 * pos, count = 2 * n - 1, i, off, at;
    size_t got;
    int rc;
    if ((rc = cm__walk_held(c, base + n - 1, &top, &off)) != CM_OK) return rc;
    if ((rc = cm__tree_read_slots(c, base, (size_t)count, t)) != CM_OK) return rc;
    for (i = 1; i < count; i += 2) {  /* parents sit at the odd relative indexes */
        const cm_node *l = &t[cm_ft_left_child(base + i) - base];
        const cm_node *r = &t[cm_ft_right_child(base + i) - base];
        if (l->size + r->size < l->size || l->size + r->size != t[i].size)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        cm_hash_parent(l, r, &chk);
        if (memcmp(chk.hash, t[i].hash, 32) != 0) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    }
    if (!cm__node_eq(&t[n - 1], &top)) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    if (top.size > 0) {
        if ((rc = cm__read_data(c, buf, (size_t)top.size, off, &got)) != CM_OK) return rc;
        if (got != top.size) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
    }
    for (i = 0, at = 0; i < n; i++) {
        cm_hash_leaf(pos + i, buf + at, (size_t)t[2 * i].size, &chk);
        if (memcmp(chk.hash, t[2 * i].hash, 32) != 0)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_DATA);
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
    if (start > end || end > c->length) return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (start == end) return CM_OK;
    if (end > c->contiguous) return cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if ((rc = cm__walk_held(c, 2 * start, &first, &off0)) != CM_OK) return rc;
    if ((rc = cm__walk_held(c, 2 * (end - 1), &last, &offl)) != CM_OK) return rc;
    if (offl < off0 || offl + last.size < offl) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    *total = offl + last.size - off0;
    if (*total > (uint64_t)cap) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    for (pos = start, at = 0; pos < end; pos += n) {
        for (n = RANGE_RUN; n > 1 && (pos % n != 0 || pos + n > end); n /= 2) {
        }
        if (n == 1) {
            cm_node leaf;
            uint64_t off;
            if ((rc = cm__walk_held(c, 2 * pos, &leaf, &off)) != CM_OK) return rc;
            if (off != off0 + at) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
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
    if (at != *total) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    return CM_OK;
}

/* A writer hands out only signatures of durable states: a state it could
 * lose in a power cut and sign differently afterwards would contradict what
 * it published.  So the wal is synced first (one fdatasync, batch or none
 * durability only), and the tree and data files get what write-behind holds
 * (no sync): if the wal is lost later, they show that records were there
 * (opening re-forks, docs/format.md "Opening" step 5). */
static int durable_signature(cm_core *c) {
    int rc;
    if (c->writable) {
        if (c->wal_synced != c->wal_seq && (rc = cm_core_flush(c)) != CM_OK) return rc;
        if ((rc = cm__io_flush(c, CM_FILE_TREE)) != CM_OK) return rc;
        if ((rc = cm__io_flush(c, CM_FILE_DATA)) != CM_OK) return rc;
    }
    return cm__ensure_signature(c);
}

int cm_core_signature(cm_core *c, uint8_t *out, size_t cap, size_t *len) {
    int rc = durable_signature(c);
    if (rc != CM_OK) return rc;
    *len = c->sig_len;
    if (cap < c->sig_len) return CM_ERR_TOO_LARGE;
    if (c->sig_len) memcpy(out, c->sig, c->sig_len);
    return CM_OK;
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
    if (req->has_upgrade && (rc = durable_signature(c)) != CM_OK) return rc;
    if (!c->msg && !(c->msg = (cm_data_msg *)malloc(sizeof(*c->msg))))
        return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    m = c->msg;
    memset(m, 0, sizeof(*m));
    m->request = req->request;
    m->fork = c->fork;
    rc = cm__proof_generate(c->length, req, cm__get_node, c, m);
    if (rc == CM_OK && m->has_block) {
        if (req->block_index >= c->contiguous)
            rc = cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
        else if ((rc = cm__walk_held(c, 2 * req->block_index, &leaf, &leaf_off)) == CM_OK) {
            if (leaf.size > (uint64_t)SIZE_MAX) rc = cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
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
        if (rc == CM_ERR_TOO_LARGE) rc = cm__fail(c, rc, CM_FILE_NONE);
    }
    if (rc == CM_OK && m->has_block) rc = read_leaf(c, &leaf, leaf_off, out + value_off);
    if (rc == CM_ERR_INVALID || rc == CM_ERR_RANGE) c->err_file = CM_FILE_NONE;
    return rc;
}
