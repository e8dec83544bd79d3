/*
 * test_vectors.c - the vector cores (tests/interop/vectors) replayed through a
 * real store: states, proofs, nodes and blocks as the JavaScript hypercore made them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"
#include "vectors.h"

static const vt_core *find_core(const char *name) {
    size_t i;
    for (i = 0; i < VT_N(VT_CORES); i++)
        if (strcmp(VT_CORES[i].name, name) == 0) return &VT_CORES[i];
    return NULL;
}

static void writer_opts_for(const vt_core *vc, writer_opts *w) {
    memset(w, 0, sizeof(*w));
    unhex_to(vc->secret_key, w->sk, 64);
    w->compat = vc->compat;
    if (vc->manifest.version == 2) w->manifest = unhex(vc->manifest_encoded, &w->manifest_len);
}

int open_store(const char *dir, cm_io **io, const writer_opts *w, const uint8_t *key,
               int create, cm_durability dur, cm_core **out, cm_recovery *rec) {
    cm_open_opts o;
    if (!*io) REQUIRE_OK(cm_io_posix_new(dir, io));
    memset(&o, 0, sizeof(o));
    o.io = *io;
    o.create = create;
    if (w) {
        o.secret_key = w->sk;
        o.manifest = w->manifest;
        o.manifest_len = w->manifest_len;
        o.compat = w->compat;
    }
    o.key = key;
    o.durability = dur;
    return cm_core_open(&o, out, rec);
}

static void check_state(cm_core *c, const vt_state *st, const char *what) {
    uint8_t th[32], sig[CM_MAX_SIGNATURE];
    cm_node roots[CM_MAX_ROOTS];
    size_t n, i, sl;
    CHECK(cm_core_length(c) == st->length, "%s: length %llu want %llu", what,
          (unsigned long long)cm_core_length(c), (unsigned long long)st->length);
    CHECK(cm_core_fork(c) == st->fork, "%s: fork", what);
    CHECK(cm_core_byte_length(c) == st->byte_length, "%s: byte_length %llu want %llu", what,
          (unsigned long long)cm_core_byte_length(c), (unsigned long long)st->byte_length);
    cm_core_tree_hash(c, th);
    CHECK(eq_hex(th, 32, st->tree_hash), "%s: tree hash %s", what, tohex(th, 32));
    n = cm_core_roots(c, roots);
    CHECK(n == st->n_roots, "%s: %zu roots, want %zu", what, n, st->n_roots);
    for (i = 0; i < n && i < st->n_roots; i++) {
        CHECK(roots[i].index == st->roots[i].index && roots[i].size == st->roots[i].size &&
                  eq_hex(roots[i].hash, 32, st->roots[i].hash),
              "%s: root %zu", what, i);
    }
    CHECK_RC(cm_core_signature(c, sig, sizeof(sig), &sl), CM_OK);
    if (st->signature == NULL)
        CHECK(sl == 0, "%s: signature should be empty, got %zu bytes", what, sl);
    else
        CHECK(eq_hex(sig, sl, st->signature), "%s: signature %s", what, tohex(sig, sl));
}

/* One append() call with blocks [from, to) of vc. */
static void append_range(cm_core *c, const vt_core *vc, uint64_t from, uint64_t to) {
    size_t n = (size_t)(to - from), i;
    cm_buf *bufs = (cm_buf *)xmalloc(sizeof(cm_buf) * (n ? n : 1));
    uint8_t **raw = (uint8_t **)xmalloc(sizeof(uint8_t *) * (n ? n : 1));
    uint64_t nl = 0;
    for (i = 0; i < n; i++) {
        raw[i] = unhex(vc->blocks[from + i], &bufs[i].len);
        bufs[i].data = raw[i];
    }
    CHECK_RC(cm_core_append(c, bufs, n, &nl), CM_OK);
    CHECK(nl == to, "append returned length %llu want %llu", (unsigned long long)nl,
          (unsigned long long)to);
    for (i = 0; i < n; i++) free(raw[i]);
    free(raw);
    free(bufs);
}

static const vt_state *state_at(const vt_core *vc, uint64_t length, uint64_t fork) {
    size_t i;
    for (i = 0; i < vc->n_states; i++)
        if (vc->states[i].length == length && vc->states[i].fork == fork) return &vc->states[i];
    return NULL;
}

