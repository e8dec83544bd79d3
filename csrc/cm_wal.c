/*
 * cm_wal.c - the write-ahead log (docs/format.md, "header", "wal", "Commit
 * protocol", "Opening" step 2): header slots, laying out, writing and
 * applying records, checkpoints, replay on open.  Twin: _pure/wal.py.
 */
#include <stdlib.h>
#include <string.h>

#include "cm_store.h"

static size_t hdr_encode(const cm_core *c, uint64_t seq, uint64_t gen, uint8_t *slot) {
    uint8_t *b = slot + 8;
    size_t sig_len = c->writable ? 0 : c->sig_len;
    size_t man_len = (c->flags & HF_MANIFEST) ? c->manifest_len : 0;
    uint32_t body_len = (uint32_t)(BODY_FIXED + sig_len + man_len);
    memset(slot, 0, 8 + BODY_FIXED);
    memcpy(b, "CMEH", 4);
    cm__put_u32(b + 4, CM_FORMAT_VERSION);
    cm__put_u64(b + 8, seq);
    cm__put_u32(b + 16, c->flags);
    cm__put_u32(b + 20, 0);
    memcpy(b + 24, c->key, 32);
    cm__put_u64(b + 56, c->fork);
    cm__put_u64(b + 64, c->length);
    cm__put_u64(b + 72, c->contiguous);
    cm__put_u64(b + 80, c->byte_length);
    memcpy(b + 88, c->tree_hash, 32);
    cm__put_u64(b + 120, gen);
    cm__put_u16(b + 128, (uint16_t)sig_len);
    cm__put_u16(b + 130, (uint16_t)man_len);
    cm__put_u32(b + 132, 0);
    if (sig_len) memcpy(b + BODY_FIXED, c->sig, sig_len);
    if (man_len) memcpy(b + BODY_FIXED + sig_len, c->manifest, man_len);
    cm__put_u32(slot + 4, body_len);
    cm__put_u32(slot, cm_crc32(0, slot + 4, 4 + (size_t)body_len));
    return 8 + (size_t)body_len;
}

/* 1 if the slot bytes hold a valid slot (CRC, magic, consistent lengths). */
int cm__hdr_parse(const uint8_t *slot, size_t n, cm__hdr *h) {
    uint32_t body_len;
    const uint8_t *b = slot + 8;
    if (n < 8 + BODY_STABLE) return 0;
    body_len = cm__get_u32(slot + 4);
    if (body_len < BODY_STABLE || body_len > SLOT_SIZE - 8 || body_len > n - 8) return 0;
    if (cm_crc32(0, slot + 4, 4 + (size_t)body_len) != cm__get_u32(slot)) return 0;
    if (memcmp(b, "CMEH", 4) != 0) return 0;
    h->format_version = cm__get_u32(b + 4);
    h->seq = cm__get_u64(b + 8);
    /* Another format version: valid, refused on open (its layout is unknown);
     * the versions from CM_FORMAT_OLDEST have this one's layout. */
    if (h->format_version < CM_FORMAT_OLDEST || h->format_version > CM_FORMAT_VERSION) return 1;
    if (body_len < BODY_FIXED) return 0;
    h->flags = cm__get_u32(b + 16);
    memcpy(h->key, b + 24, 32);
    h->fork = cm__get_u64(b + 56);
    h->length = cm__get_u64(b + 64);
    h->contiguous = cm__get_u64(b + 72);
    h->byte_length = cm__get_u64(b + 80);
    memcpy(h->tree_hash, b + 88, 32);
    h->wal_gen = cm__get_u64(b + 120);
    h->sig_len = cm__get_u16(b + 128);
    h->manifest_len = cm__get_u16(b + 130);
    h->sig = b + BODY_FIXED;
    h->manifest = b + BODY_FIXED + h->sig_len;
    if ((uint32_t)BODY_FIXED + h->sig_len + h->manifest_len != body_len) return 0;
    return 1;
}

int cm__write_header(cm_core *c, uint64_t seq, uint64_t gen) {
    uint8_t slot[SLOT_SIZE];
    size_t n = hdr_encode(c, seq, gen, slot);
    int rc = cm__io_write(c, CM_FILE_HEADER, slot, n, SLOT_SIZE * (seq % 2));
    if (rc != CM_OK) return rc;
    return cm__io_sync(c, CM_FILE_HEADER);
}

