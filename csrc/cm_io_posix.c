/*
 * cm_io_posix.c - the default cm_io: store files in one directory.
 *
 * open(O_CLOEXEC; O_RDONLY for CM_IO_READONLY), mode 0600 for CM_IO_PRIVATE,
 * directory created like `mkdir -p` and fsync'ed after a file is created in
 * it, pread/pwrite loops, fdatasync, ftruncate, fstat, flock(LOCK_EX|LOCK_NB).  On failure errno is
 * left as the failing call set it (the core reads it for cm_core_errno).
 * The tree, data and secret key files opened read-write (by the holder of
 * the store lock: no one else writes them) are measured once, when opened,
 * and their size is then kept: opening a store costs no fstat per check.
 *
 * Write-behind: the tree and data files are rebuilt from the wal after a
 * crash (docs/format.md: a checkpoint syncs them before the wal is retired),
 * so their writes may wait in memory until they are synced, truncated or
 * closed.  A window of WB_CAP bytes per file follows the tail and collects
 * the writes that touch it (an append writes the next leaf, its first parent
 * and its value next to the last ones), and goes out in one pwrite; reads see
 * it.  One syscall per few hundred appends instead of two or three each.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include "cm.h"

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

#define IO_CHUNK ((size_t)1 << 30)

typedef struct posix_ctx {
    char *dir;
} posix_ctx;

#define WB_CAP ((size_t)32 << 10) /* write-behind bytes held per file, at most */

typedef struct posix_file {
    int fd;
    int behind;          /* writes may wait in wb (the tree and data files) */
    uint8_t *wb;         /* bytes [wb_off, wb_off + wb_len) not written yet */
    size_t wb_len;
    uint64_t wb_off;
    uint64_t disk_size;  /* the file's size on disk (kept for behind and private files) */
    int size_known;      /* disk_size is exact: read-write (only the lock holder writes
                          * it) and measured when opened, so px_size needs no fstat */
} posix_file;

static int write_behind(const char *name) {
    return strcmp(name, "tree") == 0 || strcmp(name, "data") == 0;
}

static int fsync_dir(const char *dir) {
    int fd = open(dir, O_RDONLY | O_CLOEXEC
#ifdef O_DIRECTORY
                           | O_DIRECTORY
#endif
    );
    int rc;
    if (fd < 0) return -1;
    do {
        rc = fsync(fd);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0 && (errno == EINVAL || errno == EBADF)) rc = 0; /* not supported here */
    {
        int e = errno;
        close(fd);
        errno = e;
    }
    return rc;
}

/* mkdir -p; each newly created directory is made durable in its parent. */
static int mkdir_p(const char *path) {
    size_t len = strlen(path), i;
    char *buf;
    if (len == 0) return 0;
    buf = (char *)malloc(len + 1);
    if (!buf) {
        errno = ENOMEM;
        return -1;
    }
    memcpy(buf, path, len + 1);
    for (i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == '\0') {
            char saved = buf[i];
            buf[i] = '\0';
            if (mkdir(buf, 0755) == 0) {
                /* durable in the parent directory */
                char *slash = strrchr(buf, '/');
                if (slash && slash != buf) {
                    *slash = '\0';
                    fsync_dir(buf);
                    *slash = '/';
                } else if (slash == buf) {
                    fsync_dir("/");
                } else {
                    fsync_dir(".");
                }
            } else if (errno != EEXIST) {
                int e = errno;
                free(buf);
                errno = e;
                return -1;
            }
            buf[i] = saved;
        }
    }
    free(buf);
    return 0;
}

static char *join(const char *dir, const char *name) {
    size_t a = strlen(dir), b = strlen(name);
    char *p = (char *)malloc(a + b + 2);
    if (!p) return NULL;
    memcpy(p, dir, a);
    p[a] = '/';
    memcpy(p + a + 1, name, b + 1);
    return p;
}

/* A private file (the secret key) opened as fd: a regular file that group
 * and others cannot access, or CM_ERR_INSECURE (fd closed); *size its size. */