static size_t vt_roots_of(const vt_core *vc, uint64_t length, cm_node *out) {
    uint64_t idx[CM_MAX_ROOTS];
    size_t n = cm_ft_full_roots(length, idx), i, j;
    for (i = 0; i < n; i++) {
        int found = 0;
        for (j = 0; j < vc->n_nodes; j++) {
            if (vc->nodes[j].index == idx[i]) {
                vt_to_node(&vc->nodes[j], &out[i]);
                found = 1;
                break;
            }
        }
        REQUIRE(found, "root %llu not in vector nodes", (unsigned long long)idx[i]);
    }
    return n;
}

static void test_vector_proof(cm_core *c, const vt_core *vc, const vt_proof *pf, size_t k) {
    cm_proof_request req;
    uint8_t *out, *want, *buf;
    size_t len = 0, want_len, i;
    cm_data_msg *m = (cm_data_msg *)xmalloc(sizeof(*m));
    cm_data_msg *m2 = (cm_data_msg *)xmalloc(sizeof(*m2));
    cm_proof_check *chk = (cm_proof_check *)xmalloc(sizeof(*chk));
    cm_node roots[CM_MAX_ROOTS];
    size_t nroots;
    cm_verifier v;
    uint8_t key[32];
    char what[64];
    const vt_state *st = state_at(vc, pf->at_length, pf->fork);

    snprintf(what, sizeof(what), "proof %zu", k);
    g_proofs++;
    memset(&req, 0, sizeof(req));
    req.request = 1;
    req.has_block = pf->has_block;
    req.block_index = pf->block_index;
    req.block_nodes = pf->block_nodes;
    req.has_upgrade = pf->has_upgrade;
    req.upgrade_start = pf->upgrade_start;
    req.upgrade_length = pf->upgrade_length;
    want = unhex(pf->wire_data, &want_len);
    out = (uint8_t *)xmalloc(want_len + 64);
    CHECK_RC(cm_core_proof(c, &req, out, 3, &len), CM_ERR_TOO_LARGE);
    CHECK(len == want_len, "%s: needed length %zu want %zu", what, len, want_len);
    CHECK_RC(cm_core_proof(c, &req, out, want_len + 64, &len), CM_OK);
    CHECK(len == want_len && memcmp(out, want, len) == 0, "%s: wire bytes differ:\n got %s\nwant %s",
          what, tohex(out, len), pf->wire_data);

    /* decode / encode roundtrip */
    REQUIRE_OK(cm_data_decode(want, want_len, m));
    CHECK(m->request == 1 && m->fork == pf->fork, "%s: decoded header", what);
    {
        uint8_t *re = (uint8_t *)xmalloc(want_len);
        size_t rl;
        CHECK_RC(cm_data_encode(m, re, want_len, &rl), CM_OK);
        CHECK(rl == want_len && memcmp(re, want, rl) == 0, "%s: re-encode", what);
        free(re);
    }
    for (i = 0; i < want_len; i++)
        CHECK(cm_data_decode(want, i, m2) != CM_OK, "%s: prefix %zu decoded", what, i);

    /* verification from the roots of upgrade.start */
    unhex_to(vc->key, key, 32);
    if (vc->compat) {
        REQUIRE_OK(cm_verifier_init(&v, key, NULL, 0));
    } else {
        size_t ml;
        uint8_t *mb = unhex(vc->manifest_encoded, &ml);
        REQUIRE_OK(cm_verifier_init(&v, key, mb, ml));
        free(mb);
    }
    nroots = vt_roots_of(vc, pf->upgrade_start, roots);
    CHECK_RC(cm_proof_check_msg(&v, roots, nroots, m, chk), CM_OK);
    CHECK(chk->upgraded && chk->length == pf->at_length, "%s: verified length %llu", what,
          (unsigned long long)chk->length);
    if (st) CHECK(eq_hex(chk->tree_hash, 32, st->tree_hash), "%s: verified tree hash", what);
    if (pf->has_block && pf->block_index >= pf->upgrade_start)
        CHECK(!chk->has_unverified, "%s: block should be consumed by the upgrade", what);
    for (i = 0; i < chk->n_nodes; i++) {
        size_t j;
        int ok = 0;
        for (j = 0; j < vc->n_nodes; j++)
            if (vc->nodes[j].index == chk->nodes[i].index)
                ok = eq_hex(chk->nodes[i].hash, 32, vc->nodes[j].hash);
        CHECK(ok, "%s: verified node %llu not a tree node", what,
              (unsigned long long)chk->nodes[i].index);
    }

    /* altered proofs are rejected */
    buf = (uint8_t *)xmalloc(want_len);
    memcpy(buf, want, want_len);
    REQUIRE_OK(cm_data_decode(buf, want_len, m2));
    for (i = 0; i < m2->n_block_nodes; i++) {
        m2->block_nodes[i].hash[i % 32] ^= 0x40;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: block node %zu", what, i);
        m2->block_nodes[i].hash[i % 32] ^= 0x40;
        m2->block_nodes[i].size += 1;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: block node size %zu",
              what, i);
        m2->block_nodes[i].size -= 1;
    }
    for (i = 0; i < m2->n_upgrade_nodes; i++) {
        m2->upgrade_nodes[i].hash[31] ^= 1;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: upgrade node %zu", what,
              i);
        m2->upgrade_nodes[i].hash[31] ^= 1;
    }
    for (i = 0; i < m2->n_additional_nodes; i++) {
        m2->additional_nodes[i].hash[0] ^= 1;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: additional node %zu",
              what, i);
        m2->additional_nodes[i].hash[0] ^= 1;
    }
    if (m2->has_block && m2->block_len > 0) {
        size_t off = (size_t)(m2->block_value - buf);
        buf[off + m2->block_len / 2] ^= 0x01;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: block value", what);
        buf[off + m2->block_len / 2] ^= 0x01;
    }
    if (m2->has_block) {
        m2->block_index ^= 1;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: block index", what);
        m2->block_index ^= 1;
    }
    if (m2->signature_len) {
        size_t off = (size_t)(m2->signature - buf);
        buf[off + m2->signature_len - 5] ^= 0x80;
        CHECK_RC(cm_proof_check_msg(&v, roots, nroots, m2, chk), CM_ERR_BAD_SIGNATURE);
        buf[off + m2->signature_len - 5] ^= 0x80;
    }
    m2->fork += 1;
    CHECK_RC(cm_proof_check_msg(&v, roots, nroots, m2, chk), CM_ERR_BAD_SIGNATURE);
    m2->fork -= 1;
    if (m2->n_upgrade_nodes > 0) {
        m2->n_upgrade_nodes--;
        CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: dropped node", what);
        m2->n_upgrade_nodes++;
    }
    m2->upgrade_nodes[m2->n_upgrade_nodes] = m2->upgrade_nodes[0];
    m2->n_upgrade_nodes++;
    CHECK(cm_proof_check_msg(&v, roots, nroots, m2, chk) != CM_OK, "%s: extra node", what);
    m2->n_upgrade_nodes--;
    CHECK_RC(cm_proof_check_msg(&v, roots, nroots, m2, chk), CM_OK);
    if (nroots > 0) /* wrong trusted roots */
        CHECK(cm_proof_check_msg(&v, roots, nroots - 1, m2, chk) != CM_OK, "%s: fewer roots", what);
    free(buf);
    free(out);
    free(want);
    free(m);
    free(m2);
    free(chk);
}

