/*
 * cm_proof.c - Merkle proofs: stateless verification of a `data` message
 * (hypercore-format §4.2, hypercore's verifyTree + verifyUpgrade) and proof
 * generation for block + upgrade requests (hypercore's generateProof).
 *
 * Verification works on the stack only; no allocation.
 */
#include <string.h>

#include "cm.h"
#include "cm_internal.h"

#define NODES_CAP (4 * CM_MAX_PROOF_NODES + 2 * CM_MAX_ROOTS)
/* Received nodes must have index < 2^62 and size < 2^63; a block index is
 * below 2^61 and an upgrade ends below length 2^61 (cm.h). */
static int node_ok(const cm_node *x) {
    return x->index < CM_MAX_NODE_INDEX && x->size < CM_MAX_NODE_SIZE;
}
#define STACK_CAP (CM_MAX_ROOTS + 8)

typedef struct vctx {
    cm_proof_check *out;
    cm_node stack[STACK_CAP];
    size_t n;
} vctx;

static int record(vctx *c, const cm_node *x) {
    if (c->out->n_nodes >= NODES_CAP) return CM_ERR_BAD_PROOF;
    c->out->nodes[c->out->n_nodes++] = *x;
    return CM_OK;
}

/* Parent of two siblings given in any order; checks sizes do not wrap. */
static int parent_of(const cm_node *x, const cm_node *y, cm_node *out) {
    const cm_node *a = x->index < y->index ? x : y;
    const cm_node *b = x->index < y->index ? y : x;
    if (a->size + b->size < a->size) return CM_ERR_BAD_PROOF;
    cm_hash_parent(a, b, out);
    return CM_OK;
}

/* merge-push: push x, then merge the top two while they are siblings. */
static int merge_push(vctx *c, const cm_node *x) {
    int rc;
    if (c->n >= STACK_CAP) return CM_ERR_BAD_PROOF;
    c->stack[c->n++] = *x;
    while (c->n >= 2 && cm_ft_sibling(c->stack[c->n - 1].index) == c->stack[c->n - 2].index) {
        cm_node p;
        rc = parent_of(&c->stack[c->n - 2], &c->stack[c->n - 1], &p);
        if (rc != CM_OK) return rc;
        if ((rc = record(c, &p)) != CM_OK) return rc;
        c->n -= 2;
        c->stack[c->n++] = p;
    }
    return CM_OK;
}

/* Node queue: `nodes` in order, with an optional pending `extra` node that
 * is handed out first when its index is asked for. */
typedef struct nqueue {
    const cm_node *nodes;
    size_t n, i;
    int has_extra;
    cm_node extra;
} nqueue;

static int q_take(vctx *c, nqueue *q, uint64_t idx, cm_node *out, int *received) {
    if (q->has_extra && q->extra.index == idx) {
        *out = q->extra;
        q->has_extra = 0;
        *received = 0;
        return CM_OK;
    }
    if (q->i >= q->n || q->nodes[q->i].index != idx || !node_ok(&q->nodes[q->i]))
        return CM_ERR_BAD_PROOF;
    *out = q->nodes[q->i++];
    *received = 1;
    (void)c;
    return CM_OK;
}

static int q_left(const nqueue *q) {
    return q->i < q->n || q->has_extra;
}

/* A path: start node, then each queue node must be the sibling of the
 * running node.  Mirrors hypercore's verifyTree loops. */
static int walk_path(vctx *c, nqueue *q, cm_node *x) {
    int rc, received;
    while (q_left(q)) {
        cm_node sib, p;
        if ((rc = q_take(c, q, cm_ft_sibling(x->index), &sib, &received)) != CM_OK) return rc;
        if (received && (rc = record(c, &sib)) != CM_OK) return rc;
        if ((rc = parent_of(x, &sib, &p)) != CM_OK) return rc;
        if (p.size >= CM_MAX_NODE_SIZE) return CM_ERR_BAD_PROOF;
        if ((rc = record(c, &p)) != CM_OK) return rc;
        *x = p;
    }
    return CM_OK;
}

static uint64_t length_of_roots(const cm_node *roots, size_t n) {
    if (n == 0) return 0;
    return cm_ft_right_span(roots[n - 1].index) / 2 + 1;
}