static int private_ok(int fd, uint64_t *size) {
    struct stat st;
    int rc = CM_OK;
    if (fstat(fd, &st) < 0) {
        rc = CM_ERR_IO;
    } else if (!S_ISREG(st.st_mode) || (st.st_mode & 077)) {
        rc = CM_ERR_INSECURE;
        errno = EPERM;
    }
    if (rc != CM_OK) {
        int e = errno;
        close(fd);
        errno = e;
    } else {
        *size = (uint64_t)st.st_size;
    }
    return rc;
}

static int px_open(void *ctx, const char *name, int flags, void **file) {
    posix_ctx *c = (posix_ctx *)ctx;
    posix_file *f;
    char *path;
    uint64_t size = 0;
    int fd, rc;
    /* the secret key: never through a symlink, created exclusively */
    int private_flags = (flags & CM_IO_PRIVATE) ? O_NOFOLLOW : 0;
    *file = NULL;
    if (strchr(name, '/') != NULL) return CM_ERR_INVALID;
    path = join(c->dir, name);
    if (!path) return CM_ERR_NOMEM;
    do {
        fd = open(path, ((flags & CM_IO_READONLY) ? O_RDONLY : O_RDWR) | O_CLOEXEC |
                  private_flags);
    } while (fd < 0 && errno == EINTR);
    if (fd < 0 && errno == ENOENT) {
        if (!(flags & CM_IO_CREATE) || (flags & CM_IO_READONLY)) {
            free(path);
            return CM_ERR_NOT_FOUND;
        }
        if (mkdir_p(c->dir) < 0) {
            int e = errno;
            free(path);
            errno = e;
            return CM_ERR_IO;
        }
        do {
            fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC | private_flags |
                      (private_flags ? O_EXCL : 0), private_flags ? 0600 : 0644);
        } while (fd < 0 && errno == EINTR);
        if (fd >= 0 && fsync_dir(c->dir) < 0) {
            int e = errno;
            close(fd);
            free(path);
            errno = e;
            return CM_ERR_IO;
        }
    }
    if (fd < 0) {
        int e = errno;
        free(path);
        errno = e;
        /* ELOOP: a symlink; EEXIST: one appeared while it was created; EISDIR */
        if (private_flags && (e == ELOOP || e == EEXIST || e == EISDIR)) return CM_ERR_INSECURE;
        return CM_ERR_IO;
    }
    free(path);
    if (private_flags && (rc = private_ok(fd, &size)) != CM_OK) return rc;
    f = (posix_file *)malloc(sizeof(*f));
    if (!f) {
        close(fd);
        return CM_ERR_NOMEM;
    }
    memset(f, 0, sizeof(*f));
    f->fd = fd;
    f->behind = write_behind(name);
    if (f->behind) {
        struct stat st;
        if (fstat(fd, &st) < 0) {
            int e = errno;
            close(fd);
            free(f);
            errno = e;
            return CM_ERR_IO;
        }
        size = (uint64_t)st.st_size;
    }
    f->disk_size = size;
    /* A snapshot's files grow under it (the writer holds the lock): measured
     * each time.  Otherwise every write comes through this handle. */
    f->size_known = (f->behind || private_flags) && !(flags & CM_IO_READONLY);
    *file = f;
    return CM_OK;
}

static int64_t px_read(void *ctx, void *file, uint8_t *buf, size_t len, uint64_t off) {
    posix_file *f = (posix_file *)file;
    size_t done = 0;
    (void)ctx;
    if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off) return CM_ERR_RANGE;
    while (done < len) {
        size_t want = len - done;
        ssize_t n;
        if (want > IO_CHUNK) want = IO_CHUNK;
        n = pread(f->fd, buf + done, want, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return CM_ERR_IO;
        }
        if (n == 0) break;
        done += (size_t)n;
    }
    if (f->wb_len > 0 && off < f->wb_off + f->wb_len && off + len > f->wb_off) {
        /* the part of the read that is still in the window, over what the disk had
         * (past the end of the disk file and before the window: a hole, zeros) */
        uint64_t lo = off > f->wb_off ? off : f->wb_off;
        uint64_t hi = off + len < f->wb_off + f->wb_len ? off + len : f->wb_off + f->wb_len;
        if (off + done < lo) memset(buf + done, 0, (size_t)(lo - off - done));
        memcpy(buf + (lo - off), f->wb + (lo - f->wb_off), (size_t)(hi - lo));
        if (hi - off > done) done = (size_t)(hi - off);
    }
    return (int64_t)done;
}

