/*
 * test_limits.c - range reads, hostile inputs and the store's limits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"

static void check_range(cm_core *c, uint64_t s, uint64_t e) {
    static uint8_t one[21000];
    uint64_t sizes[256], total = 0, at = 0, i;
    uint8_t *buf;
    size_t len;
    CHECK_RC(cm_core_get_range(c, s, e, NULL, 0, sizes, &total), total ? CM_ERR_TOO_LARGE : CM_OK);
    buf = (uint8_t *)xmalloc((size_t)total + 1);
    CHECK_RC(cm_core_get_range(c, s, e, buf, (size_t)total, sizes, &total), CM_OK);
    for (i = 0; i < e - s; i++) {
        CHECK_RC(cm_core_get(c, s + i, one, sizeof(one), &len), CM_OK);
        CHECK(len == sizes[i] && memcmp(buf + at, one, len) == 0, "range %llu..%llu block %llu",
              (unsigned long long)s, (unsigned long long)e, (unsigned long long)(s + i));
        at += len;
    }
    CHECK(at == total, "range %llu..%llu: %llu bytes, sizes say %llu", (unsigned long long)s,
          (unsigned long long)e, (unsigned long long)total, (unsigned long long)at);
    free(buf);
}

void test_get_range(void) {
    char *d = store_path("range");
    cm_io *io = NULL;
    cm_core *w;
    uint64_t sizes[256], total, off = 0, k;
    static const uint64_t spans[][2] = {{0, 130}, {0, 1}, {64, 128}, {3, 77}, {127, 130},
                                        {96, 97}, {0, 64}, {1, 129}, {130, 130}};
    uint8_t *buf;
    g_ctx = "get_range";
    make_writer(d, &io, 12, 0, &w);
    append_ids(w, 1, 1);
    append_ids(w, 2, 99);
    append_ids(w, 101, 30);
    CHECK_RC(cm_core_close(w), CM_OK);
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
    for (k = 0; k < VT_N(spans); k++) check_range(w, spans[k][0], spans[k][1]);
    CHECK_RC(cm_core_get_range(w, 5, 4, NULL, 0, sizes, &total), CM_ERR_RANGE);
    CHECK_RC(cm_core_get_range(w, 0, 131, NULL, 0, sizes, &total), CM_ERR_RANGE);
    CHECK_RC(cm_core_get_range(w, 0, 100, NULL, 0, sizes, &total), CM_ERR_TOO_LARGE);
    buf = (uint8_t *)xmalloc((size_t)total + 1);
    CHECK_RC(cm_core_get_range(w, 0, 100, buf, (size_t)total, sizes, &total), CM_OK);
    for (k = 0; k < 100; k++) off += sizes[k];  /* block 100 starts here */
    CHECK_RC(cm_core_close(w), CM_OK);
    /* a parent inside the run [64, 128) (node 2*64+1 = 129): tree named */
    flip_byte(d, "tree", 40 * 129 + 20);
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
    CHECK_RC(cm_core_get_range(w, 64, 128, buf, (size_t)total, sizes, &total), CM_ERR_CORRUPT);
    CHECK(cm_core_err_file(w) == CM_FILE_TREE, "tree corruption names %d", cm_core_err_file(w));
    CHECK_RC(cm_core_close(w), CM_OK);
    flip_byte(d, "tree", 40 * 129 + 20);
    /* a byte of block 100 (in the run [96, 128)): data named */
    flip_byte(d, "data", (long)off);
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
    CHECK_RC(cm_core_get_range(w, 96, 128, NULL, 0, sizes, &total), CM_ERR_TOO_LARGE);
    free(buf);
    buf = (uint8_t *)xmalloc((size_t)total + 1);
    CHECK_RC(cm_core_get_range(w, 96, 128, buf, (size_t)total, sizes, &total), CM_ERR_CORRUPT);
    CHECK(cm_core_err_file(w) == CM_FILE_DATA, "data corruption names %d", cm_core_err_file(w));
    check_range(w, 0, 96);
    CHECK_RC(cm_core_close(w), CM_OK);
    cm_io_posix_free(io);
    free(buf);
    free(d);
}

