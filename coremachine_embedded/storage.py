"""The injectable file interface a store is written through.

:data:`PRIVATE` marks the secret key: it is never opened through a symlink,
it is created exclusively (``O_CREAT|O_EXCL|O_NOFOLLOW``) with mode 0600,
and an existing one must be a regular file that group and others cannot
access (:class:`~.errors.InsecureFileError` otherwise).

A *storage* is a factory of named files (``header``, ``wal``, ``tree``, ``data``,
``secret_key``); a *file* offers positioned reads and writes, ``sync``
(fdatasync), ``truncate``, ``size``, an exclusive ``lock`` and ``close``.
:class:`FileStorage` is the real thing on a directory.  Tests pass their own
storage (see ``tests/fault/powerloss.py``) to cut power at any write; both
backends accept one.
"""
from __future__ import annotations

import errno as _errno
import os
import stat
from typing import Optional, Protocol

from .caps import IO_CREATE, IO_PRIVATE, IO_READONLY
from .errors import InsecureFileError, StorageError, StoreLockedError, StoreNotFoundError

CREATE = IO_CREATE      #: create the file if it is missing
PRIVATE = IO_PRIVATE    #: the secret key: no symlinks, exclusive creation, mode 0600
READONLY = IO_READONLY  #: open it for reading only (never with CREATE)


class File(Protocol):
    def read(self, size: int, offset: int) -> bytes:
        """Up to ``size`` bytes at ``offset``; shorter only at the end of the file."""

    def write(self, data: bytes, offset: int) -> None:
        """Write all of ``data`` at ``offset``, growing the file as needed."""

    def sync(self) -> None:
        """Make every write so far durable."""

    def truncate(self, size: int) -> None: ...

    def size(self) -> int: ...

    def lock(self) -> None:
        """Take an exclusive lock until close; raise StoreLockedError if taken."""

    def close(self) -> None: ...

    # Optional: ``flush()`` writes out what the file holds back in memory
    # (write-behind), without syncing; the store calls it when present.


class Storage(Protocol):
    def open(self, name: str, flags: int = 0) -> File:
        """Open store file ``name``; raise StoreNotFoundError if missing and
        ``flags`` lacks :data:`CREATE`.  With :data:`READONLY` the file is
        only read (a read-only snapshot never writes, syncs or locks)."""


WRITE_BEHIND = 32 << 10          # bytes held per file, at most (cm_io_posix.c WB_CAP)
WRITE_BEHIND_FILES = ("tree", "data")


