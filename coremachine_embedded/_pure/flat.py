"""Flat-tree index math (Bao / hypercore layout): block ``b`` is node ``2b``."""
from __future__ import annotations

from typing import List


def depth(i: int) -> int:
    """Number of trailing one bits of ``i``."""
    return ((i + 1) & -(i + 1)).bit_length() - 1


def offset(i: int) -> int:
    if i & 1 == 0:
        return i >> 1
    d = depth(i)
    return ((i + 1) >> d) - 1 >> 1


def index(d: int, off: int) -> int:
    return (1 + 2 * off) * (1 << d) - 1


def parent(i: int) -> int:
    d = depth(i)
    return index(d + 1, offset(i) >> 1)


def sibling(i: int) -> int:
    d = depth(i)
    return index(d, offset(i) ^ 1)


def left_child(i: int) -> int:
    d = depth(i)
    return index(d - 1, offset(i) << 1)


def right_child(i: int) -> int:
    d = depth(i)
    return index(d - 1, (offset(i) << 1) + 1)


def left_span(i: int) -> int:
    d = depth(i)
    return offset(i) * (2 << d)


def right_span(i: int) -> int:
    d = depth(i)
    return (offset(i) + 1) * (2 << d) - 2


def count_leaves(i: int) -> int:
    return 1 << depth(i)


def contains(i: int, j: int) -> bool:
    """True if node ``j`` lies in the span of node ``i``."""
    return left_span(i) <= j <= right_span(i)


def full_roots(length: int) -> List[int]:
    """Root node indexes of a log of ``length`` blocks, left to right."""
    roots = []
    off = 0
    rest = length
    while rest > 0:
        f = 1 << (rest.bit_length() - 1)
        roots.append(off + f - 1)
        off += 2 * f
        rest -= f
    return roots