void test_hostile(void) {
    uint64_t s = 99;
    int i;
    cm_data_msg *m = (cm_data_msg *)xmalloc(sizeof(*m));
    cm_proof_check *chk = (cm_proof_check *)xmalloc(sizeof(*chk));
    cm_verifier v;
    uint8_t key[32];
    g_ctx = "hostile";
    memset(key, 1, 32);
    cm_verifier_init(&v, key, NULL, 0);
    for (i = 0; i < 20000; i++) {
        size_t len = (size_t)rng_below(&s, 200), k;
        uint8_t *b = (uint8_t *)xmalloc(len);
        for (k = 0; k < len; k++) b[k] = (uint8_t)rng_next(&s);
        if (len > 0) b[0] &= 0x1f;
        if (cm_data_decode(b, len, m) == CM_OK) cm_proof_check_msg(&v, NULL, 0, m, chk);
        free(b);
    }
    /* node arrays over the cap */
    {
        uint8_t b[16] = {0x01, 0x01, 0x00, 0x00, 0x00, 65};
        CHECK_RC(cm_data_decode(b, 6, m), CM_ERR_TOO_LARGE);
        b[5] = 0xfe;
        CHECK_RC(cm_data_decode(b, 6, m), CM_ERR_DECODE);
    }
    /* a huge buffer length never wraps */
    {
        uint8_t b[16] = {0x01, 0x01, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
        CHECK_RC(cm_data_decode(b, 13, m), CM_ERR_DECODE);
    }
    free(m);
    free(chk);
}

/* Limits and argument checks. */
void test_limits(void) {
    crashio cio;
    cm_core *c = NULL;
    cm_open_opts o;
    uint8_t seed[32], pk[32], sk[64], *big;
    cm_buf b[3];
    uint64_t nl = 99;
    g_ctx = "limits";
    cio_init(&cio, 77);
    memset(seed, 0x42, 32);
    REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
    memset(&o, 0, sizeof(o));
    o.io = &cio.io;
    o.create = 1;
    o.secret_key = sk;
    o.max_block_size = 1000;
    o.durability = (cm_durability)7;
    CHECK_RC(cm_core_open(&o, &c, NULL), CM_ERR_INVALID);
    o.durability = CM_DURABLE_SYNC;
    sk[40] ^= 1; /* public half does not match the seed */
    CHECK_RC(cm_core_open(&o, &c, NULL), CM_ERR_KEY);
    sk[40] ^= 1;
    REQUIRE_OK(cm_core_open(&o, &c, NULL));
    big = (uint8_t *)xmalloc(1001);
    memset(big, 1, 1001);
    CHECK_RC(cm_core_append(c, b, 0, &nl), CM_OK);
    CHECK(nl == 0, "empty append");
    b[0].data = big;
    b[0].len = 1000;
    b[1].data = big;
    b[1].len = 1001;
    CHECK_RC(cm_core_append(c, b, 2, NULL), CM_ERR_TOO_LARGE);
    CHECK(cm_core_length(c) == 0, "nothing appended");
    b[1].data = NULL;
    b[1].len = 0;
    b[2].data = NULL;
    b[2].len = 5;
    CHECK_RC(cm_core_append(c, b, 3, NULL), CM_ERR_INVALID);
    CHECK_RC(cm_core_append(c, b, 2, &nl), CM_OK);
    CHECK(nl == 2 && cm_core_byte_length(c) == 1000, "append with an empty block");
    {
        uint8_t buf[1000];
        size_t len = 7;
        CHECK_RC(cm_core_get(c, 1, NULL, 0, &len), CM_OK);
        CHECK(len == 0, "empty block read");
        CHECK_RC(cm_core_get(c, 0, buf, sizeof(buf), &len), CM_OK);
        CHECK(len == 1000 && memcmp(buf, big, 1000) == 0, "block 0");
    }
    /* a writer does not take proofs; out-of-range requests */
    {
        uint8_t msg[8] = {0, 1, 0};
        cm_apply_result res;
        cm_proof_request req;
        size_t len;
        uint64_t mn;
        CHECK_RC(cm_core_apply_proof(c, msg, 3, &res), CM_ERR_INVALID);
        memset(&req, 0, sizeof(req));
        req.has_upgrade = 1;
        req.upgrade_start = 1;
        req.upgrade_length = 5;
        CHECK_RC(cm_core_proof(c, &req, msg, sizeof(msg), &len), CM_ERR_INVALID);
        req.has_upgrade = 0;
        req.has_block = 1;
        req.block_index = 2;
        CHECK_RC(cm_core_proof(c, &req, msg, sizeof(msg), &len), CM_ERR_RANGE);
        req.block_index = 0;
        req.block_nodes = 5;
        CHECK_RC(cm_core_proof(c, &req, msg, sizeof(msg), &len), CM_ERR_INVALID);
        CHECK_RC(cm_core_missing_nodes(c, 0, &mn), CM_OK);
        CHECK(mn == 0, "writer misses nothing");
        CHECK(cm_core_has_node(c, 1) == 1 && cm_core_has_node(c, 3) == 0, "has_node");
        {
            cm_node n;
            CHECK_RC(cm_core_get_node(c, 3, &n), CM_ERR_RANGE);
        }
    }
    CHECK_RC(cm_core_close(c), CM_OK);
    /* reopen with another secret key: refused */
    sk[0] ^= 1;
    {
        uint8_t pk2[32], sk2[64];
        REQUIRE_OK(cm_keypair_from_seed(sk, pk2, sk2));
        o.secret_key = sk2;
        o.create = 0;
        CHECK_RC(cm_core_open(&o, &c, NULL), CM_ERR_KEY);
        o.secret_key = NULL;
        o.key = pk2;
        CHECK_RC(cm_core_open(&o, &c, NULL), CM_ERR_KEY);
    }
    free(big);
    cio_free(&cio);
}
