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

from .caps import IO_CREATE, IO_PRIVATE
from .errors import InsecureFileError, StorageError, StoreLockedError, StoreNotFoundError

CREATE = IO_CREATE    #: create the file if it is missing
PRIVATE = IO_PRIVATE  #: the secret key: no symlinks, exclusive creation, mode 0600


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
    """A store file on disk (``os.pread``/``os.pwrite``/``os.fdatasync``).
    A failing call raises :class:`StorageError` naming the file, with the
    errno (a full disk is ``ENOSPC``), as the C backend does."""

    __slots__ = ("fd", "path")

    def __init__(self, fd: int, path: str) -> None:
        self.fd = fd
        self.path = path

    def _failed(self, e: OSError) -> StorageError:
        return StorageError(e.strerror or str(e), self.path, e.errno)

    def read(self, size: int, offset: int) -> bytes:
        chunks = []
        try:
            while size > 0:
                chunk = os.pread(self.fd, size, offset)
                if not chunk:
                    break
                chunks.append(chunk)
                size -= len(chunk)
                offset += len(chunk)
        except OSError as e:
            raise self._failed(e) from None
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.pwrite(self.fd, view, offset)
                view = view[n:]
                offset += n
        except OSError as e:
            raise self._failed(e) from None

    def sync(self) -> None:
        try:
            os.fdatasync(self.fd)
        except OSError as e:
            raise self._failed(e) from None

    def truncate(self, size: int) -> None:
        try:
            os.ftruncate(self.fd, size)
        except OSError as e:
            raise self._failed(e) from None

    def size(self) -> int:
        try:
            return os.fstat(self.fd).st_size
        except OSError as e:
            raise self._failed(e) from None

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
        private = os.O_NOFOLLOW if flags & PRIVATE else 0
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | private)
        except FileNotFoundError:
            if not flags & CREATE:
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
        return OSFile(fd, path)


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
