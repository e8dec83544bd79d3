"""The store's shared state: the pure-Python twin of csrc/cm_store.h and
csrc/cm_store.c.

A store (docs/format.md) is written by one ``Log`` object assembled from one
class per concern, each in the module named like its C twin:

    store.py     StoreState  the state, errors, accessors, the signature
    snapshot.py  Overlay     a read-only snapshot's records, kept in memory
    wal.py       Wal         header slots, write-ahead records, commit, replay
    treefile.py  TreeFile    tree file: node I/O, verified walks, roots
    blocks.py    Blocks      verified reads of blocks, proofs
    writer.py    Writer      append, truncate
    replica.py   Replica     apply_proof, apply_run, sanitize on open
    opening.py   Log         opening, creating or snapshotting a store; closing

A class uses only the ones it derives from (the C files' layers).  The pure
backend is the reference model: both write the same files byte for byte.
"""
from __future__ import annotations

import os
import struct
from typing import TYPE_CHECKING, Dict, List, Optional

from ..caps import Durability
from ..encoding import Manifest, Node
from ..errors import ClosedError, CorruptionError, ReadOnlyError, StorageError
from ..storage import File
from .crypto import Verifier, discovery_key

if TYPE_CHECKING:  # a type only: snapshot.py is a layer above
    from .snapshot import Overlay

# The on-disk format (docs/format.md), as csrc/cm_store.h has it.
MAGIC = b"CMEH"
SLOT_SIZE = 4096     # a header slot
BODY_STABLE = 16     # magic, format_version, seq: the same in every format version
BODY_FIXED = 136     # fixed part of a slot body
HF_COMPAT = 1        # header flags
HF_MANIFEST = 2
REC_FIXED = 144      # fixed part of a record payload
RF_TRUNCATE = 1      # record flags
RF_SIGNATURE = 2
RF_MANIFEST = 4
NODE_SLOT = 40       # a node in `tree`: u64 size, hash
TREE_NODE = struct.Struct("<Q32s")    # NODE_SLOT bytes; all zero: absent
ZERO_NODE = bytes(NODE_SLOT)
NODE_ENTRY = 48      # a node in a record: u64 index, u64 size, hash
MAX_RECORD = 256 << 20   # payload bytes accepted on replay


class StoreState:
    """What a store holds in memory (csrc/cm_store.h's struct cm_core)."""

    # options
    durability: Durability
    _checkpoint_bytes: int
    _max_block: int
    # files
    _dir: Optional[str]
    _files: List[File]
    _header: File
    _wal: File
    _tree: File
    _data: File
    _closed: bool
    _failed: Optional[BaseException]   # a write failed: memory and files may differ
    _readonly: bool                    # a snapshot: no lock, no write, records in _overlay
    _overlay: Optional["Overlay"]
    # identity
    key: bytes
    manifest: Optional[bytes]
    _flags: int
    _verifier: Verifier
    _secret_key: Optional[bytes]       # signs the state lazily
    _writer_store: bool                # has a secret_key file (a snapshot may not read it)
    # state
    fork: int
    length: int
    contiguous: int
    byte_length: int
    _contig_bytes: int                 # byte length of blocks 0..contiguous-1
    _tree_hash: bytes
    roots: List[Node]
    _sig: Optional[bytes]
    # header and write-ahead file (wal.py)
    _header_seq: int
    _generation: int
    _wal_offset: int
    _seq: int
    _prev_crc: int
    _durable_count: int
    _unsynced: bool
    recovery: Dict[str, int]

    def _path(self, name: str) -> str:
        """What errors name a store file by: its path for a directory store."""
        return os.path.join(self._dir, name) if self._dir else name

    def _damaged(self, message: str, name: str) -> CorruptionError:
        """A CorruptionError naming the store file."""
        return CorruptionError(message, self._path(name))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the core is closed")
        if self._failed is not None:
            raise StorageError("the core stopped after an I/O error (%s); reopen it"
                               % self._failed)

    def _check_writer(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError("this core is a read-only snapshot")
        if self._secret_key is None:
            raise ReadOnlyError("this core was opened without its secret key")

    def _set_state(self, fork: int, length: int, contiguous: int, byte_length: int,
                   digest: bytes, signature: Optional[bytes]) -> None:
        self.fork = fork
        self.length = length
        self.contiguous = contiguous
        self.byte_length = byte_length
        self._tree_hash = digest
        self._sig = signature or None

    def _learn_manifest(self, manifest: bytes) -> None:
        self._verifier = Verifier(self.key, manifest)
        self.manifest = manifest
        self._flags |= HF_MANIFEST

    @property
    def writable(self) -> bool:
        return self._secret_key is not None and not self._readonly

    @property
    def readonly(self) -> bool:
        return self._readonly

    @property
    def compat(self) -> bool:
        return not self._flags & HF_MANIFEST

    @property
    def discovery_key(self) -> bytes:
        return discovery_key(self.key)

    @property
    def public_key(self) -> bytes:
        if self.manifest is not None:
            return Manifest.decode(self.manifest).signers[0][1]
        return self.key

    def tree_hash(self) -> bytes:
        return self._tree_hash

    def signature(self) -> Optional[bytes]:
        self._check_open()
        if self._sig is None and self._secret_key is not None and (self.length or self.fork):
            self._sig = self._verifier.sign(self._secret_key, self._tree_hash, self.length,
                                            self.fork)
        return self._sig
