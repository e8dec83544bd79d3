/*
 * test_cm.c - tests of the C core against the hypercore 11 vectors, plus
 * store, replica, corruption and power-cut tests.
 *
 * Usage: test_cm <scratch-dir>   (created and emptied; stores live under it)
 * Every failed check prints file:line and what differed; exit status 1.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cm.h"
#include "vectors.h"

/* ------------------------------------------------------------------------ */
/* Harness                                                                  */
/* ------------------------------------------------------------------------ */

static int g_fail = 0;
static long g_checks = 0;
static const char *g_scratch;
static const char *g_ctx = "";
static int g_proofs = 0;

static void failf(const char *file, int line, const char *fmt, ...) {
    va_list ap;
    fprintf(stderr, "FAIL %s:%d [%s]: ", file, line, g_ctx);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    if (++g_fail >= 40) {
        fprintf(stderr, "too many failures\n");
        exit(1);
    }
}

#define CHECK(cond, ...)                                        \
    do {                                                        \
        g_checks++;                                             \
        if (!(cond)) failf(__FILE__, __LINE__, __VA_ARGS__);    \
    } while (0)

#define CHECK_RC(expr, want)                                                            \
    do {                                                                                \
        int rc_ = (expr);                                                               \
        g_checks++;                                                                     \
        if (rc_ != (want))                                                              \
            failf(__FILE__, __LINE__, "%s returned %d (%s), expected %d (%s)", #expr,   \
                  rc_, cm_strerror(rc_), (int)(want), cm_strerror(want));               \
    } while (0)

/* Fatal: the rest of the test cannot run. */
#define REQUIRE(cond, ...)                                      \
    do {                                                        \
        g_checks++;                                             \
        if (!(cond)) {                                          \
            failf(__FILE__, __LINE__, __VA_ARGS__);             \
            exit(1);                                            \
        }                                                       \
    } while (0)

#define REQUIRE_OK(expr)                                                                     \
    do {                                                                                     \
        int rc_ = (expr);                                                                    \
        g_checks++;                                                                          \
        if (rc_ != CM_OK) {                                                                  \
            failf(__FILE__, __LINE__, "%s returned %d (%s)", #expr, rc_, cm_strerror(rc_));  \
            exit(1);                                                                         \
        }                                                                                    \
    } while (0)

static void *xmalloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return p;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decode hex into a new buffer; *len set. */
static uint8_t *unhex(const char *h, size_t *len) {
    size_t n = strlen(h) / 2, i;
    uint8_t *b = (uint8_t *)xmalloc(n);
    for (i = 0; i < n; i++) b[i] = (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
    *len = n;
    return b;
}

static void unhex_to(const char *h, uint8_t *out, size_t n) {
    size_t i;
    REQUIRE(strlen(h) == 2 * n, "hex length %zu, want %zu", strlen(h), 2 * n);
    for (i = 0; i < n; i++) out[i] = (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
}

static const char *tohex(const uint8_t *b, size_t n) {
    static char buf[4][2 * 4096 + 1];
    static int k = 0;
    char *o = buf[k = (k + 1) % 4];
    size_t i;
    if (n > 4096) n = 4096;
    for (i = 0; i < n; i++) sprintf(o + 2 * i, "%02x", b[i]);
    o[2 * n] = 0;
    return o;
}

static int eq_hex(const uint8_t *b, size_t n, const char *h) {
    size_t i;
    if (strlen(h) != 2 * n) return 0;
    for (i = 0; i < n; i++)
        if (b[i] != (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]))) return 0;
    return 1;
}

static void vt_to_node(const vt_node *v, cm_node *n) {
    n->index = v->index;
    n->size = v->size;
    unhex_to(v->hash, n->hash, 32);
}

static int rm_rf(const char *path) {
    struct stat st;
    if (lstat(path, &st) != 0) return errno == ENOENT ? 0 : -1;
    if (S_ISDIR(st.st_mode)) {
        DIR *d = opendir(path);
        struct dirent *e;
        if (!d) return -1;
        while ((e = readdir(d)) != NULL) {
            char sub[4096];
            if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
            snprintf(sub, sizeof(sub), "%s/%s", path, e->d_name);
            if (rm_rf(sub) != 0) {
                closedir(d);
                return -1;
            }
        }
        closedir(d);
        return rmdir(path);
    }
    return unlink(path);
}

static char *store_path(const char *name) {
    char *p = (char *)xmalloc(4096);
    size_t i, n;
    snprintf(p, 4096, "%s/%s", g_scratch, name);
    n = strlen(g_scratch) + 1;
    for (i = n; p[i]; i++)
        if (p[i] == '/') p[i] = '_';
    rm_rf(p);
    return p;
}

/* Deterministic pseudo-random numbers (xorshift64*). */
static uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}
static uint64_t rng_below(uint64_t *s, uint64_t n) {
    return n ? rng_next(s) % n : 0;
}

/* A block's content from an id: len bytes derived from the id. */
static size_t block_content(uint32_t id, uint8_t *buf, size_t cap) {
    uint64_t s = UINT64_C(0x9e3779b97f4a7c15) ^ ((uint64_t)id * 0x100000001b3ULL), len, i;
    rng_next(&s);
    len = rng_below(&s, 5) == 0 ? 0 : rng_below(&s, 300);
    if (id % 97 == 5) len = 20000 + id % 1000;
    if (len > cap) len = cap;
    for (i = 0; i < len; i++) buf[i] = (uint8_t)rng_next(&s);
    return (size_t)len;
}

/* ------------------------------------------------------------------------ */
/* Flat tree, primitives, manifests                                         */
/* ------------------------------------------------------------------------ */

static void test_aead(void) {
    uint8_t key[CM_AEAD_KEY], nonce[CM_AEAD_NONCE], msg[100], ct[100 + CM_AEAD_TAG], back[100];
    const uint8_t ad[5] = {1, 2, 3, 4, 5};
    size_t i;
    g_ctx = "aead";
    for (i = 0; i < sizeof(key); i++) key[i] = (uint8_t)i;
    for (i = 0; i < sizeof(nonce); i++) nonce[i] = (uint8_t)(200 - i);
    for (i = 0; i < sizeof(msg); i++) msg[i] = (uint8_t)(i * 7);
    CHECK_RC(cm_aead_seal(key, nonce, ad, sizeof(ad), msg, sizeof(msg), ct), CM_OK);
    CHECK(memcmp(ct, msg, sizeof(msg)) != 0, "ciphertext differs from the message");
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_OK);
    CHECK(memcmp(back, msg, sizeof(msg)) == 0, "round trip");
    ct[10] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    ct[10] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, 4, ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    key[0] ^= 1;
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, sizeof(ct), back), CM_ERR_BAD_SIGNATURE);
    CHECK_RC(cm_aead_open(key, nonce, ad, sizeof(ad), ct, CM_AEAD_TAG - 1, back),
             CM_ERR_BAD_SIGNATURE);
}

