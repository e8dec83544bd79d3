/*
 * test_cm.h - the C tests' shared harness: the check macros, the counters
 * behind them, and the helpers more than one test file uses.
 *
 * The tests are one program (test_cm): test_cm.c runs the files below in a
 * fixed order; each failed check prints file:line and what differed.
 */
#ifndef CM_TEST_CM_H
#define CM_TEST_CM_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h> /* exit, in REQUIRE */

#include "cm.h"

/* --- harness.c: counters, failure report, helpers ------------------------ */

extern int g_fail;
extern long g_checks;
extern const char *g_scratch; /* the scratch directory the stores live under */
extern const char *g_ctx;     /* what is being tested, for failure reports */
extern int g_proofs;          /* vector proofs checked */

void failf(const char *file, int line, const char *fmt, ...);

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

/* Elements in an array (the same definition as the generated vectors.h). */
#define VT_N(a) (sizeof(a) / sizeof((a)[0]))

void *xmalloc(size_t n);
uint8_t *unhex(const char *h, size_t *len);
void unhex_to(const char *h, uint8_t *out, size_t n);
const char *tohex(const uint8_t *b, size_t n);
int eq_hex(const uint8_t *b, size_t n, const char *h);
struct vt_node;
void vt_to_node(const struct vt_node *v, cm_node *n);
int rm_rf(const char *path);
char *store_path(const char *name);
uint64_t rng_next(uint64_t *s);
uint64_t rng_below(uint64_t *s, uint64_t n);
size_t block_content(uint32_t id, uint8_t *buf, size_t cap);

/* --- test_vectors.c: opening a store on disk ----------------------------- */

typedef struct writer_opts {
    uint8_t sk[64];
    uint8_t *manifest;
    size_t manifest_len;
    int compat;
} writer_opts;

int open_store(const char *dir, cm_io **io, const writer_opts *w, const uint8_t *key,
               int create, cm_durability dur, cm_core **out, cm_recovery *rec);

/* --- test_replica.c: a writer and its replicas --------------------------- */

int transfer(cm_core *from, cm_core *to, const cm_proof_request *req, cm_apply_result *res,
             uint8_t **msg_out, size_t *msg_len);
int upgrade_replica(cm_core *w, cm_core *r, int want_manifest, cm_apply_result *res);
int fetch_block(cm_core *w, cm_core *r, uint64_t index, cm_apply_result *res);
void sync_full(cm_core *w, cm_core *r);
void compare_cores(cm_core *a, cm_core *b, const char *what);
void append_ids(cm_core *c, uint32_t first_id, size_t n);
void make_writer(const char *dir, cm_io **io, uint8_t seed_byte, int compat, cm_core **w);

/* --- test_files.c: the store's files ------------------------------------- */

void flip_byte(const char *dir, const char *name, long off);
long file_size(const char *dir, const char *name);
void copy_file(const char *from, const char *to, const char *name);
void copy_store(const char *from, const char *to);

/* --- crash_io.c: power-cut emulation ------------------------------------- */

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

void cio_init(crashio *c, uint64_t seed);
void cio_free(crashio *c);
void cio_power_cut(crashio *c);

/* --- the tests, in the order test_cm.c runs them ------------------------- */

void test_table(void);
void test_aead(void);
void test_flat_tree(void);
void test_primitives(void);
void test_manifests(void);
struct vt_core;
void test_vector_core(const struct vt_core *vc);
void test_replica(int compat);
void test_reorg(void);
void test_files(void);
void test_get_range(void);
void test_hostile(void);
void test_limits(void);
void test_snapshot(void);
void test_stream(void);
void test_power_cuts_writer(int runs);
void test_power_cuts_replica(int runs);

#endif
