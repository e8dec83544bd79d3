"""The tree file: node slots, verified walks from the signed roots, the roots
on open, node queries (docs/format.md, "tree", "Reading").

Twin of csrc/cm_treefile.c.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..encoding import Node
from ..errors import ArgumentTypeError, BlockNotAvailableError, OutOfRangeError
from . import flat
from .crypto import hash_parent, tree_hash
from .store import NODE_SLOT, TREE_NODE, ZERO_NODE, StoreState


def spanning_ancestors(n: int) -> List[int]:
    """Nodes below index 2n-1 whose span reaches past leaf 2n-2 (cut by a
    truncation to n blocks), in increasing order."""
    if n == 0:
        return []
    leaf = 2 * n - 2
    limit = 2 * n - 1
    out = []
    i = leaf
    while True:
        i = flat.parent(i)
        if i < limit and flat.right_span(i) > leaf:
            out.append(i)
        if flat.left_span(i) == 0 and i >= limit:
            break
    return sorted(out)


class TreeFile(StoreState):
    """Reads of the tree file, each verified against the signed roots."""

    def _read_node(self, index: int) -> Optional[Node]:
        if self._overlay is not None:
            decided, node = self._overlay.node(index)
            if decided:
                return node
        raw = self._tree.read(NODE_SLOT, NODE_SLOT * index)
        if len(raw) < NODE_SLOT or raw == ZERO_NODE:
            return None
        size, digest = TREE_NODE.unpack(raw)
        return (index, size, digest)

    def _read_held(self, index: int) -> Node:
        """A node the state says is in the tree file (damage if it is not)."""
        node = self._read_node(index)
        if node is None:
            raise self._damaged("tree node %d is missing" % index, "tree")
        return node

    def _get_node_or_none(self, index: int) -> Optional[Node]:
        for r in self.roots:
            if r[0] == index:
                return r
        return self._read_node(index)

    def _get_node(self, index: int) -> Node:
        node = self._get_node_or_none(index)
        if node is None:
            raise BlockNotAvailableError("tree node %d is not held" % index)
        return node

    def get_node(self, index: int) -> Node:
        self._check_open()
        if index < 0 or index > 2 * self.length - 2 or flat.right_span(index) > 2 * self.length - 2:
            raise OutOfRangeError("node %d is outside a log of %d blocks" % (index, self.length))
        return self._get_node(index)

    def has_node(self, index: int) -> bool:
        self._check_open()
        return self._get_node_or_none(index) is not None

    def _locate(self, index: int) -> Tuple[int, Node]:
        """Verified walk from the root to leaf 2*index: (byte offset, leaf)."""
        self._check_open()
        if not isinstance(index, int):
            raise ArgumentTypeError("index must be an int")
        if index < 0 or index >= self.length:
            raise OutOfRangeError("block %d is outside a log of %d blocks" % (index, self.length))
        if index >= self.contiguous:
            raise BlockNotAvailableError("block %d is not held yet" % index)
        target = 2 * index
        offset = 0
        for node in self.roots:
            if flat.contains(node[0], target):
                break
            offset += node[1]
        while node[0] != target:
            li, ri = flat.left_child(node[0]), flat.right_child(node[0])
            left, right = self._read_node(li), self._read_node(ri)
            if (left is None or right is None or left[1] + right[1] != node[1]
                    or hash_parent(left, right, node[0])[2] != node[2]):
                raise self._damaged("tree node %d does not match its children" % node[0], "tree")
            if target <= flat.right_span(li):
                node = left
            else:
                offset += left[1]
                node = right
        return offset, node

    def _load_roots(self) -> None:
        """Read the roots of ``length`` and check them against the state."""
        roots = [self._read_held(i) for i in flat.full_roots(self.length)]
        if tree_hash(roots) != self._tree_hash or sum(r[1] for r in roots) != self.byte_length:
            raise self._damaged("the roots do not match the committed tree hash", "tree")
        self.roots = roots

    def _prefix_bytes(self, n: int) -> int:
        """Byte length of the first n blocks (n <= contiguous or a writer)."""
        if n == self.length:
            return self.byte_length
        return sum(self._read_held(i)[1] for i in flat.full_roots(n))

    def missing_nodes(self, index: int) -> int:
        self._check_open()
        head = 2 * self.length
        i = 2 * index
        if i >= head:
            return 0
        count = 0
        while not flat.contains(i, head) and not self.has_node(i):
            count += 1
            i = flat.parent(i)
        return count
