"""A core's replication with Hypercore peers: what each ``hypercore/alpha``
channel says and does (:class:`ChannelPeer`), and the core's side shared by
all its channels on all connections (:class:`CoreReplicator`).

The core-facing logic is the one the UDP/serial endpoint uses: a
:class:`~coremachine_embedded.sync.download.Download` decides what to request
and verifies and stores the answers, :mod:`~coremachine_embedded.sync.serving`
answers requests and watches the core.  What is Hypercore's here is what JS
peers rely on (hypercore/lib/replicator.js):

- after the channel opens and after every change: ``sync`` (fork, signed
  length, the peer's length as we last heard it - a JS reader asks for an
  upgrade only when we echo its length - and whether we can upgrade it) and
  ``range`` (the blocks we hold from 0);
- a ``sync`` from a peer that is behind us is answered with ours;
- ``want`` is answered with what we hold; a sparse peer's ``range`` and
  ``bitfield`` tell us which blocks to ask it for;
- requests are pipelined (a window of blocks in flight, spread over the peers
  that hold them); we say ``downloading`` while we pull, so no peer closes
  the channel as idle;
- ``hash`` requests for a block (a JS reader looking for where a fork
  diverged) are answered from the block's proof; ``seek`` requests, and hash
  requests for inner nodes, get ``noData`` (we announce ``seeks: false``);
  extensions are counted and ignored.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from ... import _backend, errors
from ...core import Core
from ...encoding import DataMessage
from .. import serving, wire
from ..counters import Counters
from ..download import Ask, Download
from . import messages as m

log = logging.getLogger("coremachine_embedded.sync.hyper")

WINDOW = 256               # blocks requested and not received, per pulled core (a JS writer
                           # answers a deeper queue one request at a time: slower)
WANT_BATCH = 2097152       # blocks per want, as hypercore asks (its segment size)
MAX_INTERVALS = 256        # sparse ranges remembered per peer
REQUEST_RATE = 20000.0     # requests served per second per peer, after...
REQUEST_BURST = 4096       # ...a burst of this many (beyond: noData, dropped_flood)
MAX_INVALID = 16           # proofs that failed verification before we hang up
RETRY = 1.0                # seconds before an unanswerable ask is tried again
MAX_HELD_REQUESTS = 4096   # requests held back while our answers cannot go out
_RX = ["rx_" + name for name in m.NAMES]


class CoreReplicator:
    """One core's replication with Hypercore peers, shared by its channels.

    :param window: blocks requested and not received yet, while pulling.
    """

    def __init__(self, core: Core, counters: Optional[Counters] = None,
                 window: int = WINDOW) -> None:
        self.core = core
        self.key = core.key
        self.discovery_key = core.discovery_key
        self.counters = counters if counters is not None else Counters()
        self.window = window
        self.peers: List["ChannelPeer"] = []
        self.download: Optional[Download] = None
        self.progress = asyncio.Event()       # set after every change; pull() waits on it
        self._parked: List[Ask] = []          # asks no peer could take yet
        self._timer: Optional["asyncio.TimerHandle"] = None
        self._update_pending = False
        self._upgrade_after = 0.0             # no upgrade asked before (a peer refused one)
        self._loop = asyncio.get_running_loop()
        self._unwatch: Optional[Callable[[], None]] = serving.watch(core, self._loop,
                                                                    self._on_change)

    # --- the core's side ------------------------------------------------------------

    def pull(self) -> None:
        """Start pulling (from every peer that has what we lack)."""
        if self.core.writable:
            raise errors.InvalidArgumentError("a writer has nothing to pull")
        if self.download is None:
            self.download = Download(self.core, self.counters)
        self.download.resume()
        for peer in self.peers:
            peer.send_sync()
        self.update()

    @property
    def downloading(self) -> bool:
        return self.download is not None

    def caught_up(self) -> bool:
        """We hold the signed length of the most advanced peer we heard from."""
        best = self.best()
        return (best is not None and self.download is not None
                and self.download.caught_up(best.fork, best.length))

    def handler(self) -> "ChannelPeer":
        """A handler for a new channel of this core (Connection.lookup)."""
        return ChannelPeer(self)

    def close(self) -> None:
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._timer is not None:
            self._timer.cancel()

    def _on_change(self) -> None:
        for peer in list(self.peers):
            peer.announce()
        self.progressed()

    def progressed(self) -> None:
        """Something changed: plan and wake the waiters once, after the
        messages that arrived together are all handled."""
        if not self._update_pending:
            self._update_pending = True
            self._loop.call_soon(self._after_progress)

    def _after_progress(self) -> None:
        self._update_pending = False
        self.progress.set()
        self.progress = asyncio.Event()
        self.update()

    def best(self) -> Optional["ChannelPeer"]:
        """The peer with the newest fork and the longest signed log."""
        best = None
        for p in self.peers:
            if p.synced and p.uploading and (best is None or (p.fork, p.length) > (best.fork,
                                                                                 best.length)):
                best = p
        return best

    # --- requesting -----------------------------------------------------------------

    def update(self) -> None:
        """Ask peers for what we lack: the upgrade to the best peer's length,
        then blocks, each from a peer that holds it."""
        dl = self.download
        best = self.best()
        if dl is None or best is None:
            return
        now = time.monotonic()
        parked, self._parked = self._parked, []
        for ask in parked:
            if not self._send(ask, best, now):
                self._parked.append(ask)
        if now >= self._upgrade_after:
            for ask in dl.plan(best.fork, best.length, self.window):
                if not self._send(ask, best, now):
                    self._parked.append(ask)
        if (self._parked or now < self._upgrade_after) and self._timer is None:
            self._timer = self._loop.call_later(RETRY, self._retry_parked)

    def _send(self, ask: Ask, best: "ChannelPeer", now: float) -> bool:
        if ask.deadline > now:
            return False
        dl = self.download
        if dl is None or (ask is not dl.upgrade and dl.inflight.get(ask.index or 0) is not ask):
            return True  # answered meanwhile (by another peer), or dropped by a reorg
        if ask.upgrade is not None:
            target: Optional[ChannelPeer] = best
            if ask.index is not None and not best.has(ask.index):
                ask.index = None  # a sparse peer refuses the whole request for a block it lacks
        else:
            target = next((p for p in [best] + self.peers if p.has(ask.index)), None)
        if target is None:
            return False
        if ask.tries:
            dl.retry(ask)
        kind, body = dl.send(ask)
        if ask.upgrade is not None and target.fork != self.core.fork:
            # a reorg: the request names the peer's fork, or a JS peer refuses it
            body = wire.Request.decode(body)._replace(fork=target.fork).encode()
        target.request(ask, body)
        return True

    def _retry_parked(self) -> None:
        self._timer = None
        self.update()

    def refused_upgrade(self) -> None:
        """A peer could not give the upgrade: ask again in a while, not at once."""
        self._upgrade_after = time.monotonic() + RETRY
        self.progressed()

    def park(self, asks: List[Ask], delay: float = 0.0) -> None:
        """Asks to send again (to whichever peer can take them) after ``delay``."""
        for ask in asks:
            ask.deadline = time.monotonic() + delay
            self._parked.append(ask)
        if self._timer is None:
            self._timer = self._loop.call_later(max(delay, 0.01), self._retry_parked)


class ChannelPeer:
    """One peer's channel of one core: the peer's state and the messages."""

    def __init__(self, replicator: CoreReplicator) -> None:
        self.replicator = replicator
        self.core = replicator.core
        self.key = replicator.key
        self.counters = replicator.counters
        self.conn: Any = None
        self.channel: Any = None
        self.closed = False           # the channel closed (or the peer refused it)
        # the peer's state, from its sync, range and bitfield messages
        self.synced = False
        self.fork = 0
        self.length = 0
        self.uploading = True
        self.contiguous = 0           # blocks it holds from 0
        self.held: List[Tuple[int, int]] = []   # and further [start, end) ranges (sparse)
        self.asks: Dict[int, Ask] = {}          # ours in flight to it, by request id
        self._told_sync: Optional[Tuple[int, ...]] = None
        self._told_contiguous = 0
        self._wanted: Set[int] = set()
        self._tokens = float(REQUEST_BURST)
        self._tokens_at = time.monotonic()
        self._invalid = 0
        self._held_requests: List[wire.Request] = []   # while the connection is congested

    # --- lifetime (called by the connection) ------------------------------------------

    def on_open(self, conn: Any, channel: Any) -> None:
        self.conn = conn
        self.channel = channel
        self.counters = conn.counters   # what this connection did; blocks: the core's
        self.replicator.peers.append(self)
        self.send_sync()
        self._send_range()

    def on_close(self) -> None:
        self.closed = True
        if self in self.replicator.peers:
            self.replicator.peers.remove(self)
        asks, self.asks = list(self.asks.values()), {}
        if asks:
            self.replicator.park(asks)
        self.replicator.progressed()

    # --- what we tell the peer ---------------------------------------------------------

    def announce(self) -> None:
        """Our core changed: tell the peer (range first, as hypercore does)."""
        self._send_range()
        self.send_sync()

    def send_sync(self) -> None:
        """Our state, when it differs from what we told the peer last."""
        if self.channel is None:
            return
        core = self.core
        remote_length = self.length if self.fork == core.fork else 0
        state = (core.fork, core.length, remote_length, self._can_upgrade(),
                 self.replicator.downloading)
        if state == self._told_sync:
            return
        self._told_sync = state
        self._send(m.SYNC, wire.Sync(core.fork, core.length, remote_length,
                                     can_upgrade=state[3], uploading=True,
                                     downloading=state[4],
                                     has_manifest=core.manifest is not None
                                     and not core.compat).encode())

    def _can_upgrade(self) -> bool:
        """Whether we can take the peer from its length to ours (hypercore's rule)."""
        core = self.core
        return self.fork == core.fork and (self.length == 0 or self.length < core.length)

    def _send_range(self) -> None:
        if self.channel is None:
            return
        contiguous = min(self.core.contiguous_length, self.core.length)
        if contiguous < self._told_contiguous:   # truncated: what we no longer hold
            self._send(m.RANGE, wire.Range(contiguous, self._told_contiguous - contiguous,
                                           drop=True).encode())
            self._told_contiguous = contiguous
        if self.fork == self.core.fork and self.contiguous >= contiguous:
            return  # it holds all that already
        if contiguous > self._told_contiguous:
            self._told_contiguous = contiguous
            self._send(m.RANGE, wire.Range(0, contiguous).encode())

    def _send(self, kind: int, body: bytes) -> None:
        self.conn.send(self.channel, kind, body)
        self.conn.schedule_flush()

    def request(self, ask: Ask, body: bytes) -> None:
        self.asks[ask.id] = ask
        self._send(m.REQUEST, body)

    # --- what the peer holds -------------------------------------------------------------

    def has(self, index: Optional[int]) -> bool:
        if index is None or not self.synced or self.fork != self.core.fork \
                or index >= self.length:
            return False
        if index < self.contiguous:
            return True
        return any(a <= index < b for a, b in self.held)

    def _hold(self, start: int, end: int, drop: bool = False) -> None:
        if drop:
            if start < self.contiguous:
                self.contiguous = start
            kept = []
            for a, b in self.held:
                if a < start:
                    kept.append((a, min(b, start)))
                if b > end:
                    kept.append((max(a, end), b))
            self.held = [(a, b) for a, b in kept if a < b]
            return
        if start <= self.contiguous:
            self.contiguous = max(self.contiguous, end)
        else:
            self.held.append((start, end))
        merged: List[Tuple[int, int]] = []
        for a, b in sorted(self.held):
            if b <= self.contiguous:
                continue
            if a <= self.contiguous:
                self.contiguous = b
            elif merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], b))
            else:
                merged.append((a, b))
        self.held = merged[-MAX_INTERVALS:]

    # --- messages from the peer ----------------------------------------------------------

    def on_message(self, kind: int, body: bytes) -> None:
        self.counters.inc(_RX[kind] if kind < len(_RX) else "rx_unknown")
        if kind == m.DATA:
            self._on_data(body)
            return
        msg = m.decode(kind, body)
        if kind == m.SYNC:
            self._on_sync(msg)
        elif kind == m.REQUEST:
            self._on_request(msg)
        elif kind == m.NO_DATA:
            self._on_no_data(msg)
        elif kind == m.RANGE:
            self._hold(msg.start, msg.start + msg.length, msg.drop)
            self.replicator.progressed()
        elif kind == m.BITFIELD:
            self._on_bitfield(msg)
        elif kind == m.WANT:
            self._on_want(msg)
        # extension: no extension is registered (decoded, so a malformed one counts);
        # cancel: answers go out as requests arrive, so there is nothing to cancel;
        # unwant: we send nothing unasked; unknown types: ignored, as hypercore does

    def _on_sync(self, msg: wire.Sync) -> None:
        core = self.core
        if msg.fork != self.fork:
            self.contiguous, self.held = 0, []   # what it held was another history
        self.synced = True
        self.fork, self.length = msg.fork, msg.length
        self.contiguous = min(self.contiguous, msg.length)
        self.uploading = msg.uploading
        self.send_sync()  # when it is behind, this echoes its new length: JS then asks
        dl = self.replicator.download
        if dl is not None and msg.length > self.contiguous:
            batch = core.contiguous_length - core.contiguous_length % WANT_BATCH
            if batch not in self._wanted and len(self._wanted) < 64:
                self._wanted.add(batch)   # ask which blocks it holds (a sparse peer answers)
                self._send(m.WANT, m.Want(batch, WANT_BATCH).encode())
        self.replicator.progressed()

    def _on_want(self, msg: m.Want) -> None:
        """We hold a prefix: that is the whole answer, whatever was asked."""
        contiguous = min(self.core.contiguous_length, self.core.length)
        if contiguous:
            self._send(m.RANGE, wire.Range(0, contiguous).encode())

    def _on_bitfield(self, msg: m.Bitfield) -> None:
        for start, end in msg.runs():
            if len(self.held) >= MAX_INTERVALS:
                break
            self._hold(start, end)
        self.replicator.progressed()

    def _on_request(self, req: wire.Request) -> None:
        if self._held_requests or self.conn.congested:
            if len(self._held_requests) >= MAX_HELD_REQUESTS:
                self.counters.inc("dropped_flood")
                self._send(m.NO_DATA, wire.NoData(req.id, m.NOT_AVAILABLE).encode())
                return
            self._held_requests.append(req)
            if len(self._held_requests) == 1:
                self.conn.when_drained(self._answer_held)
            return
        self._answer(req)

    def _answer_held(self) -> None:
        while self._held_requests and not self.conn.congested and not self.closed:
            self._answer(self._held_requests.pop(0))
        if self._held_requests and not self.closed:
            self.conn.when_drained(self._answer_held)

    def _answer(self, req: wire.Request) -> None:
        now = time.monotonic()
        self._tokens = min(REQUEST_BURST, self._tokens + (now - self._tokens_at) * REQUEST_RATE)
        self._tokens_at = now
        if self._tokens < 1:
            self.counters.inc("dropped_flood")
            self._send(m.NO_DATA, wire.NoData(req.id, m.NOT_AVAILABLE).encode())
            return
        self._tokens -= 1
        if req.hash is not None and req.seek is None and req.block is None:
            self._answer_hash(req)
            return
        answer = serving.answer_request(self.core, req, self.counters)
        for kind, body in answer.messages:
            self._send(kind, body)

    def _answer_hash(self, req: wire.Request) -> None:
        """A leaf's hash with its path: the block's proof without the value
        (a JS reader bisecting a fork asks for these)."""
        assert req.hash is not None
        index, nodes = req.hash
        try:
            if index & 1 or req.fork != self.core.fork:
                raise errors.InvalidArgumentError("only leaf hashes of this fork are served")
            proof = DataMessage.decode(self.core.proof(block=index // 2, nodes=nodes,
                                                       upgrade=req.upgrade, request=req.id))
        except errors.CoreMachineError:
            self.counters.inc("requests_refused")
            self._send(m.NO_DATA, wire.NoData(req.id, m.NOT_AVAILABLE).encode())
            return
        assert proof.block is not None
        block_index, value, path = proof.block
        leaf = self._leaf(block_index, value)
        proof.block = None
        proof.hash = (index, [leaf] + path)
        self.counters.inc("requests_served")
        self._send(m.DATA, proof.encode())

    @staticmethod
    def _leaf(index: int, value: bytes) -> Tuple[int, int, bytes]:
        node = _backend.impl.hash_leaf(index, value)
        return (node[0], node[1], node[2])

    def _on_data(self, body: bytes) -> None:
        dl = self.replicator.download
        if dl is None:
            self.counters.inc("dropped_unsolicited")
            return
        try:
            head = DataMessage.peek(body)
        except errors.CoreMachineError as e:
            self.conn.malformed(e)
            return
        ask = self.asks.pop(head.request, None)
        if ask is not None and ask is dl.upgrade and not head.upgrade:
            # a peer lacking what we asked may answer with just its manifest
            dl.on_no_data(head.request)
            self.replicator.refused_upgrade()
            return
        counters = self.replicator.counters
        before = counters.get("dropped_invalid_proof", 0)
        dl.on_data(body, head)
        if counters.get("dropped_invalid_proof", 0) > before:
            self.conn.counters.inc("rx_invalid_proof")
            self._invalid += 1
            if ask is not None and ask is not dl.upgrade and ask.index in dl.inflight:
                self.replicator.park([ask], RETRY)   # from someone else, or later
            if self._invalid > MAX_INVALID:
                self.conn.close(errors.ProtocolError("more than %d proofs that do not verify"
                                                     % MAX_INVALID))
                return
        self.replicator.progressed()

    def _on_no_data(self, msg: wire.NoData) -> None:
        ask = self.asks.pop(msg.request, None)
        dl = self.replicator.download
        if dl is None or ask is None:
            self.counters.inc("no_data")
            return
        upgrade = ask is dl.upgrade
        self.replicator.park(dl.on_no_data(msg.request), RETRY)
        if upgrade:
            self.replicator.refused_upgrade()