static int pwrite_all(int fd, const uint8_t *buf, size_t len, uint64_t off) {
    size_t done = 0;
    while (done < len) {
        size_t want = len - done;
        ssize_t n;
        if (want > IO_CHUNK) want = IO_CHUNK;
        n = pwrite(fd, buf + done, want, (off_t)(off + done));
        if (n < 0) {
            if (errno == EINTR) continue;
            return CM_ERR_IO;
        }
        if (n == 0) {
            errno = EIO;
            return CM_ERR_IO;
        }
        done += (size_t)n;
    }
    return CM_OK;
}

static int file_write(posix_file *f, const uint8_t *buf, size_t len, uint64_t off) {
    int rc = pwrite_all(f->fd, buf, len, off);
    if (rc == CM_OK && off + len > f->disk_size) f->disk_size = off + len;
    return rc;
}

/* Write the window out (it stays if that fails: the core is poisoned then). */
static int wb_flush(posix_file *f) {
    int rc;
    if (f->wb_len == 0) return CM_OK;
    rc = file_write(f, f->wb, f->wb_len, f->wb_off);
    if (rc == CM_OK) f->wb_len = 0;
    return rc;
}

/* Keep the write in the window if it overlaps it, touches it or lies a little
 * past its end, and the whole fits; a new window if there is none.  A gap
 * past the end is filled with what the file holds there (beyond its end on
 * disk, as at a growing tail: zeros, no read).  0: kept; 1: not taken. */
static int wb_take(posix_file *f, const uint8_t *buf, size_t len, uint64_t off) {
    uint64_t end = off + len, wb_end = f->wb_off + f->wb_len, lo, hi;
    if (len > WB_CAP) return 1;
    if (!f->wb) {
        f->wb = (uint8_t *)malloc(WB_CAP);
        if (!f->wb) return 1;
    }
    if (f->wb_len == 0) {
        f->wb_off = off;
        wb_end = off;
    }
    if (end < f->wb_off) return 1; /* before the window, apart from it */
    lo = off < f->wb_off ? off : f->wb_off;
    hi = end > wb_end ? end : wb_end;
    if (hi - lo > WB_CAP) return 1;
    if (off > wb_end) { /* a gap [wb_end, off): what the file holds there */
        uint8_t *gap = f->wb + (wb_end - f->wb_off);
        size_t n = (size_t)(off - wb_end), got = 0;
        while (wb_end + got < f->disk_size && got < n) {
            ssize_t r = pread(f->fd, gap + got, n - got, (off_t)(wb_end + got));
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) return 1; /* cannot tell: not taken (written straight) */
            got += (size_t)r;
        }
        memset(gap + got, 0, n - got);
    }
    if (lo < f->wb_off) { /* the write covers [lo, wb_off): move the window up */
        memmove(f->wb + (f->wb_off - lo), f->wb, f->wb_len);
        f->wb_off = lo;
    }
    memcpy(f->wb + (off - f->wb_off), buf, len);
    f->wb_len = (size_t)(hi - lo);
    return 0;
}

static int px_write(void *ctx, void *file, const uint8_t *buf, size_t len, uint64_t off) {
    posix_file *f = (posix_file *)file;
    int rc;
    (void)ctx;
    if (off > (uint64_t)INT64_MAX || len > (uint64_t)INT64_MAX - off) return CM_ERR_RANGE;
    if (!f->behind) return file_write(f, buf, len, off);
    if (wb_take(f, buf, len, off) == 0) return CM_OK;
    if (f->wb_len > 0 && off + len >= f->wb_off) {
        /* it touches a full window, or the tail moved far past it: the window
         * goes out first, then this write starts a new one */
        if ((rc = wb_flush(f)) != CM_OK) return rc;
        if (wb_take(f, buf, len, off) == 0) return CM_OK;
    }
    /* before the window and apart from it (a parent node far behind the
     * tail: no overlap, so the order does not matter), or larger than a
     * window: straight to the file */
    return file_write(f, buf, len, off);
}

