/*
 * cm_snapshot.c - the overlay of a read-only snapshot (docs/format.md,
 * "Read-only snapshots").  A snapshot never writes: the write-ahead records
 * since the last checkpoint are not applied to the tree and data files but
 * kept here, and reads look here first.  That also covers a writer that has
 * written a record but not applied it yet.  Twin: _pure/snapshot.py.
 */
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

void cm__ov_init(cm__overlay *ov) {
    memset(ov, 0, sizeof(*ov));
    ov->tree_limit = UINT64_MAX;
    ov->data_limit = UINT64_MAX;
}

void cm__ov_free(cm__overlay *ov) {
    free(ov->nodes);
    free(ov->segments);
    free(ov->bytes);
    cm__ov_init(ov);
}

static int grow(void **p, size_t *cap, size_t need, size_t size) {
    size_t n = *cap ? *cap : 64;
    void *q;
    if (need <= *cap) return CM_OK;
    while (n < need) {
        if (n > SIZE_MAX / 2 / size) return CM_ERR_NOMEM;
        n *= 2;
    }
    q = realloc(*p, n * size);
    if (!q) return CM_ERR_NOMEM;
    *p = q;
    *cap = n;
    return CM_OK;
}

static int add_node(cm__overlay *ov, const cm_node *n, int present) {
    void *p = ov->nodes;
    int rc = grow(&p, &ov->cap_nodes, ov->n_nodes + 1, sizeof(cm__ov_entry));
    ov->nodes = (cm__ov_entry *)p;
    if (rc != CM_OK) return rc;
    ov->nodes[ov->n_nodes].node = *n;
    ov->nodes[ov->n_nodes].present = present;
    ov->nodes[ov->n_nodes].order = ov->n_nodes;
    ov->n_nodes++;
    return CM_OK;
}

/* A truncation: drop what earlier records wrote at or past the cut. */
static void cut(cm__overlay *ov, uint64_t tree_slots, uint64_t data_bytes) {
    size_t i, k;
    for (i = 0, k = 0; i < ov->n_nodes; i++)
        if (ov->nodes[i].node.index < tree_slots) ov->nodes[k++] = ov->nodes[i];
    ov->n_nodes = k;
    if (tree_slots < ov->tree_limit) ov->tree_limit = tree_slots;
    for (i = 0, k = 0; i < ov->n_segments; i++) {
        cm__ov_segment s = ov->segments[i];
        if (s.offset >= data_bytes) continue;
        if (s.offset + s.len > data_bytes) s.len = data_bytes - s.offset;
        ov->segments[k++] = s;
    }
    ov->n_segments = k;
    if (data_bytes < ov->data_limit) ov->data_limit = data_bytes;
}

int cm__ov_apply(cm_core *c, const cm__rec_view *v) {
    cm__overlay *ov = &c->ov;
    uint32_t i;
    int rc;
    if (v->flags & RF_TRUNCATE) {
        cut(ov, v->tree_truncate, v->data_truncate);
        for (i = 0; i < v->n_clear; i++) {
            cm_node zero;
            memset(&zero, 0, sizeof(zero));
            zero.index = cm__get_u64(v->clear + 8 * (size_t)i);
            if ((rc = add_node(ov, &zero, 0)) != CM_OK) return cm__fail(c, rc, CM_FILE_NONE);
        }
    }
    for (i = 0; i < v->n_nodes; i++) {
        const uint8_t *e = v->nodes + NODE_ENTRY * (size_t)i;
        cm_node n;
        n.index = cm__get_u64(e);
        n.size = cm__get_u64(e + 8);
        memcpy(n.hash, e + 16, 32);
        if ((rc = add_node(ov, &n, 1)) != CM_OK) return cm__fail(c, rc, CM_FILE_NONE);
    }
    if (v->data_len > 0) {
        void *p = ov->segments, *b = ov->bytes;
        if (v->data_len > SIZE_MAX - ov->n_bytes) return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
        rc = grow(&p, &ov->cap_segments, ov->n_segments + 1, sizeof(cm__ov_segment));
        ov->segments = (cm__ov_segment *)p;
        if (rc == CM_OK) rc = grow(&b, &ov->cap_bytes, ov->n_bytes + (size_t)v->data_len, 1);
        ov->bytes = (uint8_t *)b;
        if (rc != CM_OK) return cm__fail(c, rc, CM_FILE_NONE);
        memcpy(ov->bytes + ov->n_bytes, v->data, (size_t)v->data_len);
        ov->segments[ov->n_segments].offset = v->data_offset;
        ov->segments[ov->n_segments].len = v->data_len;
        ov->segments[ov->n_segments].at = ov->n_bytes;
        ov->n_segments++;
        ov->n_bytes += (size_t)v->data_len;
    }
    ov->records++;
    return CM_OK;
}

