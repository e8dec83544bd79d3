"""Errors shared by both backends.

Every error carries a ``code`` (a short upper-case string, stable across
versions) and subclasses the built-in exception a caller would expect, so
``except ValueError`` keeps working.  The C core returns negative integers
(:class:`caps.CErrorCode`); :data:`C_ERRORS` maps them to these classes (one
table, used by ``_core.pyx``).
"""
from __future__ import annotations

from typing import Any, Dict, Optional, Type

from .caps import CErrorCode


class CoreMachineError(Exception):
    """Base class of every error this package raises on purpose."""

    code = "ERROR"

    def __init__(self, message: str = "", *args: object) -> None:
        super().__init__(message, *args)
        self.message = message

    def __str__(self) -> str:
        return "%s: %s" % (self.code, self.message) if self.message else self.code


class InvalidArgumentError(CoreMachineError, ValueError):
    """An argument has the right type but an unusable value."""

    code = "BAD_ARGUMENT"


class ArgumentTypeError(CoreMachineError, TypeError):
    """An argument has the wrong type (e.g. ``str`` where bytes are needed)."""

    code = "BAD_TYPE"


class TooLargeError(CoreMachineError, ValueError):
    """A block, batch or message is over its limit."""

    code = "TOO_LARGE"


class DecodeError(CoreMachineError, ValueError):
    """Bytes that should hold an encoded message or manifest are malformed."""

    code = "DECODE"


class InvalidProofError(CoreMachineError, ValueError):
    """A proof does not verify (its nodes, its shape or its block)."""

    code = "INVALID_PROOF"


class InvalidSignatureError(InvalidProofError):
    """A signature does not verify under the core's key."""

    code = "INVALID_SIGNATURE"


class ForkError(InvalidProofError):
    """A proof is for an older fork, or a newer fork without an upgrade from 0."""

    code = "STALE_FORK"


class MissingDependencyError(CoreMachineError, ImportError):
    """A library this needs at run time is not installed (e.g. libsodium)."""

    code = "MISSING_DEPENDENCY"


class KeyMismatchError(CoreMachineError, ValueError):
    """A key, key pair or manifest does not belong to this core."""

    code = "KEY_MISMATCH"


class OutOfRangeError(CoreMachineError, IndexError):
    """An index or length outside the log."""

    code = "OUT_OF_RANGE"


class BlockNotAvailableError(CoreMachineError, LookupError):
    """The block is inside the signed log but this replica does not hold it yet."""

    code = "BLOCK_NOT_AVAILABLE"


class ReadOnlyError(CoreMachineError, PermissionError):
    """A write on a core opened without its secret key."""

    code = "SESSION_NOT_WRITABLE"


class ClosedError(CoreMachineError, ValueError):
    """An operation on a closed core."""

    code = "SESSION_CLOSED"


class StorageError(CoreMachineError, OSError):
    """A file operation failed.  ``filename`` names the store file."""

    code = "STORAGE"

    def __init__(self, message: str = "", filename: Optional[str] = None,
                 errno: Optional[int] = None) -> None:
        CoreMachineError.__init__(self, message)
        self.filename = filename
        self.errno = errno

    def __str__(self) -> str:
        where = " (%s)" % self.filename if self.filename else ""
        return "%s: %s%s" % (self.code, self.message, where)


class InsecureFileError(StorageError, PermissionError):
    """A private store file (the secret key) is a symlink, not a regular
    file, or open to group or others: it is not used (nor written through)."""

    code = "INSECURE_FILE"


class CorruptionError(StorageError):
    """Store content failed a check.  ``filename`` names the damaged file."""

    code = "STORAGE_CORRUPT"


class FormatVersionError(StorageError):
    """The store was written by a newer on-disk format version."""

    code = "FORMAT_VERSION"


class SnapshotStaleError(StorageError):
    """A read-only snapshot cannot read what it holds any more: the writer
    truncated the store since it was taken.  Open a new snapshot."""

    code = "SNAPSHOT_STALE"


