/*
 * cm_encoding.c - compact-encoding reader/writer, the manifest codec and
 * the hypercore `data` message (hypercore-format §0, §3.2, §5.3 message 3).
 *
 * The reader is for hostile bytes: every read checks the remaining length,
 * an overrun sets a sticky error and yields zeros/NULL, node arrays are
 * capped at CM_MAX_PROOF_NODES.
 */
#include <string.h>

#include "cm.h"
#include "cm_internal.h"

#define DATA_BLOCK 1u
#define DATA_HASH 2u
#define DATA_SEEK 4u
#define DATA_UPGRADE 8u
#define DATA_MANIFEST 16u

/* ------------------------------------------------------------------------ */
/* Reader                                                                   */
/* ------------------------------------------------------------------------ */

static size_t rd_left(const cm_reader *r) {
    return r->p < r->end ? (size_t)(r->end - r->p) : 0;
}

uint64_t cm_read_uint(cm_reader *r) {
    uint8_t a;
    if (r->err || rd_left(r) < 1) {
        r->err = CM_ERR_DECODE;
        return 0;
    }
    a = *r->p++;
    if (a <= 0xfc) return a;
    if (a == 0xfd) {
        uint64_t v;
        if (rd_left(r) < 2) {
            r->err = CM_ERR_DECODE;
            return 0;
        }
        v = cm__get_u16(r->p);
        r->p += 2;
        return v;
    }
    if (a == 0xfe) {
        uint64_t v;
        if (rd_left(r) < 4) {
            r->err = CM_ERR_DECODE;
            return 0;
        }
        v = cm__get_u32(r->p);
        r->p += 4;
        return v;
    }
    {
        uint64_t v;
        if (rd_left(r) < 8) {
            r->err = CM_ERR_DECODE;
            return 0;
        }
        v = cm__get_u64(r->p);
        r->p += 8;
        return v;
    }
}

const uint8_t *cm_read_fixed(cm_reader *r, size_t n) {
    const uint8_t *p;
    if (r->err || rd_left(r) < n) {
        r->err = CM_ERR_DECODE;
        return NULL;
    }
    p = r->p;
    r->p += n;
    return p;
}

const uint8_t *cm_read_buffer(cm_reader *r, size_t *len) {
    uint64_t n = cm_read_uint(r);
    const uint8_t *p;
    *len = 0;
    if (r->err) return NULL;
    if (n > (uint64_t)rd_left(r)) {
        r->err = CM_ERR_DECODE;
        return NULL;
    }
    p = cm_read_fixed(r, (size_t)n);
    if (p) *len = (size_t)n;
    return p;
}

/* ------------------------------------------------------------------------ */
/* Writer                                                                   */
/* ------------------------------------------------------------------------ */

static void wr_bytes(cm_writer *w, const uint8_t *buf, size_t n) {
    if (n == 0) return;
    if (w->p != NULL && w->need <= w->cap && n <= w->cap - w->need && buf != NULL)
        memcpy(w->p + w->need, buf, n);
    w->need += n;
}

void cm_write_uint(cm_writer *w, uint64_t n) {
    uint8_t b[9];
    size_t k;
    if (n <= 0xfc) {
        b[0] = (uint8_t)n;
        k = 1;
    } else if (n <= 0xffff) {
        b[0] = 0xfd;
        cm__put_u16(b + 1, (uint16_t)n);
        k = 3;
    } else if (n <= 0xffffffffu) {
        b[0] = 0xfe;
        cm__put_u32(b + 1, (uint32_t)n);
        k = 5;
    } else {
        b[0] = 0xff;
        cm__put_u64(b + 1, n);
        k = 9;
    }
    wr_bytes(w, b, k);
}

void cm_write_fixed(cm_writer *w, const uint8_t *buf, size_t n) {
    wr_bytes(w, buf, n);
}

void cm_write_buffer(cm_writer *w, const uint8_t *buf, size_t n) {
    cm_write_uint(w, n);
    wr_bytes(w, buf, n);
}

