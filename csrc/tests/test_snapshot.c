/*
 * test_snapshot.c - read-only snapshots of a store in use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "test_cm.h"

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

void test_snapshot(void) {
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