static int node_cmp(const void *a, const void *b) {
    const cm__ov_entry *x = (const cm__ov_entry *)a, *y = (const cm__ov_entry *)b;
    if (x->node.index != y->node.index) return x->node.index < y->node.index ? -1 : 1;
    return x->order < y->order ? -1 : x->order > y->order;
}

static int segment_cmp(const void *a, const void *b) {
    const cm__ov_segment *x = (const cm__ov_segment *)a, *y = (const cm__ov_segment *)b;
    return x->offset < y->offset ? -1 : x->offset > y->offset;
}

void cm__ov_seal(cm__overlay *ov) {
    size_t i, k;
    if (ov->n_nodes) qsort(ov->nodes, ov->n_nodes, sizeof(cm__ov_entry), node_cmp);
    for (i = 0, k = 0; i < ov->n_nodes; i++) {  /* the last write of each index */
        if (k > 0 && ov->nodes[k - 1].node.index == ov->nodes[i].node.index) k--;
        ov->nodes[k++] = ov->nodes[i];
    }
    ov->n_nodes = k;
    if (ov->n_segments) qsort(ov->segments, ov->n_segments, sizeof(cm__ov_segment), segment_cmp);
}

int cm__ov_node(const cm__overlay *ov, uint64_t index, cm_node *out, int *present) {
    size_t lo = 0, hi = ov->n_nodes;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ov->nodes[mid].node.index < index) lo = mid + 1;
        else hi = mid;
    }
    if (lo < ov->n_nodes && ov->nodes[lo].node.index == index) {
        *present = ov->nodes[lo].present;
        if (*present) *out = ov->nodes[lo].node;
        return 1;
    }
    if (index >= ov->tree_limit) {
        *present = 0;
        return 1;
    }
    return 0;
}

int cm__read_data(cm_core *c, uint8_t *buf, size_t len, uint64_t off, size_t *got) {
    const cm__overlay *ov = &c->ov;
    size_t from_file = 0, lo = 0, hi, i;
    int rc;
    if (!c->readonly) return cm__io_read(c, CM_FILE_DATA, buf, len, off, got);
    if (off < ov->data_limit)
        from_file = ov->data_limit - off < len ? (size_t)(ov->data_limit - off) : len;
    *got = 0;
    if (from_file > 0 && (rc = cm__io_read(c, CM_FILE_DATA, buf, from_file, off, got)) != CM_OK)
        return rc;
    memset(buf + *got, 0, len - *got);
    hi = ov->n_segments;  /* the first segment ending past `off` */
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (ov->segments[mid].offset + ov->segments[mid].len <= off) lo = mid + 1;
        else hi = mid;
    }
    for (i = lo; i < ov->n_segments && ov->segments[i].offset < off + len; i++) {
        const cm__ov_segment *s = &ov->segments[i];
        uint64_t a = s->offset > off ? s->offset : off;
        uint64_t b = s->offset + s->len < off + len ? s->offset + s->len : off + len;
        memcpy(buf + (a - off), ov->bytes + s->at + (a - s->offset), (size_t)(b - a));
    }
    *got = len;  /* what no segment or file covers reads as zero: its hash fails */
    return CM_OK;
}