/* ------------------------------------------------------------------------ */
/* Manifests (hypercore-format §3.2): versions 1 and 2, ed25519 signers      */
/* ------------------------------------------------------------------------ */

#define MF_PATCH 1u
#define MF_PROLOGUE 2u
#define MF_LINKED 4u
#define MF_USER_DATA 8u

int cm_manifest_encode(const cm_manifest *m, uint8_t *out, size_t cap, size_t *len) {
    cm_writer w;
    uint64_t flags = 0;
    uint32_t i;
    if (m->version < 1 || m->version > 2) return CM_ERR_INVALID;
    if (m->n_signers > CM_MAX_SIGNERS) return CM_ERR_INVALID;
    if (m->n_linked > 0 && m->linked == NULL) return CM_ERR_INVALID;
    if (m->user_data_len > 0 && m->user_data == NULL) return CM_ERR_INVALID;
    if (m->allow_patch) flags |= MF_PATCH;
    if (m->has_prologue) flags |= MF_PROLOGUE;
    if (m->linked != NULL) flags |= MF_LINKED;
    if (m->user_data != NULL) flags |= MF_USER_DATA;

    w.p = out;
    w.cap = out ? cap : 0;
    w.need = 0;
    cm_write_uint(&w, m->version);
    cm_write_uint(&w, flags);
    cm_write_uint(&w, 0); /* hash: blake2b */
    cm_write_uint(&w, m->quorum);
    cm_write_uint(&w, m->n_signers);
    for (i = 0; i < m->n_signers; i++) {
        cm_write_uint(&w, 0); /* ed25519 */
        cm_write_fixed(&w, m->signers[i].namespace_, 32);
        cm_write_fixed(&w, m->signers[i].public_key, 32);
    }
    if (m->has_prologue) {
        cm_write_fixed(&w, m->prologue_hash, 32);
        cm_write_uint(&w, m->prologue_length);
    }
    if (m->linked != NULL) {
        cm_write_uint(&w, m->n_linked);
        cm_write_fixed(&w, m->linked, (size_t)m->n_linked * 32);
    }
    if (m->user_data != NULL) cm_write_buffer(&w, m->user_data, m->user_data_len);
    *len = w.need;
    if (w.need > CM_MAX_MANIFEST) return CM_ERR_TOO_LARGE;
    if (w.need > cap || out == NULL) return CM_ERR_TOO_LARGE;
    return CM_OK;
}

static int manifest_read(cm_reader *r, cm_manifest *out) {
    uint64_t version, flags, hash, quorum, n, i;
    memset(out, 0, sizeof(*out));
    version = cm_read_uint(r);
    if (r->err) return CM_ERR_DECODE;
    if (version < 1 || version > 2) return CM_ERR_DECODE; /* v0 is not supported */
    flags = cm_read_uint(r);
    hash = cm_read_uint(r);
    quorum = cm_read_uint(r);
    n = cm_read_uint(r);
    if (r->err) return CM_ERR_DECODE;
    if (hash != 0 || quorum > UINT32_MAX) return CM_ERR_DECODE;
    if (n > CM_MAX_SIGNERS) return CM_ERR_TOO_LARGE;
    out->version = (uint32_t)version;
    out->quorum = (uint32_t)quorum;
    out->allow_patch = (flags & MF_PATCH) != 0;
    out->n_signers = (uint32_t)n;
    for (i = 0; i < n; i++) {
        uint64_t type = cm_read_uint(r);
        const uint8_t *ns = cm_read_fixed(r, 32);
        const uint8_t *pk = cm_read_fixed(r, 32);
        if (r->err || type != 0) return CM_ERR_DECODE;
        memcpy(out->signers[i].namespace_, ns, 32);
        memcpy(out->signers[i].public_key, pk, 32);
    }
    if (flags & MF_PROLOGUE) {
        const uint8_t *h = cm_read_fixed(r, 32);
        uint64_t plen = cm_read_uint(r);
        if (r->err) return CM_ERR_DECODE;
        out->has_prologue = 1;
        memcpy(out->prologue_hash, h, 32);
        out->prologue_length = plen;
    }
    if (flags & MF_LINKED) {
        uint64_t count = cm_read_uint(r);
        if (r->err) return CM_ERR_DECODE;
        if (count > (uint64_t)(r->end - r->p) / 32) return CM_ERR_DECODE;
        out->n_linked = (uint32_t)count;
        out->linked = r->p;
        cm_read_fixed(r, (size_t)count * 32);
    }
    if (flags & MF_USER_DATA) {
        size_t ulen = 0;
        const uint8_t *u = cm_read_buffer(r, &ulen);
        if (r->err) return CM_ERR_DECODE;
        out->user_data = u;
        out->user_data_len = ulen;
    }
    return r->err ? CM_ERR_DECODE : CM_OK;
}

