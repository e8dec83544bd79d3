"""The injectable file interface a store is written through.

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
from typing import Optional, Protocol

from .caps import IO_CREATE, IO_PRIVATE, IO_READONLY
from .errors import StorageError, StoreLockedError, StoreNotFoundError

CREATE = IO_CREATE      #: create the file if it is missing
PRIVATE = IO_PRIVATE    #: create it with mode 0600
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


class Storage(Protocol):
    def open(self, name: str, flags: int = 0) -> File:
        """Open store file ``name``; raise StoreNotFoundError if missing and
        ``flags`` lacks :data:`CREATE`.  With :data:`READONLY` the file is
        only read (a read-only snapshot never writes, syncs or locks)."""


WRITE_BEHIND = 32 << 10          # bytes held per file, at most (cm_io_posix.c WB_CAP)
WRITE_BEHIND_FILES = ("tree", "data")


class OSFile:
    """A store file on disk (``os.pread``/``os.pwrite``/``os.fdatasync``).

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

    def read(self, size: int, offset: int) -> bytes:
        chunks = []
        want, at = size, offset
        while want > 0:
            chunk = os.pread(self.fd, want, at)
            if not chunk:
                break
            chunks.append(chunk)
            want -= len(chunk)
            at += len(chunk)
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
                self._flush()
                if self._take(data, offset):
                    return
            # before the window and apart from it, or larger than a window
        self._pwrite(data, offset)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        end = offset + len(view)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n
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

    def _flush(self) -> None:
        """Write the window out (it stays if that fails)."""
        if self.wb:
            self._pwrite(bytes(self.wb), self.wb_off)
            self.wb = bytearray()

    def sync(self) -> None:
        self._flush()
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        self._flush()
        os.ftruncate(self.fd, size)
        self.disk_size = size

    def size(self) -> int:
        return max(os.fstat(self.fd).st_size, self.wb_off + len(self.wb) if self.wb else 0)

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
                self._flush()
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
        mode = 0o600 if flags & PRIVATE else 0o644
        access = os.O_RDONLY if flags & READONLY else os.O_RDWR
        try:
            fd = os.open(path, access | os.O_CLOEXEC)
        except FileNotFoundError:
            if not flags & CREATE or flags & READONLY:
                raise StoreNotFoundError("no such store file", path) from None
            os.makedirs(self.directory, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            except OSError as e:
                raise StorageError(e.strerror or str(e), path, e.errno) from None
            _sync_directory(self.directory)
        except OSError as e:
            raise StorageError(e.strerror or str(e), path, e.errno) from None
        return OSFile(fd, path, behind=name in WRITE_BEHIND_FILES)


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
