/*
 * cm_writer.c - a writer's operations (docs/format.md, "Commit protocol"):
 * append and truncate, each one write-ahead record.  Twin: _pure/writer.py.
 */
#include <string.h>

#include "cm_store.h"

int cm_core_append(cm_core *c, const cm_buf *blocks, size_t n, uint64_t *new_length) {
    uint64_t total = 0, L = c->length, n_par, n_nodes, i;
    cm_node roots[CM_MAX_ROOTS + 1];
    size_t nr = c->n_roots, tot;
    cm__rec_spec s;
    uint8_t *na, *da;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (!c->writable) return cm__fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if ((rc = cm__poisoned(c)) != CM_OK) return rc;
    if (n == 0) {
        if (new_length) *new_length = c->length;
        return CM_OK;
    }
    if (!blocks) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if ((uint64_t)n > CM_MAX_APPEND_BLOCKS) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    for (i = 0; i < n; i++) {
        if (blocks[i].len > 0 && blocks[i].data == NULL)
            return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
        if ((uint64_t)blocks[i].len > c->max_block)
            return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
        total += blocks[i].len;
        if (total > CM_MAX_APPEND_BYTES) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    }
    if (L + n > CM_MAX_LENGTH || c->byte_length + total < c->byte_length)
        return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
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
    if ((rc = cm__rec_build(c, &s, &na, &da, &tot)) != CM_OK) return rc;

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
    if ((rc = cm__wal_commit(c, tot, 0)) != CM_OK) return rc;
    memcpy(c->roots, roots, nr * sizeof(cm_node));
    c->n_roots = nr;
    c->cbytes = c->byte_length;
    if (new_length) *new_length = c->length;
    return cm__maybe_checkpoint(c);
}

int cm_core_truncate(cm_core *c, uint64_t length, uint64_t fork) {
    uint64_t idx[CM_MAX_ROOTS], clear[CM_MAX_ROOTS], bytes = 0;
    cm_node roots[CM_MAX_ROOTS];
    uint8_t th[32];
    size_t nr, i, tot;
    cm__rec_spec s;
    uint8_t *na, *da;
    int rc;
    c->err_file = CM_FILE_NONE;
    if (!c->writable) return cm__fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if ((rc = cm__poisoned(c)) != CM_OK) return rc;
    if (length > c->length) return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    if (fork <= c->fork) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    nr = cm_ft_full_roots(length, idx);
    for (i = 0; i < nr; i++) {
        if ((rc = cm__walk_held(c, idx[i], &roots[i], NULL)) != CM_OK) return rc;
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
    s.n_clear = (uint32_t)cm__clear_list(length, clear);
    s.clear = clear;
    if ((rc = cm__rec_build(c, &s, &na, &da, &tot)) != CM_OK) return rc;
    if ((rc = cm__wal_commit(c, tot, 1)) != CM_OK) return rc;
    memcpy(c->roots, roots, nr * sizeof(cm_node));
    c->n_roots = nr;
    c->cbytes = bytes;
    /* The new fork goes into the header at once: losing wal bytes later can
     * never take the store back to the fork it signed before (format 2). */
    return cm__checkpoint(c);
}