static void test_table(void) {
    cm_table t;
    uint32_t first = 99, count = 99, s, e;
    g_ctx = "table";
    CHECK_RC(cm_table_init(&t, 0, 3), CM_ERR_INVALID);
    CHECK_RC(cm_table_init(&t, 1u << 13, 1u << 12), CM_ERR_TOO_LARGE);
    CHECK_RC(cm_table_init(&t, 5, 7), CM_OK);
    for (s = 0; s < 5; s++)
        for (e = 0; e < 7; e++) CHECK(cm_table_lookup(&t, s, e, &first, &count) == 0, "empty cell");
    CHECK(first == 99 && count == 99, "a miss leaves the outputs alone");
    CHECK_RC(cm_table_set(&t, 4, 6, 10, 3), CM_OK);
    CHECK_RC(cm_table_set(&t, 0, 0, 0, 1), CM_OK);
    CHECK_RC(cm_table_set(&t, 5, 0, 0, 1), CM_ERR_RANGE);
    CHECK_RC(cm_table_set(&t, 0, 7, 0, 1), CM_ERR_RANGE);
    CHECK(cm_table_lookup(&t, 4, 6, &first, &count) == 1 && first == 10 && count == 3, "set cell");
    CHECK(cm_table_lookup(&t, 0, 0, &first, &count) == 1 && first == 0 && count == 1, "cell 0");
    CHECK(cm_table_lookup(&t, 3, 6, &first, &count) == 0, "neighbour untouched");
    CHECK_RC(cm_table_lookup(&t, 5, 0, &first, &count), CM_ERR_RANGE);
    cm_table_free(&t);
    cm_table_free(&t); /* idempotent */
    CHECK(t.first == NULL && t.n_states == 0, "freed");
}

static void test_flat_tree(void) {
    size_t i, j;
    g_ctx = "flat-tree";
    for (i = 0; i < VT_N(VT_FT_INDEXES); i++) {
        const vt_ft *e = &VT_FT_INDEXES[i];
        uint64_t x = e->index;
        CHECK(cm_ft_depth(x) == e->depth, "depth(%llu)", (unsigned long long)x);
        CHECK(cm_ft_offset(x) == e->offset, "offset(%llu)", (unsigned long long)x);
        CHECK(cm_ft_parent(x) == e->parent, "parent(%llu)", (unsigned long long)x);
        CHECK(cm_ft_sibling(x) == e->sibling, "sibling(%llu)", (unsigned long long)x);
        CHECK(cm_ft_left_span(x) == e->left_span, "left_span(%llu)", (unsigned long long)x);
        CHECK(cm_ft_right_span(x) == e->right_span, "right_span(%llu)", (unsigned long long)x);
        CHECK(cm_ft_count_leaves(x) == e->count_leaves, "count_leaves(%llu)",
              (unsigned long long)x);
        CHECK(cm_ft_index(e->depth, e->offset) == x, "index(%llu,%llu)",
              (unsigned long long)e->depth, (unsigned long long)e->offset);
        if (e->has_children) {
            CHECK(cm_ft_left_child(x) == e->left_child, "left_child(%llu)", (unsigned long long)x);
            CHECK(cm_ft_right_child(x) == e->right_child, "right_child(%llu)",
                  (unsigned long long)x);
        }
        CHECK(cm_ft_contains(x, e->left_span) && cm_ft_contains(x, e->right_span) &&
                  !cm_ft_contains(x, e->right_span + 1),
              "contains(%llu)", (unsigned long long)x);
    }
    for (i = 0; i < VT_N(VT_FULL_ROOTS); i++) {
        const vt_full_roots *e = &VT_FULL_ROOTS[i];
        uint64_t out[CM_MAX_ROOTS];
        size_t n = cm_ft_full_roots(e->length, out);
        int ok = n == e->n;
        for (j = 0; ok && j < n; j++) ok = out[j] == e->roots[j];
        CHECK(ok, "full_roots(%llu): got %zu roots", (unsigned long long)e->length, n);
    }
}

static void test_primitives(void) {
    size_t i, j;
    uint8_t h[32], b[64];
    g_ctx = "primitives";
    for (i = 0; i < VT_N(VT_LEAVES); i++) {
        size_t n;
        uint8_t *d = unhex(VT_LEAVES[i].data, &n);
        cm_node leaf;
        cm_hash_leaf(7, d, n, &leaf);
        CHECK(eq_hex(leaf.hash, 32, VT_LEAVES[i].hash), "leaf %zu: %s", i, tohex(leaf.hash, 32));
        CHECK(leaf.index == 14 && leaf.size == n, "leaf %zu index/size", i);
        free(d);
    }
    for (i = 0; i < VT_N(VT_PARENTS); i++) {
        cm_node l, r, p;
        vt_to_node(&VT_PARENTS[i].left, &l);
        vt_to_node(&VT_PARENTS[i].right, &r);
        cm_hash_parent(&l, &r, &p);
        CHECK(p.index == VT_PARENTS[i].parent.index, "parent %zu index", i);
        CHECK(p.size == VT_PARENTS[i].parent.size, "parent %zu size %llu", i,
              (unsigned long long)p.size);
        CHECK(eq_hex(p.hash, 32, VT_PARENTS[i].parent.hash), "parent %zu hash", i);
    }
    for (i = 0; i < VT_N(VT_TREES); i++) {
        cm_node roots[CM_MAX_ROOTS];
        for (j = 0; j < VT_TREES[i].n; j++) vt_to_node(&VT_TREES[i].roots[j], &roots[j]);
        cm_hash_tree(roots, VT_TREES[i].n, h);
        CHECK(eq_hex(h, 32, VT_TREES[i].hash), "tree %zu: %s", i, tohex(h, 32));
    }
    for (i = 0; i < VT_N(VT_DKS); i++) {
        uint8_t key[32];
        unhex_to(VT_DKS[i].key, key, 32);
        cm_discovery_key(key, h);
        CHECK(eq_hex(h, 32, VT_DKS[i].discovery_key), "discovery key %zu", i);
    }
    CHECK(eq_hex(CM_NS_TREE, 32, VT_CONST_TREE), "NS tree");
    CHECK(eq_hex(CM_NS_REPLICATE_INITIATOR, 32, VT_CONST_REPLICATE_INITIATOR), "NS init");
    CHECK(eq_hex(CM_NS_REPLICATE_RESPONDER, 32, VT_CONST_REPLICATE_RESPONDER), "NS resp");
    CHECK(eq_hex(CM_NS_MANIFEST, 32, VT_CONST_MANIFEST), "NS manifest");
    CHECK(eq_hex(CM_NS_DEFAULT, 32, VT_CONST_DEFAULT_NAMESPACE), "NS default");
    CHECK(eq_hex(CM_NS_ENCRYPTION, 32, VT_CONST_DEFAULT_ENCRYPTION), "NS encryption");
    cm_blake2b((const uint8_t *)"hypercore", 9, NULL, 0, h);
    CHECK(eq_hex(h, 32, VT_CONST_HYPERCORE_NAMESPACE_BASE), "namespace base");
    for (i = 0; i < 6; i++) {
        static const uint8_t *const ns[6] = {CM_NS_TREE, CM_NS_REPLICATE_INITIATOR,
                                             CM_NS_REPLICATE_RESPONDER, CM_NS_MANIFEST,
                                             CM_NS_DEFAULT, CM_NS_ENCRYPTION};
        uint8_t in[33], o[32];
        cm_blake2b((const uint8_t *)"hypercore", 9, NULL, 0, in);
        in[32] = (uint8_t)i;
        cm_blake2b(in, 33, NULL, 0, o);
        CHECK(memcmp(o, ns[i], 32) == 0, "namespace %zu derivation", i);
    }
    cm_hash_tree(NULL, 0, h);
    CHECK(eq_hex(h, 32, VT_CONST_EMPTY_TREE_HASH), "empty tree hash");
    CHECK(cm_crc32(0, (const uint8_t *)"123456789", 9) == 0xCBF43926u, "crc32 check value");
    CHECK(cm_crc32(cm_crc32(0, (const uint8_t *)"1234", 4), (const uint8_t *)"56789", 5) ==
              0xCBF43926u,
          "crc32 continuation");
    /* unaligned and long inputs agree with the byte-wise definition */
    {
        uint8_t buf[1000];
        uint32_t a, c2 = 0xffffffffu;
        size_t k;
        for (k = 0; k < sizeof(buf); k++) buf[k] = (uint8_t)(k * 7 + 3);
        a = cm_crc32(0, buf + 3, 997);
        for (k = 3; k < 1000; k++) {
            int bit;
            c2 ^= buf[k];
            for (bit = 0; bit < 8; bit++) c2 = (c2 >> 1) ^ (0xEDB88320u & (0u - (c2 & 1)));
        }
        CHECK(a == ~c2, "crc32 slicing vs bitwise");
    }
    /* sizes above 2^32 in hashes and the compact encoding */
    {
        cm_writer w;
        cm_reader r;
        uint8_t enc[32];
        uint64_t vals[6] = {0, 0xfc, 0xfd, 0xffff, 0x100000000ull, UINT64_MAX};
        w.p = enc;
        w.cap = sizeof(enc);
        w.need = 0;
        for (i = 0; i < 6; i++) cm_write_uint(&w, vals[i]);
        CHECK(w.need == 1 + 1 + 3 + 3 + 9 + 9, "uint encoding sizes %zu", w.need);
        r.p = enc;
        r.end = enc + w.need;
        r.err = 0;
        for (i = 0; i < 6; i++) CHECK(cm_read_uint(&r) == vals[i], "uint roundtrip %zu", i);
        CHECK(r.err == 0 && r.p == r.end, "reader at end");
        CHECK(cm_read_uint(&r) == 0 && r.err == CM_ERR_DECODE, "overrun is sticky");
        CHECK(cm_read_fixed(&r, 1) == NULL, "fixed after error");
    }
    {
        uint8_t seed[32], pk[32], sk[64], sig[64];
        memset(seed, 7, 32);
        REQUIRE_OK(cm_keypair_from_seed(seed, pk, sk));
        CHECK(memcmp(sk, seed, 32) == 0 && memcmp(sk + 32, pk, 32) == 0, "secret = seed||pk");
        REQUIRE_OK(cm_sign((const uint8_t *)"abc", 3, sk, sig));
        CHECK_RC(cm_verify((const uint8_t *)"abc", 3, sig, pk), CM_OK);
        sig[5] ^= 1;
        CHECK_RC(cm_verify((const uint8_t *)"abc", 3, sig, pk), CM_ERR_BAD_SIGNATURE);
        memset(b, 0, sizeof(b));
    }
}

