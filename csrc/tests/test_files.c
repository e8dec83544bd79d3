/*
 * test_files.c - the store's files on disk: corruption, locking, older format
 * versions.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_cm.h"

static void file_path(char *out, size_t cap, const char *dir, const char *name) {
    snprintf(out, cap, "%s/%s", dir, name);
}

void flip_byte(const char *dir, const char *name, long off) {
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

long file_size(const char *dir, const char *name) {
    char p[4096];
    struct stat st;
    file_path(p, sizeof(p), dir, name);
    if (stat(p, &st) != 0) return -1;
    return (long)st.st_size;
}

/* Copy store file `name` from one directory to another (if it exists). */
void copy_file(const char *from, const char *to, const char *name) {
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

void copy_store(const char *from, const char *to) {
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

void test_files(void) {
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
