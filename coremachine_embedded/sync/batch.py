"""Batched block transfer: a run of blocks for the price of one proof.

A Hypercore proof sends, for each block, the sibling hashes up to a node the
reader already holds - about one 40-byte node per block when catching up in
order, which is most of the traffic for the small blocks a state machine
writes.  Instead the reader asks for an aligned run ``[start, start + count)``
(``count`` a power of two, ``start`` a multiple of it): the server answers with
the normal proof of the first block, which makes the reader hold the node over
the whole run, and with only the *values* of the others.  ``Core.apply_run``
rebuilds the run's tree from the values and stores them if its root equals
that node - one comparison proves them all; a wrong value stores nothing.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence


def is_aligned(start: int, count: int) -> bool:
    return count > 1 and count & (count - 1) == 0 and start % count == 0


class Run:
    """A requested run being assembled from VALUES messages."""

    __slots__ = ("start", "count", "values", "bytes", "first")

    def __init__(self, start: int, count: int) -> None:
        self.start = start
        self.count = count
        self.values: Dict[int, bytes] = {}
        self.bytes = 0   # of the values held
        self.first: Optional[bytes] = None   # the first block's, once its proof is applied

    @property
    def complete(self) -> bool:
        """All values but the first block's (which comes with its own proof)."""
        return len(self.values) == self.count - 1

    def add(self, first: int, values: Sequence[bytes]) -> None:
        start, end, held, added = self.start, self.start + self.count, self.values, 0
        for i, v in enumerate(values, first):
            if start < i < end and i not in held:
                held[i] = v
                added += len(v)
        self.bytes += added

    def wanted(self, need_first: bool) -> bytes:
        """The bitmap a retry asks with (wire.Run.wanted): the values not here
        and, if ``need_first``, the first block's proof."""
        bits = bytearray((self.count + 7) // 8)
        for k in range(self.count):
            if (need_first if k == 0 else self.start + k not in self.values):
                bits[k >> 3] |= 1 << (k & 7)
        return bytes(bits)

    def blocks(self, read: Callable[[int], bytes]) -> List[bytes]:
        """The run's values in order: the first block's as its proof brought it
        (verified), else as ``read(index)`` reads it from the core."""
        first = self.first if self.first is not None else read(self.start)
        return [first] + [self.values[self.start + k] for k in range(1, self.count)]
