/*
 * test_replica.c - replicas fed proofs by a writer, and reorgs (forks).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"

/* Ask `from` for a proof and apply it to `to`. Returns the apply result. */
int transfer(cm_core *from, cm_core *to, const cm_proof_request *req, cm_apply_result *res,
             uint8_t **msg_out, size_t *msg_len) {
    size_t need = 0;
    uint8_t *buf;
    int rc = cm_core_proof(from, req, NULL, 0, &need);
    if (rc != CM_ERR_TOO_LARGE) return rc;
    buf = (uint8_t *)xmalloc(need);
    rc = cm_core_proof(from, req, buf, need, &need);
    if (rc == CM_OK) rc = cm_core_apply_proof(to, buf, need, res);
    if (msg_out) {
        *msg_out = buf;
        *msg_len = need;
    } else {
        free(buf);
    }
    return rc;
}

int upgrade_replica(cm_core *w, cm_core *r, int want_manifest, cm_apply_result *res) {
    cm_proof_request req;
    memset(&req, 0, sizeof(req));
    req.request = 7;
    req.has_upgrade = 1;
    if (cm_core_fork(w) == cm_core_fork(r)) {
        req.upgrade_start = cm_core_length(r);
        req.upgrade_length = cm_core_length(w) - cm_core_length(r);
    } else {
        req.upgrade_start = 0;
        req.upgrade_length = cm_core_length(w);
    }
    req.manifest = want_manifest;
    return transfer(w, r, &req, res, NULL, NULL);
}

int fetch_block(cm_core *w, cm_core *r, uint64_t index, cm_apply_result *res) {
    cm_proof_request req;
    uint64_t nodes = 0;
    int rc = cm_core_missing_nodes(r, index, &nodes);
    if (rc != CM_OK) return rc;
    memset(&req, 0, sizeof(req));
    req.request = 9;
    req.has_block = 1;
    req.block_index = index;
    req.block_nodes = nodes;
    return transfer(w, r, &req, res, NULL, NULL);
}

/* Bring r to w's state; returns 0 on success. */
void sync_full(cm_core *w, cm_core *r) {
    cm_apply_result res;
    uint64_t i;
    if (cm_core_length(r) != cm_core_length(w) || cm_core_fork(r) != cm_core_fork(w))
        CHECK_RC(upgrade_replica(w, r, 1, &res), CM_OK);
    for (i = cm_core_contiguous_length(r); i < cm_core_length(r); i++) {
        CHECK_RC(fetch_block(w, r, i, &res), CM_OK);
        CHECK(res.block_stored == 1, "block %llu stored", (unsigned long long)i);
    }
}

void compare_cores(cm_core *a, cm_core *b, const char *what) {
    uint8_t ha[32], hb[32], sa[CM_MAX_SIGNATURE], sb[CM_MAX_SIGNATURE];
    size_t la, lb, i;
    uint8_t *ba = (uint8_t *)xmalloc(1 << 17), *bb = (uint8_t *)xmalloc(1 << 17);
    cm_node ra[CM_MAX_ROOTS], rb[CM_MAX_ROOTS];
    size_t na, nb;
    CHECK(cm_core_length(a) == cm_core_length(b) && cm_core_fork(a) == cm_core_fork(b),
          "%s: length %llu/%llu fork %llu/%llu", what, (unsigned long long)cm_core_length(a),
          (unsigned long long)cm_core_length(b), (unsigned long long)cm_core_fork(a),
          (unsigned long long)cm_core_fork(b));
    CHECK(cm_core_byte_length(a) == cm_core_byte_length(b), "%s: byte length", what);
    cm_core_tree_hash(a, ha);
    cm_core_tree_hash(b, hb);
    CHECK(memcmp(ha, hb, 32) == 0, "%s: tree hash", what);
    na = cm_core_roots(a, ra);
    nb = cm_core_roots(b, rb);
    CHECK(na == nb && memcmp(ra, rb, na * sizeof(cm_node)) == 0, "%s: roots", what);
    CHECK_RC(cm_core_signature(a, sa, sizeof(sa), &la), CM_OK);
    CHECK_RC(cm_core_signature(b, sb, sizeof(sb), &lb), CM_OK);
    CHECK(la == lb && memcmp(sa, sb, la) == 0, "%s: signature", what);
    CHECK(memcmp(cm_core_key(a), cm_core_key(b), 32) == 0, "%s: key", what);
    for (i = 0; i < cm_core_contiguous_length(b) && i < cm_core_length(a); i++) {
        size_t l1 = 0, l2 = 0;
        CHECK_RC(cm_core_get(a, i, ba, 1 << 17, &l1), CM_OK);
        CHECK_RC(cm_core_get(b, i, bb, 1 << 17, &l2), CM_OK);
        CHECK(l1 == l2 && memcmp(ba, bb, l1) == 0, "%s: block %zu", what, i);
    }
    free(ba);
    free(bb);
}

