"""What an endpoint keeps: per core (an :class:`Entry`: its peers and the
state of pulling it) and per remote endpoint that proved its address (a
:class:`Peer`: its cookie, session, queues, limits and round-trip time),
and what it tells of the peer a core is pulled from (:class:`SourceStatus`).

A peer is known by its link and source address, and by the random session
id of its envelopes there; a new session at the same address is a new peer
(the remote restarted).  An entry keeps at most :data:`MAX_PEERS_PER_CORE`
peers, the least recently seen given up first, never the source it pulls
from.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from .. import errors
from ..core import Core
from . import flow, serving, sessions, wire
from .congestion import LinkWindow
from .counters import Counters
from .download import Download
from .memory import Memory
from .outbox import Message, Outbox, Reassembly

MAX_PEERS_PER_CORE = 256
NO_COOKIE = bytes(sessions.COOKIE_BYTES)


class SourceStatus(NamedTuple):
    """The peer a core is pulled from, as last heard (see :meth:`Endpoint.source_status`)."""

    length: int                   # its signed length (-1: not heard yet)
    fork: int
    last_seen: Optional[float]    # time.monotonic() of its last valid envelope (None: never)
    caught_up: bool               # this replica held its signed length at least once


def open_envelope(entries: Dict[bytes, "Entry"], own_session: bytes, data: bytes,
                  c: Counters) -> Optional[Tuple["Entry", wire.Payload]]:
    """Count ``data`` and open it: its core's entry and its payload, or None
    (dropped and counted: not an envelope, a core not in ``entries``, not
    sealed with its key, malformed, or sent with ``own_session``: ours)."""
    c.inc("rx_envelopes")
    c.inc("rx_bytes", len(data))
    dk = wire.peek(data)
    if dk is None:
        c.inc("dropped_malformed")
        return None
    entry = entries.get(dk)
    if entry is None:
        c.inc("dropped_unknown_core")
        return None
    plain = wire.unseal(entry.wire_key, data)
    if plain is None:
        c.inc("dropped_auth")
        return None
    try:
        payload = wire.decode_payload(plain)
    except errors.CoreMachineError:
        c.inc("dropped_malformed")
        return None
    if payload.session == own_session:
        c.inc("dropped_own")  # our own envelope, looped back
        return None
    return entry, payload


_ORIGINS: Dict[Tuple[int, Any], bytes] = {}   # origin()'s memo: it runs for every envelope


def origin(link: Any, addr: Any) -> bytes:
    """Where an envelope came from, as address validation binds cookies to it."""
    key = (id(link), addr)
    where = _ORIGINS.get(key)
    if where is None:
        if len(_ORIGINS) >= sessions.MAX_SESSIONS:
            _ORIGINS.clear()
        where = _ORIGINS[key] = ("%d %r" % key).encode()
    return where


class Pulled(NamedTuple):
    """How a pull ended: the replica holds signed ``length`` at ``fork``; the
    peer at ``peer`` proved, with the writer's signature, signed length
    ``proved`` at that fork (at most ``length``)."""

    peer: Any
    fork: int
    length: int
    proved: int


class Peer:
    """A remote endpoint as seen by one core."""

    def __init__(self, link: Any, addr: Any, session: bytes, memory: Memory) -> None:
        self.link = link
        self.addr = addr
        self.session = session
        self.echo = NO_COOKIE        # the cookie it gave us
        self.live = False            # it pulls: tell it about new lengths
        self.serves = False
        self.last_seen = time.monotonic()
        self.fork = -1               # its state, from SYNC/RANGE
        self.length = -1
        self.contiguous = 0
        self.told: Optional[Tuple[int, int]] = None  # (fork, length) we last sent it
        self.outbox = Outbox()
        self.reassembly = Reassembly(memory)
        self.limit = serving.RequestLimit()
        self.rtt = flow.Rtt()
        self.hello_sent = 0.0
        self.hellos = 0              # HELLOs sent since it last answered one
        self.last_answer = 0.0       # its last DATA or VALUES (or our first ask after none)
        self.window: Optional[LinkWindow] = None   # its link's, once pulled from (Endpoint)

    @property
    def ready(self) -> bool:
        """We know its cookie: what we send it passes its address validation."""
        return self.echo != NO_COOKIE


class Entry:
    """A core at an endpoint, its peers, and the state of pulling it."""

    def __init__(self, core: Core, download: Download) -> None:
        self.core = core
        self.dk = core.discovery_key
        self.wire_key = wire.wire_key(core.key)
        self.peers: "OrderedDict[Tuple[int, Any], Peer]" = OrderedDict()
        self.download = download
        self.retries = flow.Retries()
        self.pulling = False
        self.live = False
        self.source: Optional[Tuple[Any, Any]] = None     # (link, addr) we pull from
        self.caught_up = asyncio.Event()
        self.unsubscribe: Optional[Callable[[], None]] = None
        self.last_keepalive = 0.0
        self.next_check = 0.0      # monotonic: the timer need not look before this
        self._announced: Tuple[Any, List[Message]] = (None, [])

    def announcement(self) -> List[Message]:
        """Our state for a peer we keep nothing of (the same until it changes)."""
        core = self.core
        state = (core.fork, core.length, core.contiguous_length, core.manifest is not None,
                 self.pulling)
        if self._announced[0] != state:
            self._announced = (state, serving.announcement(core, 0, self.pulling))
        return self._announced[1]

    def report_progress(self, progress: Optional[Callable[[int, int], None]]) -> None:
        """Call ``progress(contiguous length, source's signed length)`` as
        blocks arrive (None: stop)."""
        if progress is None:
            self.download.on_progress = None
            return

        def report(contiguous: int) -> None:
            peer = self.source_peer()
            progress(contiguous, max(0, peer.length if peer else 0))
        self.download.on_progress = report

    def source_status(self) -> SourceStatus:
        """What the peer it is pulled from last said."""
        peer = self.source_peer()
        if peer is None or not peer.session:
            return SourceStatus(-1, -1, None, False)
        return SourceStatus(peer.length, peer.fork, peer.last_seen, self.caught_up.is_set())

    def visited(self, now: float) -> bool:
        """After the endpoint's timer looked at it: when to look next
        (deadlines are an RTO or more away: a quarter of it is soon enough);
        False if nothing is pending."""
        peer = self.source_peer()
        self.next_check = now + max(flow.TICK_BUSY, peer.rtt.rto() / 4 if peer else 0.0)
        return self.pending()

    def pending(self) -> bool:
        """Does pulling it need the endpoint's fine timer: requests in flight,
        or a greeting whose retry is due sooner than the next sweep?"""
        if not self.pulling:
            return False
        if self.download.busy:
            return True
        peer = self.source_peer()
        if peer is None:
            return True
        return (not peer.ready or peer.length < 0) and \
            flow.hello_backoff(peer.hellos) < flow.SWEEP

    def source_peer(self) -> Optional[Peer]:
        source = self.source
        return None if source is None else self.peers.get((id(source[0]), source[1]))

    def peer(self, link: Any, addr: Any, session: bytes, memory: Memory) -> Tuple[Peer, bool]:
        """The peer at a validated address, and whether this session is new there."""
        key = (id(link), addr)
        old = self.peers.get(key)
        first = old is None or old.session != session
        if old is None or first:
            peer = Peer(link, addr, session, memory)
            if old is not None:
                old.reassembly.clear()
                if not old.session:  # our greeting's placeholder answered: a first RTT
                    peer.hello_sent, peer.hellos = old.hello_sent, old.hellos
                elif self.source_peer() is old:
                    self.download.restart()  # the source restarted: ask it all again
                    self.next_check = 0.0
            self.peers[key] = peer
            while len(self.peers) > MAX_PEERS_PER_CORE and self.forget_oldest_peer():
                pass
        else:
            peer = old
        self.peers.move_to_end(key)
        peer.last_seen = time.monotonic()
        return peer, first

    def forget_oldest_peer(self) -> bool:
        """Drop the least recently seen peer (never the source)."""
        source = self.source_peer()
        for key, peer in self.peers.items():
            if peer is not source:
                del self.peers[key]
                peer.reassembly.clear()
                return True
        return False
