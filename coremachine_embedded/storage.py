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

from .caps import IO_CREATE, IO_PRIVATE
from .errors import StorageError, StoreLockedError, StoreNotFoundError

CREATE = IO_CREATE    #: create the file if it is missing
PRIVATE = IO_PRIVATE  #: create it with mode 0600


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
        ``flags`` lacks :data:`CREATE`."""


class OSFile:
    """A store file on disk (``os.pread``/``os.pwrite``/``os.fdatasync``)."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def read(self, size: int, offset: int) -> bytes:
        chunks = []
        while size > 0:
            chunk = os.pread(self.fd, size, offset)
            if not chunk:
                break
            chunks.append(chunk)
            size -= len(chunk)
            offset += len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self.fd, view, offset)
            view = view[n:]
            offset += n

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

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
            os.close(self.fd)
            self.fd = -1


class FileStorage:
    """Store files in a directory (created on first :data:`CREATE` open)."""

    def __init__(self, directory: str) -> None:
        self.directory = os.fspath(directory)

    def open(self, name: str, flags: int = 0) -> OSFile:
        path = os.path.join(self.directory, name)
        mode = 0o600 if flags & PRIVATE else 0o644
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            if not flags & CREATE:
                raise StoreNotFoundError("no such store file", path) from None
            os.makedirs(self.directory, exist_ok=True)
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
            except OSError as e:
                raise StorageError(e.strerror or str(e), path, e.errno) from None
            _sync_directory(self.directory)
        except OSError as e:
            raise StorageError(e.strerror or str(e), path, e.errno) from None
        return OSFile(fd, path)


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