static void check_all_nodes_and_blocks(cm_core *c, const vt_core *vc) {
    size_t i;
    uint8_t *buf = (uint8_t *)xmalloc(1 << 16);
    for (i = 0; i < vc->n_nodes; i++) {
        cm_node n;
        int rc = cm_core_get_node(c, vc->nodes[i].index, &n);
        CHECK(rc == CM_OK && n.size == vc->nodes[i].size && eq_hex(n.hash, 32, vc->nodes[i].hash),
              "node %llu (rc %d)", (unsigned long long)vc->nodes[i].index, rc);
        CHECK(cm_core_has_node(c, vc->nodes[i].index) == 1, "has_node %llu",
              (unsigned long long)vc->nodes[i].index);
    }
    for (i = 0; i < vc->n_blocks; i++) {
        size_t len, wl;
        uint8_t *w = unhex(vc->blocks[i], &wl);
        uint64_t bs = 0;
        CHECK_RC(cm_core_get(c, i, buf, 1 << 16, &len), CM_OK);
        CHECK(len == wl && memcmp(buf, w, wl) == 0, "block %zu content", i);
        CHECK_RC(cm_core_block_size(c, i, &bs), CM_OK);
        CHECK(bs == wl, "block %zu size", i);
        if (wl > 0) {
            CHECK_RC(cm_core_get(c, i, buf, wl - 1, &len), CM_ERR_TOO_LARGE);
            CHECK(len == wl, "short buffer reports size");
        }
        free(w);
    }
    CHECK_RC(cm_core_get(c, vc->n_blocks, buf, 1 << 16, &i), CM_ERR_RANGE);
    free(buf);
}