int cm__checkpoint(cm_core *c) {
    int rc;
    if ((rc = cm__io_sync(c, CM_FILE_DATA)) != CM_OK) return rc;
    if ((rc = cm__io_sync(c, CM_FILE_TREE)) != CM_OK) return rc;
    if ((rc = cm__write_header(c, c->hdr_seq + 1, c->wal_gen + 1)) != CM_OK) return rc;
    c->hdr_seq++;
    c->hdr_version = CM_FORMAT_VERSION;
    c->wal_gen++;
    c->wal_seq = 0;
    c->wal_synced = 0;
    c->wal_end = 0;
    c->prev_crc = 0;
    return CM_OK;
}

static uint64_t pad8(uint64_t n) {
    return (n + 7) & ~(uint64_t)7;
}

/* Lay out a record in the scratch buffer.  *total = bytes to write. */
int cm__rec_build(cm_core *c, const cm__rec_spec *s, uint8_t **nodes_at, uint8_t **data_at,
                  size_t *total) {
    uint64_t sm = pad8((uint64_t)s->sig_len + s->manifest_len);
    uint64_t plen = REC_FIXED + sm + 8 * (uint64_t)s->n_clear +
                    NODE_ENTRY * (uint64_t)s->n_nodes + s->data_len;
    uint64_t tot = pad8(8 + plen);
    uint8_t *r, *p;
    uint32_t i;
    int rc;
    if (plen > MAX_RECORD || s->sig_len > CM_MAX_SIGNATURE || s->manifest_len > CM_MAX_MANIFEST)
        return cm__fail(c, CM_ERR_TOO_LARGE, CM_FILE_NONE);
    if ((rc = cm__scratch_reserve(c, tot)) != CM_OK) return rc;
    r = c->scratch;
    p = r + 8;
    memset(r, 0, 8 + REC_FIXED + (size_t)sm);
    cm__put_u32(r + 4, (uint32_t)plen);
    /* generation, seq, durable_count, prev_crc: filled by wal_commit */
    cm__put_u32(p + 28, s->flags);
    cm__put_u64(p + 32, s->fork);
    cm__put_u64(p + 40, s->length);
    cm__put_u64(p + 48, s->contiguous);
    cm__put_u64(p + 56, s->byte_length);
    memcpy(p + 64, s->tree_hash, 32);
    cm__put_u64(p + 96, s->tree_truncate);
    cm__put_u64(p + 104, s->data_truncate);
    cm__put_u64(p + 112, s->data_offset);
    cm__put_u64(p + 120, s->data_len);
    cm__put_u32(p + 128, s->n_clear);
    cm__put_u32(p + 132, s->n_nodes);
    cm__put_u16(p + 136, (uint16_t)s->sig_len);
    cm__put_u16(p + 138, (uint16_t)s->manifest_len);
    cm__put_u32(p + 140, 0);
    p += REC_FIXED;
    if (s->sig_len) memcpy(p, s->sig, s->sig_len);
    if (s->manifest_len) memcpy(p + s->sig_len, s->manifest, s->manifest_len);
    p += sm;
    for (i = 0; i < s->n_clear; i++, p += 8) cm__put_u64(p, s->clear[i]);
    *nodes_at = p;
    if (s->nodes) {
        for (i = 0; i < s->n_nodes; i++, p += NODE_ENTRY) {
            cm__put_u64(p, s->nodes[i].index);
            cm__put_u64(p + 8, s->nodes[i].size);
            memcpy(p + 16, s->nodes[i].hash, 32);
        }
    } else {
        p += NODE_ENTRY * (size_t)s->n_nodes;
    }
    *data_at = p;
    if (s->data && s->data_len) memcpy(p, s->data, (size_t)s->data_len);
    p += s->data_len;
    memset(p, 0, (size_t)(tot - (8 + plen))); /* frame padding */
    *total = (size_t)tot;
    return CM_OK;
}

