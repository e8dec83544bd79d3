"""Constants shared by both backends: format versions, namespaces, limits.

The namespaces are Hypercore's ``namespace('hypercore', 6)``:
``H(H("hypercore") || byte(i))`` with BLAKE2b-256.
"""
from __future__ import annotations

import hashlib
from typing import Tuple

#: On-disk store format (docs/format.md); separate from the package version.
FORMAT_VERSION = 1


def namespace(name: bytes, count: int) -> Tuple[bytes, ...]:
    """hypercore-crypto's ``namespace(name, count)``."""
    base = hashlib.blake2b(name, digest_size=32).digest()
    return tuple(hashlib.blake2b(base + bytes([i]), digest_size=32).digest()
                 for i in range(count))


(NS_TREE, NS_REPLICATE_INITIATOR, NS_REPLICATE_RESPONDER, NS_MANIFEST,
 NS_DEFAULT, NS_ENCRYPTION) = namespace(b"hypercore", 6)

EMPTY_TREE_HASH = hashlib.blake2b(b"\x02", digest_size=32).digest()

#: Limits (csrc/cm.h has the same numbers).
DEFAULT_CHECKPOINT_BYTES = 1 << 20
DEFAULT_MAX_BLOCK = 15 << 20
MAX_APPEND_BYTES = 64 << 20
MAX_APPEND_BLOCKS = 1 << 20
MAX_MANIFEST = 1024
MAX_SIGNATURE = 1024
MAX_SIGNERS = 16
MAX_PROOF_NODES = 64
MAX_ROOTS = 64

DURABILITY = ("sync", "batch", "none")
