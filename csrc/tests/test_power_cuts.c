/*
 * test_power_cuts.c - writers and replicas cut off at random points on a
 * crash_io: every reopen recovers a state that was committed, never unverified bytes.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"

typedef struct mstate {
    uint64_t length, fork;
    uint8_t tree_hash[32];
    uint32_t *ids;
} mstate;

typedef struct model {
    mstate *s;
    size_t n, cap;
    uint32_t *ids; /* current content ids */
    size_t n_ids, cap_ids;
} model;

static void model_push(model *m, cm_core *c) {
    mstate *s;
    if (m->n == m->cap) {
        m->cap = m->cap * 2 + 16;
        m->s = (mstate *)realloc(m->s, m->cap * sizeof(mstate));
    }
    s = &m->s[m->n++];
    s->length = cm_core_length(c);
    s->fork = cm_core_fork(c);
    cm_core_tree_hash(c, s->tree_hash);
    s->ids = (uint32_t *)xmalloc(sizeof(uint32_t) * (m->n_ids + 1));
    if (m->n_ids) memcpy(s->ids, m->ids, sizeof(uint32_t) * m->n_ids);
}

static void model_free(model *m) {
    size_t i;
    for (i = 0; i < m->n; i++) free(m->s[i].ids);
    free(m->s);
    free(m->ids);
    memset(m, 0, sizeof(*m));
}

static void model_append(model *m, uint32_t id) {
    if (m->n_ids == m->cap_ids) {
        m->cap_ids = m->cap_ids * 2 + 16;
        m->ids = (uint32_t *)realloc(m->ids, m->cap_ids * sizeof(uint32_t));
    }
    m->ids[m->n_ids++] = id;
}

static void verify_blocks(cm_core *c, const uint32_t *ids, uint64_t n) {
    uint64_t i;
    uint8_t *buf = (uint8_t *)xmalloc(21000), *want = (uint8_t *)xmalloc(21000);
    for (i = 0; i < n; i++) {
        size_t len = 0, wl = block_content(ids[i], want, 21000);
        int rc = cm_core_get(c, i, buf, 21000, &len);
        CHECK(rc == CM_OK && len == wl && memcmp(buf, want, wl) == 0,
              "block %llu after recovery (rc %d, err file %d)", (unsigned long long)i, rc,
              cm_core_err_file(c));
    }
    free(buf);
    free(want);
}

static int open_mem(crashio *cio, const uint8_t *sk, const uint8_t *key, int compat, int create,
                    cm_durability dur, uint64_t cp, cm_core **out, cm_recovery *rec) {
    cm_open_opts o;
    memset(&o, 0, sizeof(o));
    o.io = &cio->io;
    o.create = create;
    o.secret_key = sk;
    o.key = key;
    o.compat = compat;
    o.durability = dur;
    o.checkpoint_bytes = cp;
    return cm_core_open(&o, out, rec);
}