static void vt_manifest_to(const vt_manifest *v, cm_manifest *m, uint8_t *linked_buf,
                           uint8_t *ud_buf, size_t *ud_len) {
    size_t i;
    memset(m, 0, sizeof(*m));
    m->version = v->version;
    m->quorum = v->quorum;
    m->allow_patch = v->allow_patch;
    m->n_signers = (uint32_t)v->n_signers;
    for (i = 0; i < v->n_signers; i++) {
        unhex_to(v->namespaces[i], m->signers[i].namespace_, 32);
        unhex_to(v->public_keys[i], m->signers[i].public_key, 32);
    }
    if (v->prologue_hash) {
        m->has_prologue = 1;
        unhex_to(v->prologue_hash, m->prologue_hash, 32);
        m->prologue_length = v->prologue_length;
    }
    if (v->has_linked) {
        for (i = 0; i < v->n_linked; i++) unhex_to(v->linked[i], linked_buf + 32 * i, 32);
        m->n_linked = (uint32_t)v->n_linked;
        m->linked = linked_buf;
    }
    if (v->user_data) {
        uint8_t *u = unhex(v->user_data, ud_len);
        memcpy(ud_buf, u, *ud_len);
        free(u);
        m->user_data = ud_buf;
        m->user_data_len = *ud_len;
    }
}

static void test_manifests(void) {
    size_t i;
    for (i = 0; i < VT_N(VT_CORES); i++) {
        const vt_core *vc = &VT_CORES[i];
        cm_manifest m, d;
        uint8_t linked[32 * 8], ud[512], enc[CM_MAX_MANIFEST], enc2[CM_MAX_MANIFEST], h[32];
        uint8_t pk[32];
        size_t ud_len = 0, len, len2, want_len;
        uint8_t *want = unhex(vc->manifest_encoded, &want_len);
        cm_verifier v;
        g_ctx = vc->name;
        vt_manifest_to(&vc->manifest, &m, linked, ud, &ud_len);
        CHECK_RC(cm_manifest_encode(&m, enc, sizeof(enc), &len), CM_OK);
        CHECK(len == want_len && memcmp(enc, want, len) == 0, "manifest encoding %s",
              tohex(enc, len));
        cm_manifest_hash(want, want_len, h);
        CHECK(eq_hex(h, 32, vc->manifest_hash), "manifest hash");
        if (!vc->compat) CHECK(eq_hex(h, 32, vc->key), "key = manifest hash");
        CHECK_RC(cm_manifest_decode(want, want_len, &d), CM_OK);
        CHECK_RC(cm_manifest_encode(&d, enc2, sizeof(enc2), &len2), CM_OK);
        CHECK(len2 == want_len && memcmp(enc2, want, len2) == 0, "decode/encode roundtrip");
        CHECK(d.version == vc->manifest.version && d.quorum == vc->manifest.quorum,
              "decoded version/quorum");
        CHECK((d.user_data != NULL) == (vc->manifest.user_data != NULL), "user data presence");
        unhex_to(vc->public_key, pk, 32);
        if (vc->manifest.version == 1) {
            cm_manifest def;
            cm_manifest_default(pk, &def);
            CHECK_RC(cm_manifest_encode(&def, enc2, sizeof(enc2), &len2), CM_OK);
            CHECK(len2 == 70 && len2 == want_len && memcmp(enc2, want, len2) == 0,
                  "default manifest");
        }
        /* truncations and trailing bytes are rejected */
        {
            size_t k;
            for (k = 0; k < want_len; k++)
                CHECK(cm_manifest_decode(want, k, &d) != CM_OK, "prefix %zu decoded", k);
            memcpy(enc2, want, want_len);
            enc2[want_len] = 0;
            CHECK_RC(cm_manifest_decode(enc2, want_len + 1, &d), CM_ERR_DECODE);
        }
        /* verifier from key + manifest */
        {
            uint8_t key[32];
            unhex_to(vc->key, key, 32);
            if (vc->compat) {
                CHECK_RC(cm_verifier_init(&v, key, NULL, 0), CM_OK);
                CHECK(v.compat == 1, "compat verifier");
            } else {
                CHECK_RC(cm_verifier_init(&v, key, want, want_len), CM_OK);
                CHECK(v.compat == 0, "manifest verifier");
                key[0] ^= 1;
                CHECK_RC(cm_verifier_init(&v, key, want, want_len), CM_ERR_KEY);
            }
        }
        free(want);
    }
}