/* Parse a CRC-checked payload.  0 on success, -1 if inconsistent. */
static int rec_parse(uint8_t *payload, uint32_t plen, cm__rec_view *v) {
    uint64_t need, sm;
    const uint8_t *p = payload;
    if (plen < REC_FIXED) return -1;
    v->payload_len = plen;
    v->gen = cm__get_u64(p);
    v->seq = cm__get_u64(p + 8);
    v->durable_count = cm__get_u64(p + 16);
    v->prev_crc = cm__get_u32(p + 24);
    v->flags = cm__get_u32(p + 28);
    v->fork = cm__get_u64(p + 32);
    v->length = cm__get_u64(p + 40);
    v->contiguous = cm__get_u64(p + 48);
    v->byte_length = cm__get_u64(p + 56);
    v->tree_hash = p + 64;
    v->tree_truncate = cm__get_u64(p + 96);
    v->data_truncate = cm__get_u64(p + 104);
    v->data_offset = cm__get_u64(p + 112);
    v->data_len = cm__get_u64(p + 120);
    v->n_clear = cm__get_u32(p + 128);
    v->n_nodes = cm__get_u32(p + 132);
    v->sig_len = cm__get_u16(p + 136);
    v->manifest_len = cm__get_u16(p + 138);
    if (v->flags & ~(uint32_t)(RF_TRUNCATE | RF_SIGNATURE | RF_MANIFEST)) return -1;
    if (v->sig_len > CM_MAX_SIGNATURE || v->manifest_len > CM_MAX_MANIFEST) return -1;
    if (v->contiguous > v->length || v->length > CM_MAX_LENGTH) return -1;
    if (v->data_len > plen) return -1;
    sm = pad8((uint64_t)v->sig_len + v->manifest_len);
    need = REC_FIXED + sm + 8 * (uint64_t)v->n_clear + NODE_ENTRY * (uint64_t)v->n_nodes +
           v->data_len;
    if (need != plen) return -1;
    if (v->data_offset > UINT64_MAX - v->data_len) return -1;
    if (v->tree_truncate > UINT64_MAX / NODE_SLOT) return -1;
    v->sig = p + REC_FIXED;
    v->manifest = p + REC_FIXED + v->sig_len;
    v->clear = p + REC_FIXED + sm;
    v->nodes = payload + REC_FIXED + sm + 8 * (size_t)v->n_clear;
    v->data = v->nodes + NODE_ENTRY * (size_t)v->n_nodes;
    {
        uint32_t i;
        for (i = 0; i < v->n_nodes; i++) {
            if (cm__get_u64(v->nodes + NODE_ENTRY * (size_t)i) > UINT64_MAX / NODE_SLOT - 1)
                return -1;
        }
        for (i = 0; i < v->n_clear; i++) {
            uint64_t x = cm__get_u64(v->clear + 8 * (size_t)i);
            if (!(v->flags & RF_TRUNCATE) || x >= v->tree_truncate) return -1;
        }
    }
    if ((v->flags & RF_MANIFEST) && v->manifest_len == 0) return -1;
    return 0;
}

/* In-place heapsort of 48-byte node entries by index. */
static void entry_swap(uint8_t *a, uint8_t *b) {
    uint8_t t[NODE_ENTRY];
    memcpy(t, a, NODE_ENTRY);
    memcpy(a, b, NODE_ENTRY);
    memcpy(b, t, NODE_ENTRY);
}

static void sift_down(uint8_t *e, size_t start, size_t end) {
    size_t root = start;
    while (2 * root + 1 < end) {
        size_t child = 2 * root + 1, sw = root;
        if (cm__get_u64(e + sw * NODE_ENTRY) < cm__get_u64(e + child * NODE_ENTRY)) sw = child;
        if (child + 1 < end &&
            cm__get_u64(e + sw * NODE_ENTRY) < cm__get_u64(e + (child + 1) * NODE_ENTRY))
            sw = child + 1;
        if (sw == root) return;
        entry_swap(e + root * NODE_ENTRY, e + sw * NODE_ENTRY);
        root = sw;
    }
}

static void entries_sort(uint8_t *e, size_t n) {
    size_t i, sorted = 1;
    for (i = 1; i < n && sorted; i++)
        if (cm__get_u64(e + (i - 1) * NODE_ENTRY) > cm__get_u64(e + i * NODE_ENTRY)) sorted = 0;
    if (sorted) return;
    for (i = n / 2; i-- > 0;) sift_down(e, i, n);
    for (i = n - 1; i > 0; i--) {
        entry_swap(e, e + i * NODE_ENTRY);
        sift_down(e, 0, i);
    }
}