int cm_manifest_decode(const uint8_t *buf, size_t len, cm_manifest *out) {
    cm_reader r;
    int rc;
    if (buf == NULL || len == 0) return CM_ERR_DECODE;
    if (len > CM_MAX_MANIFEST) return CM_ERR_TOO_LARGE;
    r.p = buf;
    r.end = buf + len;
    r.err = 0;
    rc = manifest_read(&r, out);
    if (rc != CM_OK) return rc;
    if (r.p != r.end) return CM_ERR_DECODE; /* trailing bytes change the hash */
    return CM_OK;
}

/* ------------------------------------------------------------------------ */
/* data message                                                             */
/* ------------------------------------------------------------------------ */

static int read_nodes(cm_reader *r, cm_node *arr, size_t *n) {
    uint64_t count = cm_read_uint(r), i;
    *n = 0;
    if (r->err) return CM_ERR_DECODE;
    if (count > CM_MAX_PROOF_NODES) return CM_ERR_TOO_LARGE;
    for (i = 0; i < count; i++) {
        const uint8_t *h;
        arr[i].index = cm_read_uint(r);
        arr[i].size = cm_read_uint(r);
        h = cm_read_fixed(r, 32);
        if (r->err) return CM_ERR_DECODE;
        memcpy(arr[i].hash, h, 32);
    }
    *n = (size_t)count;
    return CM_OK;
}

int cm_data_decode(const uint8_t *buf, size_t len, cm_data_msg *out) {
    cm_reader r;
    uint64_t flags;
    int rc;
    memset(out, 0, sizeof(*out));
    if (buf == NULL) return CM_ERR_DECODE;
    r.p = buf;
    r.end = buf + len;
    r.err = 0;
    flags = cm_read_uint(&r);
    out->request = cm_read_uint(&r);
    out->fork = cm_read_uint(&r);
    if (r.err) return CM_ERR_DECODE;
    if (flags & DATA_BLOCK) {
        out->has_block = 1;
        out->block_index = cm_read_uint(&r);
        out->block_value = cm_read_buffer(&r, &out->block_len);
        if (r.err) return CM_ERR_DECODE;
        if ((rc = read_nodes(&r, out->block_nodes, &out->n_block_nodes)) != CM_OK) return rc;
    }
    if (flags & DATA_HASH) {
        out->has_hash = 1;
        out->hash_index = cm_read_uint(&r);
        if (r.err) return CM_ERR_DECODE;
        if ((rc = read_nodes(&r, out->hash_nodes, &out->n_hash_nodes)) != CM_OK) return rc;
    }
    if (flags & DATA_SEEK) {
        out->has_seek = 1;
        out->seek_bytes = cm_read_uint(&r);
        if (r.err) return CM_ERR_DECODE;
        if ((rc = read_nodes(&r, out->seek_nodes, &out->n_seek_nodes)) != CM_OK) return rc;
    }
    if (flags & DATA_UPGRADE) {
        out->has_upgrade = 1;
        out->upgrade_start = cm_read_uint(&r);
        out->upgrade_length = cm_read_uint(&r);
        if (r.err) return CM_ERR_DECODE;
        if ((rc = read_nodes(&r, out->upgrade_nodes, &out->n_upgrade_nodes)) != CM_OK)
            return rc;
        if ((rc = read_nodes(&r, out->additional_nodes, &out->n_additional_nodes)) != CM_OK)
            return rc;
        out->signature = cm_read_buffer(&r, &out->signature_len);
        if (r.err) return CM_ERR_DECODE;
        if (out->signature_len == 0) out->signature = NULL; /* optionalBuffer */
        if (out->signature_len > CM_MAX_SIGNATURE) return CM_ERR_TOO_LARGE;
    }
    if (flags & DATA_MANIFEST) {
        cm_manifest tmp;
        const uint8_t *start = r.p;
        rc = manifest_read(&r, &tmp);
        if (rc != CM_OK) return rc;
        out->has_manifest = 1;
        out->manifest = start;
        out->manifest_len = (size_t)(r.p - start);
        if (out->manifest_len > CM_MAX_MANIFEST) return CM_ERR_TOO_LARGE;
    }
    /* Unknown flag bits and trailing bytes are ignored, as hypercore does. */
    return CM_OK;
}