static void replay_into(cm_core *c, const vt_core *vc, size_t first_state, int do_proofs) {
    size_t s, k;
    for (s = first_state; s < vc->n_states; s++) {
        char what[96];
        const vt_state *st = &vc->states[s];
        if (s > 0) append_range(c, vc, vc->states[s - 1].length, st->length);
        snprintf(what, sizeof(what), "state %zu (length %llu)", s, (unsigned long long)st->length);
        check_state(c, st, what);
        if (!do_proofs) continue;
        for (k = 0; k < vc->n_proofs; k++)
            if (vc->proofs[k].at_length == st->length && vc->proofs[k].fork == st->fork)
                test_vector_proof(c, vc, &vc->proofs[k], k);
    }
}

void test_vector_core(const vt_core *vc) {
    char *dir = store_path(vc->name);
    cm_io *io = NULL;
    cm_core *c = NULL;
    writer_opts w;
    cm_recovery rec;
    uint8_t key[32], dk[32];
    size_t ml;
    g_ctx = vc->name;
    writer_opts_for(vc, &w);
    REQUIRE_OK(open_store(dir, &io, &w, NULL, 1, CM_DURABLE_SYNC, &c, &rec));
    unhex_to(vc->key, key, 32);
    unhex_to(vc->discovery_key, dk, 32);
    CHECK(memcmp(cm_core_key(c), key, 32) == 0, "core key %s", tohex(cm_core_key(c), 32));
    CHECK(memcmp(cm_core_discovery_key(c), dk, 32) == 0, "discovery key");
    CHECK(cm_core_writable(c) == 1 && cm_core_compat(c) == vc->compat, "writable/compat");
    if (vc->compat) {
        CHECK(cm_core_manifest(c, &ml) == NULL && ml == 0, "compat: no manifest");
    } else {
        const uint8_t *mb = cm_core_manifest(c, &ml);
        size_t wl;
        uint8_t *wm = unhex(vc->manifest_encoded, &wl);
        CHECK(mb && ml == wl && memcmp(mb, wm, wl) == 0, "stored manifest");
        free(wm);
    }
    {
        uint8_t pk[32];
        CHECK_RC(cm_core_public_key(c, pk), CM_OK);
        CHECK(eq_hex(pk, 32, vc->public_key), "public key");
    }

    if (vc->truncated_from) {
        const vt_core *base = find_core(vc->truncated_from);
        REQUIRE(base != NULL, "base core %s", vc->truncated_from);
        replay_into(c, base, 0, 0);
        CHECK(cm_core_length(c) == vc->truncated_from_length, "base length");
        CHECK_RC(cm_core_truncate(c, vc->truncated_to_length, vc->states[0].fork), CM_OK);
        check_state(c, &vc->states[0], "after truncate");
        replay_into(c, vc, 0, 1);
    } else {
        replay_into(c, vc, 0, 1);
    }
    CHECK(cm_core_length(c) == vc->final_length && cm_core_fork(c) == vc->final_fork, "final");
    check_all_nodes_and_blocks(c, vc);
    CHECK_RC(cm_core_close(c), CM_OK);

    /* reopen from the secret_key file alone */
    c = NULL;
    REQUIRE_OK(open_store(dir, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &c, &rec));
    CHECK(rec.records_replayed == 0 && rec.bytes_discarded == 0, "clean reopen");
    check_state(c, &vc->states[vc->n_states - 1], "reopened");
    CHECK(cm_core_writable(c) == 1, "reopened writable");
    check_all_nodes_and_blocks(c, vc);
    {
        size_t k;
        for (k = 0; k < vc->n_proofs; k++)
            if (vc->proofs[k].at_length == cm_core_length(c)) test_vector_proof(c, vc, &vc->proofs[k], k);
    }
    CHECK_RC(cm_core_close(c), CM_OK);
    cm_io_posix_free(io);
    free(w.manifest);
    free(dir);
}
