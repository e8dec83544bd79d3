/*
 * cm_treefile.c - the tree file (docs/format.md, "tree", "Reading"): node
 * slots, verified walks from the signed roots with a cache of verified nodes,
 * the roots on open, node queries.  Twin: _pure/treefile.py.
 */
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

/* Raw slot read. *present = 0 for an all-zero (or missing) slot. */
int cm__tree_read(cm_core *c, uint64_t index, cm_node *out, int *present) {
    uint8_t buf[NODE_SLOT];
    size_t got;
    int rc;
    *present = 0;
    out->index = index;
    out->size = 0;
    memset(out->hash, 0, 32);
    if (index > (UINT64_MAX / NODE_SLOT) - 1) return CM_OK;
    if (c->readonly && cm__ov_node(&c->ov, index, out, present)) return CM_OK;
    memset(buf, 0, sizeof(buf));
    rc = cm__io_read(c, CM_FILE_TREE, buf, NODE_SLOT, index * NODE_SLOT, &got);
    if (rc != CM_OK) return rc;
    if (cm__is_zero(buf, NODE_SLOT)) return CM_OK;
    out->size = cm__get_u64(buf);
    memcpy(out->hash, buf + 8, 32);
    *present = 1;
    return CM_OK;
}

int cm__tree_read_slots(cm_core *c, uint64_t first, size_t count, cm_node *out) {
    uint8_t slab[(2 * RANGE_RUN - 1) * NODE_SLOT];
    size_t got, i;
    int rc;
    if (count >= 2 * RANGE_RUN || first > UINT64_MAX / NODE_SLOT - count)
        return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    memset(slab, 0, count * NODE_SLOT);
    rc = cm__io_read(c, CM_FILE_TREE, slab, count * NODE_SLOT, first * NODE_SLOT, &got);
    if (rc != CM_OK) return rc;
    if (got != count * NODE_SLOT && !c->readonly) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    for (i = 0; i < count; i++) {
        const uint8_t *slot = slab + i * NODE_SLOT;
        int present = !cm__is_zero(slot, NODE_SLOT);
        out[i].index = first + i;
        if (c->readonly && cm__ov_node(&c->ov, first + i, &out[i], &present)) {
            if (!present) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            continue;
        }
        if (!present) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        out[i].size = cm__get_u64(slot);
        memcpy(out[i].hash, slot + 8, 32);
    }
    return CM_OK;
}

/* A node's cache slot: its index, mixed (Fibonacci hashing).  By index
 * alone, every node above level 10 would share one slot (its low ten bits
 * are all ones) and every walk would read them again. */
static size_t vcache_slot(uint64_t index) {
    return (size_t)((index * UINT64_C(0x9E3779B97F4A7C15)) >> 32) % CM_VCACHE;
}

static int vcache_get(const cm_core *c, uint64_t index, cm_node *out) {
    size_t slot = vcache_slot(index);
    if (!c->vcache || c->vcache[slot].gen != c->vgen || c->vcache[slot].node.index != index)
        return 0;
    *out = c->vcache[slot].node;
    return 1;
}

static void vcache_put(cm_core *c, const cm_node *n) {
    size_t slot = vcache_slot(n->index);
    if (!c->vcache && !(c->vcache = (cm__vslot *)calloc(CM_VCACHE, sizeof(cm__vslot))))
        return; /* no memory for it: later walks verify these nodes again */
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
        if ((cur.index & 1) == 0 || ++guard > 64) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        li = cm_ft_left_child(cur.index);
        ri = cm_ft_right_child(cur.index);
        if (vcache_get(c, li, &l) && vcache_get(c, ri, &r)) {
            /* both children were verified against this same parent before */
        } else {
            if ((rc = cm__tree_read(c, li, &l, &pl)) != CM_OK) return rc;
            if ((rc = cm__tree_read(c, ri, &r, &pr)) != CM_OK) return rc;
            if (!pl || !pr) return CM_ERR_UNAVAILABLE;
            if (l.size + r.size < l.size || l.size + r.size != cur.size)
                return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            cm_hash_parent(&l, &r, &p);
            if (memcmp(p.hash, cur.hash, 32) != 0) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
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
int cm__walk_held(cm_core *c, uint64_t target, cm_node *out, uint64_t *offset) {
    int rc = walk_to(c, target, out, offset);
    if (rc == CM_ERR_UNAVAILABLE) {
        if (c->contiguous > 0 && cm_ft_right_span(target) <= 2 * c->contiguous - 2)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        return cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    }
    if (rc == CM_ERR_RANGE) return cm__fail(c, rc, CM_FILE_NONE);
    return rc;
}

/* Ancestors of leaf 2n-2 below 2n-1 whose span reaches past it, ascending. */
size_t cm__clear_list(uint64_t n, uint64_t out[CM_MAX_ROOTS]) {
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

/* Read the roots of `length` from tree and check them against the state. */
int cm__load_roots(cm_core *c) {
    uint64_t idx[CM_MAX_ROOTS], bytes = 0;
    size_t n = cm_ft_full_roots(c->length, idx), i;
    uint8_t th[32];
    int rc;
    for (i = 0; i < n; i++) {
        int present;
        if ((rc = cm__tree_read(c, idx[i], &c->roots[i], &present)) != CM_OK) return rc;
        if (!present) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        if (bytes + c->roots[i].size < bytes) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        bytes += c->roots[i].size;
    }
    c->n_roots = n;
    cm_hash_tree(c->roots, n, th);
    if (memcmp(th, c->tree_hash, 32) != 0 || bytes != c->byte_length)
        return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    return CM_OK;
}

int cm_core_get_node(cm_core *c, uint64_t index, cm_node *out) {
    c->err_file = CM_FILE_NONE;
    if (c->length == 0 || index >= 2 * CM_MAX_LENGTH ||
        cm_ft_right_span(index) > 2 * c->length - 2)
        return cm__fail(c, CM_ERR_RANGE, CM_FILE_NONE);
    return cm__walk_held(c, index, out, NULL);
}

int cm_core_has_node(cm_core *c, uint64_t index) {
    cm_node n;
    int present, rc;
    c->err_file = CM_FILE_NONE;
    if (c->length == 0 || index >= 2 * CM_MAX_LENGTH ||
        cm_ft_right_span(index) > 2 * c->length - 2)
        return 0;
    if ((rc = cm__tree_read(c, index, &n, &present)) != CM_OK) return rc;
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
        if ((rc = cm__tree_read(c, ite, &n, &present)) != CM_OK) return rc;
        if (present) break;
        if (++cnt > 64) break;
        ite = cm_ft_parent(ite);
    }
    *nodes = cnt;
    return CM_OK;
}

int cm__get_node(void *ctx, uint64_t index, cm_node *out) {
    cm_core *c = (cm_core *)ctx;
    int present, rc;
    size_t i;
    for (i = 0; i < c->n_roots; i++) {
        if (c->roots[i].index == index) {
            *out = c->roots[i];
            return CM_OK;
        }
    }
    if ((rc = cm__tree_read(c, index, out, &present)) != CM_OK) return rc;
    return present ? CM_OK : cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
}