static void write_nodes(cm_writer *w, const cm_node *arr, size_t n) {
    size_t i;
    cm_write_uint(w, n);
    for (i = 0; i < n; i++) {
        cm_write_uint(w, arr[i].index);
        cm_write_uint(w, arr[i].size);
        cm_write_fixed(w, arr[i].hash, 32);
    }
}

int cm__data_encode_ex(const cm_data_msg *m, uint8_t *out, size_t cap, size_t *len,
                       size_t *value_off) {
    cm_writer w;
    uint64_t flags = 0;
    if (m->n_block_nodes > CM_MAX_PROOF_NODES || m->n_hash_nodes > CM_MAX_PROOF_NODES ||
        m->n_seek_nodes > CM_MAX_PROOF_NODES || m->n_upgrade_nodes > CM_MAX_PROOF_NODES ||
        m->n_additional_nodes > CM_MAX_PROOF_NODES)
        return CM_ERR_INVALID;
    if (m->has_block && m->block_len > 0 && m->block_value == NULL && value_off == NULL)
        return CM_ERR_INVALID;
    if (m->has_block) flags |= DATA_BLOCK;
    if (m->has_hash) flags |= DATA_HASH;
    if (m->has_seek) flags |= DATA_SEEK;
    if (m->has_upgrade) flags |= DATA_UPGRADE;
    if (m->has_manifest) flags |= DATA_MANIFEST;
    w.p = out;
    w.cap = out ? cap : 0;
    w.need = 0;
    cm_write_uint(&w, flags);
    cm_write_uint(&w, m->request);
    cm_write_uint(&w, m->fork);
    if (m->has_block) {
        cm_write_uint(&w, m->block_index);
        cm_write_uint(&w, m->block_len);
        if (value_off) {
            *value_off = w.need;
            w.need += m->block_len; /* reserved, filled by the caller */
        } else {
            cm_write_fixed(&w, m->block_value, m->block_len);
        }
        write_nodes(&w, m->block_nodes, m->n_block_nodes);
    }
    if (m->has_hash) {
        cm_write_uint(&w, m->hash_index);
        write_nodes(&w, m->hash_nodes, m->n_hash_nodes);
    }
    if (m->has_seek) {
        cm_write_uint(&w, m->seek_bytes);
        write_nodes(&w, m->seek_nodes, m->n_seek_nodes);
    }
    if (m->has_upgrade) {
        cm_write_uint(&w, m->upgrade_start);
        cm_write_uint(&w, m->upgrade_length);
        write_nodes(&w, m->upgrade_nodes, m->n_upgrade_nodes);
        write_nodes(&w, m->additional_nodes, m->n_additional_nodes);
        if (m->signature == NULL || m->signature_len == 0)
            cm_write_uint(&w, 0);
        else
            cm_write_buffer(&w, m->signature, m->signature_len);
    }
    if (m->has_manifest) cm_write_fixed(&w, m->manifest, m->manifest_len);
    *len = w.need;
    if (out == NULL || w.need > cap) return CM_ERR_TOO_LARGE;
    return CM_OK;
}

int cm_data_encode(const cm_data_msg *m, uint8_t *out, size_t cap, size_t *len) {
    return cm__data_encode_ex(m, out, cap, len, NULL);
}
