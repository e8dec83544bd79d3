"""The overlay of a read-only snapshot (docs/format.md, "Read-only snapshots").

A snapshot never writes: the write-ahead records since the last checkpoint are
not applied to the tree and data files but kept here, and reads look here
first.  That also covers a writer that has written a record but not applied it
yet.  Twin of csrc/cm_snapshot.c.
"""
from __future__ import annotations

import bisect
from typing import Dict, List, Optional, Sequence, Tuple

from ..encoding import Node
from ..storage import File

_NO_LIMIT = 1 << 64


class Overlay:
    """What the records read so far wrote: node slots by index (None: zeroed
    by a truncation) and data segments, over what was cut by truncations."""

    def __init__(self) -> None:
        self.nodes: Dict[int, Optional[Node]] = {}
        self.tree_limit = _NO_LIMIT   # slots at or past it were cut (unless in nodes)
        self.segments: List[Tuple[int, bytes]] = []   # (offset, bytes), disjoint
        self.data_limit = _NO_LIMIT   # bytes at or past it were cut (unless in segments)
        self.records = 0
        self._starts: List[int] = []

    def apply(self, truncate: bool, tree_truncate: int, data_truncate: int,
              clear: Sequence[int], nodes: Sequence[Node], data_offset: int,
              data: bytes) -> None:
        """Keep what one record writes to the tree and data files."""
        if truncate:
            self.nodes = {i: n for i, n in self.nodes.items() if i < tree_truncate}
            self.tree_limit = min(self.tree_limit, tree_truncate)
            self.segments = [(off, seg[:data_truncate - off]) for off, seg in self.segments
                             if off < data_truncate]
            self.data_limit = min(self.data_limit, data_truncate)
            for i in clear:
                self.nodes[i] = None
        for node in nodes:
            self.nodes[node[0]] = (node[0], node[1], node[2])
        if data:
            self.segments.append((data_offset, data))
        self.records += 1

    def seal(self) -> None:
        """After the last record: sort the segments for lookups."""
        self.segments.sort(key=lambda s: s[0])
        self._starts = [off for off, _ in self.segments]

    def node(self, index: int) -> Tuple[bool, Optional[Node]]:
        """(True, the node or None if absent) if the overlay decides node
        ``index``, (False, None) if the tree file does."""
        if index in self.nodes:
            return True, self.nodes[index]
        if index >= self.tree_limit:
            return True, None
        return False, None

    def read_data(self, data: File, size: int, offset: int) -> bytes:
        """Bytes [offset, offset+size) as the snapshot has them; bytes nothing
        covers read as zero (their hash then fails)."""
        from_file = max(0, min(size, self.data_limit - offset))
        buf = bytearray(data.read(from_file, offset) if from_file else b"")
        buf.extend(bytes(size - len(buf)))
        i = max(0, bisect.bisect_right(self._starts, offset) - 1)
        while i < len(self.segments) and self.segments[i][0] < offset + size:
            start, seg = self.segments[i]
            a, b = max(start, offset), min(start + len(seg), offset + size)
            if a < b:
                buf[a - offset:b - offset] = seg[a - start:b - start]
            i += 1
        return bytes(buf)
