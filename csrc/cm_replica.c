/*
 * cm_replica.c - a replica's operations (docs/format.md, "Replicas"):
 * verify and store proofs (apply_proof), batched runs (apply_run), and the
 * sanitize record written on open.  Twin: _pure/replica.py.
 */
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

/* Contiguous-region roots and the nodes that tie them to the roots of
 * `length` (see docs/format.md, replica sanitize).  Fills `nodes` with the
 * sanitize record's nodes (sorted) when nodes != NULL, and *cbytes. */
int cm__contiguous_plan(cm_core *c, cm_node *nodes, size_t *n_nodes, uint64_t *cbytes) {
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
        if (j >= c->n_roots) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        for (; k < nc; k++) {
            int present;
            if ((rc = cm__tree_read(c, cidx[k], &st[sn], &present)) != CM_OK) return rc;
            if (!present) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            bytes += st[sn].size;
            sn++;
        }
        p = st[sn - 1].index;
        while (p != c->roots[j].index) {
            cm_node sib;
            int present;
            if (++guard > 64 || sn >= CM_MAX_ROOTS + 1)
                return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
            if ((rc = cm__tree_read(c, cm_ft_sibling(p), &sib, &present)) != CM_OK) return rc;
            if (sib.index < p) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
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
                    return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
                cm_hash_parent(&st[sn - 2], &st[sn - 1], &par);
                if (nodes) nodes[nn++] = par;
                sn -= 2;
                st[sn++] = par;
            }
            p = st[sn - 1].index;
        }
        if (sn > 0 && (sn != 1 || !cm__node_eq(&st[0], &c->roots[j])))
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
    }
    if (nodes) {
        uint64_t edge = C > 0 ? 2 * C - 2 : 0;
        size_t i;
        for (i = 0; i < c->n_roots; i++)
            if (C == 0 || cm_ft_right_span(c->roots[i].index) > edge) nodes[nn++] = c->roots[i];
        if (cm__nodes_sort_unique(nodes, &nn) != CM_OK)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_TREE);
        *n_nodes = nn;
    }
    *cbytes = bytes;
    return CM_OK;
}

static int sig_spec(cm_core *c, cm__rec_spec *s) {
    s->flags |= RF_SIGNATURE;
    s->sig = c->sig;
    s->sig_len = c->sig_len;
    return CM_OK;
}

/* Replica whose signed length is above contiguous_length: drop the sparse
 * region, keep the roots and the path tying the contiguous region to them. */
int cm__sanitize(cm_core *c) {
    cm_node nodes[3 * CM_MAX_ROOTS + 4];
    uint64_t clear[CM_MAX_ROOTS];
    size_t nn = 0, total;
    uint64_t cbytes, C = c->contiguous;
    cm__rec_spec s;
    uint8_t *na, *da;
    int rc;
    if ((rc = cm__contiguous_plan(c, nodes, &nn, &cbytes)) != CM_OK) return rc;
    memset(&s, 0, sizeof(s));
    s.flags = RF_TRUNCATE;
    s.fork = c->fork;
    s.length = c->length;
    s.contiguous = C;
    s.byte_length = c->byte_length;
    s.tree_hash = c->tree_hash;
    s.tree_truncate = C > 0 ? 2 * C - 1 : 0;
    s.data_truncate = cbytes;
    s.n_clear = (uint32_t)cm__clear_list(C, clear);
    s.clear = clear;
    s.n_nodes = (uint32_t)nn;
    s.nodes = nodes;
    sig_spec(c, &s);
    if ((rc = cm__rec_build(c, &s, &na, &da, &total)) != CM_OK) return rc;
    if ((rc = cm__wal_commit(c, total, 1)) != CM_OK) return rc;
    c->cbytes = cbytes;
    return CM_OK;
}