class OSFile:
    """A store file on disk (``os.pread``/``os.pwrite``/``os.fdatasync``).
    A failing call raises :class:`StorageError` naming the file, with the
    errno (a full disk is ``ENOSPC``), as the C backend does.

    Write-behind (the twin of csrc/cm_io_posix.c): the tree and data files
    are rebuilt from the wal after a crash, so their writes may wait in memory
    until they are synced, truncated or closed.  A window of
    :data:`WRITE_BEHIND` bytes follows the tail and collects the writes that
    touch it; reads see it.
    """

    __slots__ = ("fd", "path", "behind", "wb", "wb_off", "disk_size")

    def __init__(self, fd: int, path: str, behind: bool = False) -> None:
        self.fd = fd
        self.path = path
        self.behind = behind
        self.wb = bytearray()   # bytes [wb_off, wb_off + len(wb)) not written yet
        self.wb_off = 0
        self.disk_size = os.fstat(fd).st_size if behind else 0

    def _failed(self, e: OSError) -> StorageError:
        return StorageError(e.strerror or str(e), self.path, e.errno)

    def read(self, size: int, offset: int) -> bytes:
        chunks = []
        want, at = size, offset
        try:
            while want > 0:
                chunk = os.pread(self.fd, want, at)
                if not chunk:
                    break
                chunks.append(chunk)
                want -= len(chunk)
                at += len(chunk)
        except OSError as e:
            raise self._failed(e) from None
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        wb, start = self.wb, self.wb_off
        if wb and offset < start + len(wb) and offset + size > start:
            # the part still in the window, over what the disk had (a hole: zeros)
            lo, hi = max(offset, start), min(offset + size, start + len(wb))
            out = bytearray(data)
            if len(out) < lo - offset:
                out.extend(bytes(lo - offset - len(out)))
            out[lo - offset:hi - offset] = wb[lo - start:hi - start]
            return bytes(out)
        return data

    def write(self, data: bytes, offset: int) -> None:
        if self.behind:
            if self._take(data, offset):
                return
            if self.wb and offset + len(data) >= self.wb_off:
                # it touches a full window, or the tail moved far past it
                self.flush()
                if self._take(data, offset):
                    return
            # before the window and apart from it, or larger than a window
        self._pwrite(data, offset)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        end = offset + len(view)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise self._failed(e) from None
        self.disk_size = max(self.disk_size, end)

    def _take(self, data: bytes, offset: int) -> bool:
        """Keep the write in the window if it overlaps it, touches it or lies a
        little past its end, and the whole fits (a gap is filled with what the
        file holds there: zeros past its end on disk)."""
        n = len(data)
        if n > WRITE_BEHIND:
            return False
        wb = self.wb
        if not wb:
            self.wb_off = offset
        start, end = self.wb_off, self.wb_off + len(wb)
        if offset + n < start:
            return False
        lo, hi = min(offset, start), max(offset + n, end)
        if hi - lo > WRITE_BEHIND:
            return False
        if offset > end:
            try:
                held = os.pread(self.fd, offset - end, end) if end < self.disk_size else b""
            except OSError:
                return False
            wb += held + bytes(offset - end - len(held))
        if lo < start:  # the write covers [lo, start)
            wb[0:0] = bytes(start - lo)
            self.wb_off = lo
        wb[offset - self.wb_off:offset - self.wb_off + n] = data
        return True

    def flush(self) -> None:
        """Write the window out, without syncing (it stays if that fails)."""
        if self.wb:
            self._pwrite(bytes(self.wb), self.wb_off)
            self.wb = bytearray()

    def sync(self) -> None:
        self.flush()
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise self._failed(e) from None

    def truncate(self, size: int) -> None:
        self.flush()
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise self._failed(e) from None
        self.disk_size = size

    def size(self) -> int:
        try:
            on_disk = os.fstat(self.fd).st_size
        except OSError as e:
            raise self._failed(e) from None
        return max(on_disk, self.wb_off + len(self.wb) if self.wb else 0)

    def lock(self) -> None:
        import fcntl
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (_errno.EWOULDBLOCK, _errno.EACCES, _errno.EAGAIN):
                raise StoreLockedError("the store is open in another core or process",
                                       self.path) from None
            raise

    def close(self) -> None:
        if self.fd >= 0:
            try:  # the store synced before closing; what is left the wal rebuilds
                self.flush()
            except OSError:
                pass
            os.close(self.fd)
            self.fd = -1


class FileStorage:
    """Store files in a directory (created on first :data:`CREATE` open)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.fspath(directory)

    def open(self, name: str, flags: int = 0) -> OSFile:
        path = os.path.join(self.directory, name)
        private = os.O_NOFOLLOW if flags & PRIVATE else 0
        access = os.O_RDONLY if flags & READONLY else os.O_RDWR
        try:
            fd = os.open(path, access | os.O_CLOEXEC | private)
        except FileNotFoundError:
            if not flags & CREATE or flags & READONLY:
                raise StoreNotFoundError("no such store file", path) from None
            os.makedirs(self.directory, exist_ok=True)
            exclusive = os.O_EXCL if private else 0
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | private | exclusive,
                             0o600 if private else 0o644)
            except OSError as e:
                raise _open_error(e, path, private) from None
            _sync_directory(self.directory)
        except OSError as e:
            raise _open_error(e, path, private) from None
        if private:
            why = insecure(path, os.fstat(fd))
            if why:
                os.close(fd)
                raise InsecureFileError(why, path)
        return OSFile(fd, path, behind=name in WRITE_BEHIND_FILES)


def insecure(path: str, st: Optional[os.stat_result] = None) -> Optional[str]:
    """Why a private file (the secret key) must not be used, or None."""
    try:
        st = st or os.lstat(path)
    except OSError:
        return None
    if stat.S_ISLNK(st.st_mode):
        return "a secret key file is a symlink (it is never followed)"
    if not stat.S_ISREG(st.st_mode):
        return "a secret key file is not a regular file"
    if st.st_mode & 0o077:
        return ("a secret key file has mode %04o: group or others can access it "
                "(chmod 600 it)" % stat.S_IMODE(st.st_mode))
    return None


def _open_error(e: OSError, path: str, private: int) -> StorageError:
    if private and e.errno in (_errno.ELOOP, _errno.EEXIST, _errno.EISDIR):
        # ELOOP: a symlink (O_NOFOLLOW); EEXIST: one appeared as it was
        # created; EISDIR: a directory
        return InsecureFileError(insecure(path) or "%s" % (e.strerror or e), path, e.errno)
    return StorageError(e.strerror or str(e), path, e.errno)


def _sync_directory(directory: str) -> None:
    """Make a newly created file's directory entry durable."""
    fd: Optional[int] = None
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot fsync a directory; the data itself is synced
    finally:
        if fd is not None:
            os.close(fd)
