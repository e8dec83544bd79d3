"""Serving a core: the answers to requests and runs, what to announce and
when, and how many requests one peer may make.

Independent of the carrier and of the envelope: the datagram
:class:`~coremachine_embedded.sync.endpoint.Endpoint` uses it, and so can a
peer on a reliable stream (Hypercore's own protocol).  An answer is a list of
``(message type, body)`` for the peer that asked, and whether to tell that
peer our state afterwards (it asked on the wrong fork, or for what we lack)::

    limit = RequestLimit()                         # one per peer
    if limit.admit(req.id, rate, congested, counters):
        answer = answer_request(core, req, counters)
        send(answer.messages); if answer.resync is not None: send(announcement(...))

A DATA answer is exactly what :meth:`Core.proof` builds (a Hypercore ``data``
message), so the same bytes serve UDP, serial and Hypercore peers.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, List, NamedTuple, Optional, Tuple

from .. import errors
from ..core import Core, CoreChange
from . import wire
from .counters import Counters

log = logging.getLogger("coremachine_embedded.sync")

Message = Tuple[int, bytes]

REQUEST_RATE = 4000.0  # requests (a run counts as one) served per second per peer...
REQUEST_BURST = 1024   # ...after a burst of this many; beyond: dropped_flood
SERVED_IDS = 256       # request ids remembered per peer, so a duplicate is answered once
VALUES_HEAD = 32       # a VALUES message's type, length, request, first and count, at most
VALUE_HEAD = 4         # the length before each value, at most (for values under 64 KiB)
PUSH_ROOM = 64         # room a push leaves in its envelope for the SYNC and RANGE after it

# NoData reasons (Hypercore's noData), the same for a REQUEST and a RUN:
# what this core does not hold (or cannot prove) is not available; a request
# on another fork, or of a kind not served (hash, seek), is invalid.
NOT_AVAILABLE = 1
INVALID_REQUEST = 2

_PROOF_REFUSED = (errors.OutOfRangeError, errors.BlockNotAvailableError,
                  errors.InvalidArgumentError)


class Answer(NamedTuple):
    """Messages for the peer that asked; with ``resync`` not None, tell it our
    state afterwards (True: even if it was told already)."""

    messages: List[Message]
    resync: Optional[bool] = None


def announcement(core: Core, remote_length: int, downloading: bool) -> List[Message]:
    """What tells a peer our state: SYNC (fork, signed length, the length we
    know it has) and RANGE (the blocks we hold from 0)."""
    return [(wire.SYNC, wire.Sync(core.fork, core.length, max(0, remote_length),
                                  downloading=downloading,
                                  has_manifest=core.manifest is not None).encode()),
            (wire.RANGE, wire.Range(0, core.contiguous_length).encode())]


def push(core: Core, peer_fork: int, peer_length: int, room: int) -> Optional[bytes]:
    """What a live peer holding our first ``peer_length`` blocks would ask for
    next, unasked (request id ``wire.PUSHED``): the upgrade to our signed length
    with the first new block, to go ahead of the SYNC in one envelope of
    ``room`` bytes - a live update costs one envelope, no request, no round
    trip.  The caller then takes the peer to hold our length (the SYNC says
    so); a peer that cannot use it (it lacks blocks, or is asking already)
    drops it unverified and its answer to the SYNC puts us right.  None if we
    cannot prove it (the peer is on another fork or not behind, we lack the
    block) or it does not fit."""
    if peer_fork != core.fork or not 0 < peer_length < core.length or \
            core.contiguous_length < core.length:
        return None
    try:
        proof = core.proof(block=peer_length, upgrade=(peer_length, core.length - peer_length),
                           request=wire.PUSHED)
    except _PROOF_REFUSED:
        return None
    return proof if wire.message_size(proof) <= room - PUSH_ROOM else None


def answer_request(core: Core, req: wire.Request, counters: Counters) -> Answer:
    """A Hypercore request: DATA (the proof of a block and/or an upgrade) or
    NO_DATA (hash and seek requests are refused, as is a request on another
    fork without an upgrade)."""
    if req.hash is not None or req.seek is not None or (
            req.fork != core.fork and req.upgrade is None):
        return _no_data(req.id, INVALID_REQUEST, True)
    try:
        proof = core.proof(block=None if req.block is None else req.block[0],
                           nodes=0 if req.block is None else req.block[1],
                           upgrade=req.upgrade, manifest=req.manifest, request=req.id)
    except _PROOF_REFUSED as e:
        counters.inc("requests_refused")
        log.debug("request %r refused: %s", req, e)
        return _no_data(req.id, NOT_AVAILABLE, False)
    counters.inc("requests_served")
    return Answer([(wire.DATA, proof)])


def _no_data(request: int, reason: int, resync: Optional[bool]) -> Answer:
    return Answer([(wire.NO_DATA, wire.NoData(request, reason).encode())], resync)


def answer_run(core: Core, run: wire.Run, counters: Counters, budget: int) -> Answer:
    """A batched run: the DATA of its first block, then VALUES with the values
    of the others (on a retry only what ``run.wanted`` names), each VALUES
    filling at most ``budget`` bytes."""
    if run.fork != core.fork:
        return _no_data(run.id, INVALID_REQUEST, True)
    if run.start + run.size > core.contiguous_length:
        counters.inc("requests_refused")
        return _no_data(run.id, NOT_AVAILABLE, True)
    messages: List[Message] = []
    if run.wants(0):
        try:
            messages.append((wire.DATA, core.proof(block=run.start, nodes=run.nodes,
                                                   request=run.id)))
        except _PROOF_REFUSED as e:
            counters.inc("requests_refused")
            log.debug("run %r refused: %s", run, e)
            return _no_data(run.id, NOT_AVAILABLE, None)
    counters.inc("requests_served")
    messages.extend(_values(core, run, budget - VALUES_HEAD))
    return Answer(messages)


def _values(core: Core, run: wire.Run, room: int) -> List[Message]:
    """VALUES messages of at most ``room`` bytes each with the values of the
    run's blocks after the first that it wants, each message contiguous."""
    start, wanted = run.start, run.wanted
    blocks = core.get_range(start, start + run.size)  # one verified subtree read
    out: List[Message] = []
    values: List[bytes] = []
    first = size = 0
    for k in range(1, run.size + 1):   # (k == size: past the end, to send what is left)
        wants = k < run.size and (wanted is None or wanted[k >> 3] >> (k & 7) & 1)
        value = blocks[k] if wants else None
        if values and (value is None or size + len(value) + VALUE_HEAD > room):
            out.append((wire.VALUES, wire.Values(run.id, first, values).encode()))
            values, size = [], 0
        if value is not None:
            if not values:
                first = start + k
            values.append(value)
            size += len(value) + VALUE_HEAD
    return out