/* Apply a record to tree/data (steps 1-3 of docs/format.md).  Node entries
 * are sorted in place so adjacent slots go out in one write. */
static int rec_apply_files(cm_core *c, cm__rec_view *v) {
    uint8_t run[NODE_SLOT * 100];
    size_t run_n = 0;
    uint64_t run_start = 0;
    uint32_t i;
    int rc;
    if (v->flags & RF_TRUNCATE) {
        static const uint8_t zero[NODE_SLOT];
        c->vgen++; /* nodes of the old history may be rewritten: forget verified ones */
        if ((rc = cm__io_truncate(c, CM_FILE_TREE, v->tree_truncate * NODE_SLOT)) != CM_OK)
            return rc;
        if ((rc = cm__io_truncate(c, CM_FILE_DATA, v->data_truncate)) != CM_OK) return rc;
        for (i = 0; i < v->n_clear; i++) {
            uint64_t x = cm__get_u64(v->clear + 8 * (size_t)i);
            if ((rc = cm__io_write(c, CM_FILE_TREE, zero, NODE_SLOT, x * NODE_SLOT)) != CM_OK)
                return rc;
        }
    }
    entries_sort(v->nodes, v->n_nodes);
    for (i = 0; i < v->n_nodes; i++) {
        const uint8_t *e = v->nodes + NODE_ENTRY * (size_t)i;
        uint64_t idx = cm__get_u64(e);
        if (run_n > 0 && (idx != run_start + run_n || run_n == 100)) {
            rc = cm__io_write(c, CM_FILE_TREE, run, run_n * NODE_SLOT, run_start * NODE_SLOT);
            if (rc != CM_OK) return rc;
            run_n = 0;
        }
        if (run_n == 0) run_start = idx;
        memcpy(run + run_n * NODE_SLOT, e + 8, NODE_SLOT);
        run_n++;
    }
    if (run_n > 0) {
        rc = cm__io_write(c, CM_FILE_TREE, run, run_n * NODE_SLOT, run_start * NODE_SLOT);
        if (rc != CM_OK) return rc;
    }
    if (v->data_len > 0) {
        rc = cm__io_write(c, CM_FILE_DATA, v->data, (size_t)v->data_len, v->data_offset);
        if (rc != CM_OK) return rc;
    }
    return CM_OK;
}

/* Step 4: the state becomes the record's (roots and cbytes are the caller's). */
static int rec_apply_state(cm_core *c, const cm__rec_view *v) {
    c->fork = v->fork;
    c->length = v->length;
    c->contiguous = v->contiguous;
    c->byte_length = v->byte_length;
    memcpy(c->tree_hash, v->tree_hash, 32);
    if (v->flags & RF_SIGNATURE) {
        memcpy(c->sig, v->sig, v->sig_len);
        c->sig_len = v->sig_len;
    } else {
        c->sig_len = 0;
    }
    c->sig_cached = 0;
    if (v->flags & RF_MANIFEST) {
        if (cm__set_manifest(c, v->manifest, v->manifest_len) != CM_OK)
            return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_WAL);
    }
    return CM_OK;
}

/* Write the record in scratch to `wal` (sync per durability or when forced),
 * then apply it.  Any failure poisons the core: memory and disk may differ. */
