/*
 * crash_io.c - an in-memory cm_io that emulates power cuts (used by
 * test_power_cuts.c and test_limits.c).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test_cm.h"

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

void cio_init(crashio *c, uint64_t seed) {
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

void cio_free(crashio *c) {
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
void cio_power_cut(crashio *c) {
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