void append_ids(cm_core *c, uint32_t first_id, size_t n) {
    cm_buf *bufs = (cm_buf *)xmalloc(sizeof(cm_buf) * n);
    uint8_t *mem = (uint8_t *)xmalloc(n * 21000);
    size_t i;
    uint64_t before = cm_core_length(c), nl;
    for (i = 0; i < n; i++) {
        bufs[i].data = mem + i * 21000;
        bufs[i].len = block_content(first_id + (uint32_t)i, mem + i * 21000, 21000);
    }
    CHECK_RC(cm_core_append(c, bufs, n, &nl), CM_OK);
    CHECK(nl == before + n, "append length");
    free(mem);
    free(bufs);
}

void make_writer(const char *dir, cm_io **io, uint8_t seed_byte, int compat, cm_core **w) {
    writer_opts wo;
    uint8_t seed[32], pk[32];
    memset(&wo, 0, sizeof(wo));
    memset(seed, seed_byte, 32);
    REQUIRE_OK(cm_keypair_from_seed(seed, pk, wo.sk));
    wo.compat = compat;
    REQUIRE_OK(open_store(dir, io, &wo, NULL, 1, CM_DURABLE_BATCH, w, NULL));
}

void test_replica(int compat) {
    char *wd = store_path(compat ? "rep-compat-writer" : "rep-writer");
    char *rd = store_path(compat ? "rep-compat-replica" : "rep-replica");
    char *r2d = store_path(compat ? "rep-compat-replica2" : "rep-replica2");
    cm_io *wio = NULL, *rio = NULL, *r2io = NULL;
    cm_core *w, *r, *r2;
    cm_apply_result res;
    cm_recovery rec;
    uint8_t key[32];
    uint64_t i;
    g_ctx = compat ? "replica-compat" : "replica";
    make_writer(wd, &wio, compat ? 3 : 4, compat, &w);
    memcpy(key, cm_core_key(w), 32);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 1, CM_DURABLE_SYNC, &r, NULL));
    CHECK(cm_core_writable(r) == 0 && cm_core_compat(r) == 1, "fresh replica");
    {
        cm_buf b = {(const uint8_t *)"x", 1};
        CHECK_RC(cm_core_append(r, &b, 1, NULL), CM_ERR_READONLY);
        CHECK_RC(cm_core_truncate(r, 0, 1), CM_ERR_READONLY);
    }
    append_ids(w, 1, 5);
    append_ids(w, 6, 1);
    append_ids(w, 7, 3);
    /* upgrade only, learning the manifest */
    CHECK_RC(upgrade_replica(w, r, 1, &res), CM_OK);
    CHECK(res.upgraded == 1 && res.manifest_learned == !compat && res.reorg == 0, "upgrade result");
    CHECK(cm_core_length(r) == 9 && cm_core_contiguous_length(r) == 0, "replica length 9");
    CHECK(cm_core_compat(r) == compat, "replica compat after manifest");
    /* the same upgrade again is a no-op */
    {
        cm_proof_request req;
        memset(&req, 0, sizeof(req));
        req.has_upgrade = 1;
        req.upgrade_start = 0;
        req.upgrade_length = 9;
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_ERR_BAD_PROOF);
    }
    /* a block ahead of the contiguous region verifies but is not stored */
    CHECK_RC(fetch_block(w, r, 7, &res), CM_OK);
    CHECK(res.has_block && res.block_index == 7 && res.block_stored == 0, "block ahead");
    {
        size_t len;
        uint8_t buf[16];
        CHECK_RC(cm_core_get(r, 7, buf, sizeof(buf), &len), CM_ERR_UNAVAILABLE);
        CHECK_RC(cm_core_get(r, 9, buf, sizeof(buf), &len), CM_ERR_RANGE);
    }
    for (i = 0; i < 4; i++) {
        CHECK_RC(fetch_block(w, r, i, &res), CM_OK);
        CHECK(res.block_stored == 1, "block %llu stored", (unsigned long long)i);
    }
    /* re-fetching a held block changes nothing */
    CHECK_RC(fetch_block(w, r, 2, &res), CM_OK);
    CHECK(res.block_stored == 0 && res.upgraded == 0, "held block");
    /* close with a sparse region, reopen: sanitize, held blocks still verify */
    CHECK_RC(cm_core_close(r), CM_OK);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 0, CM_DURABLE_SYNC, &r, &rec));
    CHECK(cm_core_length(r) == 9 && cm_core_contiguous_length(r) == 4, "reopened sparse replica");
    for (i = 0; i < 4; i++) {
        uint8_t buf[21000];
        size_t len;
        CHECK_RC(cm_core_get(r, i, buf, sizeof(buf), &len), CM_OK);
    }
    CHECK_RC(cm_core_close(r), CM_OK);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 0, CM_DURABLE_BATCH, &r, &rec));
    /* block + upgrade in one message */
    append_ids(w, 10, 13);
    {
        cm_proof_request req;
        memset(&req, 0, sizeof(req));
        req.has_block = 1;
        req.block_index = cm_core_contiguous_length(r);
        CHECK_RC(cm_core_missing_nodes(r, req.block_index, &req.block_nodes), CM_OK);
        req.has_upgrade = 1;
        req.upgrade_start = cm_core_length(r);
        req.upgrade_length = cm_core_length(w) - cm_core_length(r);
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_OK);
        CHECK(res.upgraded && res.block_stored == 1 && cm_core_contiguous_length(r) == 5,
              "block+upgrade (below start)");
        /* block beyond the old length, consumed by the upgrade */
        append_ids(w, 40, 2);
        req.block_index = cm_core_length(r) + 1;
        req.upgrade_start = cm_core_length(r);
        req.upgrade_length = cm_core_length(w) - cm_core_length(r);
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_OK);
        CHECK(res.upgraded && res.block_stored == 0, "block+upgrade (above start)");
        /* upgrade ending below the writer's length: additional nodes */
        append_ids(w, 50, 9);
        req.has_block = 0;
        req.upgrade_start = cm_core_length(r);
        req.upgrade_length = 3;
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_OK);
        CHECK(res.upgraded && cm_core_length(r) == cm_core_length(w), "additional nodes reach %llu",
              (unsigned long long)cm_core_length(r));
    }
    sync_full(w, r);
    CHECK_RC(cm_core_flush(r), CM_OK);
    compare_cores(w, r, "after sync");
    /* a second replica fed by the first one */
    REQUIRE_OK(open_store(r2d, &r2io, NULL, key, 1, CM_DURABLE_NONE, &r2, NULL));
    sync_full(r, r2);
    compare_cores(w, r2, "replica of replica");
    CHECK_RC(cm_core_close(r2), CM_OK);
    CHECK_RC(cm_core_close(r), CM_OK);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 0, CM_DURABLE_SYNC, &r, &rec));
    compare_cores(w, r, "reopened replica");
    /* proofs for an older fork and forged messages are rejected; nothing changes */
    {
        cm_proof_request req;
        uint8_t *msg;
        size_t len, k;
        uint64_t seed = 42;
        uint8_t th[32], th2[32];
        memset(&req, 0, sizeof(req));
        append_ids(w, 70, 2);
        req.has_block = 1;
        req.block_index = cm_core_length(r);
        req.has_upgrade = 1;
        req.upgrade_start = cm_core_length(r);
        req.upgrade_length = 2;
        req.manifest = 1;
        REQUIRE_OK(cm_core_proof(w, &req, NULL, 0, &len) == CM_ERR_TOO_LARGE ? CM_OK : -1);
        msg = (uint8_t *)xmalloc(len);
        REQUIRE_OK(cm_core_proof(w, &req, msg, len, &len));
        cm_core_tree_hash(r, th);
        for (k = 0; k < 3000; k++) {
            uint8_t *mut = (uint8_t *)xmalloc(len);
            size_t ml = len, nflips = 1 + rng_below(&seed, 3), f;
            int rc;
            memcpy(mut, msg, len);
            for (f = 0; f < nflips; f++) mut[rng_below(&seed, len)] ^= (uint8_t)(1u << rng_below(&seed, 8));
            if (rng_below(&seed, 4) == 0) ml = rng_below(&seed, len);
            rc = cm_core_apply_proof(r, mut, ml, &res);
            if (rc == CM_OK) {
                /* only harmless bytes (request id, flags of absent parts...) changed */
                cm_core_tree_hash(r, th2);
                CHECK(cm_core_length(r) == cm_core_length(w) - 2 || cm_core_length(r) == cm_core_length(w),
                      "mutated message applied with length %llu", (unsigned long long)cm_core_length(r));
            }
            free(mut);
        }
        CHECK_RC(cm_core_apply_proof(r, msg, len, &res), cm_core_length(r) == cm_core_length(w) ? CM_ERR_BAD_PROOF : CM_OK);
        free(msg);
        sync_full(w, r);
        compare_cores(w, r, "after forged messages");
    }
    CHECK_RC(cm_core_close(r), CM_OK);
    CHECK_RC(cm_core_close(w), CM_OK);
    cm_io_posix_free(wio);
    cm_io_posix_free(rio);
    cm_io_posix_free(r2io);
    free(wd);
    free(rd);
    free(r2d);
}

