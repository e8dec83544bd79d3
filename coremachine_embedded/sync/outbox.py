"""What goes out to a peer and what comes in pieces: envelope packing and
fragmentation.

Messages queued for a peer are packed into as few envelopes as they fit; an
envelope's messages may take :func:`budget` bytes.  A message larger than
that travels as FRAGMENT messages and is put together again by the receiver's
:class:`Reassembly`, which holds at most :data:`MAX_REASSEMBLY` sets and one
largest message (``wire.MAX_MESSAGE``, at most half the endpoint's memory
budget) per peer, and gives sets back when the endpoint's budget is spent
(memory.py).
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from . import wire
from .counters import Counters
from .memory import FRAGMENT_COST, Memory, SetKey
from .sessions import COOKIE_BYTES, SESSION_BYTES

Message = Tuple[int, bytes]

MAX_QUEUE_BYTES = 4 << 20   # queued outgoing bytes per peer
MAX_REASSEMBLY = 16         # messages being reassembled per peer
COUNTER_BYTES = 9           # a payload's uint counter, at most (0xff + 8 bytes)
PAYLOAD_HEAD = SESSION_BYTES + COUNTER_BYTES + COOKIE_BYTES  # session | counter | echo
FRAGMENT_HEAD = 16          # a FRAGMENT's type, length, id, part and parts, at most


def budget(mtu: int) -> int:
    """Bytes of messages one envelope of ``mtu`` bytes carries."""
    return int(mtu) - wire.OVERHEAD - PAYLOAD_HEAD


def fragments(fid: int, kind: int, body: bytes, budget: int) -> List[bytes]:
    """The FRAGMENT bodies carrying one message too large for an envelope."""
    inner = wire.encode_messages([(kind, body)])
    chunk = budget - FRAGMENT_HEAD
    count = (len(inner) + chunk - 1) // chunk
    return [wire.Fragment(fid, i, count, inner[i * chunk:(i + 1) * chunk]).encode()
            for i in range(count)]


class Outbox:
    """Messages queued for one peer; ``scheduled`` while a flush is due."""

    __slots__ = ("messages", "bytes", "scheduled")

    def __init__(self) -> None:
        self.messages: List[Message] = []
        self.bytes = 0
        self.scheduled = False

    @property
    def full(self) -> bool:
        """More is queued than a peer may have waiting (it floods us)."""
        return self.bytes > MAX_QUEUE_BYTES

    def add(self, kind: int, body: bytes) -> None:
        self.messages.append((kind, body))
        self.bytes += len(body)

    def pack(self, budget: int, full_only: bool = False) -> List[List[Message]]:
        """The queued messages in envelopes of ``budget`` bytes, in order; with
        ``full_only`` the last, unfilled envelope's messages stay queued."""
        envelopes: List[List[Message]] = []
        batch: List[Message] = []
        size = 0
        out, self.messages, self.bytes = self.messages, [], 0
        for kind, body in out:
            n = wire.message_size(body)
            if batch and size + n > budget:
                envelopes.append(batch)
                batch, size = [], 0
            batch.append((kind, body))
            size += n
        if full_only:
            self.messages, self.bytes = batch, sum(len(body) for _, body in batch)
        elif batch:
            envelopes.append(batch)
        return envelopes


class Reassembly:
    """The fragments of one peer's large messages, by (id, parts), counted
    against the endpoint's :class:`~.memory.Memory`."""

    __slots__ = ("sets", "bytes", "memory")

    def __init__(self, memory: Memory) -> None:
        self.sets: "OrderedDict[Tuple[int, int], Dict[int, bytes]]" = OrderedDict()
        self.bytes = 0
        self.memory = memory

    def add(self, frag: wire.Fragment, counters: Counters) -> Optional[bytes]:
        """Keep ``frag``; the whole message once its last part is here."""
        key = (frag.id, frag.parts)
        parts = self.sets.get(key)
        if parts is None:
            parts = self.sets[key] = {}
            while len(self.sets) > MAX_REASSEMBLY:
                self._drop_oldest(counters, "dropped_fragments")
        previous = parts.get(frag.part)
        parts[frag.part] = frag.chunk
        self._count(len(frag.chunk) + FRAGMENT_COST
                    - (len(previous) + FRAGMENT_COST if previous is not None else 0))
        memory = self.memory
        memory.touch((id(self), key), self._drop_key)
        while self.bytes > memory.per_peer_fragments(wire.MAX_MESSAGE):  # one message a peer
            self._drop_oldest(counters, "dropped_oversize")
        memory.reclaim_fragments(counters, keep=(id(self), key))
        if memory.over:   # even alone, this set does not fit
            self._drop(key, counters, "dropped_memory")
        if key not in self.sets or len(parts) < frag.parts:
            return None
        self._drop(key)
        return b"".join(parts[i] for i in range(frag.parts))

    def clear(self) -> None:
        """Give everything back (the peer is gone)."""
        for key in list(self.sets):
            self._drop(key)

    def _count(self, n: int) -> None:
        self.bytes += n
        self.memory.fragments += n

    def _drop_key(self, key: SetKey) -> None:
        """Called by the memory budget reclaiming set ``key`` of ours."""
        self._drop(key[1], forget=False)

    def _drop(self, key: Tuple[int, int], counters: Optional[Counters] = None,
              reason: str = "", forget: bool = True) -> None:
        parts = self.sets.pop(key, None)
        if parts is None:
            return
        self._count(-sum(len(p) + FRAGMENT_COST for p in parts.values()))
        if forget:
            self.memory.forget((id(self), key))
        if counters is not None:
            counters.inc(reason)

    def _drop_oldest(self, counters: Counters, reason: str) -> None:
        self._drop(next(iter(self.sets)), counters, reason)
