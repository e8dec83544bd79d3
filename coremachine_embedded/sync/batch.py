"""Batched block transfer: a run of blocks for the price of one proof.

A Hypercore proof sends, for each block, the sibling hashes up to a node the
reader already holds - about one 40-byte node per block when catching up in
order, which is most of the traffic for the small blocks a state machine writes.
Here the reader asks for an aligned run ``[start, start + count)`` (``count`` a
power of two, ``start`` a multiple of it): the server answers with the normal
proof of the first block and only the *values* of the others.  Every node
inside the run's subtree can be computed from those values, so the reader
builds, for each later block, the proof the server would have sent (the
siblings up to a node it holds) and gives it to ``Core.apply_proof`` - which
verifies it like any proof.  Nothing here is trusted: a wrong value makes a
synthesised proof fail, and the run is fetched again block by block.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

from .. import _backend
from ..encoding import DataMessage, Node

_impl = _backend.impl


def is_aligned(start: int, count: int) -> bool:
    return count > 0 and count & (count - 1) == 0 and start % count == 0


def subtree_nodes(start: int, values: Sequence[bytes]) -> Dict[int, Node]:
    """Every tree node whose span lies inside blocks ``[start, start+len(values))``,
    computed from the values (leaves, then parents of complete pairs)."""
    nodes: Dict[int, Node] = {}
    level: List[Node] = [_impl.hash_leaf(start + i, v) for i, v in enumerate(values)]
    for n in level:
        nodes[n[0]] = n
    depth = 0
    while len(level) > 1:
        nxt = []
        for k in range(0, len(level) - 1, 2):
            a, b = level[k], level[k + 1]
            bit = 1 << (depth + 1)
            if a[0] ^ bit != b[0]:     # not siblings (unaligned edge): stop pairing here
                break
            parent: Node = _impl.hash_parent(a, b, (a[0] | (bit >> 1)) & ~bit)
            nodes[parent[0]] = parent
            nxt.append(parent)
        level = nxt
        depth += 1
    return nodes


def synthesize(index: int, value: bytes, fork: int, known: Dict[int, Node],
               has_node: Callable[[int], bool], head: int) -> Optional[bytes]:
    """The data message proving block ``index`` from ``known`` nodes (its run's
    subtree) up to the first node the store holds; None if a needed sibling
    is not known (its value has not arrived)."""
    x = 2 * index
    path: List[Node] = []
    depth = 0
    while not has_node(x):
        bit = 1 << (depth + 1)
        if x + (bit >> 1) - 1 >= head:     # past the signed tree: cannot be proven here
            return None
        sibling = known.get(x ^ bit)
        if sibling is None:
            return None
        path.append(sibling)
        x = (x | (bit >> 1)) & ~bit
        depth += 1
    return DataMessage(0, fork, block=(index, value, path)).encode()


class Run:
    """A requested run of blocks being assembled from VALUES messages."""

    __slots__ = ("start", "count", "values", "nodes")

    def __init__(self, start: int, count: int) -> None:
        self.start = start
        self.count = count
        self.values: Dict[int, bytes] = {}
        self.nodes: Optional[Dict[int, Node]] = None

    @property
    def complete(self) -> bool:
        return len(self.values) == self.count

    def add(self, first: int, values: Sequence[bytes]) -> None:
        for k, v in enumerate(values):
            i = first + k
            if self.start <= i < self.start + self.count:
                self.values[i] = v

    def proofs(self, fork: int, has_node: Callable[[int], bool],
               head: int) -> List[Tuple[int, Optional[bytes]]]:
        """(index, synthesised proof or None) for every block of the run but
        the first, in order; call once ``complete``."""
        if self.nodes is None:
            self.nodes = subtree_nodes(self.start, [self.values[self.start + k]
                                                    for k in range(self.count)])
        out = []
        for i in range(self.start + 1, self.start + self.count):
            out.append((i, synthesize(i, self.values[i], fork, self.nodes, has_node, head)))
        return out