/* ------------------------------------------------------------------------ */
/* Vector cores replayed through a real store                               */
/* ------------------------------------------------------------------------ */

static const vt_core *find_core(const char *name) {
    size_t i;
    for (i = 0; i < VT_N(VT_CORES); i++)
        if (strcmp(VT_CORES[i].name, name) == 0) return &VT_CORES[i];
    return NULL;
}

typedef struct writer_opts {
    uint8_t sk[64];
    uint8_t *manifest;
    size_t manifest_len;
    int compat;
} writer_opts;

static void writer_opts_for(const vt_core *vc, writer_opts *w) {
    memset(w, 0, sizeof(*w));
    unhex_to(vc->secret_key, w->sk, 64);
    w->compat = vc->compat;
    if (vc->manifest.version == 2) w->manifest = unhex(vc->manifest_encoded, &w->manifest_len);
}

static int open_store(const char *dir, cm_io **io, const writer_opts *w, const uint8_t *key,
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

static void test_vector_core(const vt_core *vc) {
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

/* ------------------------------------------------------------------------ */
/* Replicas                                                                 */
/* ------------------------------------------------------------------------ */

/* Ask `from` for a proof and apply it to `to`. Returns the apply result. */
static int transfer(cm_core *from, cm_core *to, const cm_proof_request *req, cm_apply_result *res,
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

static int upgrade_replica(cm_core *w, cm_core *r, int want_manifest, cm_apply_result *res) {
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

static int fetch_block(cm_core *w, cm_core *r, uint64_t index, cm_apply_result *res) {
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
static void sync_full(cm_core *w, cm_core *r) {
    cm_apply_result res;
    uint64_t i;
    if (cm_core_length(r) != cm_core_length(w) || cm_core_fork(r) != cm_core_fork(w))
        CHECK_RC(upgrade_replica(w, r, 1, &res), CM_OK);
    for (i = cm_core_contiguous_length(r); i < cm_core_length(r); i++) {
        CHECK_RC(fetch_block(w, r, i, &res), CM_OK);
        CHECK(res.block_stored == 1, "block %llu stored", (unsigned long long)i);
    }
}

static void compare_cores(cm_core *a, cm_core *b, const char *what) {
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

static void append_ids(cm_core *c, uint32_t first_id, size_t n) {
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

static void make_writer(const char *dir, cm_io **io, uint8_t seed_byte, int compat, cm_core **w) {
    writer_opts wo;
    uint8_t seed[32], pk[32];
    memset(&wo, 0, sizeof(wo));
    memset(seed, seed_byte, 32);
    REQUIRE_OK(cm_keypair_from_seed(seed, pk, wo.sk));
    wo.compat = compat;
    REQUIRE_OK(open_store(dir, io, &wo, NULL, 1, CM_DURABLE_BATCH, w, NULL));
}

static void test_replica(int compat) {
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
static void test_reorg(void) {
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

/* ------------------------------------------------------------------------ */
/* Files on disk: corruption, locking, versions                             */
/* ------------------------------------------------------------------------ */

static void file_path(char *out, size_t cap, const char *dir, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

static void flip_byte(const char *dir, const char *name, long off) {
    char p[4096];
    FILE *f;
    int ch;
    file_path(p, sizeof(p), dir, name);
    f = fopen(p, "r+b");
    REQUIRE(f != NULL, "open %s", p);
    REQUIRE(fseek(f, off, SEEK_SET) == 0, "seek");
    ch = fgetc(f);
    REQUIRE(ch != EOF, "read %s at %ld", p, off);
    fseek(f, off, SEEK_SET);
    fputc(ch ^ 0x5a, f);
    fclose(f);
}

static long file_size(const char *dir, const char *name) {
    char p[4096];
    struct stat st;
    file_path(p, sizeof(p), dir, name);
    if (stat(p, &st) != 0) return -1;
    return (long)st.st_size;
}

/* Copy store file `name` from one directory to another (if it exists). */
static void copy_file(const char *from, const char *to, const char *name) {
    char a[4096], b[4096], buf[8192];
    FILE *fa, *fb;
    size_t n;
    struct stat st;
    file_path(a, sizeof(a), from, name);
    file_path(b, sizeof(b), to, name);
    fa = fopen(a, "rb");
    if (!fa) return;
    fb = fopen(b, "wb");
    REQUIRE(fb != NULL, "create %s", b);
    while ((n = fread(buf, 1, sizeof(buf), fa)) > 0) fwrite(buf, 1, n, fb);
    fclose(fa);
    fclose(fb);
    /* the same mode: a secret key open to others is refused */
    REQUIRE(stat(a, &st) == 0 && chmod(b, st.st_mode & 07777) == 0, "chmod %s", b);
}

static void copy_store(const char *from, const char *to) {
    int i;
    rm_rf(to);
    REQUIRE(mkdir(to, 0755) == 0, "mkdir %s", to);
    for (i = 1; i <= 5; i++) copy_file(from, to, cm_file_names[i]);
}

static void put_le32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

static void test_files(void) {
    char *d = store_path("files"), *d2 = store_path("files-copy");
    cm_io *io = NULL, *io2 = NULL;
    cm_core *w, *w2;
    cm_recovery rec;
    uint8_t buf[32768];
    size_t len;
    int i, version;
    uint8_t hash_before[32], h[32];
    g_ctx = "files";

    /* missing store */
    REQUIRE_OK(cm_io_posix_new(d, &io));
    {
        cm_open_opts o;
        memset(&o, 0, sizeof(o));
        o.io = io;
        CHECK_RC(cm_core_open(&o, &w, &rec), CM_ERR_NOT_FOUND);
        o.create = 1;
        CHECK_RC(cm_core_open(&o, &w, &rec), CM_ERR_INVALID); /* neither key nor secret */
    }
    make_writer(d, &io, 9, 0, &w);
    append_ids(w, 1, 10);
    append_ids(w, 11, 1);
    {
        char p[4096];
        struct stat st;
        file_path(p, sizeof(p), d, "secret_key");
        CHECK(stat(p, &st) == 0 && (st.st_mode & 0777) == 0600, "secret_key mode %o",
              (unsigned)(st.st_mode & 0777));
    }
    /* second open: locked */
    REQUIRE_OK(cm_io_posix_new(d, &io2));
    {
        cm_open_opts o;
        memset(&o, 0, sizeof(o));
        o.io = io2;
        CHECK_RC(cm_core_open(&o, &w2, &rec), CM_ERR_LOCKED);
        CHECK(rec.err_file == CM_FILE_HEADER, "locked names header");
    }
    cm_core_tree_hash(w, hash_before);
    CHECK_RC(cm_core_close(w), CM_OK);

    /* the secret key: never through a symlink, never open to others */
    {
        char p[4096], moved[4096];
        cm_open_opts o;
        memset(&o, 0, sizeof(o));
        o.io = io2;
        file_path(p, sizeof(p), d, "secret_key");
        file_path(moved, sizeof(moved), d, "moved_key");
        REQUIRE(chmod(p, 0644) == 0, "chmod");
        CHECK_RC(cm_core_open(&o, &w2, &rec), CM_ERR_INSECURE);
        CHECK(rec.err_file == CM_FILE_SECRET_KEY, "mode names secret_key");
        REQUIRE(chmod(p, 0600) == 0 && rename(p, moved) == 0 && symlink(moved, p) == 0, "link");
        CHECK_RC(cm_core_open(&o, &w2, &rec), CM_ERR_INSECURE);
        CHECK(rec.err_file == CM_FILE_SECRET_KEY, "symlink names secret_key");
        REQUIRE(unlink(p) == 0 && rename(moved, p) == 0, "restore");
        REQUIRE_OK(cm_core_open(&o, &w2, &rec));
        CHECK(cm_core_writable(w2), "the key file is back");
        CHECK_RC(cm_core_close(w2), CM_OK);
    }

    /* data corruption: get names data */
    {
        cm_node leaf;
        uint64_t off = 0, k;
        REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
        for (k = 0; k < 3; k++) {
            CHECK_RC(cm_core_get(w, k, buf, sizeof(buf), &len), CM_OK);
            off += len;
        }
        CHECK_RC(cm_core_get_node(w, 6, &leaf), CM_OK);
        CHECK_RC(cm_core_close(w), CM_OK);
        if (leaf.size > 0) {
            flip_byte(d, "data", (long)(off + leaf.size / 2));
            REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
            CHECK_RC(cm_core_get(w, 3, buf, sizeof(buf), &len), CM_ERR_CORRUPT);
            CHECK(cm_core_err_file(w) == CM_FILE_DATA, "data corruption names %d",
                  cm_core_err_file(w));
            CHECK_RC(cm_core_get(w, 2, buf, sizeof(buf), &len), CM_OK);
            CHECK_RC(cm_core_get(w, 4, buf, sizeof(buf), &len), CM_OK);
            CHECK_RC(cm_core_close(w), CM_OK);
            flip_byte(d, "data", (long)(off + leaf.size / 2));
        }
    }
    /* tree corruption: get names tree */
    flip_byte(d, "tree", 40 * 6 + 20);
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, NULL));
    CHECK_RC(cm_core_get(w, 3, buf, sizeof(buf), &len), CM_ERR_CORRUPT);
    CHECK(cm_core_err_file(w) == CM_FILE_TREE, "tree corruption names %d", cm_core_err_file(w));
    CHECK_RC(cm_core_get(w, 8, buf, sizeof(buf), &len), CM_OK);
    CHECK_RC(cm_core_close(w), CM_OK);
    flip_byte(d, "tree", 40 * 6 + 20);
    /* a root slot corrupted: open fails naming tree (roots of 11: 7, 17, 20) */
    flip_byte(d, "tree", 40 * 17 + 12);
    CHECK_RC(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec), CM_ERR_CORRUPT);
    CHECK(rec.err_file == CM_FILE_TREE, "root corruption names %d", rec.err_file);
    flip_byte(d, "tree", 40 * 17 + 12);
    /* secret key corrupted */
    flip_byte(d, "secret_key", 3);
    CHECK_RC(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec), CM_ERR_CORRUPT);
    CHECK(rec.err_file == CM_FILE_SECRET_KEY, "secret key corruption names %d",
          rec.err_file);
    flip_byte(d, "secret_key", 3);

    /* newest header slot damaged: the other slot and the wal give the same state */
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec));
    append_ids(w, 20, 2);
    cm_core_tree_hash(w, hash_before);
    CHECK_RC(cm_core_close(w), CM_OK);
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec));
    {
        int slot = rec.header_slot;
        CHECK_RC(cm_core_close(w), CM_OK);
        flip_byte(d, "header", slot * 4096 + 40);
        REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec));
        CHECK(rec.header_fallback == 1 && rec.header_slot == 1 - slot, "header fallback");
        CHECK(rec.records_replayed == 1, "replayed the last generation (%llu)",
              (unsigned long long)rec.records_replayed);
        cm_core_tree_hash(w, h);
        CHECK(memcmp(h, hash_before, 32) == 0 && cm_core_length(w) == 13, "state after fallback");
        for (i = 0; i < 13; i++) CHECK_RC(cm_core_get(w, (uint64_t)i, buf, sizeof(buf), &len), CM_OK);
        CHECK_RC(cm_core_close(w), CM_OK);
    }
    /* both slots damaged, wal not empty: corrupt header */
    REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec));
    append_ids(w, 30, 1);
    CHECK_RC(cm_core_close(w), CM_OK);
    copy_store(d, d2);
    flip_byte(d2, "header", 20);
    flip_byte(d2, "header", 4096 + 20);
    cm_io_posix_free(io2);
    REQUIRE_OK(cm_io_posix_new(d2, &io2));
    CHECK_RC(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec), CM_ERR_CORRUPT);
    CHECK(rec.err_file == CM_FILE_HEADER, "both slots names header");

    /* format versions CM_FORMAT_VERSION + 1 and 0: no reader for them (newer,
     * older than CM_FORMAT_OLDEST), whatever the layout; CM_FORMAT_OLDEST is
     * opened and migrated (a header slot of this version written) */
    for (version = CM_FORMAT_VERSION + 1; version >= CM_FORMAT_OLDEST - 1;
         version -= CM_FORMAT_VERSION + 2 - CM_FORMAT_OLDEST) {
        char p[4096];
        FILE *f;
        uint8_t slot[4096];
        size_t n;
        int s;
        copy_store(d, d2);
        file_path(p, sizeof(p), d2, "header");
        f = fopen(p, "r+b");
        REQUIRE(f != NULL, "open header");
        for (s = 0; s < 2; s++) {
            uint32_t body_len;
            fseek(f, s * 4096, SEEK_SET);
            n = fread(slot, 1, sizeof(slot), f);
            if (n < 8) continue;
            body_len = (uint32_t)slot[4] | ((uint32_t)slot[5] << 8) | ((uint32_t)slot[6] << 16) |
                       ((uint32_t)slot[7] << 24);
            put_le32(slot + 8 + 4, (uint32_t)version);
            put_le32(slot, cm_crc32(0, slot + 4, 4 + body_len));
            fseek(f, s * 4096, SEEK_SET);
            fwrite(slot, 1, 8 + body_len, f);
        }
        fclose(f);
        CHECK_RC(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec), CM_ERR_VERSION);
        CHECK(rec.err_file == CM_FILE_HEADER, "version names header");
    }