/* The local (old-fork) tree holds node x with the same size and hash. */
static int local_equal(cm_core *c, const cm_node *x, int *eq) {
    cm_node n;
    int present, rc;
    *eq = 0;
    if (c->length == 0 || cm_ft_right_span(x->index) > 2 * c->length - 2) return CM_OK;
    if ((rc = cm__tree_read(c, x->index, &n, &present)) != CM_OK) return rc;
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
    cm__rec_spec s;
    uint8_t *na, *da;

    c->err_file = CM_FILE_NONE;
    memset(&r, 0, sizeof(r));
    if (res) *res = r;
    if (c->readonly) return cm__fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if (c->writable) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if ((rc = cm__poisoned(c)) != CM_OK) return rc;
    if (!c->msg && !(c->msg = (cm_data_msg *)malloc(sizeof(*c->msg))))
        return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    if (!c->chk && !(c->chk = (cm_proof_check *)malloc(sizeof(*c->chk))))
        return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
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
        if (newer || c->length == 0 ||
            cm_ft_right_span(chk->unverified.index) > 2 * c->length - 2) {
            rc = CM_ERR_BAD_PROOF;
            goto out;
        }
        if ((rc = cm__tree_read(c, chk->unverified.index, &n, &present)) != CM_OK) goto out;
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
        s.n_clear = (uint32_t)cm__clear_list(p, clear);
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
    if ((rc = cm__rec_build(c, &s, &na, &da, &tot)) != CM_OK) goto out;
    if ((rc = cm__wal_commit(c, tot, newer)) != CM_OK) goto out;
    if (upgraded) {
        memcpy(c->roots, chk->roots, chk->n_roots * sizeof(cm_node));
        c->n_roots = chk->n_roots;
    }
    c->cbytes = cbytes + (store_block ? m->block_len : 0);
    rc = cm__maybe_checkpoint(c);

out:
    if (res) *res = r;
    return rc;
}

int cm_core_apply_run(cm_core *c, uint64_t start, const cm_buf *values, size_t n,
                      uint64_t *stored) {
    cm_node *t = NULL, root;
    cm__rec_spec s;
    uint8_t *na, *da;
    size_t tot, i, width;
    uint64_t base = 2 * start, total = 0, from;
    int rc, present;
    c->err_file = CM_FILE_NONE;
    *stored = 0;
    if (c->readonly) return cm__fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if (c->writable) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if (n < 2 || n > CM_MAX_RUN || (n & (n - 1)) != 0 || start % n != 0 ||
        start >= CM_MAX_LENGTH || start + n > c->length)
        return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    if (c->contiguous <= start) return cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
    if (c->contiguous >= start + n) return CM_OK; /* nothing new */
    from = c->contiguous - start;
    for (i = 0; i < n; i++) {
        if (values[i].len > c->max_block) return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
        if (i >= from) total += values[i].len;
    }
    /* The run's subtree occupies node indexes [2*start, 2*start + 2n - 2]. */
    t = (cm_node *)malloc((2 * n - 1) * sizeof(cm_node));
    if (!t) return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    for (i = 0; i < n; i++) cm_hash_leaf(start + i, values[i].data, values[i].len, &t[2 * i]);
    /* Parents level by level.  Relative to `base` the subtree is laid out as
     * a tree from 0: at depth d nodes sit at 2^d - 1 + k * 2^(d+1), with
     * children 2^(d-1) to either side. */
    for (width = 1; (width << 1) <= n; width <<= 1) {
        size_t r;
        for (r = 2 * width - 1; r < 2 * n - 1; r += 4 * width)
            cm_hash_parent(&t[r - width], &t[r + width], &t[r]);
    }
    rc = cm__get_node(c, base + n - 1, &root);
    present = rc == CM_OK;
    if (rc != CM_OK && rc != CM_ERR_UNAVAILABLE) goto out;
    if (!present) {
        rc = cm__fail(c, CM_ERR_UNAVAILABLE, CM_FILE_NONE);
        goto out;
    }
    if (!cm__node_eq(&root, &t[n - 1])) {
        rc = cm__fail(c, CM_ERR_BAD_PROOF, CM_FILE_NONE);
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
    if ((rc = cm__rec_build(c, &s, &na, &da, &tot)) != CM_OK) goto out;
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
    if ((rc = cm__wal_commit(c, tot, 0)) != CM_OK) goto out;
    c->cbytes += total;
    *stored = n - from;
    rc = cm__maybe_checkpoint(c);
out:
    free(t);
    return rc;
}