/* Writer truncates; the replica reorganises onto the new fork. */
void test_reorg(void) {
    char *wd = store_path("reorg-writer"), *rd = store_path("reorg-replica");
    char *r2d = store_path("reorg-replica2"), *fd = store_path("reorg-fresh");
    cm_io *wio = NULL, *rio = NULL, *r2io = NULL, *fio = NULL;
    cm_core *w, *r, *r2, *f;
    cm_apply_result res;
    uint8_t key[32];
    g_ctx = "reorg";
    make_writer(wd, &wio, 5, 0, &w);
    memcpy(key, cm_core_key(w), 32);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 1, CM_DURABLE_BATCH, &r, NULL));
    REQUIRE_OK(open_store(r2d, &r2io, NULL, key, 1, CM_DURABLE_SYNC, &r2, NULL));
    append_ids(w, 100, 20);
    sync_full(w, r);
    CHECK_RC(upgrade_replica(w, r2, 1, &res), CM_OK);
    compare_cores(w, r, "before truncate");
    CHECK_RC(cm_core_truncate(w, 12, 0), CM_ERR_INVALID);
    CHECK_RC(cm_core_truncate(w, 21, 1), CM_ERR_RANGE);
    /* keep root 15 (blocks 0..15), replace the rest: a reorg keeps 16 */
    CHECK_RC(cm_core_truncate(w, 16, 1), CM_OK);
    append_ids(w, 300, 2);
    {
        cm_proof_request req;
        memset(&req, 0, sizeof(req));
        req.has_block = 1;
        req.block_index = 16;
        req.has_upgrade = 1;
        req.upgrade_start = 0;
        req.upgrade_length = 18;
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_OK);
        CHECK(res.reorg == 1 && res.reorg_length == 16 && res.fork == 1, "reorg length %llu",
              (unsigned long long)res.reorg_length);
        CHECK(res.block_stored == 1 && cm_core_contiguous_length(r) == 17, "block 16 stored");
        CHECK(cm_core_length(r) == 18 && cm_core_fork(r) == 1, "replica on fork 1");
    }
    sync_full(w, r);
    compare_cores(w, r, "after reorg to 16");
    /* root 15 changes too: nothing is kept */
    CHECK_RC(cm_core_truncate(w, 12, 0), CM_ERR_INVALID);
    CHECK_RC(cm_core_truncate(w, 19, 2), CM_ERR_RANGE);
    CHECK_RC(cm_core_truncate(w, 12, 2), CM_OK);
    append_ids(w, 500, 6);
    CHECK(cm_core_length(w) == 18 && cm_core_fork(w) == 2, "writer after truncate");
    {
        cm_proof_request req;
        memset(&req, 0, sizeof(req));
        req.has_block = 1;
        req.block_index = 0;
        req.has_upgrade = 1;
        req.upgrade_start = 0;
        req.upgrade_length = 18;
        CHECK_RC(transfer(w, r, &req, &res, NULL, NULL), CM_OK);
        CHECK(res.reorg == 1 && res.reorg_length == 0 && res.fork == 2, "reorg length %llu",
              (unsigned long long)res.reorg_length);
        CHECK(res.block_stored == 1 && cm_core_contiguous_length(r) == 1, "block 0 stored");
    }
    /* an old-fork proof is refused; a newer fork needs an upgrade from 0 */
    {
        cm_proof_request req;
        memset(&req, 0, sizeof(req));
        req.has_upgrade = 1;
        req.upgrade_start = 0;
        req.upgrade_length = 20;
        CHECK_RC(transfer(r2, r, &req, &res, NULL, NULL), CM_ERR_FORK);
        CHECK_RC(fetch_block(w, r2, 0, &res), CM_ERR_FORK);
    }
    sync_full(w, r);
    compare_cores(w, r, "after reorg");
    CHECK_RC(upgrade_replica(w, r2, 1, &res), CM_OK);
    CHECK(res.reorg == 1 && res.reorg_length == 0 && cm_core_contiguous_length(r2) == 0,
          "upgrade-only reorg: kept %llu", (unsigned long long)res.reorg_length);
    sync_full(w, r2);
    compare_cores(w, r2, "replica2 after reorg");
    /* a fresh writer with the same content has the same tree */
    {
        writer_opts wo;
        uint8_t seed[32], pk[32];
        cm_buf bufs[18];
        uint8_t *mem = (uint8_t *)xmalloc(18 * 21000);
        uint8_t h1[32], h2[32];
        size_t i;
        memset(&wo, 0, sizeof(wo));
        memset(seed, 5, 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, wo.sk));
        REQUIRE_OK(open_store(fd, &fio, &wo, NULL, 1, CM_DURABLE_NONE, &f, NULL));
        for (i = 0; i < 18; i++) {
            bufs[i].data = mem + i * 21000;
            bufs[i].len = block_content(i < 12 ? 100 + (uint32_t)i : 500 + (uint32_t)i - 12,
                                        mem + i * 21000, 21000);
        }
        CHECK_RC(cm_core_append(f, bufs, 18, NULL), CM_OK);
        cm_core_tree_hash(f, h1);
        cm_core_tree_hash(w, h2);
        CHECK(memcmp(h1, h2, 32) == 0, "same content, same tree hash");
        CHECK_RC(cm_core_close(f), CM_OK);
        free(mem);
    }
    /* truncate to 0 and grow again */
    CHECK_RC(cm_core_truncate(w, 0, 5), CM_OK);
    CHECK(cm_core_length(w) == 0 && cm_core_byte_length(w) == 0, "truncate to 0");
    {
        uint8_t sig[128];
        size_t sl;
        CHECK_RC(cm_core_signature(w, sig, sizeof(sig), &sl), CM_OK);
        CHECK(sl == 68, "state (0, 5) is signed");
    }
    append_ids(w, 900, 4);
    sync_full(w, r);
    compare_cores(w, r, "after truncate to 0");
    CHECK_RC(cm_core_close(r), CM_OK);
    REQUIRE_OK(open_store(rd, &rio, NULL, key, 0, CM_DURABLE_SYNC, &r, NULL));
    compare_cores(w, r, "reopened after reorgs");
    CHECK_RC(cm_core_close(w), CM_OK);
    REQUIRE_OK(open_store(wd, &wio, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
    compare_cores(w, r, "writer reopened");
    CHECK_RC(cm_core_close(r), CM_OK);
    CHECK_RC(cm_core_close(r2), CM_OK);
    CHECK_RC(cm_core_close(w), CM_OK);
    cm_io_posix_free(wio);
    cm_io_posix_free(rio);
    cm_io_posix_free(r2io);
    cm_io_posix_free(fio);
    free(wd);
    free(rd);
    free(r2d);
    free(fd);
}