int cm_proof_check_msg(const cm_verifier *v, const cm_node *roots, size_t n_roots,
                       const cm_data_msg *m, cm_proof_check *out) {
    vctx c;
    int rc, received;
    int has_b = 0;
    cm_node b;
    uint64_t idx[CM_MAX_ROOTS];
    size_t nr, i;

    memset(out, 0, sizeof(*out));
    c.out = out;
    c.n = 0;
    if (n_roots > CM_MAX_ROOTS) return CM_ERR_INVALID;

    /* 1. block / hash part (seek proofs are not supported) */
    if (m->has_seek) return CM_ERR_BAD_PROOF;
    if (m->has_block && m->has_hash) return CM_ERR_BAD_PROOF;
    if (m->n_block_nodes > CM_MAX_PROOF_NODES || m->n_hash_nodes > CM_MAX_PROOF_NODES ||
        m->n_seek_nodes > CM_MAX_PROOF_NODES || m->n_upgrade_nodes > CM_MAX_PROOF_NODES ||
        m->n_additional_nodes > CM_MAX_PROOF_NODES)
        return CM_ERR_BAD_PROOF;
    {
        if (m->has_block || m->has_hash) {
            nqueue q;
            memset(&q, 0, sizeof(q));
            if (m->has_block) {
                if (m->block_index >= CM_MAX_BLOCK_INDEX) return CM_ERR_BAD_PROOF;
                if (m->block_len > 0 && m->block_value == NULL) return CM_ERR_BAD_PROOF;
                q.nodes = m->block_nodes;
                q.n = m->n_block_nodes;
                cm_hash_leaf(m->block_index, m->block_value, m->block_len, &b);
                if ((rc = record(&c, &b)) != CM_OK) return rc;
            } else {
                if (m->hash_index >= CM_MAX_NODE_INDEX) return CM_ERR_BAD_PROOF;
                q.nodes = m->hash_nodes;
                q.n = m->n_hash_nodes;
                if ((rc = q_take(&c, &q, m->hash_index, &b, &received)) != CM_OK) return rc;
                if ((rc = record(&c, &b)) != CM_OK) return rc;
            }
            if ((rc = walk_path(&c, &q, &b)) != CM_OK) return rc;
            has_b = 1;
        }
    }

    if (!m->has_upgrade) {
        if (has_b) {
            out->has_unverified = 1;
            out->unverified = b;
        }
        return CM_OK;
    }

    /* 2. upgrade part */
    {
        uint64_t start = m->upgrade_start, ulen = m->upgrade_length, tl, target;
        nqueue q;
        int grow;
        size_t j = 0;
        const cm_manifest *man = v->compat ? NULL : &v->manifest;

        tl = length_of_roots(roots, n_roots);
        nr = cm_ft_full_roots(tl, idx);
        if (nr != n_roots) return CM_ERR_INVALID;
        for (i = 0; i < nr; i++)
            if (roots[i].index != idx[i]) return CM_ERR_INVALID;
        if (start != tl) return CM_ERR_BAD_PROOF;
        if (ulen == 0 || start >= CM_MAX_BLOCK_INDEX || ulen >= CM_MAX_BLOCK_INDEX - start)
            return CM_ERR_BAD_PROOF;
        if (man && man->has_prologue) {
            uint64_t pl = man->prologue_length;
            if (start < pl && (start != 0 || ulen < pl)) return CM_ERR_BAD_PROOF;
        }

        for (i = 0; i < n_roots; i++) c.stack[i] = roots[i];
        c.n = n_roots;
        memset(&q, 0, sizeof(q));
        q.nodes = m->upgrade_nodes;
        q.n = m->n_upgrade_nodes;
        if (has_b) {
            q.has_extra = 1;
            q.extra = b;
        }
        grow = n_roots > 0;
        target = start + ulen;
        nr = cm_ft_full_roots(target, idx);
        for (i = 0; i < nr; i++) {
            uint64_t r = idx[i];
            cm_node x;
            if (j < n_roots && roots[j].index == r) {
                j++;
                continue;
            }
            if (grow) {
                grow = 0;
                if (j < n_roots) {
                    int guard = 0;
                    uint64_t p = c.stack[c.n - 1].index;
                    while (p != r) {
                        if (++guard > 64 || cm_ft_depth(p) >= cm_ft_depth(r))
                            return CM_ERR_BAD_PROOF;
                        rc = q_take(&c, &q, cm_ft_sibling(p), &x, &received);
                        if (rc != CM_OK) return rc;
                        if (received && (rc = record(&c, &x)) != CM_OK) return rc;
                        if ((rc = merge_push(&c, &x)) != CM_OK) return rc;
                        p = c.stack[c.n - 1].index;
                    }
                    continue;
                }
            }
            if ((rc = q_take(&c, &q, r, &x, &received)) != CM_OK) return rc;
            if (received && (rc = record(&c, &x)) != CM_OK) return rc;
            if ((rc = merge_push(&c, &x)) != CM_OK) return rc;
        }
        if (q.i != q.n) return CM_ERR_BAD_PROOF; /* unused upgrade nodes */

        if (man && man->has_prologue && target == man->prologue_length) {
            uint8_t th[32];
            cm_hash_tree(c.stack, c.n, th);
            if (memcmp(th, man->prologue_hash, 32) != 0) return CM_ERR_BAD_PROOF;
        }

        /* 3. additional nodes */
        if (m->n_additional_nodes > 0) {
            const cm_node *e = m->additional_nodes;
            size_t k = 0, ne = m->n_additional_nodes;
            uint64_t p;
            if (c.n == 0) return CM_ERR_BAD_PROOF;
            p = cm_ft_sibling(c.stack[c.n - 1].index);
            while (k < ne && e[k].index == p) {
                if (!node_ok(&e[k])) return CM_ERR_BAD_PROOF;
                if ((rc = record(&c, &e[k])) != CM_OK) return rc;
                if ((rc = merge_push(&c, &e[k])) != CM_OK) return rc;
                k++;
                p = cm_ft_sibling(c.stack[c.n - 1].index);
            }
            while (k < ne) {
                const cm_node *x = &e[k++];
                int guard = 0;
                if (!node_ok(x)) return CM_ERR_BAD_PROOF;
                while (p != x->index) {
                    if ((p & 1) == 0 || ++guard > 64) return CM_ERR_BAD_PROOF;
                    p = cm_ft_left_child(p);
                }
                if ((rc = record(&c, x)) != CM_OK) return rc;
                if ((rc = merge_push(&c, x)) != CM_OK) return rc;
                p = cm_ft_sibling(c.stack[c.n - 1].index);
            }
        }

        /* 4. the signed state */
        {
            uint64_t len = length_of_roots(c.stack, c.n), bytes = 0;
            if (len > CM_MAX_LENGTH) return CM_ERR_BAD_PROOF;
            nr = cm_ft_full_roots(len, idx);
            if (nr != c.n) return CM_ERR_BAD_PROOF;
            for (i = 0; i < nr; i++) {
                if (c.stack[i].index != idx[i]) return CM_ERR_BAD_PROOF;
                if (bytes + c.stack[i].size < bytes) return CM_ERR_BAD_PROOF;
                bytes += c.stack[i].size;
            }
            cm_hash_tree(c.stack, c.n, out->tree_hash);
            rc = cm_verifier_check(v, out->tree_hash, len, m->fork, m->signature,
                                   m->signature_len);
            if (rc != CM_OK) return CM_ERR_BAD_SIGNATURE;
            out->upgraded = 1;
            out->length = len;
            out->byte_length = bytes;
            out->n_roots = c.n;
            for (i = 0; i < c.n; i++) out->roots[i] = c.stack[i];
        }
        if (has_b && q.has_extra) {
            out->has_unverified = 1;
            out->unverified = b;
        }
    }
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Sorting the verified nodes                                               */
/* ------------------------------------------------------------------------ */

int cm__nodes_sort_unique(cm_node *nodes, size_t *n) {
    size_t i, j, w;
    for (i = 1; i < *n; i++) {
        cm_node x = nodes[i];
        j = i;
        while (j > 0 && nodes[j - 1].index > x.index) {
            nodes[j] = nodes[j - 1];
            j--;
        }
        nodes[j] = x;
    }
    w = 0;
    for (i = 0; i < *n; i++) {
        if (w > 0 && nodes[w - 1].index == nodes[i].index) {
            if (!cm__node_eq(&nodes[w - 1], &nodes[i])) return CM_ERR_BAD_PROOF;
            continue;
        }
        nodes[w++] = nodes[i];
    }
    *n = w;
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* Generation                                                               */
/* ------------------------------------------------------------------------ */

typedef struct gctx {
    cm__get_node_fn get;
    void *ctx;
    cm_data_msg *out;
} gctx;

static int push_node(gctx *g, cm_node *arr, size_t *n, uint64_t index) {
    int rc;
    if (*n >= CM_MAX_PROOF_NODES) return CM_ERR_INVALID;
    rc = g->get(g->ctx, index, &arr[*n]);
    if (rc != CM_OK) return rc;
    (*n)++;
    return CM_OK;
}

/* Siblings from leaf `leaf` up to (not including) node `root`. */
static int block_proof(gctx *g, uint64_t leaf, uint64_t root) {
    uint64_t ite = leaf;
    int rc, guard = 0;
    while (ite != root) {
        if (++guard > 64) return CM_ERR_INVALID;
        ite = cm_ft_sibling(ite);
        rc = push_node(g, g->out->block_nodes, &g->out->n_block_nodes, ite);
        if (rc != CM_OK) return rc;
        ite = cm_ft_parent(ite);
    }
    return CM_OK;
}

/* upgradeProof / additionalUpgradeProof: roots of `to` not covered by
 * `from`.  With has_node, the node array is the upgrade array and a root or
 * right sibling that contains `subtree` is replaced by the block path. */
static int upgrade_proof(gctx *g, uint64_t from, uint64_t to, int with_block, uint64_t leaf,
                         uint64_t subtree, int *node_done, cm_node *arr, size_t *n) {
    uint64_t idx[CM_MAX_ROOTS];
    size_t nr = cm_ft_full_roots(to / 2, idx), i;
    int started = from == 0, rc;
    for (i = 0; i < nr; i++) {
        uint64_t r = idx[i];
        if (cm_ft_right_span(r) + 1 < from) continue; /* the requester has it */
        if (!started && cm_ft_contains(r, from - 2)) {
            uint64_t target = from - 2, ite = target;
            int guard = 0;
            started = 1;
            while (ite != r) {
                if (++guard > 64) return CM_ERR_INVALID;
                ite = cm_ft_sibling(ite);
                if (ite > target) {
                    if (with_block && !*node_done && cm_ft_contains(ite, subtree)) {
                        if ((rc = block_proof(g, leaf, ite)) != CM_OK) return rc;
                        *node_done = 1;
                    } else if ((rc = push_node(g, arr, n, ite)) != CM_OK) {
                        return rc;
                    }
                }
                ite = cm_ft_parent(ite);
            }
            continue;
        }
        started = 1;
        if (with_block && !*node_done && cm_ft_contains(r, subtree)) {
            if ((rc = block_proof(g, leaf, r)) != CM_OK) return rc;
            *node_done = 1;
            continue;
        }
        if ((rc = push_node(g, arr, n, r)) != CM_OK) return rc;
    }
    return CM_OK;
}

int cm__proof_generate(uint64_t length, const cm_proof_request *req, cm__get_node_fn get,
                       void *ctx, cm_data_msg *out) {
    gctx g;
    uint64_t head, from = 0, to, leaf = 0, subtree;
    int node_done = 0, rc;

    g.get = get;
    g.ctx = ctx;
    g.out = out;
    if (length > CM_MAX_LENGTH) return CM_ERR_INVALID;
    head = 2 * length;
    to = head;
    if (req->has_upgrade) {
        if (req->upgrade_start > length || req->upgrade_length > length) return CM_ERR_INVALID;
        from = 2 * req->upgrade_start;
        to = from + 2 * req->upgrade_length;
        if (from >= to || to > head) return CM_ERR_INVALID;
    }
    if (req->has_block) {
        if (req->block_index >= length) return CM_ERR_RANGE;
        leaf = 2 * req->block_index;
        out->has_block = 1;
        out->block_index = req->block_index;
    }
    subtree = head;
    if (req->has_block && (!req->has_upgrade || req->block_index < req->upgrade_start)) {
        uint64_t ite = leaf, k;
        if (req->block_nodes > CM_MAX_PROOF_NODES) return CM_ERR_INVALID;
        for (k = 0; k < req->block_nodes; k++) {
            ite = cm_ft_parent(ite);
            if (cm_ft_contains(ite, to)) return CM_ERR_INVALID;
        }
        subtree = ite;
        if ((rc = block_proof(&g, leaf, subtree)) != CM_OK) return rc;
        node_done = 1;
    } else if (req->has_block && req->has_upgrade) {
        subtree = leaf;
    }
    if (req->has_upgrade) {
        out->has_upgrade = 1;
        out->upgrade_start = req->upgrade_start;
        out->upgrade_length = req->upgrade_length;
        rc = upgrade_proof(&g, from, to, req->has_block, leaf, subtree, &node_done,
                           out->upgrade_nodes, &out->n_upgrade_nodes);
        if (rc != CM_OK) return rc;
        if (head > to) {
            int unused = 1;
            rc = upgrade_proof(&g, to, head, 0, 0, 0, &unused, out->additional_nodes,
                               &out->n_additional_nodes);
            if (rc != CM_OK) return rc;
        }
    }
    if (req->has_block && !node_done) return CM_ERR_INVALID;
    return CM_OK;
}