#if CM_FORMAT_OLDEST < CM_FORMAT_VERSION
    {   /* the oldest version still read: opened, migrated, the same log */
        char p[4096];
        FILE *f;
        uint8_t slot[4096];
        size_t n;
        int s;
        uint8_t expected[32];
        copy_store(d, d2);
        REQUIRE_OK(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec));
        cm_core_tree_hash(w2, expected);
        CHECK_RC(cm_core_close(w2), CM_OK);
        copy_store(d, d2);
        file_path(p, sizeof(p), d2, "header");
        f = fopen(p, "r+b");
        REQUIRE(f != NULL, "open header");
        for (s = 0; s < 2; s++) {
            uint32_t body_len;
            fseek(f, s * 4096, SEEK_SET);
            n = fread(slot, 1, sizeof(slot), f);
            if (n < 8) continue;
            body_len = (uint32_t)slot[4] | ((uint32_t)slot[5] << 8) | ((uint32_t)slot[6] << 16) |
                       ((uint32_t)slot[7] << 24);
            put_le32(slot + 8 + 4, (uint32_t)CM_FORMAT_OLDEST);
            put_le32(slot, cm_crc32(0, slot + 4, 4 + body_len));
            fseek(f, s * 4096, SEEK_SET);
            fwrite(slot, 1, 8 + body_len, f);
        }
        fclose(f);
        REQUIRE_OK(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec));
        cm_core_tree_hash(w2, h);
        CHECK(memcmp(h, expected, 32) == 0, "migrated store: the same log");
        CHECK_RC(cm_core_close(w2), CM_OK);
        {
            uint8_t b[12];
            f = fopen(p, "rb");
            REQUIRE(f != NULL, "open header");
            for (s = 0, n = 0; s < 2; s++) {
                fseek(f, s * 4096 + 8, SEEK_SET);
                if (fread(b, 1, 12, f) == 12 && (uint32_t)b[4] == CM_FORMAT_VERSION) n++;
            }
            fclose(f);
            CHECK(n >= 1, "a slot of version %d was written", CM_FORMAT_VERSION);
        }
    }
