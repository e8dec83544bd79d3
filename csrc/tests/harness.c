/*
 * harness.c - the C tests' shared harness: the check counters and failure
 * report, hex helpers, scratch directories, deterministic pseudo-random blocks.
 */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_cm.h"
#include "vectors.h"

int g_fail = 0;
long g_checks = 0;
const char *g_scratch;
const char *g_ctx = "";
int g_proofs = 0;

void failf(const char *file, int line, const char *fmt, ...) {
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

void *xmalloc(size_t n) {
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
uint8_t *unhex(const char *h, size_t *len) {
    size_t n = strlen(h) / 2, i;
    uint8_t *b = (uint8_t *)xmalloc(n);
    for (i = 0; i < n; i++) b[i] = (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
    *len = n;
    return b;
}

void unhex_to(const char *h, uint8_t *out, size_t n) {
    size_t i;
    REQUIRE(strlen(h) == 2 * n, "hex length %zu, want %zu", strlen(h), 2 * n);
    for (i = 0; i < n; i++) out[i] = (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]));
}

const char *tohex(const uint8_t *b, size_t n) {
    static char buf[4][2 * 4096 + 1];
    static int k = 0;
    char *o = buf[k = (k + 1) % 4];
    size_t i;
    if (n > 4096) n = 4096;
    for (i = 0; i < n; i++) sprintf(o + 2 * i, "%02x", b[i]);
    o[2 * n] = 0;
    return o;
}

int eq_hex(const uint8_t *b, size_t n, const char *h) {
    size_t i;
    if (strlen(h) != 2 * n) return 0;
    for (i = 0; i < n; i++)
        if (b[i] != (uint8_t)(hexval(h[2 * i]) * 16 + hexval(h[2 * i + 1]))) return 0;
    return 1;
}

void vt_to_node(const vt_node *v, cm_node *n) {
    n->index = v->index;
    n->size = v->size;
    unhex_to(v->hash, n->hash, 32);
}

int rm_rf(const char *path) {
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

char *store_path(const char *name) {
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
uint64_t rng_next(uint64_t *s) {
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * UINT64_C(2685821657736338717);
}
uint64_t rng_below(uint64_t *s, uint64_t n) {
    return n ? rng_next(s) % n : 0;
}

/* A block's content from an id: len bytes derived from the id. */
size_t block_content(uint32_t id, uint8_t *buf, size_t cap) {
    uint64_t s = UINT64_C(0x9e3779b97f4a7c15) ^ ((uint64_t)id * 0x100000001b3ULL), len, i;
    rng_next(&s);
    len = rng_below(&s, 5) == 0 ? 0 : rng_below(&s, 300);
    if (id % 97 == 5) len = 20000 + id % 1000;
    if (len > cap) len = cap;
    for (i = 0; i < len; i++) buf[i] = (uint8_t)rng_next(&s);
    return (size_t)len;
}