static int px_sync(void *ctx, void *file) {
    posix_file *f = (posix_file *)file;
    int rc;
    (void)ctx;
    if ((rc = wb_flush(f)) != CM_OK) return rc;
    do {
#if defined(_POSIX_SYNCHRONIZED_IO) && _POSIX_SYNCHRONIZED_IO > 0 && !defined(__APPLE__)
        rc = fdatasync(f->fd);
#else
        rc = fsync(f->fd);
#endif
    } while (rc < 0 && errno == EINTR);
    return rc < 0 ? CM_ERR_IO : CM_OK;
}

static int px_truncate(void *ctx, void *file, uint64_t size) {
    posix_file *f = (posix_file *)file;
    int rc;
    (void)ctx;
    if (size > (uint64_t)INT64_MAX) return CM_ERR_RANGE;
    if ((rc = wb_flush(f)) != CM_OK) return rc;
    do {
        rc = ftruncate(f->fd, (off_t)size);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return CM_ERR_IO;
    f->disk_size = size;
    return CM_OK;
}

static int px_size(void *ctx, void *file, uint64_t *size) {
    posix_file *f = (posix_file *)file;
    struct stat st;
    (void)ctx;
    if (f->size_known) {
        *size = f->disk_size;
    } else {
        if (fstat(f->fd, &st) < 0) return CM_ERR_IO;
        *size = (uint64_t)st.st_size;
    }
    if (f->wb_len > 0 && f->wb_off + f->wb_len > *size) *size = f->wb_off + f->wb_len;
    return CM_OK;
}

static int px_lock(void *ctx, void *file) {
    posix_file *f = (posix_file *)file;
    int rc;
    (void)ctx;
    do {
        rc = flock(f->fd, LOCK_EX | LOCK_NB);
    } while (rc < 0 && errno == EINTR);
    if (rc < 0) return (errno == EWOULDBLOCK || errno == EAGAIN) ? CM_ERR_LOCKED : CM_ERR_IO;
    return CM_OK;
}

static int px_flush(void *ctx, void *file) {
    (void)ctx;
    return wb_flush((posix_file *)file);
}

static void px_close(void *ctx, void *file) {
    posix_file *f = (posix_file *)file;
    (void)ctx;
    if (!f) return;
    /* The core syncs (checkpoints) before it closes; what could be left is
     * rebuilt from the wal on the next open, but costs nothing to write. */
    (void)wb_flush(f);
    close(f->fd); /* also drops the flock */
    free(f->wb);
    free(f);
}

int cm_io_posix_new(const char *directory, cm_io **out) {
    cm_io *io;
    posix_ctx *c;
    size_t n;
    *out = NULL;
    if (directory == NULL || directory[0] == '\0') return CM_ERR_INVALID;
    io = (cm_io *)calloc(1, sizeof(*io));
    c = (posix_ctx *)calloc(1, sizeof(*c));
    n = strlen(directory);
    if (io && c) c->dir = (char *)malloc(n + 1);
    if (!io || !c || !c->dir) {
        if (c) free(c->dir);
        free(c);
        free(io);
        return CM_ERR_NOMEM;
    }
    memcpy(c->dir, directory, n + 1);
    while (n > 1 && c->dir[n - 1] == '/') c->dir[--n] = '\0';
    io->ctx = c;
    io->open = px_open;
    io->read = px_read;
    io->write = px_write;
    io->sync = px_sync;
    io->truncate = px_truncate;
    io->size = px_size;
    io->lock = px_lock;
    io->close = px_close;
    io->flush = px_flush;
    *out = io;
    return CM_OK;
}

void cm_io_posix_free(cm_io *io) {
    if (!io) return;
    if (io->ctx) {
        posix_ctx *c = (posix_ctx *)io->ctx;
        free(c->dir);
        free(c);
    }
    free(io);
}