class StoreNotFoundError(StorageError, FileNotFoundError):
    """No store in the directory and creating one was not asked for."""

    code = "STORE_NOT_FOUND"


class StoreLockedError(StorageError, BlockingIOError):
    """Another core (in this or another process) has the store open."""

    code = "STORE_LOCKED"


class ConfigError(InvalidArgumentError):
    """A configuration file (the gateway's TOML) is unreadable or invalid.

    The message is one line, ``FILE:LINE: FIELD: what is wrong``; ``path``,
    ``line`` (1-based, None if unknown) and ``field`` (dotted, e.g.
    ``device[0].key``) say the same for programs.
    """

    code = "BAD_CONFIG"

    def __init__(self, message: str, path: str, line: Optional[int] = None,
                 field: Optional[str] = None) -> None:
        where = path if line is None else "%s:%d" % (path, line)
        super().__init__(": ".join(p for p in (where, field, message) if p))
        self.path = path
        self.line = line
        self.field = field


class ProtocolError(CoreMachineError, ConnectionError):
    """A replication peer broke Hypercore's protocol: its connection is closed."""

    code = "PROTOCOL"


class HandshakeError(ProtocolError):
    """The Noise handshake failed (a malformed message or an unusable key)."""

    code = "HANDSHAKE_FAILED"


class DecryptError(ProtocolError):
    """An encrypted frame did not authenticate (altered, replayed or misordered)."""

    code = "DECRYPT_FAILED"


class CapabilityError(ProtocolError):
    """A peer opened a core's channel without proving it knows the core key."""

    code = "INVALID_CAPABILITY"


# The C core's error codes (caps.CErrorCode, csrc/cm.h's cm_err) -> exception classes.
C_ERRORS: Dict[int, Type[CoreMachineError]] = {
    CErrorCode.INVALID: InvalidArgumentError,
    CErrorCode.IO: StorageError,
    CErrorCode.CORRUPT: CorruptionError,
    CErrorCode.VERSION: FormatVersionError,
    CErrorCode.NOMEM: StorageError,  # reported as a storage failure with the message
    CErrorCode.RANGE: OutOfRangeError,
    CErrorCode.READONLY: ReadOnlyError,
    CErrorCode.LOCKED: StoreLockedError,
    CErrorCode.BAD_PROOF: InvalidProofError,
    CErrorCode.BAD_SIGNATURE: InvalidSignatureError,
    CErrorCode.DECODE: DecodeError,
    CErrorCode.TOO_LARGE: TooLargeError,
    CErrorCode.NOT_FOUND: StoreNotFoundError,
    CErrorCode.KEY: KeyMismatchError,
    CErrorCode.UNAVAILABLE: BlockNotAvailableError,
    CErrorCode.FORK: ForkError,
    CErrorCode.CLOSED: ClosedError,
    CErrorCode.AUTH: DecryptError,
    CErrorCode.INSECURE: InsecureFileError,
}

# Store file names indexed like csrc/cm.h's cm_file_id (cm_file_names in cm_store.c).
FILE_NAMES = (None, "header", "wal", "tree", "data", "secret_key")


def from_code(code: int, message: str, filename: Optional[str] = None,
              errno: Optional[int] = None) -> CoreMachineError:
    """Build the exception for a C error code."""
    cls = C_ERRORS.get(code, CoreMachineError)
    if issubclass(cls, StorageError):
        return cls(message, filename, errno)
    return cls(message)


def need_bytes(name: str, value: Any, size: Optional[int] = None) -> bytes:
    """``value`` as bytes, or ArgumentTypeError / InvalidArgumentError naming ``name``."""
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise ArgumentTypeError("%s must be bytes, not %s" % (name, type(value).__name__))
    out = bytes(value)
    if size is not None and len(out) != size:
        raise InvalidArgumentError("%s must be %d bytes, not %d" % (name, size, len(out)))
    return out