#endif

    /* crash images of a live store (sync durability): torn tail, lost durable record */
    {
        REQUIRE_OK(open_store(d, &io, NULL, NULL, 0, CM_DURABLE_SYNC, &w, &rec));
        {
            /* records of this generation start at 0; drop the inert older
             * ones so the file ends with the last record */
            char p[4096];
            file_path(p, sizeof(p), d, "wal");
            REQUIRE(truncate(p, 0) == 0, "truncate wal");
        }
        append_ids(w, 40, 1);
        append_ids(w, 41, 2);
        append_ids(w, 43, 1);
        cm_core_tree_hash(w, hash_before);
        copy_store(d, d2); /* a power cut now: every record is durable */
        /* intact image: replays 3 records */
        CHECK_RC(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec), CM_OK);
        if (w2) {
            CHECK(rec.records_replayed == 3 && rec.bytes_discarded == 0, "replayed %llu, discarded %llu",
                  (unsigned long long)rec.records_replayed, (unsigned long long)rec.bytes_discarded);
            cm_core_tree_hash(w2, h);
            CHECK(memcmp(h, hash_before, 32) == 0 && cm_core_length(w2) == 18, "crash image state");
            CHECK_RC(cm_core_close(w2), CM_OK);
        }
        /* last record torn: discarded, state without it */
        copy_store(d, d2);
        {
            char p[4096];
            long sz = file_size(d2, "wal");
            file_path(p, sizeof(p), d2, "wal");
            REQUIRE(truncate(p, sz - 30) == 0, "truncate wal");
        }
        CHECK_RC(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec), CM_OK);
        if (w2) {
            CHECK(rec.records_replayed == 2 && rec.bytes_discarded > 0, "torn tail: %llu/%llu",
                  (unsigned long long)rec.records_replayed, (unsigned long long)rec.bytes_discarded);
            CHECK(cm_core_length(w2) == 17, "torn tail length %llu", (unsigned long long)cm_core_length(w2));
            for (i = 0; i < 17; i++)
                CHECK_RC(cm_core_get(w2, (uint64_t)i, buf, sizeof(buf), &len), CM_OK);
            append_ids(w2, 43, 1);
            cm_core_tree_hash(w2, h);
            CHECK(memcmp(h, hash_before, 32) == 0, "re-append after torn tail");
            CHECK_RC(cm_core_close(w2), CM_OK);
            REQUIRE_OK(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec));
            CHECK(cm_core_length(w2) == 18 && rec.bytes_discarded == 0, "reopen after torn tail");
            CHECK_RC(cm_core_close(w2), CM_OK);
        }
        /* first record damaged while later ones say it was durable: corrupt wal */
        copy_store(d, d2);
        flip_byte(d2, "wal", 60);
        CHECK_RC(open_store(d2, &io2, NULL, NULL, 0, CM_DURABLE_SYNC, &w2, &rec), CM_ERR_CORRUPT);
        CHECK(rec.err_file == CM_FILE_WAL, "lost durable record names wal (%d)",
              rec.err_file);
        CHECK_RC(cm_core_close(w), CM_OK);
    }
    cm_io_posix_free(io);
    cm_io_posix_free(io2);
    free(d);
    free(d2);
}

/* ------------------------------------------------------------------------ */
/* Power-cut emulation                                                      */
/* ------------------------------------------------------------------------ */

/* An in-memory cm_io that remembers what was synced.  Each file has a
 * durable image and the list of writes/truncates since its last sync; a
 * power cut rebuilds every file from its durable image plus some of the
 * pending operations (dropping others, tearing one at a byte).  Files are
 * created durably (the POSIX io fsyncs the directory). */

typedef struct cf_op {
    int trunc;
    uint64_t off;
    size_t len;
    uint8_t *data;
} cf_op;

typedef struct cfile {
    char name[16];
    int exists, locked;
    uint8_t *cur;
    size_t cur_len, cur_cap;
    uint8_t *dur;
    size_t dur_len;
    cf_op *ops;
    size_t n_ops, cap_ops;
} cfile;

typedef struct crashio {
    cfile files[6];
    int dead;
    uint64_t rng;
    cm_io io;
} crashio;

typedef struct chandle {
    cfile *f;
    int locked;
} chandle;

static void cf_reserve(cfile *f, size_t n) {
    if (n <= f->cur_cap) return;
    f->cur_cap = n * 2 + 64;
    f->cur = (uint8_t *)realloc(f->cur, f->cur_cap);
    REQUIRE(f->cur != NULL, "realloc");
}

static void cf_resize(cfile *f, size_t n) {
    cf_reserve(f, n);
    if (n > f->cur_len) memset(f->cur + f->cur_len, 0, n - f->cur_len);
    f->cur_len = n;
}

static void cf_push(cfile *f, int trunc, uint64_t off, const uint8_t *data, size_t len) {
    cf_op *op;
    if (f->n_ops == f->cap_ops) {
        f->cap_ops = f->cap_ops * 2 + 16;
        f->ops = (cf_op *)realloc(f->ops, f->cap_ops * sizeof(cf_op));
        REQUIRE(f->ops != NULL, "realloc");
    }
    op = &f->ops[f->n_ops++];
    op->trunc = trunc;
    op->off = off;
    op->len = len;
    op->data = NULL;
    if (!trunc && len) {
        op->data = (uint8_t *)xmalloc(len);
        memcpy(op->data, data, len);
    }
}

static void cf_clear_ops(cfile *f) {
    size_t i;
    for (i = 0; i < f->n_ops; i++) free(f->ops[i].data);
    f->n_ops = 0;
}

