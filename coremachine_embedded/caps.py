"""The constants both backends share, each mirroring its C twin in csrc/cm.h
(``CM_X`` here is ``X``): format and wire versions, limits, flags, error codes,
durability modes; the namespaces.  ``tests/unit/test_constants.py`` reads cm.h
and fails on any difference, so cm.h is the one place a number is decided.

The namespaces are Hypercore's ``namespace('hypercore', 6)``:
``H(H("hypercore") || byte(i))`` with BLAKE2b-256.
"""
from __future__ import annotations

import enum
import hashlib
from typing import Tuple, Union

#: On-disk store format (docs/format.md); separate from the package version.
FORMAT_VERSION = 2
FORMAT_OLDEST = 1              # the oldest on-disk format opened (and migrated)
#: Version byte of a sync envelope (docs/protocol.md; no C twin: sync is Python).
WIRE_VERSION = 1


def namespace(name: bytes, count: int) -> Tuple[bytes, ...]:
    """hypercore-crypto's ``namespace(name, count)``."""
    base = hashlib.blake2b(name, digest_size=32).digest()
    return tuple(hashlib.blake2b(base + bytes([i]), digest_size=32).digest()
                 for i in range(count))


(NS_TREE, NS_REPLICATE_INITIATOR, NS_REPLICATE_RESPONDER, NS_MANIFEST,
 NS_DEFAULT, NS_ENCRYPTION) = namespace(b"hypercore", 6)

EMPTY_TREE_HASH = hashlib.blake2b(b"\x02", digest_size=32).digest()

# Limits
DEFAULT_CHECKPOINT_BYTES = 1 << 20
DEFAULT_MAX_BLOCK = 15 << 20
MAX_APPEND_BYTES = 64 << 20     # in one append call
MAX_APPEND_BLOCKS = 1 << 20     # in one append call
MAX_LENGTH = 1 << 62            # a log's length
MAX_RUN = 256                   # blocks in one apply_run (and one RUN request)
MAX_MANIFEST = 1024             # encoded bytes
MAX_SIGNATURE = 1024            # encoded bytes
MAX_SIGNERS = 16
MAX_PROOF_NODES = 64            # per node array in a message
MAX_ROOTS = 64
MAX_NODE_INDEX = 1 << 62        # a node index a proof may carry is below this
MAX_NODE_SIZE = 1 << 63         # a node size a proof may carry is below this
MAX_BLOCK_INDEX = 1 << 61       # a block index (or upgrade end) a proof may reach
MAX_TABLE_CELLS = 1 << 24       # cells of a transition table
SIGNABLE_MAX = 112              # bytes of a signable
AEAD_KEY = 32                   # XChaCha20-Poly1305 key, nonce and tag sizes
AEAD_NONCE = 24
AEAD_TAG = 16
NOISE_DHLEN = 32                # Hypercore's replication stream: Noise DH output...
NOISE_TAG = 16                  # ...and ChaCha20-Poly1305 tag
SS_KEY = 32                     # secret-stream: key, header, per-message overhead...
SS_HEADER = 24
SS_ABYTES = 17                  # (tag byte + Poly1305 tag)
SS_FRAME_PREFIX = 3             # ...uint24 LE frame length...
SS_MAX_BODY = (1 << 24) - 1     # ...and the largest frame body it can announce

# Flags of the injectable file interface (storage.py, cm_io)
IO_CREATE = 1                   # create the file if it is missing
IO_PRIVATE = 2                  # create it with mode 0600
IO_READONLY = 4                 # open it for reading only (a read-only snapshot)


class CErrorCode:
    """The C core's error codes (``cm_err`` without ``CM_ERR_``);
    ``errors.C_ERRORS`` maps each to its exception class.  (Plain ints, not an
    enum: an enum class costs a millisecond at every import.)"""

    INVALID = -1
    IO = -2
    CORRUPT = -3
    VERSION = -4
    NOMEM = -5
    RANGE = -6
    READONLY = -7
    LOCKED = -8
    BAD_PROOF = -9
    BAD_SIGNATURE = -10
    DECODE = -11
    TOO_LARGE = -12
    NOT_FOUND = -13
    KEY = -14
    UNAVAILABLE = -15
    FORK = -16
    CLOSED = -17
    AUTH = -18
    INSECURE = -19


class Durability(str, enum.Enum):
    """When an append is durable (``cm_durability``, in its order):

    ``sync``: when it returns (one fdatasync); ``batch``: after ``flush()``
    (group commit); ``none``: at checkpoints and close.  A member equals its
    string, which is what the API edge (``Core``, the CLI, board profiles)
    accepts."""

    SYNC = "sync"
    BATCH = "batch"
    NONE = "none"

    @property
    def code(self) -> int:
        """The ``cm_durability`` value."""
        return _DURABILITY_ORDER.index(self)

    @classmethod
    def parse(cls, value: Union[str, "Durability"]) -> "Durability":
        """``value`` (a member or its string) as a member; the errors name the modes."""
        if type(value) is cls:
            return value  # the common case (every Core() that does not name one)
        from .errors import ArgumentTypeError, InvalidArgumentError
        if not isinstance(value, str):
            raise ArgumentTypeError("durability must be a string, not %s"
                                    % type(value).__name__)
        try:
            return cls(value)
        except ValueError:
            raise InvalidArgumentError("durability must be one of %s, not %r"
                                       % (", ".join(d.value for d in cls), value)) from None

    def __str__(self) -> str:
        return self.value


_DURABILITY_ORDER = tuple(Durability)
