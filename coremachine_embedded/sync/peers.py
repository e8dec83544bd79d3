"""What an endpoint keeps: per core (an :class:`Entry`: its peers and the
state of pulling it) and per remote endpoint (a :class:`Peer`: its cookie,
session, queues, limits and round-trip time), and what it tells of the peer
a core is pulled from (:class:`SourceStatus`).
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, Callable, NamedTuple, Optional, Tuple

from ..core import Core
from . import flow, serving, sessions, wire
from .download import Download
from .outbox import Outbox, Reassembly

MAX_PEERS_PER_CORE = 256
NO_COOKIE = bytes(sessions.COOKIE_BYTES)


class SourceStatus(NamedTuple):
    """The peer a core is pulled from, as last heard (see :meth:`Endpoint.source_status`)."""

    length: int                   # its signed length (-1: not heard yet)
    fork: int
    last_seen: Optional[float]    # time.monotonic() of its last valid envelope (None: never)
    caught_up: bool               # this replica held its signed length at least once


class Peer:
    """A remote endpoint as seen by one core."""

    def __init__(self, link: Any, addr: Any, session: bytes) -> None:
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
        self.reassembly = Reassembly()
        self.limit = serving.RequestLimit()
        self.rtt = flow.Rtt()
        self.hello_sent = 0.0
        self.hellos = 0              # HELLOs sent since it last answered one
        self.last_answer = 0.0       # when it last sent us a DATA or VALUES

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

    def source_peer(self) -> Optional[Peer]:
        if self.source is None:
            return None
        return self.peers.get((id(self.source[0]), self.source[1]))