static int cio_open(void *ctx, const char *name, int flags, void **file) {
    crashio *c = (crashio *)ctx;
    cfile *f = NULL;
    chandle *h;
    int i;
    if (c->dead) return CM_ERR_IO;
    for (i = 0; i < 6; i++)
        if (c->files[i].name[0] && strcmp(c->files[i].name, name) == 0) f = &c->files[i];
    if (!f) {
        for (i = 0; i < 6 && c->files[i].name[0]; i++) {
        }
        REQUIRE(i < 6, "too many files");
        f = &c->files[i];
        snprintf(f->name, sizeof(f->name), "%s", name);
    }
    if (!f->exists) {
        if (!(flags & CM_IO_CREATE)) return CM_ERR_NOT_FOUND;
        f->exists = 1;
    }
    h = (chandle *)xmalloc(sizeof(*h));
    h->f = f;
    h->locked = 0;
    *file = h;
    return CM_OK;
}

static int64_t cio_read(void *ctx, void *file, uint8_t *buf, size_t len, uint64_t off) {
    crashio *c = (crashio *)ctx;
    cfile *f = ((chandle *)file)->f;
    size_t n;
    if (c->dead) return CM_ERR_IO;
    if (off >= f->cur_len) return 0;
    n = f->cur_len - (size_t)off;
    if (n > len) n = len;
    memcpy(buf, f->cur + off, n);
    return (int64_t)n;
}

static int cio_write(void *ctx, void *file, const uint8_t *buf, size_t len, uint64_t off) {
    crashio *c = (crashio *)ctx;
    cfile *f = ((chandle *)file)->f;
    if (c->dead) return CM_ERR_IO;
    if (off + len > f->cur_len) cf_resize(f, (size_t)(off + len));
    if (len) memcpy(f->cur + off, buf, len);
    cf_push(f, 0, off, buf, len);
    return CM_OK;
}

static int cio_sync(void *ctx, void *file) {
    crashio *c = (crashio *)ctx;
    cfile *f = ((chandle *)file)->f;
    if (c->dead) return CM_ERR_IO;
    f->dur = (uint8_t *)realloc(f->dur, f->cur_len ? f->cur_len : 1);
    if (f->cur_len) memcpy(f->dur, f->cur, f->cur_len);
    f->dur_len = f->cur_len;
    cf_clear_ops(f);
    return CM_OK;
}

static int cio_truncate(void *ctx, void *file, uint64_t size) {
    crashio *c = (crashio *)ctx;
    cfile *f = ((chandle *)file)->f;
    if (c->dead) return CM_ERR_IO;
    cf_resize(f, (size_t)size);
    cf_push(f, 1, size, NULL, 0);
    return CM_OK;
}

static int cio_size(void *ctx, void *file, uint64_t *size) {
    crashio *c = (crashio *)ctx;
    if (c->dead) return CM_ERR_IO;
    *size = ((chandle *)file)->f->cur_len;
    return CM_OK;
}

static int cio_lock(void *ctx, void *file) {
    crashio *c = (crashio *)ctx;
    chandle *h = (chandle *)file;
    if (c->dead) return CM_ERR_IO;
    if (h->f->locked) return CM_ERR_LOCKED;
    h->f->locked = 1;
    h->locked = 1;
    return CM_OK;
}

static void cio_close(void *ctx, void *file) {
    chandle *h = (chandle *)file;
    (void)ctx;
    if (h->locked) h->f->locked = 0;
    free(h);
}

static void cio_init(crashio *c, uint64_t seed) {
    memset(c, 0, sizeof(*c));
    c->rng = seed | 1;
    c->io.ctx = c;
    c->io.open = cio_open;
    c->io.read = cio_read;
    c->io.write = cio_write;
    c->io.sync = cio_sync;
    c->io.truncate = cio_truncate;
    c->io.size = cio_size;
    c->io.lock = cio_lock;
    c->io.close = cio_close;
}

static void cio_free(crashio *c) {
    int i;
    for (i = 0; i < 6; i++) {
        cf_clear_ops(&c->files[i]);
        free(c->files[i].ops);
        free(c->files[i].cur);
        free(c->files[i].dur);
    }
}

/* Power cut: every file becomes its durable image plus a random selection
 * of its pending operations, the last applied write possibly torn. */
static void cio_power_cut(crashio *c) {
    int i;
    for (i = 0; i < 6; i++) {
        cfile *f = &c->files[i];
        size_t k, policy = (size_t)rng_below(&c->rng, 4), keep_prefix;
        uint8_t *img;
        size_t img_len = f->dur_len, img_cap;
        if (!f->name[0]) continue;
        img_cap = f->dur_len + 1;
        img = (uint8_t *)xmalloc(img_cap);
        if (f->dur_len) memcpy(img, f->dur, f->dur_len);
        keep_prefix = (size_t)rng_below(&c->rng, f->n_ops + 1);
        for (k = 0; k < f->n_ops; k++) {
            cf_op *op = &f->ops[k];
            int keep;
            size_t len = op->len;
            if (policy == 0)
                keep = 0; /* nothing unsynced survives */
            else if (policy == 1)
                keep = k < keep_prefix; /* in order, up to a point */
            else
                keep = rng_below(&c->rng, 2) == 0; /* any subset */
            if (!keep) continue;
            if (!op->trunc && (policy == 1 ? k + 1 == keep_prefix : rng_below(&c->rng, 4) == 0))
                len = (size_t)rng_below(&c->rng, op->len + 1); /* torn */
            if (op->trunc) {
                if (op->off > img_cap) {
                    img_cap = (size_t)op->off + 1;
                    img = (uint8_t *)realloc(img, img_cap);
                }
                if (op->off > img_len) memset(img + img_len, 0, (size_t)op->off - img_len);
                img_len = (size_t)op->off;
            } else {
                size_t end = (size_t)op->off + len;
                if (end > img_cap) {
                    img_cap = end * 2;
                    img = (uint8_t *)realloc(img, img_cap);
                }
                if (end > img_len) {
                    if (op->off > img_len) memset(img + img_len, 0, (size_t)op->off - img_len);
                    img_len = end > img_len ? end : img_len;
                }
                if (len) memcpy(img + op->off, op->data, len);
                if ((size_t)op->off + len > img_len) img_len = (size_t)op->off + len;
            }
        }
        free(f->dur);
        f->dur = img;
        f->dur_len = img_len;
        cf_resize(f, 0);
        cf_reserve(f, img_len + 1);
        if (img_len) memcpy(f->cur, img, img_len);
        f->cur_len = img_len;
        cf_clear_ops(f);
        f->locked = 0;
    }
    c->dead = 1;
}

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