class RequestLimit:
    """How many requests one peer may make: a token bucket (one flooding
    peer cannot take the server), and the ids answered already (a retry sent
    twice, a duplicated datagram is not answered again)."""

    __slots__ = ("tokens", "tokens_at", "served")

    def __init__(self) -> None:
        self.tokens = float(REQUEST_BURST)
        self.tokens_at = time.monotonic()
        self.served: "OrderedDict[int, None]" = OrderedDict()

    def admit(self, request: int, rate: float, congested: bool, counters: Counters) -> bool:
        """Whether to answer ``request`` (``rate`` per second after the
        burst; none while the peer's answers are ``congested``)."""
        if request in self.served:
            counters.inc("duplicates")
            return False
        self.served[request] = None
        if len(self.served) > SERVED_IDS:
            self.served.popitem(last=False)
        now = time.monotonic()
        self.tokens = min(REQUEST_BURST, self.tokens + (now - self.tokens_at) * rate)
        self.tokens_at = now
        if congested or self.tokens < 1:
            counters.inc("dropped_flood")
            return False
        self.tokens -= 1
        return True


def watch(core: Core, loop: asyncio.AbstractEventLoop,
          callback: Callable[[], None]) -> Callable[[], None]:
    """Call ``callback()`` on ``loop`` after the core changed (appends,
    truncations, stored proofs, from any thread), once for any number of
    changes since the last call: the moment to announce.  Call it on the
    loop's thread.  Returns a function that stops watching."""
    pending = False
    loop_thread = threading.get_ident()

    def fire() -> None:
        nonlocal pending
        pending = False
        callback()

    def changed(change: CoreChange) -> None:
        nonlocal pending
        if not pending:
            pending = True
            if threading.get_ident() == loop_thread:
                loop.call_soon(fire)   # no wake-up write needed
            else:
                loop.call_soon_threadsafe(fire)
    return core.on_change(changed)
