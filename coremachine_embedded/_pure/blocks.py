"""Verified reads of blocks (get, get_range) and proofs (a block with its
Merkle path) (docs/format.md, "Reading").

Twin of csrc/cm_blocks.c (with the signature a writer hands out).
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..errors import ArgumentTypeError, BlockNotAvailableError, OutOfRangeError
from . import proof
from .crypto import hash_leaf
from .treefile import TreeFile
from .wal import Wal


class Blocks(Wal, TreeFile):
    """Blocks read from the data file at offsets the verified walk computes."""

    def signature(self) -> Optional[bytes]:
        """A writer hands out only signatures of durable states: a state it
        could lose in a power cut and sign differently afterwards would
        contradict what it published.  So the wal is synced first (one
        fdatasync, batch or none durability only), and the tree and data
        files get what write-behind holds (no sync): if the wal is lost
        later, they show that records were there (opening re-forks)."""
        if self._secret_key is not None:
            if self._unsynced:
                self.flush()
            for f in (self._tree, self._data):
                held_back = getattr(f, "flush", None)   # optional: write-behind only
                if held_back is not None:
                    held_back()
        return super().signature()

    def block_size(self, index: int) -> int:
        return self._locate(index)[1][1]

    def _read_data(self, size: int, offset: int) -> bytes:
        """Data bytes as the state has them (under a snapshot's overlay)."""
        if self._overlay is not None:
            return self._overlay.read_data(self._data, size, offset)
        return self._data.read(size, offset)

    def get(self, index: int) -> bytes:
        offset, leaf = self._locate(index)
        data = self._read_data(leaf[1], offset)
        if len(data) != leaf[1] or hash_leaf(index, data)[2] != leaf[2]:
            raise self._damaged("block %d does not match its tree node" % index, "data")
        return data

    def get_range(self, start: int, end: int) -> List[bytes]:
        self._check_open()
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int):
                raise ArgumentTypeError("%s must be an int" % name)
        if start < 0 or end < start:
            raise OutOfRangeError("blocks %d to %d: the end is before the start" % (start, end))
        if end > self.length:
            raise OutOfRangeError("blocks %d to %d are outside a log of %d blocks"
                                  % (start, end, self.length))
        if end > self.contiguous:
            raise BlockNotAvailableError("blocks %d to %d are not all held yet" % (start, end))
        return [self.get(i) for i in range(start, end)]

    def proof(self, request: int = 0, block: Optional[int] = None, nodes: int = 0,
              upgrade: Optional[Tuple[int, int]] = None, manifest: bool = False) -> bytes:
        self._check_open()
        sig = (self.signature() or b"") if upgrade is not None else b""
        man = self.manifest if manifest and not self.compat else None
        msg = proof.build(self._get_node, self.length, self.fork, sig,
                          None if block is None else (block, b"", nodes), upgrade, request, man)
        if msg.block is not None:
            index = msg.block[0]
            if index >= self.contiguous:
                raise BlockNotAvailableError("block %d is not held" % index)
            msg.block = (index, self.get(index), msg.block[2])
        return msg.encode()