void test_power_cuts_writer(int runs) {
    int run;
    uint64_t cps[4] = {256, 2048, 65536, 0};
    char ctx[64];
    for (run = 0; run < runs; run++) {
        crashio cio;
        uint64_t rng = 0x1234567ull + (uint64_t)run * 7919;
        uint8_t seed[32], pk[32], sk[64];
        cm_core *c = NULL;
        cm_recovery rec;
        model m;
        size_t durable = 0, k, found = (size_t)-1;
        uint64_t recovered_fork = 0;
        int nops, op, compat;
        cm_durability dur;
        uint64_t cp;
        uint32_t next_id = (uint32_t)run * 1000;
        snprintf(ctx, sizeof(ctx), "power-cut writer run %d", run);
        g_ctx = ctx;
        memset(&m, 0, sizeof(m));
        cio_init(&cio, rng);
        rng_next(&rng);
        memset(seed, (int)(run & 0xff), 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
        compat = (int)rng_below(&rng, 2);
        dur = (cm_durability)rng_below(&rng, 3);
        cp = cps[rng_below(&rng, 4)];
        REQUIRE_OK(open_mem(&cio, sk, NULL, compat, 1, dur, cp, &c, &rec));
        model_push(&m, c);
        nops = 1 + (int)rng_below(&rng, 40);
        for (op = 0; op < nops; op++) {
            uint64_t r = rng_below(&rng, 100);
            if (r < 62) {
                size_t n = 1 + (size_t)rng_below(&rng, 4), i;
                cm_buf bufs[4];
                uint8_t *mem = (uint8_t *)xmalloc(4 * 21000);
                for (i = 0; i < n; i++) {
                    bufs[i].data = mem + i * 21000;
                    bufs[i].len = block_content(next_id, mem + i * 21000, 21000);
                    model_append(&m, next_id++);
                }
                CHECK_RC(cm_core_append(c, bufs, n, NULL), CM_OK);
                free(mem);
                model_push(&m, c);
                if (dur == CM_DURABLE_SYNC) durable = m.n - 1;
            } else if (r < 72) {
                uint64_t nl = rng_below(&rng, cm_core_length(c) + 1);
                CHECK_RC(cm_core_truncate(c, nl, cm_core_fork(c) + 1 + rng_below(&rng, 2)), CM_OK);
                m.n_ids = (size_t)nl;
                model_push(&m, c);
                durable = m.n - 1;
            } else if (r < 80) {
                CHECK_RC(cm_core_flush(c), CM_OK);
                durable = m.n - 1;
            } else if (r < 86) {
                CHECK_RC(cm_core_checkpoint(c), CM_OK);
                durable = m.n - 1;
            } else if (r < 90) {
                CHECK_RC(cm_core_close(c), CM_OK);
                c = NULL;
                CHECK_RC(open_mem(&cio, NULL, NULL, 0, 0, dur, cp, &c, &rec), CM_OK);
                if (!c) break;
                durable = m.n - 1;
                CHECK(cm_core_length(c) == m.s[m.n - 1].length, "clean reopen length");
            } else {
                uint8_t sig[128];
                size_t sl;
                CHECK_RC(cm_core_signature(c, sig, sizeof(sig), &sl), CM_OK);
                durable = m.n - 1; /* only durable states are signed */
            }
        }
        if (!c) {
            model_free(&m);
            cio_free(&cio);
            continue;
        }
        /* power cut */
        cio_power_cut(&cio);
        cm_core_close(c); /* fails: the device is gone; frees the core */
        cio.dead = 0;
        c = NULL;
        {
            int rc = open_mem(&cio, NULL, NULL, 0, 0, dur, cp, &c, &rec);
            CHECK(rc == CM_OK, "reopen after power cut: %d (%s), file %d", rc, cm_strerror(rc),
                  rec.err_file);
            if (rc != CM_OK) {
                model_free(&m);
                cio_free(&cio);
                continue;
            }
        }
        /* one of the states since the last durable one - on a new fork when
         * the files showed records were lost (the writer re-forked) */
        for (k = durable; k < m.n; k++) {
            uint8_t th[32];
            cm_core_tree_hash(c, th);
            if (m.s[k].length == cm_core_length(c) &&
                m.s[k].fork + (uint64_t)rec.forked == cm_core_fork(c) &&
                memcmp(th, m.s[k].tree_hash, 32) == 0)
                found = k;
        }
        recovered_fork = cm_core_fork(c);
        CHECK(found != (size_t)-1,
              "recovered state (length %llu fork %llu) is not one of the %zu states since the "
              "last durable one (length %llu fork %llu)",
              (unsigned long long)cm_core_length(c), (unsigned long long)cm_core_fork(c),
              m.n - durable, (unsigned long long)m.s[durable].length,
              (unsigned long long)m.s[durable].fork);
        if (found != (size_t)-1 && rng_below(&rng, 3) == 0) {
            /* cut the power again right after recovery: the recovered state
             * is now durable and must come back exactly */
            uint8_t th[32];
            cio_power_cut(&cio);
            cm_core_close(c);
            cio.dead = 0;
            c = NULL;
            CHECK_RC(open_mem(&cio, NULL, NULL, 0, 0, dur, cp, &c, &rec), CM_OK);
            if (!c) {
                model_free(&m);
                cio_free(&cio);
                continue;
            }
            cm_core_tree_hash(c, th);
            CHECK(cm_core_length(c) == m.s[found].length && cm_core_fork(c) == recovered_fork &&
                      memcmp(th, m.s[found].tree_hash, 32) == 0,
                  "second power cut lost the recovered state");
        }
        if (found != (size_t)-1) {
            uint8_t sig[128], th[32];
            size_t sl;
            cm_verifier v;
            const uint8_t *man;
            size_t ml;
            verify_blocks(c, m.s[found].ids, m.s[found].length);
            CHECK_RC(cm_core_signature(c, sig, sizeof(sig), &sl), CM_OK);
            man = cm_core_manifest(c, &ml);
            REQUIRE_OK(cm_verifier_init(&v, cm_core_key(c), man, ml));
            cm_core_tree_hash(c, th);
            if (sl) CHECK_RC(cm_verifier_check(&v, th, cm_core_length(c), cm_core_fork(c), sig, sl), CM_OK);
            /* the recovered store keeps working */
            {
                cm_buf b;
                uint8_t tmp[21000];
                b.data = tmp;
                b.len = block_content(next_id, tmp, sizeof(tmp));
                CHECK_RC(cm_core_append(c, &b, 1, NULL), CM_OK);
                CHECK_RC(cm_core_close(c), CM_OK);
                c = NULL;
                CHECK_RC(open_mem(&cio, NULL, NULL, 0, 0, dur, cp, &c, &rec), CM_OK);
                if (c) {
                    CHECK(cm_core_length(c) == m.s[found].length + 1, "append after recovery");
                    verify_blocks(c, m.s[found].ids, m.s[found].length);
                }
            }
        }
        if (c) cm_core_close(c);
        model_free(&m);
        cio_free(&cio);
    }
}

/* Replica under power cuts while it follows a writer that truncates. */
void test_power_cuts_replica(int runs) {
    int run;
    char ctx[64];
    for (run = 0; run < runs; run++) {
        crashio wio, rio;
        if (getenv("CM_TEST_ONLY") && atoi(getenv("CM_TEST_ONLY")) != run) continue;
        uint64_t rng = 0xabcdefull + (uint64_t)run * 104729;
        uint8_t seed[32], pk[32], sk[64], key[32];
        cm_core *w = NULL, *r = NULL;
        cm_recovery rec;
        model m;
        int nops, op;
        cm_durability dur;
        uint64_t cp;
        uint32_t next_id = 500000 + (uint32_t)run * 1000;
        size_t k;
        int found = 0;
        snprintf(ctx, sizeof(ctx), "power-cut replica run %d", run);
        g_ctx = ctx;
        memset(&m, 0, sizeof(m));
        cio_init(&wio, rng);
        cio_init(&rio, rng ^ 0x5555);
        memset(seed, (int)(0x80 | (run & 0x7f)), 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
        REQUIRE_OK(open_mem(&wio, sk, NULL, 0, 1, CM_DURABLE_NONE, 0, &w, &rec));
        memcpy(key, cm_core_key(w), 32);
        dur = (cm_durability)rng_below(&rng, 3);
        cp = rng_below(&rng, 2) ? 1024 : 0;
        REQUIRE_OK(open_mem(&rio, NULL, key, 0, 1, dur, cp, &r, &rec));
        model_push(&m, w);
        nops = 1 + (int)rng_below(&rng, 40);
        for (op = 0; op < nops; op++) {
            uint64_t x = rng_below(&rng, 100);
            cm_apply_result res;
            if (getenv("CM_TEST_ONLY"))
                fprintf(stderr, "op %d x=%llu: w %llu/%llu r %llu/%llu c %llu\n", op, (unsigned long long)x,
                        (unsigned long long)cm_core_length(w), (unsigned long long)cm_core_fork(w),
                        (unsigned long long)cm_core_length(r), (unsigned long long)cm_core_fork(r),
                        (unsigned long long)cm_core_contiguous_length(r));
            if (x < 30) {
                size_t n = 1 + (size_t)rng_below(&rng, 3), i;
                for (i = 0; i < n; i++) model_append(&m, next_id + (uint32_t)i);
                append_ids(w, next_id, n);
                next_id += (uint32_t)n;
                model_push(&m, w);
            } else if (x < 36) {
                uint64_t nl = rng_below(&rng, cm_core_length(w) + 1);
                CHECK_RC(cm_core_truncate(w, nl, cm_core_fork(w) + 1), CM_OK);
                m.n_ids = (size_t)nl;
                model_push(&m, w);
            } else if (x < 56) {
                if (cm_core_length(w) > 0 &&
                    (cm_core_length(w) != cm_core_length(r) || cm_core_fork(w) != cm_core_fork(r))) {
                    int rc = upgrade_replica(w, r, 1, &res);
                    CHECK(rc == CM_OK || (rc == CM_ERR_INVALID && cm_core_fork(w) == cm_core_fork(r)),
                          "upgrade: %d", rc);
                }
            } else if (x < 66 && cm_core_length(w) > 0) {
                /* block + upgrade from 0 on a newer fork, or block + upgrade */
                cm_proof_request req;
                memset(&req, 0, sizeof(req));
                req.has_block = 1;
                req.block_index = rng_below(&rng, cm_core_length(w));
                req.has_upgrade = 1;
                req.manifest = 1;
                req.upgrade_start = cm_core_fork(w) == cm_core_fork(r) ? cm_core_length(r) : 0;
                req.upgrade_length = cm_core_length(w) - req.upgrade_start;
                if (req.upgrade_start > 0)
                    CHECK_RC(cm_core_missing_nodes(r, req.block_index, &req.block_nodes), CM_OK);
                if (req.upgrade_length > 0 && req.upgrade_start <= cm_core_length(w)) {
                    int rc = transfer(w, r, &req, &res, NULL, NULL);
                    CHECK(rc == CM_OK, "block+upgrade %d: block %llu nodes %llu start %llu len %llu; w %llu/%llu r %llu/%llu c %llu", rc,
                          (unsigned long long)req.block_index, (unsigned long long)req.block_nodes,
                          (unsigned long long)req.upgrade_start, (unsigned long long)req.upgrade_length,
                          (unsigned long long)cm_core_length(w), (unsigned long long)cm_core_fork(w),
                          (unsigned long long)cm_core_length(r), (unsigned long long)cm_core_fork(r),
                          (unsigned long long)cm_core_contiguous_length(r));
                }
            } else if (x < 88) {
                uint64_t i, n = 1 + rng_below(&rng, 4);
                if (cm_core_fork(w) == cm_core_fork(r))
                    for (i = 0; i < n && cm_core_contiguous_length(r) < cm_core_length(r); i++)
                        CHECK_RC(fetch_block(w, r, cm_core_contiguous_length(r), &res), CM_OK);
            } else if (x < 93) {
                CHECK_RC(cm_core_flush(r), CM_OK);
            } else {
                CHECK_RC(cm_core_close(r), CM_OK);
                r = NULL;
                CHECK_RC(open_mem(&rio, NULL, key, 0, 0, dur, cp, &r, &rec), CM_OK);
                if (!r) break;
            }
        }
        if (!r) {
            cm_core_close(w);
            model_free(&m);
            cio_free(&wio);
            cio_free(&rio);
            continue;
        }
        cio_power_cut(&rio);
        cm_core_close(r);
        rio.dead = 0;
        r = NULL;
        {
            int rc = open_mem(&rio, NULL, key, 0, 0, dur, cp, &r, &rec);
            CHECK(rc == CM_OK, "replica reopen after power cut: %d (%s) file %d", rc,
                  cm_strerror(rc), rec.err_file);
            if (getenv("CM_TEST_ONLY") && r)
                fprintf(stderr, "recovered: length %llu fork %llu contiguous %llu replayed %llu discarded %llu; writer %llu/%llu dur %d\n",
                        (unsigned long long)cm_core_length(r), (unsigned long long)cm_core_fork(r),
                        (unsigned long long)cm_core_contiguous_length(r),
                        (unsigned long long)rec.records_replayed, (unsigned long long)rec.bytes_discarded,
                        (unsigned long long)cm_core_length(w), (unsigned long long)cm_core_fork(w), (int)dur);
        }
        if (r) {
            uint8_t th[32];
            cm_core_tree_hash(r, th);
            for (k = 0; k < m.n; k++) {
                if (m.s[k].length == cm_core_length(r) && m.s[k].fork == cm_core_fork(r) &&
                    memcmp(th, m.s[k].tree_hash, 32) == 0) {
                    found = 1;
                    verify_blocks(r, m.s[k].ids, cm_core_contiguous_length(r));
                    break;
                }
            }
            CHECK(found, "recovered replica state (length %llu fork %llu) was never signed",
                  (unsigned long long)cm_core_length(r), (unsigned long long)cm_core_fork(r));
            if (cm_core_length(w) == 0) append_ids(w, next_id, 1); /* nothing to prove at 0 */
            sync_full(w, r);
            compare_cores(w, r, "replica synced after power cut");
            cm_core_close(r);
        }
        cm_core_close(w);
        model_free(&m);
        cio_free(&wio);
        cio_free(&rio);
    }
}

/* Hostile bytes: decoding and verification never read out of bounds. */
/* cm_core_get_range == cm_core_get block by block, for aligned and ragged
 * ranges; a flipped tree or data byte inside a run is caught and named. */
