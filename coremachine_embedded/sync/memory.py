"""One memory budget for an endpoint: what others can make it hold.

Fragments of messages being put together, proofs and run values waiting
for an earlier block, answers queued for peers and the state of validated
peers (their replay windows, request limits) all count against one limit
(``Endpoint(memory=)``; by default a quarter of the board profile's
``memory.budget_mb``, the board named by ``COREMACHINE_BOARD``).  Over it,
the oldest is given back first: fragment sets least recently added to (they
are someone's unfinished business; an honest set completes within a round
trip), then the least recently seen peers, then the proofs waiting farthest
ahead (asked again later).  While over, new requests are refused
(``dropped_flood``).

Sizes are what the objects cost in CPython (measured with tracemalloc),
not only their payload bytes, so the accounting tracks the resident size.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from .counters import Counters

if TYPE_CHECKING:
    from .peers import Entry

SYNC_SHARE = 4            # the endpoint may hold 1/SYNC_SHARE of the board's memory budget
DEFAULT_BOARD = "generic-linux"
FRAGMENT_COST = 96        # a kept fragment beyond its bytes (bytes object, dict entry)
WINDOW_COST = 256         # a replay window with its key
PEER_COST = 1024          # a peer's state with empty queues...
SERVED_ID_COST = 96       # ...and each request id it remembers
COUNT_PERIOD = 0.1        # seconds between two counts of what is held

SetKey = Tuple[int, Tuple[int, int]]   # (id of a peer's Reassembly, (fragment id, parts))


def default_budget() -> int:
    """Bytes an endpoint may hold: a quarter of the memory budget of the board
    named by ``COREMACHINE_BOARD`` (``generic-linux`` if unset or unknown)."""
    from .. import boards
    name = os.environ.get("COREMACHINE_BOARD") or DEFAULT_BOARD
    try:
        profile = boards.load(name)
    except boards.BoardProfileError:
        profile = boards.load(DEFAULT_BOARD)
    return profile.memory.budget_mb * (1 << 20) // SYNC_SHARE


class Memory:
    """The budget and what is held against it.  Fragments are counted as they
    come and go (they are what a flood of unfinished messages grows);
    everything else is counted on the endpoint's timer (:meth:`count`,
    :attr:`others`)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.fragments = 0   # bytes of fragments kept, all peers
        self.others = 0      # proofs waiting, queued answers, peers and windows at the last count
        self.counted = 0.0   # when (monotonic) that count was made
        # every fragment set in progress, least recently added to first
        self.sets: "OrderedDict[SetKey, Callable[[SetKey], None]]" = OrderedDict()

    @property
    def used(self) -> int:
        return self.fragments + self.others

    @property
    def over(self) -> bool:
        return self.used > self.limit

    def per_peer_fragments(self, largest: int) -> int:
        """Fragment bytes one peer may hold: one largest message, at most
        half the budget."""
        return min(largest, self.limit // 2)

    def touch(self, key: SetKey, drop: Callable[[SetKey], None]) -> None:
        """Set ``key`` got a part (``drop(key)`` gives it back)."""
        self.sets[key] = drop
        self.sets.move_to_end(key)

    def forget(self, key: SetKey) -> None:
        self.sets.pop(key, None)

    def reclaim_fragments(self, counters: Counters, keep: Optional[SetKey] = None) -> None:
        """Drop the fragment sets least recently added to while over budget
        (``keep`` last: the one being added to)."""
        while self.over and self.sets:
            key = next(iter(self.sets))
            if key == keep:
                if len(self.sets) == 1:
                    return
                self.sets.move_to_end(key)
                continue
            drop = self.sets.pop(key)
            drop(key)
            counters.inc("dropped_memory")

    def count(self, now: float, entries: List["Entry"], windows: int,
              counters: Counters) -> None:
        """Once a ``COUNT_PERIOD``, count what the endpoint holds for others
        (its cores' ``entries``, ``windows`` replay windows); over the budget,
        give back the oldest: fragment sets, each core's least recently seen
        peers, then proofs waiting (the core holding the most first)."""
        if now - self.counted <= COUNT_PERIOD:
            return
        self.counted = now
        held = [e.download.held_bytes() for e in entries]
        self.others = sizes(windows, {
            (e.dk, k): p for e in entries for k, p in e.peers.items()}) + sum(held)
        if not self.over:
            return
        self.reclaim_fragments(counters)
        for entry in entries:
            while self.over and len(entry.peers) > 1 and entry.forget_oldest_peer():
                self.others -= PEER_COST
        for _, entry in sorted(zip(held, entries), key=lambda x: -x[0]):
            if self.over:
                self.others -= entry.download.shed(self.used - self.limit)


def sizes(windows: int, peers: Dict[Any, Any]) -> int:
    """What replay windows and peers cost (``peers``: any mapping of peers)."""
    held: int = windows * WINDOW_COST
    for p in peers.values():
        held += PEER_COST + SERVED_ID_COST * len(p.limit.served) + p.outbox.bytes
    return held
