"""A writer's operations: append and truncate, each one write-ahead record
(docs/format.md, "Commit protocol").

Twin of csrc/cm_writer.c.
"""
from __future__ import annotations

from typing import List, Sequence

from .. import caps
from ..encoding import Node
from ..errors import InvalidArgumentError, OutOfRangeError, TooLargeError
from . import flat
from .crypto import hash_leaf, hash_parent, tree_hash
from .store import RF_TRUNCATE
from .treefile import TreeFile, spanning_ancestors
from .wal import Wal


class Writer(Wal, TreeFile):
    """Appends and truncations of a core that holds its secret key."""

    def append(self, blocks: Sequence[bytes]) -> int:
        self._check_writer()
        if not blocks:
            return self.length
        if len(blocks) > caps.MAX_APPEND_BLOCKS:
            raise TooLargeError("%d blocks in one append (at most %d)"
                                % (len(blocks), caps.MAX_APPEND_BLOCKS))
        total = 0
        for b in blocks:
            if len(b) > self._max_block:
                raise TooLargeError("block of %d bytes (at most %d)" % (len(b), self._max_block))
            total += len(b)
        if total > caps.MAX_APPEND_BYTES:
            raise TooLargeError("%d bytes in one append (at most %d)"
                                % (total, caps.MAX_APPEND_BYTES))
        roots = list(self.roots)
        nodes: List[Node] = []
        index = self.length
        for b in blocks:
            leaf = hash_leaf(index, b)
            index += 1
            nodes.append(leaf)
            roots.append(leaf)
            while len(roots) >= 2 and flat.sibling(roots[-1][0]) == roots[-2][0]:
                parent = hash_parent(roots[-2], roots[-1], flat.parent(roots[-1][0]))
                del roots[-2:]
                roots.append(parent)
                nodes.append(parent)
        digest = tree_hash(roots)
        byte_length = self.byte_length + total
        self._commit(0, self.fork, index, index, byte_length, digest, nodes=nodes,
                     data_offset=self.byte_length, data=b"".join(blocks))
        self.roots = roots
        self._contig_bytes = byte_length
        self._maybe_checkpoint()
        return index

    def truncate(self, length: int, fork: int) -> None:
        self._check_writer()
        if length < 0 or length > self.length:
            raise OutOfRangeError("cannot truncate a log of %d blocks to %d"
                                  % (self.length, length))
        if fork <= self.fork:
            raise InvalidArgumentError("the new fork must be greater than %d" % self.fork)
        roots = [self._get_node(i) for i in flat.full_roots(length)]
        byte_length = sum(r[1] for r in roots)
        self._commit(RF_TRUNCATE, fork, length, length, byte_length, tree_hash(roots),
                     tree_truncate=2 * length - 1 if length else 0, data_truncate=byte_length,
                     clear=spanning_ancestors(length))
        self.roots = roots
        self._contig_bytes = byte_length
        # The new fork goes into the header at once: losing wal bytes later can
        # never take the store back to the fork it signed before (format 2).
        self._checkpoint()
