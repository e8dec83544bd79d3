"""The replicator: what to request, what to serve, how to verify and store -
independent of the carrier (UDP datagrams, serial frames, anything with
``await start(on_receive)``, ``send(envelope, addr)``, ``mtu`` and
``frame_seconds``, the line time of a full envelope).

DEV NOTES.  An :class:`Endpoint` holds cores (by discovery key) and links.
Every envelope is authenticated with the core's wire key; inside, a peer is
known by its random session id.  A peer proves freshness by echoing the
cookie we gave it in a HELLO (``BLAKE2b(key=secret, session || dk)``, the
secret rotating every few minutes), and each session has a 64-message replay
window, so replayed envelopes do nothing.

Serving: SYNC answers SYNC (fork, signed length), REQUEST answers DATA (a
Hypercore proof built by the core) or NO_DATA; appends are announced to peers
that pull live.  Pulling: learn the remote length (SYNC), fetch the signed tree
(an upgrade proof), then request blocks in a window, each asking for just the
tree nodes that neither the store nor an earlier in-flight proof provides.
Proofs arriving ahead of the next needed block wait in a bounded buffer.  A
request is retried at once when the answer to a later one arrives first (it
or its answer was lost), otherwise after a timeout, with backoff.  Nothing is
stored that the core did not verify (``Core.apply_proof``).
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import threading
import time
from collections import OrderedDict
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Set, Tuple

from .. import errors
from ..core import Core, CoreChange
from ..encoding import Reader
from . import batch, wire

log = logging.getLogger("coremachine_embedded.sync")

COOKIE_EPOCH = 300.0          # seconds a cookie secret lives (two are accepted)
MAX_SESSIONS = 4096           # replay windows kept per endpoint
MAX_PEERS_PER_CORE = 256
MAX_QUEUE_BYTES = 4 << 20     # queued outgoing bytes per peer
MAX_REASSEMBLY = 16           # messages being reassembled per peer
REQUEST_RATE = 4000.0        # requests (a run counts as one) served per second per peer...
REQUEST_BURST = 1024         # ...after a burst of this many; beyond: dropped_flood
SERVED_IDS = 256             # request ids remembered per peer, so a duplicate is answered once
RUN_ENVELOPES = 4            # a batched run's values fill about this many envelopes
WAITING = 8                   # blocks received and waiting for earlier ones: x window
MIN_RTO, MAX_RTO = 0.01, 3.0  # retry timeout bounds (seconds), adaptive in between
TICK_BUSY, TICK_IDLE = 0.005, 0.05  # timer period with requests in flight / without
SWEEP = 0.5                   # seconds between visits of every pull (keepalives)
HELLO_FIRST, HELLO_MAX = 0.05, 1.0  # seconds between HELLOs to a silent source: doubling
KEEPALIVE = 2.0               # a live pull SYNCs a source quiet for this long
PEER_TIMEOUT = 60.0           # a live puller that was silent this long gets no announcements


class Counters(Dict[str, int]):
    """Counts of what an endpoint did and why it dropped things."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n


class SourceStatus(NamedTuple):
    """The peer a core is pulled from, as last heard (see :meth:`Endpoint.source_status`)."""

    length: int                   # its signed length (-1: not heard yet)
    fork: int
    last_seen: Optional[float]    # time.monotonic() of its last valid envelope (None: never)
    caught_up: bool               # this replica held its signed length at least once


class _Window:
    """Anti-replay window of one remote session: the highest counter seen and a
    bitmap of the 64 below it."""

    __slots__ = ("high", "mask", "cookies", "epoch")

    def __init__(self) -> None:
        self.high = -1
        self.mask = 0
        self.cookies: Tuple[bytes, ...] = ()  # the cookies it may echo...
        self.epoch = -1                       # ...under the secrets of this epoch

    def accept(self, counter: int) -> bool:
        if counter > self.high:
            shift = counter - self.high
            self.mask = ((self.mask << shift) | 1) & ((1 << 64) - 1) if shift < 64 else 1
            self.high = counter
            return True
        behind = self.high - counter
        if behind >= 64 or self.mask >> behind & 1:
            return False
        self.mask |= 1 << behind
        return True


class _Peer:
    """A remote endpoint as seen by one core."""

    def __init__(self, link: Any, addr: Any, session: bytes) -> None:
        self.link = link
        self.addr = addr
        self.session = session
        self.echo = bytes(8)         # the cookie it gave us
        self.live = False            # it pulls: tell it about new lengths
        self.serves = False
        self.last_seen = time.monotonic()
        self.fork = -1               # its state, from SYNC/RANGE
        self.length = -1
        self.contiguous = 0
        self.told: Optional[Tuple[int, int]] = None  # (fork, length) we last sent it
        self.out: List[Tuple[int, bytes]] = []
        self.out_bytes = 0
        self.fragments: "OrderedDict[Tuple[int, int], Dict[int, bytes]]" = OrderedDict()
        self.fragment_bytes = 0
        self.tokens = float(REQUEST_BURST)
        self.tokens_at = time.monotonic()
        self.srtt = 0.2              # a guess until the first sample
        self.rttvar = 0.1
        self.rtt_sampled = False
        self.hello_sent = 0.0
        self.hellos = 0              # HELLOs sent since it last answered one
        self.last_answer = 0.0       # when it last sent us a DATA or VALUES
        self.served: "OrderedDict[int, None]" = OrderedDict()  # its last request ids we answered

    @property
    def ready(self) -> bool:
        return self.echo != bytes(8)

    def rto(self) -> float:
        return min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def sample_rtt(self, rtt: float) -> None:
        if not self.rtt_sampled:  # the first sample replaces the guess (RFC 6298)
            self.rtt_sampled = True
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
        self.srtt = 0.875 * self.srtt + 0.125 * rtt