static void test_power_cuts_writer(int runs) {
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
static void test_power_cuts_replica(int runs) {
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

static void test_get_range(void) {
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

static void test_hostile(void) {
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
static void test_limits(void) {
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

/* ------------------------------------------------------------------------ */
/* Read-only snapshots                                                      */
/* ------------------------------------------------------------------------ */

static int open_snapshot(const char *dir, cm_io **io, cm_core **out) {
    cm_open_opts o;
    if (!*io) REQUIRE_OK(cm_io_posix_new(dir, io));
    memset(&o, 0, sizeof(o));
    o.io = *io;
    o.readonly = 1;
    return cm_core_open(&o, out, NULL);
}

/* A snapshot of `dir` whose tree and data files are those of `stale` (as if
 * the writer had written its records but not applied them) equals `want`. */
static void check_overlay(const char *dir, const char *stale, const char *scratch,
                          cm_core *want, const char *what) {
    cm_io *io = NULL;
    cm_core *s;
    copy_store(dir, scratch);
    copy_file(stale, scratch, "tree");
    copy_file(stale, scratch, "data");
    REQUIRE_OK(open_snapshot(scratch, &io, &s));
    compare_cores(want, s, what);
    {   /* runs read whole subtrees of slots: under the overlay too */
        uint64_t n = cm_core_length(s), total = 0, sizes[256];
        uint8_t *all = (uint8_t *)xmalloc(1 << 20), *one = (uint8_t *)xmalloc(1 << 17);
        size_t len, at = 0, i;
        REQUIRE(n <= 256, "small store");
        CHECK_RC(cm_core_get_range(s, 0, n, all, 1 << 20, sizes, &total), CM_OK);
        for (i = 0; i < n; i++) {
            CHECK_RC(cm_core_get(want, i, one, 1 << 17, &len), CM_OK);
            CHECK(sizes[i] == len && memcmp(all + at, one, len) == 0, "%s: range block %zu",
                  what, i);
            at += len;
        }
        free(all);
        free(one);
    }
    CHECK_RC(cm_core_close(s), CM_OK);
    cm_io_posix_free(io);
}

static void test_snapshot(void) {
    char *d = store_path("snap"), *old = store_path("snap-checkpointed");
    char *tmp = store_path("snap-overlay"), *rd = store_path("snap-replica");
    cm_io *io = NULL, *sio = NULL, *rio = NULL, *rsio = NULL;
    cm_core *w, *s, *r;
    cm_apply_result res;
    uint8_t buf[32768];
    cm_buf one = {(const uint8_t *)"x", 1};
    long sizes[6];
    size_t len;
    uint64_t i;
    int k;
    g_ctx = "snapshot";
    CHECK_RC(open_snapshot(d, &sio, &s), CM_ERR_NOT_FOUND);
    cm_io_posix_free(sio);
    sio = NULL;
    make_writer(d, &io, 0x61, 0, &w);
    append_ids(w, 7000, 40);
    CHECK_RC(cm_core_checkpoint(w), CM_OK);
    copy_store(d, old);
    append_ids(w, 7040, 5); /* in the wal since the checkpoint */

    /* A live, locked writer: the snapshot opens, equals it, writes nothing. */
    REQUIRE_OK(open_snapshot(d, &sio, &s));
    CHECK(cm_core_readonly(s) && !cm_core_writable(s), "snapshot is read-only");
    /* (the writer's signature writes out its write-behind: sizes after it) */
    compare_cores(w, s, "snapshot of a live writer");
    for (k = 1; k <= 5; k++) sizes[k] = file_size(d, cm_file_names[k]);
    CHECK_RC(cm_core_append(s, &one, 1, NULL), CM_ERR_READONLY);
    CHECK_RC(cm_core_truncate(s, 1, 9), CM_ERR_READONLY);
    CHECK_RC(cm_core_checkpoint(s), CM_ERR_READONLY);
    CHECK_RC(cm_core_flush(s), CM_OK);
    CHECK_RC(cm_core_close(s), CM_OK);
    for (k = 1; k <= 5; k++)
        CHECK(file_size(d, cm_file_names[k]) == sizes[k], "snapshot wrote %s", cm_file_names[k]);

    /* The writer moves on; an open snapshot keeps the state it took. */
    REQUIRE_OK(open_snapshot(d, &sio, &s));
    append_ids(w, 7045, 3);
    CHECK(cm_core_length(s) == 45, "snapshot length %llu", (unsigned long long)cm_core_length(s));
    CHECK_RC(cm_core_get(s, 44, buf, sizeof(buf), &len), CM_OK);
    CHECK_RC(cm_core_get(s, 45, buf, sizeof(buf), &len), CM_ERR_RANGE);
    CHECK_RC(cm_core_close(s), CM_OK);

    /* Records written but not applied to tree/data are read from the wal,
     * a truncation among them included. */
    check_overlay(d, old, tmp, w, "unapplied appends");
    CHECK_RC(cm_core_truncate(w, 30, 1), CM_OK);
    append_ids(w, 7100, 4);
    check_overlay(d, old, tmp, w, "unapplied truncation and appends");

    /* A replica: signatures come with its records; blocks it lacks are not held. */
    REQUIRE_OK(open_store(rd, &rio, NULL, cm_core_key(w), 1, CM_DURABLE_BATCH, &r, NULL));
    CHECK_RC(upgrade_replica(w, r, 1, &res), CM_OK);
    for (i = 0; i < 20; i++) CHECK_RC(fetch_block(w, r, i, &res), CM_OK);
    REQUIRE_OK(open_snapshot(rd, &rsio, &s));
    compare_cores(r, s, "snapshot of a live replica");
    CHECK(cm_core_contiguous_length(s) == 20, "replica snapshot holds 20");
    CHECK_RC(cm_core_get(s, 25, buf, sizeof(buf), &len), CM_ERR_UNAVAILABLE);
    CHECK_RC(cm_core_apply_run(s, 0, NULL, 0, &i), CM_ERR_READONLY);
    CHECK_RC(cm_core_close(s), CM_OK);

    CHECK_RC(cm_core_close(r), CM_OK);
    CHECK_RC(cm_core_close(w), CM_OK);
    cm_io_posix_free(io);
    cm_io_posix_free(sio);
    cm_io_posix_free(rio);
    cm_io_posix_free(rsio);
    free(d);
    free(old);
    free(tmp);
    free(rd);
}
#include "test_stream.c"

int main(int argc, char **argv) {
    size_t i;
    int runs = 300;
    if (argc != 2) {
        fprintf(stderr, "usage: %s <scratch-dir>\n", argv[0]);
        return 2;
    }
    if (getenv("CM_TEST_RUNS")) runs = atoi(getenv("CM_TEST_RUNS"));
    g_scratch = argv[1];
    rm_rf(g_scratch);
    if (mkdir(g_scratch, 0755) != 0) {
        perror(g_scratch);
        return 2;
    }
    REQUIRE_OK(cm_init());
    test_table();
    test_aead();
    test_flat_tree();
    test_primitives();
    test_manifests();
    for (i = 0; i < VT_N(VT_CORES); i++) test_vector_core(&VT_CORES[i]);
    printf("vectors: %zu cores replayed, %d proof checks, %ld checks so far\n", VT_N(VT_CORES),
           g_proofs, g_checks);
    test_replica(0);
    test_replica(1);
    test_reorg();
    test_files();
    test_get_range();
    test_hostile();
    test_limits();
    test_snapshot();
    test_stream();
    printf("store tests done, %ld checks so far\n", g_checks);
    test_power_cuts_writer(runs);
    test_power_cuts_replica(runs / 2);
    printf("power cuts: %d writer runs, %d replica runs\n", runs, runs / 2);
    printf("%s: %ld checks, %d failures\n", g_fail ? "FAILED" : "OK", g_checks, g_fail);
    return g_fail ? 1 : 0;
}