int cm__wal_commit(cm_core *c, size_t total, int force_sync) {
    uint8_t *r = c->scratch;
    uint32_t plen = cm__get_u32(r + 4), crc;
    cm__rec_view v;
    int rc;
    cm__put_u64(r + 8, c->wal_gen);
    cm__put_u64(r + 16, c->wal_seq);
    cm__put_u64(r + 24, c->wal_synced);
    cm__put_u32(r + 32, c->prev_crc);
    crc = cm_crc32(0, r + 4, 4 + (size_t)plen);
    cm__put_u32(r, crc);
    if (rec_parse(r + 8, plen, &v) != 0) return cm__fail(c, CM_ERR_INVALID, CM_FILE_NONE);
    rc = cm__io_write(c, CM_FILE_WAL, r, total, c->wal_end);
    if (rc == CM_OK && (force_sync || c->durability == CM_DURABLE_SYNC))
        rc = cm__io_sync(c, CM_FILE_WAL);
    if (rc != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    c->wal_end += total;
    c->wal_seq++;
    c->prev_crc = crc;
    if (force_sync || c->durability == CM_DURABLE_SYNC) c->wal_synced = c->wal_seq;
    rc = rec_apply_files(c, &v);
    if (rc == CM_OK) rc = rec_apply_state(c, &v);
    if (rc != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    return CM_OK;
}

int cm__maybe_checkpoint(cm_core *c) {
    int rc = CM_OK;
    if (c->wal_end >= c->checkpoint_bytes) {
        rc = cm__checkpoint(c);
        if (rc != CM_OK) c->poisoned = 1;
    }
    cm__scratch_trim(c);
    return rc;
}

#define SIZE_UNKNOWN UINT64_MAX

/* What frame_at found at `off`: bytes there (up to a record head) and, if
 * it read a whole head, its generation (else the one asked for). */
typedef struct frame_head {
    uint64_t got;
    uint64_t gen;
} frame_head;

/* Read and check the record at `off`: 1 if it is a valid record (CRC and
 * layout) of generation `gen` (any generation if any_gen), with the payload
 * left in scratch + 8 and *v filled.  *size is the wal's size, measured here
 * when SIZE_UNKNOWN and a record of the generation needs it (a clean open
 * stops at a head of an older one without it). */
static int frame_at(cm_core *c, uint64_t off, uint64_t *size, uint64_t gen, int any_gen,
                    cm__rec_view *v, uint32_t *crc_out, int *err, frame_head *seen) {
    uint8_t head[8 + REC_FIXED];
    size_t got;
    uint32_t plen;
    *err = CM_OK;
    seen->got = 0;
    seen->gen = gen;
    if (*size != SIZE_UNKNOWN && (off > *size || *size - off < sizeof(head))) {
        seen->got = off < *size ? *size - off : 0;
        return 0;
    }
    if ((*err = cm__io_read(c, CM_FILE_WAL, head, sizeof(head), off, &got)) != CM_OK) return 0;
    seen->got = got;
    if (got < sizeof(head)) return 0;
    plen = cm__get_u32(head + 4);
    seen->gen = cm__get_u64(head + 8);
    if (!any_gen && seen->gen != gen) return 0; /* another generation: no need to hash it */
    if (*size == SIZE_UNKNOWN && (*err = cm__io_size(c, CM_FILE_WAL, size)) != CM_OK) return 0;
    if (plen < REC_FIXED || plen > MAX_RECORD || plen > *size - off - 8) return 0;
    if ((*err = cm__scratch_reserve(c, (uint64_t)plen + 8)) != CM_OK) return 0;
    memcpy(c->scratch, head, sizeof(head));
    if (plen > REC_FIXED) {
        *err = cm__io_read(c, CM_FILE_WAL, c->scratch + sizeof(head), plen - REC_FIXED,
                       off + sizeof(head), &got);
        if (*err != CM_OK || got != plen - REC_FIXED) return 0;
    }
    if (cm_crc32(0, c->scratch + 4, 4 + (size_t)plen) != cm__get_u32(c->scratch)) return 0;
    if (rec_parse(c->scratch + 8, plen, v) != 0) return 0;
    *crc_out = cm__get_u32(c->scratch);
    return 1;
}

/* Replay stopped at `from` on a bad frame: is there a valid record of this
 * generation at or after it claiming that record `seq` had been fsync'ed?
 * (Then a durable record was lost: corruption, not a torn write.) */
static int later_durable(cm_core *c, uint64_t from, uint64_t size, uint64_t seq, int *found) {
    const size_t win = (size_t)1 << 20;
    uint8_t *buf;
    uint64_t base;
    int rc = CM_OK;
    *found = 0;
    if (size < from + 8 + REC_FIXED) return CM_OK;
    buf = (uint8_t *)malloc(win + 32);
    if (!buf) return cm__fail(c, CM_ERR_NOMEM, CM_FILE_NONE);
    for (base = from; base + 32 <= size && !*found && rc == CM_OK; base += win) {
        size_t got, i;
        uint64_t want = size - base;
        if (want > win + 32) want = win + 32;
        if ((rc = cm__io_read(c, CM_FILE_WAL, buf, (size_t)want, base, &got)) != CM_OK) break;
        for (i = 0; i + 32 <= got && i < win; i += 8) {
            uint64_t pos = base + i;
            cm__rec_view v;
            uint32_t crc;
            frame_head seen;
            int err;
            if (cm__get_u64(buf + i + 8) != c->wal_gen || cm__get_u64(buf + i + 24) <= seq)
                continue; /* cheap filter: generation and durable_count */
            if (frame_at(c, pos, &size, c->wal_gen, 0, &v, &crc, &err, &seen) &&
                v.durable_count > seq) {
                *found = 1;
                break;
            }
            if (err != CM_OK) {
                rc = err;
                break;
            }
        }
    }
    free(buf);
    return rc;
}

int cm__replay(cm_core *c, cm_recovery *rec, int *torn) {
    uint64_t size = SIZE_UNKNOWN, off = 0, seq = 0;
    uint32_t prev = 0;
    frame_head seen;
    int rc, found;
    *torn = 0;
    /* A snapshot reads the wal as it was when it started (the writer may
     * append meanwhile); under the lock it does not change. */
    if (c->readonly && (rc = cm__io_size(c, CM_FILE_WAL, &size)) != CM_OK) return rc;
    for (;;) {
        cm__rec_view v;
        uint32_t crc;
        if (!frame_at(c, off, &size, c->wal_gen, 0, &v, &crc, &rc, &seen)) {
            if (rc != CM_OK) return rc;
            break;
        }
        if (v.seq != seq || v.prev_crc != prev) break;
        rc = c->readonly ? cm__ov_apply(c, &v) : rec_apply_files(c, &v);
        if (rc != CM_OK) return rc;
        if ((rc = rec_apply_state(c, &v)) != CM_OK) return rc;
        seq++;
        prev = crc;
        off += pad8(8 + (uint64_t)v.payload_len);
        rec->records_replayed++;
    }
    c->wal_seq = seq;
    c->wal_synced = 0;
    c->wal_end = off;
    c->prev_crc = prev;
    if (c->readonly) {
        /* A snapshot ends where the chain does: past it, the writer may be
         * writing this very moment (a checkpoint race is the opener's). */
        cm__ov_seal(&c->ov);
        c->wal_synced = seq;
        return CM_OK;
    }
    if (seen.got > 0) {
        /* Where replay stopped (the wal goes on): an older generation (read
         * without its CRC) is a clean end; a valid record of a newer one
         * means the header slot that started it was lost; anything else is
         * a torn tail. */
        int older = seen.gen < c->wal_gen;
        if (seen.gen > c->wal_gen) {
            cm__rec_view v;
            uint32_t crc;
            frame_head again;
            if (frame_at(c, off, &size, 0, 1, &v, &crc, &rc, &again))
                return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_HEADER);
            if (rc != CM_OK) return rc;
        }
        if (!older && size == SIZE_UNKNOWN && (rc = cm__io_size(c, CM_FILE_WAL, &size)) != CM_OK)
            return rc;
        if (!older) {
            if ((rc = later_durable(c, off, size, seq, &found)) != CM_OK) return rc;
            if (found) return cm__fail(c, CM_ERR_CORRUPT, CM_FILE_WAL);
            rec->bytes_discarded = size - off;
            *torn = 1;
        }
    }
    cm__scratch_trim(c);
    return CM_OK;
}

int cm_core_flush(cm_core *c) {
    int rc;
    c->err_file = CM_FILE_NONE;
    if ((rc = cm__poisoned(c)) != CM_OK) return rc;
    if (c->wal_synced == c->wal_seq) return CM_OK;
    if ((rc = cm__io_sync(c, CM_FILE_WAL)) != CM_OK) {
        c->poisoned = 1;
        return rc;
    }
    c->wal_synced = c->wal_seq;
    return CM_OK;
}

int cm_core_checkpoint(cm_core *c) {
    int rc;
    c->err_file = CM_FILE_NONE;
    if (c->readonly) return cm__fail(c, CM_ERR_READONLY, CM_FILE_NONE);
    if ((rc = cm__poisoned(c)) != CM_OK) return rc;
    if (c->wal_seq == 0) return CM_OK;
    rc = cm__checkpoint(c);
    if (rc != CM_OK) c->poisoned = 1;
    return rc;
}