class _Req:
    __slots__ = ("id", "index", "upgrade", "sent", "tries", "nodes", "deadline", "run", "missing",
                 "prev_id", "prev_sent")

    def __init__(self, rid: int, index: Optional[int], upgrade: Optional[Tuple[int, int]],
                 nodes: List[int], run: Optional[batch.Run] = None) -> None:
        self.id = rid
        self.index = index
        self.upgrade = upgrade
        self.sent = 0.0
        self.tries = 0
        self.nodes = nodes       # tree nodes this request's proof will bring
        self.deadline = 0.0
        self.run = run           # a batched run starting at index
        self.missing = self.size  # blocks of the answer not here yet (0: it waits for an earlier block)
        self.prev_id, self.prev_sent = 0, 0.0   # the transmission before this one

    def sent_at(self, rid: int) -> Optional[float]:
        """When the transmission answered by ``rid`` went out: each has its
        own id, so a late answer to the one before a retry is still an RTT
        sample (Karn's ambiguity does not arise)."""
        if rid == self.id:
            return self.sent
        return self.prev_sent if rid == self.prev_id and self.prev_id else None

    @property
    def size(self) -> int:
        return 1 if self.run is None else self.run.count


class _Entry:
    """A core at an endpoint, and the state of pulling it."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.key = core.key
        self.dk = core.discovery_key
        self.wire_key = wire.wire_key(core.key)
        self.peers: "OrderedDict[Tuple[int, Any], _Peer]" = OrderedDict()
        self.pulling = False
        self.live = False
        self.source: Optional[Tuple[Any, Any]] = None     # (link, addr) we pull from
        self.inflight: Dict[int, _Req] = {}                # by (first) block index
        self.held = 0                                      # blocks those requests cover
        self.flight = 0                                    # ...and are not here yet
        self.upgrade: Optional[_Req] = None
        self.ahead: Dict[int, bytes] = {}                  # proofs waiting for earlier blocks
        self.promised: Dict[int, int] = {}                 # node -> in-flight proofs bringing it
        self.next = 0
        self.caught_up = asyncio.Event()
        self.progress: Optional[Callable[[int, int], None]] = None
        self.unsubscribe: Optional[Callable[[], None]] = None
        self.announce_pending = False
        self.lost_scan = 0.0                               # _lost_before looked up to here
        self.last_keepalive = 0.0


class Endpoint:
    """Serves and pulls cores over one or more links.

    :param window: blocks requested and not received yet, per pulled core
        (received ones waiting for an earlier block may hold ``WAITING`` times more).
    :param max_run: blocks per batched run a puller asks for (1 turns runs off).
    :param request_rate: requests per second served to one peer (a run counts as
        one), after a burst of ``REQUEST_BURST``; beyond that they are dropped
        and counted as ``dropped_flood``.
    """

    def __init__(self, window: int = 256, max_run: int = 64,
                 request_rate: float = REQUEST_RATE) -> None:
        self.window = window
        self.request_rate = request_rate
        self.max_run = max(1, min(max_run, wire.MAX_RUN))
        self.counters = Counters()
        self.session = os.urandom(8)
        self._counter = 0
        self._secrets = [os.urandom(32), os.urandom(32)]
        self._epoch = 0                  # bumped when the secrets rotate
        self._secret_time = time.monotonic()
        self._entries: Dict[bytes, _Entry] = {}
        self._windows: "OrderedDict[Tuple[bytes, bytes], _Window]" = OrderedDict()
        self._links: List[Any] = []
        self._next_id = 1
        self._frag_id = 1
        self._flush_scheduled: Set[Tuple[int, Any, bytes]] = set()
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._timer: Optional["asyncio.Task[None]"] = None
        self._active: Set[_Entry] = set()    # pulls the timer visits every tick

    # --- setup ----------------------------------------------------------------------

    async def attach(self, link: Any) -> None:
        """Start a link and route what it receives here."""
        self._loop = asyncio.get_running_loop()
        self._links.append(link)
        await link.start(lambda data, addr: self.receive(link, data, addr))
        if self._timer is None:
            self._timer = self._loop.create_task(self._tick())

    def serve(self, core: Core) -> None:
        """Answer requests for ``core`` from anyone who knows its key."""
        self._entry(core)

    def _entry(self, core: Core) -> _Entry:
        dk = core.discovery_key
        entry = self._entries.get(dk)
        if entry is not None and entry.core is not core:
            raise errors.InvalidArgumentError("this endpoint already has a core with this key")
        if entry is None:
            entry = self._entries[dk] = _Entry(core)
            loop = self._loop or asyncio.get_running_loop()
            self._loop = loop
            loop_thread = threading.get_ident()

            def changed(change: CoreChange) -> None:
                if not entry.announce_pending:
                    entry.announce_pending = True
                    if threading.get_ident() == loop_thread:
                        loop.call_soon(self._announce, entry)   # no wake-up write needed
                    else:
                        loop.call_soon_threadsafe(self._announce, entry)
            entry.unsubscribe = core.on_change(changed)
        return entry

    async def pull(self, core: Core, link: Any, addr: Any = None, *, live: bool = False,
                   progress: Optional[Callable[[int, int], None]] = None) -> None:
        """Pull ``core`` from the peer at ``addr`` on ``link`` until this replica
        holds the peer's signed length; with ``live``, keep following until
        cancelled.  The core keeps serving what it holds."""
        entry = self._entry(core)
        entry.pulling = True
        entry.live = live
        entry.source = (link, addr)
        entry.progress = progress
        entry.caught_up.clear()
        entry.next = core.contiguous_length
        self._active.add(entry)
        self._hello(entry, link, addr)
        try:
            if live:
                await asyncio.Event().wait()
            await entry.caught_up.wait()
        finally:
            if not live:
                entry.pulling = False

    def remove(self, core: Core) -> None:
        """Stop serving and pulling ``core`` here (a task awaiting its
        :meth:`pull` is the caller's to cancel); its peers are forgotten."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core:
            return
        del self._entries[entry.dk]
        self._active.discard(entry)
        if entry.unsubscribe:
            entry.unsubscribe()
        entry.pulling = False
        entry.inflight.clear()
        entry.ahead.clear()

    def ping(self, core: Core) -> bool:
        """Ask the peer ``core`` is pulled from for an answer now (a HELLO,
        which it answers with its SYNC), so that :meth:`source_status` shows
        whether an idle source is still there.  False if not pulled here."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core or not entry.pulling or entry.source is None:
            return False
        link, addr = entry.source
        self._hello(entry, link, addr, self._source_peer(entry))
        return True

    def source_status(self, core: Core) -> Optional[SourceStatus]:
        """What the peer ``core`` is pulled from last said, or None if it is
        not pulled here."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core or not entry.pulling:
            return None
        peer = self._source_peer(entry)
        if peer is None or not peer.session:
            return SourceStatus(-1, -1, None, False)
        return SourceStatus(peer.length, peer.fork, peer.last_seen,
                            entry.caught_up.is_set())

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for entry in self._entries.values():
            if entry.unsubscribe:
                entry.unsubscribe()
        for link in self._links:
            await link.close()
        self._links = []

    # --- receiving -------------------------------------------------------------------

    def receive(self, link: Any, data: bytes, addr: Any) -> None:
        """One envelope from ``addr`` on ``link``; everything invalid is dropped and counted."""
        c = self.counters
        c.inc("rx_envelopes")
        c.inc("rx_bytes", len(data))
        dk = wire.peek(data)
        if dk is None:
            c.inc("dropped_malformed")
            return
        entry = self._entries.get(dk)
        if entry is None:
            c.inc("dropped_unknown_core")
            return
        plain = wire.unseal(entry.wire_key, data)
        if plain is None:
            c.inc("dropped_auth")
            return
        try:
            payload = wire.decode_payload(plain)
        except errors.CoreMachineError:
            c.inc("dropped_malformed")
            return
        if payload.session == self.session:
            c.inc("dropped_own")  # our own envelope, looped back
            return
        window = self._windows.get((dk, payload.session))
        if window is None:
            window = self._windows[(dk, payload.session)] = _Window()
            while len(self._windows) > MAX_SESSIONS:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end((dk, payload.session))
        if not window.accept(payload.counter):
            c.inc("dropped_replay")
            return
        if window.epoch != self._epoch:  # computed once per secret rotation
            window.cookies = tuple(self._cookie(payload.session, dk, s) for s in self._secrets)
            window.epoch = self._epoch
        fresh = payload.echo in window.cookies
        if not fresh and all(kind != wire.HELLO for kind, _ in payload.messages):
            # No state for a sender that does not know our cookie (so that many
            # addresses cannot push honest peers out): tell it the cookie, forget it.
            c.inc("dropped_stale_cookie")
            peer = entry.peers.get((id(link), addr))
            if peer is None or peer.session != payload.session:
                peer = _Peer(link, addr, payload.session)
            if time.monotonic() - peer.hello_sent > 0.2:
                self._hello(entry, link, addr, peer)
            return
        peer = self._peer(entry, link, addr, payload.session)
        for kind, body in payload.messages:
            if kind != wire.HELLO and not fresh:
                continue
            try:
                self._handle(entry, peer, kind, body)
            except errors.CoreMachineError as e:
                c.inc("dropped_malformed")
                log.debug("bad %d message from %r: %s", kind, addr, e)
        if not fresh:
            # It greeted us without our current cookie: answer at once (the
            # exchange ends when both echo right).
            self._hello(entry, link, addr, peer)
        self._pump(entry)

    def _peer(self, entry: _Entry, link: Any, addr: Any, session: bytes) -> _Peer:
        key = (id(link), addr)
        peer = entry.peers.get(key)
        if peer is None or peer.session != session:
            fresh = _Peer(link, addr, session)
            if peer is not None and not peer.session:  # our greeting's placeholder
                fresh.hello_sent, fresh.hellos = peer.hello_sent, peer.hellos
            elif peer is not None:  # the peer restarted: keep nothing but its address
                self._forget_source_state(entry, key)
            peer = fresh
            entry.peers[key] = peer
            while len(entry.peers) > MAX_PEERS_PER_CORE:
                entry.peers.popitem(last=False)
        entry.peers.move_to_end(key)
        peer.last_seen = time.monotonic()
        return peer

    def _forget_source_state(self, entry: _Entry, key: Tuple[int, Any]) -> None:
        if entry.source is not None and (id(entry.source[0]), entry.source[1]) == key:
            entry.upgrade = None
            for req in list(entry.inflight.values()):
                req.deadline = 0.0  # resend at once to the new session

    def _cookie(self, session: bytes, dk: bytes, secret: bytes) -> bytes:
        return hashlib.blake2b(session + dk, digest_size=8, key=secret).digest()

    def _handle(self, entry: _Entry, peer: _Peer, kind: int, body: bytes) -> None:
        msg = wire.decode_message(kind, body)
        if kind == wire.HELLO:
            if peer.hellos == 1:  # the answer to our only HELLO: a first RTT (Karn)
                peer.sample_rtt(time.monotonic() - peer.hello_sent)
            peer.hellos = 0
            peer.echo = msg.cookie
            peer.live = bool(msg.flags & wire.HELLO_PULL)
            peer.serves = bool(msg.flags & wire.HELLO_SERVE)
            self._send_sync(entry, peer, force=True)
        elif kind == wire.SYNC:
            peer.fork, peer.length = msg.fork, msg.length
            if msg.downloading:
                peer.live = True
            if (msg.remote_length, msg.fork) != (entry.core.length, entry.core.fork) or \
                    peer.told != (entry.core.fork, entry.core.length):
                # a wrong remote length: our last SYNC to it was lost - send it again
                self._send_sync(entry, peer, force=msg.remote_length != entry.core.length)
        elif kind == wire.RANGE:
            if not msg.drop and msg.start == 0:
                peer.contiguous = msg.length
        elif kind == wire.REQUEST:
            self._serve_request(entry, peer, msg)
        elif kind == wire.DATA:
            peer.last_answer = time.monotonic()
            self._on_data(entry, peer, body)
        elif kind == wire.NO_DATA:
            self._on_no_data(entry, peer, msg)
        elif kind == wire.FRAGMENT:
            self._on_fragment(entry, peer, msg)
        elif kind == wire.RUN:
            self._serve_run(entry, peer, msg)
        elif kind == wire.VALUES:
            peer.last_answer = time.monotonic()
            self._on_values(entry, peer, msg)

    # --- serving ---------------------------------------------------------------------

    def _send_sync(self, entry: _Entry, peer: _Peer, force: bool = False) -> None:
        core = entry.core
        state = (core.fork, core.length)
        if not force and peer.told == state:
            return
        peer.told = state
        self._queue(entry, peer, wire.SYNC, wire.Sync(
            core.fork, core.length, max(0, peer.length), downloading=entry.pulling,
            has_manifest=core.manifest is not None).encode())
        self._queue(entry, peer, wire.RANGE, wire.Range(0, core.contiguous_length).encode())

    def _admit(self, peer: _Peer, request: int) -> bool:
        """A token bucket per peer: one flooding peer cannot take the server.
        A request id answered already (a retry sent twice, a duplicated
        datagram) is not answered again."""
        if request in peer.served:
            self.counters.inc("duplicates")
            return False
        peer.served[request] = None
        if len(peer.served) > SERVED_IDS:
            peer.served.popitem(last=False)
        now = time.monotonic()
        peer.tokens = min(REQUEST_BURST, peer.tokens + (now - peer.tokens_at) * self.request_rate)
        peer.tokens_at = now
        if peer.out_bytes > MAX_QUEUE_BYTES or peer.tokens < 1:
            self.counters.inc("dropped_flood")
            return False
        peer.tokens -= 1
        return True

    def _serve_request(self, entry: _Entry, peer: _Peer, req: wire.Request) -> None:
        core = entry.core
        if not self._admit(peer, req.id):
            return
        if req.hash is not None or req.seek is not None or (
                req.fork != core.fork and req.upgrade is None):
            self._queue(entry, peer, wire.NO_DATA, wire.NoData(req.id, 2).encode())
            self._send_sync(entry, peer, force=True)
            return
        try:
            proof = core.proof(block=None if req.block is None else req.block[0],
                               nodes=0 if req.block is None else req.block[1],
                               upgrade=req.upgrade, manifest=req.manifest, request=req.id)
        except (errors.OutOfRangeError, errors.BlockNotAvailableError,
                errors.InvalidArgumentError) as e:
            self.counters.inc("requests_refused")
            log.debug("request %r refused: %s", req, e)
            self._queue(entry, peer, wire.NO_DATA, wire.NoData(req.id, 1).encode())
            self._send_sync(entry, peer)
            return
        self.counters.inc("requests_served")
        self._queue(entry, peer, wire.DATA, proof)

    def _serve_run(self, entry: _Entry, peer: _Peer, run: wire.Run) -> None:
        """A run: the DATA of its first block, then the values of the others
        (on a retry only what ``run.wanted`` names), packed into as few
        envelopes as they fit."""
        core = entry.core
        if not self._admit(peer, run.id):
            return
        if run.fork != core.fork or run.start + run.size > core.contiguous_length:
            self.counters.inc("requests_refused")
            self._queue(entry, peer, wire.NO_DATA, wire.NoData(run.id, 1).encode())
            self._send_sync(entry, peer, force=True)
            return
        if run.wants(0):
            try:
                proof = core.proof(block=run.start, nodes=run.nodes, request=run.id)
            except (errors.OutOfRangeError, errors.BlockNotAvailableError,
                    errors.InvalidArgumentError):
                self.counters.inc("requests_refused")
                self._queue(entry, peer, wire.NO_DATA, wire.NoData(run.id, 2).encode())
                return
            self._queue(entry, peer, wire.DATA, proof)
        self.counters.inc("requests_served")
        budget = self._budget(peer.link) - 32
        blocks = core.get_range(run.start, run.start + run.size)  # one verified subtree read
        first, size = run.start + 1, 0
        values: List[bytes] = []
        for i in range(run.start + 1, run.start + run.size + 1):
            k = i - run.start
            value = blocks[k] if k < run.size and run.wants(k) else None
            if values and (value is None or size + len(value) + 4 > budget):
                self._queue(entry, peer, wire.VALUES, wire.Values(run.id, first, values).encode())
                values, size = [], 0
            if value is not None:
                if not values:
                    first = i
                values.append(value)
                size += len(value) + 4

    def _announce(self, entry: _Entry) -> None:
        entry.announce_pending = False
        now = time.monotonic()
        for peer in list(entry.peers.values()):
            if peer.live and peer.ready and now - peer.last_seen < PEER_TIMEOUT:
                self._send_sync(entry, peer)
        self._pump(entry)

    # --- pulling ---------------------------------------------------------------------

    def _source_peer(self, entry: _Entry) -> Optional[_Peer]:
        if entry.source is None:
            return None
        return entry.peers.get((id(entry.source[0]), entry.source[1]))

    def _hello(self, entry: _Entry, link: Any, addr: Any, peer: Optional[_Peer] = None) -> None:
        flags = wire.HELLO_SERVE | (wire.HELLO_PULL if entry.pulling else 0)
        if peer is None:
            key = (id(link), addr)
            peer = entry.peers.get(key)
            if peer is None:
                peer = entry.peers[key] = _Peer(link, addr, b"")
        peer.hello_sent = time.monotonic()
        peer.hellos += 1
        session = peer.session or bytes(8)
        self._queue(entry, peer, wire.HELLO,
                    wire.Hello(flags, self._cookie(session, entry.dk, self._secrets[0])).encode())

    def _request(self, entry: _Entry, peer: _Peer, req: _Req, manifest: bool = False,
                 lost: bool = False) -> None:
        rid = self._next_id
        self._next_id += 1
        req.prev_id, req.prev_sent = req.id, req.sent
        req.id = rid
        self._active.add(entry)
        req.tries += 1
        req.sent = time.monotonic()
        # back off after a timeout (the peer may be gone or swamped), not after a loss
        req.deadline = req.sent + peer.rto() * (1 if lost else 2 ** min(req.tries - 1, 4))
        if req.run is not None:
            run, core = req.run, entry.core
            # a retry asks only for what is missing
            need_first = core.contiguous_length <= run.start and run.start not in entry.ahead
            wanted = run.wanted(need_first) if req.tries > 1 else None
            body = wire.Run(rid, core.fork, run.start, run.count, len(req.nodes) // 2,
                            wanted).encode()
            self._queue(entry, peer, wire.RUN, body)
            if req.tries > 1:  # a retry goes in two envelopes: one loss does not cost another round
                self._flush(entry, peer, (id(peer.link), peer.addr, entry.dk))
                self._queue(entry, peer, wire.RUN, body)
            return
        if req.index is None:
            block = None
        else:  # with an upgrade the prover picks the path; alone, ask for our levels
            block = (req.index, 0 if req.upgrade else len(req.nodes) // 2)
        self._queue(entry, peer, wire.REQUEST, wire.Request(
            rid, entry.core.fork, block=block, upgrade=req.upgrade, manifest=manifest).encode())

    def _run_size(self, entry: _Entry, peer: _Peer, start: int) -> int:
        """The largest aligned run at ``start`` whose values fill a few envelopes."""
        core = entry.core
        average = max(1, core.byte_length // max(1, core.length))
        limit = max(1, min(self.max_run, RUN_ENVELOPES * self._budget(peer.link) // average))
        size = 1
        while (size * 2 <= limit and start % (size * 2) == 0
               and start + size * 2 <= core.length):
            size *= 2
        return size

    def _plan_nodes(self, entry: _Entry, index: int) -> List[int]:
        """Levels above leaf 2*index that neither the store nor an in-flight
        proof provides: the nodes this block's proof will bring (per level,
        the node on the path and its sibling)."""
        levels = entry.core._log.missing_nodes(index)  # what the store lacks (C)
        promised = entry.promised
        nodes = []
        x = 2 * index
        for depth in range(levels):
            if x in promised:
                break
            bit = 1 << (depth + 1)
            nodes.append(x)
            nodes.append(x ^ bit)                   # sibling
            x = (x | (bit >> 1)) & ~bit             # parent
        return nodes

    def _promise(self, entry: _Entry, nodes: List[int], delta: int) -> None:
        for n in nodes:
            left = entry.promised.get(n, 0) + delta
            if left > 0:
                entry.promised[n] = left
            else:
                entry.promised.pop(n, None)

    def _pump(self, entry: _Entry) -> None:
        """Send whatever requests pulling ``entry`` needs now."""
        if not entry.pulling:
            return
        peer = self._source_peer(entry)
        if peer is None or not peer.ready or peer.length < 0:
            return
        core = entry.core
        behind = peer.fork > core.fork or (peer.fork == core.fork and peer.length > core.length)
        if behind and entry.upgrade is None:
            start = core.length if peer.fork == core.fork else 0
            req = _Req(0, None, (start, peer.length - start), [])
            # Live following: ask for the first new block with the upgrade.
            if start == core.length == core.contiguous_length and not entry.inflight:
                req.index = start
            entry.upgrade = req
            self._request(entry, peer, req, manifest=core.manifest is None)
        if behind or entry.upgrade is not None:
            return
        if entry.next < core.contiguous_length:
            entry.next = core.contiguous_length
        while (entry.flight < self.window and entry.held < WAITING * self.window
               and entry.next < core.length):
            i = entry.next
            if i in entry.inflight or i in entry.ahead:
                entry.next += entry.inflight[i].size if i in entry.inflight else 1
                continue
            size = self._run_size(entry, peer, i) if self.max_run > 1 else 1
            req = _Req(0, i, None, self._plan_nodes(entry, i),
                       batch.Run(i, size) if size > 1 else None)
            entry.next += size
            entry.flight += size
            entry.held += size
            self._promise(entry, req.nodes, +1)
            entry.inflight[i] = req
            self._request(entry, peer, req)
        self._check_caught_up(entry, peer)

    def _check_caught_up(self, entry: _Entry, peer: _Peer) -> None:
        core = entry.core
        if (core.fork == peer.fork and core.length >= peer.length
                and core.contiguous_length >= core.length and entry.upgrade is None):
            if not entry.caught_up.is_set():
                entry.caught_up.set()
                # What pull() returns on is durable; a live pull's later updates
                # are as durable as the core's setting makes them (batch: within
                # its flush interval) - not one fdatasync per update.
                try:
                    core.flush()
                except errors.CoreMachineError:
                    pass

    def _on_data(self, entry: _Entry, peer: _Peer, body: bytes) -> None:
        core = entry.core
        if not entry.pulling or core.writable:
            self.counters.inc("dropped_unsolicited")
            return
        up = entry.upgrade
        try:
            msg = _peek_data(body)
        except errors.DecodeError:
            self.counters.inc("dropped_malformed")
            return
        index, has_upgrade, rid = msg
        if has_upgrade:
            if up is None:  # a late answer to a retried upgrade: we have it already
                self.counters.inc("duplicates")
                return
            sent = up.sent_at(rid)
            if sent is not None:
                peer.sample_rtt(time.monotonic() - sent)
            self._apply(entry, body, upgrade=True)
            return
        if index is None:
            self.counters.inc("dropped_unsolicited")
            return
        req = entry.inflight.get(index)
        sent = req.sent_at(rid) if req is not None else None
        if sent is not None:
            peer.sample_rtt(time.monotonic() - sent)
        if index < core.contiguous_length:
            self.counters.inc("duplicates")
            return
        if index > core.contiguous_length:
            if req is None or index in entry.ahead:
                self.counters.inc("duplicates" if index in entry.ahead else "dropped_unsolicited")
                return
            entry.ahead[index] = body
            self._mark(entry, req)
            if rid == req.id:
                self._lost_before(entry, req.sent)
            return
        self._apply(entry, body)

    def _lost_before(self, entry: _Entry, sent: float) -> None:
        """The answer to a request sent at ``sent`` came: the unanswered ones
        sent before it were lost (or their answers were) - retry them now
        rather than after a timeout."""
        peer = self._source_peer(entry)
        if peer is None or sent <= entry.lost_scan:
            return  # whatever was sent before that was looked at (and retried) already
        entry.lost_scan = sent
        for req in [r for r in entry.inflight.values() if r.sent < sent and r.missing]:
            self._retry(entry, peer, req, lost=True)

    def _mark(self, entry: _Entry, req: _Req) -> None:
        """Recount ``req.missing``, the blocks of its answer not here yet (a
        proof waiting at the contiguous length waits for nothing: missing);
        ``entry.flight``, their sum, is what the window bounds."""
        index, contiguous = req.index, entry.core.contiguous_length
        assert index is not None
        here = index > contiguous and index in entry.ahead or (
            req.run is not None and index < contiguous)
        missing = 0 if here else 1
        if req.run is not None:
            missing += req.run.count - 1 - len(req.run.values)
        entry.flight += missing - req.missing
        req.missing = missing

    def _retry(self, entry: _Entry, peer: _Peer, req: _Req, lost: bool = False) -> None:
        self.counters.inc("retries")
        if not req.nodes:
            req.nodes = self._plan_nodes(entry, req.index)  # type: ignore[arg-type]
            self._promise(entry, req.nodes, +1)
        self._request(entry, peer, req, lost=lost)

    def _apply(self, entry: _Entry, body: bytes, upgrade: bool = False) -> None:
        """Apply a proof, then every waiting proof or run it unblocks, in order."""
        self._apply_one(entry, body, upgrade)
        self._advance(entry)

    def _advance(self, entry: _Entry) -> None:
        core = entry.core
        while True:
            c = core.contiguous_length
            nxt = entry.ahead.pop(c, None)
            if nxt is not None:
                self._apply_one(entry, nxt, False)
            else:
                req = self._run_at(entry, c)
                if req is None or req.run is None or c == req.index or not req.run.complete:
                    return
                self._apply_run(entry, req)
            if core.contiguous_length == c:
                return

    def _run_at(self, entry: _Entry, index: int) -> Optional[_Req]:
        """The in-flight run covering block ``index`` (runs are aligned)."""
        size = 1
        while size <= wire.MAX_RUN:
            req = entry.inflight.get(index - index % size)
            if req is not None and req.run is not None and req.run.count == size:
                return req
            size *= 2
        return None

    def _apply_run(self, entry: _Entry, req: _Req) -> None:
        """The run's first block is stored and its values are here: the core
        rebuilds the run's tree from them and stores them all if its root is
        the node it holds over the run (batch.py)."""
        core = entry.core
        run = req.run
        assert run is not None
        try:
            added = core.apply_run(run.start, run.blocks(core.get(run.start)))
        except (errors.InvalidProofError, errors.BlockNotAvailableError) as e:
            self.counters.inc("dropped_invalid_proof")
            log.debug("run at %d rejected: %s", run.start, e)
            req.run = batch.Run(run.start, run.count)  # a wrong value: fetch the run again
            req.deadline = 0.0
            self._mark(entry, req)
            return
        self.counters.inc("blocks", added)
        if core.contiguous_length >= run.start + run.count:
            self._finish(entry, req)
        if entry.progress is not None:
            peer = self._source_peer(entry)
            entry.progress(core.contiguous_length, max(0, peer.length if peer else 0))

    def _finish(self, entry: _Entry, req: _Req) -> None:
        if entry.inflight.get(req.index) is req:  # type: ignore[arg-type]
            del entry.inflight[req.index]  # type: ignore[arg-type]
            self._drop(entry, req)
            self._promise(entry, req.nodes, -1)
            req.nodes = []

    def _drop(self, entry: _Entry, req: _Req) -> None:
        """Account for ``req`` leaving ``entry.inflight``."""
        entry.held -= req.size
        entry.flight -= req.missing

    def _on_values(self, entry: _Entry, peer: _Peer, msg: wire.Values) -> None:
        # Values are checked only when the whole run is there: take them only
        # from the peer the run was asked of, so nobody else can spoil a run.
        req = self._run_at(entry, msg.first) if peer is self._source_peer(entry) else None
        if req is None or req.run is None:
            self.counters.inc("duplicates" if msg.first < entry.core.contiguous_length
                              else "dropped_unsolicited")
            return
        req.run.add(msg.first, msg.values)
        self._mark(entry, req)
        if msg.request == req.id:
            self._lost_before(entry, req.sent)
        self._advance(entry)

    def _apply_one(self, entry: _Entry, body: bytes, upgrade: bool) -> None:
        core = entry.core
        before = (core.fork, core.length)
        try:
            result = core.apply_proof(body)
        except errors.BlockNotAvailableError:
            self.counters.inc("proofs_waiting")  # its nodes come with an earlier proof
            index = _peek_data(body)[0]
            if index is not None and not upgrade:
                entry.ahead[index] = body
                req = entry.inflight.get(index)
                if req is not None:
                    self._mark(entry, req)
            return
        except (errors.InvalidProofError, errors.DecodeError, errors.TooLargeError) as e:
            self.counters.inc("dropped_invalid_proof")
            log.debug("proof rejected: %s", e)
            if upgrade:
                # only the answer to our request settles it; a forgery changes nothing
                if entry.upgrade is not None and _peek_data(body)[2] == entry.upgrade.id:
                    entry.upgrade = None
            else:
                index = _peek_data(body)[0]
                req = entry.inflight.get(index) if index is not None else None
                if req is not None:
                    req.deadline = 0.0  # ask again
                    self._mark(entry, req)
            return
        if upgrade or result.upgraded:
            entry.upgrade = None
            if result.reorg or (core.fork, core.length) != before:
                self._reset_pull(entry, result.reorg or core.fork != before[0])
        if result.block_stored:
            self._stored(entry, result.block_index)

    def _stored(self, entry: _Entry, index: Optional[int]) -> None:
        if index is None:
            return
        entry.ahead.pop(index, None)  # whatever waited for this block was not it
        req = entry.inflight.get(index)
        if req is not None:
            if req.run is None:
                self._finish(entry, req)
            else:  # a run's first block: its proof's nodes are real now
                self._promise(entry, req.nodes, -1)
                req.nodes = []
                self._mark(entry, req)
        self.counters.inc("blocks")
        if entry.progress is not None:
            peer = self._source_peer(entry)
            entry.progress(entry.core.contiguous_length, max(0, peer.length if peer else 0))

    def _reset_pull(self, entry: _Entry, reorg: bool) -> None:
        """The signed tree changed (upgrade or reorg): node plans start over;
        after a reorg nothing received for the old history is kept."""
        core = entry.core
        for index, req in list(entry.inflight.items()):
            if reorg and (req.run is not None or index >= core.contiguous_length):
                del entry.inflight[index]
                self._drop(entry, req)
            elif index >= core.contiguous_length:
                req.deadline = 0.0
        entry.promised.clear()
        for req in entry.inflight.values():
            req.nodes = []
        entry.ahead = {} if reorg else {i: b for i, b in entry.ahead.items()
                                        if i >= core.contiguous_length}
        entry.next = min(entry.next, core.contiguous_length)
        for req in entry.inflight.values():
            self._mark(entry, req)

    def _on_no_data(self, entry: _Entry, peer: _Peer, msg: wire.NoData) -> None:
        self.counters.inc("no_data")
        if entry.upgrade is not None and entry.upgrade.id == msg.request:
            entry.upgrade = None
        for req in entry.inflight.values():
            if req.id == msg.request:
                req.deadline = time.monotonic() + peer.rto()

    def _on_fragment(self, entry: _Entry, peer: _Peer, frag: wire.Fragment) -> None:
        key = (frag.id, frag.parts)
        parts = peer.fragments.get(key)
        if parts is None:
            parts = peer.fragments[key] = {}
            while len(peer.fragments) > MAX_REASSEMBLY:
                self._drop_fragments(peer, "dropped_fragments")
        previous = parts.get(frag.part)
        parts[frag.part] = frag.chunk
        peer.fragment_bytes += len(frag.chunk) - (len(previous) if previous else 0)
        while peer.fragment_bytes > wire.MAX_MESSAGE:  # all of a peer's sets: one message
            self._drop_fragments(peer, "dropped_oversize")
        if key not in peer.fragments or len(parts) < frag.parts:
            return
        del peer.fragments[key]
        peer.fragment_bytes -= sum(len(p) for p in parts.values())
        data = b"".join(parts[i] for i in range(frag.parts))
        for kind, body in wire.decode_messages(Reader(data)):
            if kind != wire.FRAGMENT:
                self._handle(entry, peer, kind, body)

    def _drop_fragments(self, peer: _Peer, reason: str) -> None:
        _, old = peer.fragments.popitem(last=False)
        peer.fragment_bytes -= sum(len(p) for p in old.values())
        self.counters.inc(reason)

    # --- sending ---------------------------------------------------------------------

    def _queue(self, entry: _Entry, peer: _Peer, kind: int, body: bytes) -> None:
        budget = self._budget(peer.link)
        if wire.message_size(body) > budget:
            self._fragment(entry, peer, kind, body, budget)
            return
        peer.out.append((kind, body))
        peer.out_bytes += len(body)
        key = (id(peer.link), peer.addr, entry.dk)
        if peer.out_bytes >= budget:  # full envelopes go now: answers stream out
            self._flush(entry, peer, key, full_only=True)
        if peer.out and key not in self._flush_scheduled:
            self._flush_scheduled.add(key)
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush, entry, peer, key)

    def _budget(self, link: Any) -> int:
        return int(link.mtu) - wire.OVERHEAD - 8 - 9 - 8

    def _fragment(self, entry: _Entry, peer: _Peer, kind: int, body: bytes, budget: int) -> None:
        inner = wire.encode_messages([(kind, body)])
        chunk = budget - 16
        count = (len(inner) + chunk - 1) // chunk
        fid = self._frag_id
        self._frag_id += 1
        for i in range(count):
            self._queue(entry, peer, wire.FRAGMENT,
                        wire.Fragment(fid, i, count, inner[i * chunk:(i + 1) * chunk]).encode())

    def _flush(self, entry: _Entry, peer: _Peer, key: Tuple[int, Any, bytes],
               full_only: bool = False) -> None:
        """Send what is queued for ``peer``, packed into envelopes; with
        ``full_only`` the last, unfilled envelope's messages stay queued."""
        if not full_only:
            self._flush_scheduled.discard(key)
        budget = self._budget(peer.link)
        batch: List[Tuple[int, bytes]] = []
        size = 0
        out, peer.out, peer.out_bytes = peer.out, [], 0
        for kind, body in out:
            n = wire.message_size(body)
            if batch and size + n > budget:
                self._send(entry, peer, batch)
                batch, size = [], 0
            batch.append((kind, body))
            size += n
        if full_only:
            peer.out, peer.out_bytes = batch, sum(len(body) for _, body in batch)
        elif batch:
            self._send(entry, peer, batch)

    def _send(self, entry: _Entry, peer: _Peer, messages: List[Tuple[int, bytes]]) -> None:
        self._counter += 1
        payload = wire.encode_payload(self.session, self._counter, peer.echo, messages)
        envelope = wire.seal(entry.wire_key, entry.dk, payload)
        self.counters.inc("tx_envelopes")
        self.counters.inc("tx_bytes", len(envelope))
        peer.link.send(envelope, peer.addr)

    # --- timers ----------------------------------------------------------------------

    async def _tick(self) -> None:
        """Timers of the pulls with something pending (``_active``), and every
        SWEEP seconds of every pull (keepalives): an endpoint pulling a
        thousand idle cores does not visit each of them every tick."""
        swept = 0.0
        while True:
            # fine-grained while requests are in flight (RTOs on a LAN are a few ms)
            await asyncio.sleep(TICK_BUSY if self._active else TICK_IDLE)
            now = time.monotonic()
            if now - self._secret_time > COOKIE_EPOCH:
                self._secrets = [os.urandom(32), self._secrets[0]]
                self._epoch += 1
                self._secret_time = now
            if now - swept >= SWEEP:
                swept = now
                entries = [e for e in self._entries.values() if e.pulling]
            else:
                entries = list(self._active)
            for entry in entries:
                try:
                    self._timeouts(entry, now)
                except errors.CoreMachineError as e:  # a core that failed: report, go on
                    self.counters.inc("errors")
                    log.warning("sync of %s: %s", entry.dk.hex()[:16], e)
                if not self._pending(entry):
                    self._active.discard(entry)

    def _pending(self, entry: _Entry) -> bool:
        """Does pulling ``entry`` need the fine timer: requests in flight, or
        a greeting whose retry is due sooner than the next sweep?"""
        if not entry.pulling:
            return False
        if entry.inflight or entry.upgrade:
            return True
        peer = self._source_peer(entry)
        if peer is None:
            return True
        return (not peer.ready or peer.length < 0) and _hello_backoff(peer) < SWEEP

    def _timeouts(self, entry: _Entry, now: float) -> None:
        if not entry.pulling or entry.source is None:
            return
        link, addr = entry.source
        peer = self._source_peer(entry)
        if peer is None or not peer.ready or peer.length < 0:
            # no answer to our HELLO yet, or the SYNC answering it was lost
            if peer is None or now - peer.hello_sent > _hello_backoff(peer):
                self._hello(entry, link, addr, peer)
            return
        # a source heard from lately has not lost our announcements' answers: only
        # a quiet one needs asking (thousands of live pulls, each appending every
        # second, send no keepalives at all)
        if entry.live and now - max(entry.last_keepalive, peer.last_seen) > KEEPALIVE:
            entry.last_keepalive = now
            self._send_sync(entry, peer, force=True)
        up = entry.upgrade
        if up is not None and now > up.deadline:
            self.counters.inc("retries")
            self._request(entry, peer, up, manifest=entry.core.manifest is None)
        # While answers keep coming, a later answer finds the losses (_lost_before):
        # a backlog of answers, however long, ends, and then the link is quiet.
        # Timeouts are for a quiet link, so a backlog is not taken for losses.
        # (on a slow serial line the gap between two full frames is not quiet)
        gap = 2.0 * peer.link.frame_seconds
        quiet = now - peer.last_answer > max(peer.rto(), gap)
        for req in list(entry.inflight.values()):
            if now > req.deadline and quiet:
                if not req.missing:
                    req.deadline = now + peer.rto()  # it waits for an earlier block
                else:
                    self.counters.inc("timeouts")
                    self._retry(entry, peer, req)
        self._pump(entry)


def _hello_backoff(peer: _Peer) -> float:
    """Seconds to wait for an answer before greeting a silent source again."""
    return min(HELLO_MAX, HELLO_FIRST * 2.0 ** peer.hellos)


def _peek_data(body: bytes) -> Tuple[Optional[int], bool, int]:
    """(block index or None, has an upgrade, request id) of a data message."""
    r = Reader(body)
    flags = r.uint()
    rid = r.uint()
    r.uint()
    index = r.uint() if flags & 1 else None
    return index, bool(flags & 8), rid

