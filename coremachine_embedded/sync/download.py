"""Pulling a core: what to ask a peer for next, and how to store its answers.

Independent of the carrier and of the envelope: the datagram
:class:`~coremachine_embedded.sync.endpoint.Endpoint` uses it, and so can a
peer on a reliable ordered stream (Hypercore's own protocol), which never has
to retry.  A :class:`Download` knows the core and what is in flight; its caller
knows the peer (its fork and signed length, from SYNC), sends what
:meth:`Download.plan` asks for (encoded by :meth:`Download.send`), and hands
every answer to :meth:`Download.on_data`, :meth:`Download.on_values` or
:meth:`Download.on_no_data`::

    download = Download(core, counters)
    for ask in download.plan(peer_fork, peer_length, window=256):
        kind, body = download.send(ask)       # wire.REQUEST (or wire.RUN)
        ...                                   # later, for each answer:
    download.on_data(body)                    # verified by the core, then stored
    done = download.caught_up(peer_fork, peer_length)

The order: the signed tree of the peer's length first (an upgrade proof, whose
signature the core checks; when the replica may hold that much already, an
upgrade from 0 that proves what the peer holds: :attr:`Download.proved`), then
blocks in a window, each request asking for just the tree levels that neither
the store nor an earlier in-flight proof provides (:meth:`Core.missing_nodes`),
or aligned batched runs (batch.py) when ``max_run`` > 1.  Proofs that arrive
before the block they build on wait in :attr:`Download.ahead`; a reorg drops
everything planned for the old history.  Nothing is stored that the core did
not verify (:meth:`Core.apply_proof`, :meth:`Core.apply_run`), and a download
is caught up only with a signed length the peer proved: what a peer claims in
SYNC steers what to ask for, never when to stop (request ids never repeat).
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

from .. import errors
from ..core import Core
from ..encoding import DataHead, DataMessage
from . import batch, wire
from .counters import Counters

log = logging.getLogger("coremachine_embedded.sync")

WAITING = 8   # blocks received and waiting for an earlier one, at most: this x the window
CANDIDATES = 2   # different proofs of one block kept waiting (one may be a forgery)
RUN_SIZES = tuple(1 << k for k in range(wire.MAX_RUN.bit_length()))   # 1, 2, ... MAX_RUN


class Ask:
    """A request in flight: an upgrade (maybe with the first new block), one
    block, or a batched run starting at ``index``; a ``confirm`` upgrade asks
    for the proof of the peer's signed state from 0 (checked, not stored).

    ``nodes`` are the tree nodes its answer will bring (per level, the node on
    the path and its sibling); ``missing`` the blocks of its answer not here
    yet (0: everything came and it waits for an earlier block).  ``sent`` and
    ``deadline`` belong to whoever retries it (a deadline of 0: ask again now).
    """

    __slots__ = ("id", "index", "upgrade", "nodes", "run", "missing", "tries", "sent",
                 "deadline", "prev_id", "prev_sent", "confirm")

    def __init__(self, index: Optional[int], upgrade: Optional[Tuple[int, int]],
                 nodes: List[int], run: Optional[batch.Run] = None,
                 confirm: bool = False) -> None:
        self.id = 0
        self.index = index
        self.upgrade = upgrade
        self.nodes = nodes
        self.run = run
        self.missing = self.size
        self.tries = 0
        self.sent = 0.0
        self.deadline = 0.0
        self.confirm = confirm
        self.prev_id, self.prev_sent = 0, 0.0   # the transmission before the current one

    def sent_at(self, request: int) -> Optional[float]:
        """When the transmission with id ``request`` went out (this one or the
        one before): each has its own id, so a late answer to the one before a
        retry is still a round-trip sample - Karn's ambiguity does not arise."""
        if request == self.id:
            return self.sent
        return self.prev_sent if request == self.prev_id and self.prev_id else None

    @property
    def size(self) -> int:
        """Blocks it asks for."""
        return 1 if self.run is None else self.run.count


class Answered(NamedTuple):
    """What an answer was: ``ask`` is the in-flight ask one of whose last two
    transmissions it answers, ``sent`` when that transmission went out (for
    round-trip samples), ``early`` that it arrived before an earlier block -
    on a lossy link, the asks sent before it were probably lost."""

    ask: Optional[Ask] = None
    early: bool = False
    sent: Optional[float] = None


def _answering(ask: Optional[Ask], request: int, early: bool = False) -> "Answered":
    sent = ask.sent_at(request) if ask is not None else None
    return Answered(ask, early, sent) if sent is not None else Answered(early=early)


NOTHING = Answered()


class Download:
    """The state of pulling one core: what is asked, in flight, waiting.

    :param max_run: blocks per batched run at most (1: no runs; Hypercore has no RUN).
    """

    def __init__(self, core: Core, counters: Counters, max_run: int = 1) -> None:
        self.core = core
        self.counters = counters
        self.max_run = max_run
        self.inflight: Dict[int, Ask] = {}          # by (first) block index
        self.held = 0                               # blocks those asks cover
        self.flight = 0                             # ...and are not here yet
        self.upgrade: Optional[Ask] = None
        # (fork, length) the peer proved with the writer's signature in this pull
        self.proved: Optional[Tuple[int, int]] = None
        self.claimed = (0, 0)                       # (fork, length) the peer last claimed
        self.refused: Optional[Tuple[int, int]] = None   # ...when it refused our upgrade
        self.ahead: Dict[int, List[bytes]] = {}     # proofs waiting for earlier blocks
        self.promised: Dict[int, int] = {}          # node -> in-flight proofs bringing it
        self.next = core.contiguous_length
        self.on_progress: Optional[Callable[[int], None]] = None  # (contiguous length)
        self._next_id = 1
        self._run_hint = 1   # the size of the run _run_at found last: most are alike
        self.room_wanted = 0   # blocks of room the next run waits for (plan found none)

    # --- asking ------------------------------------------------------------------------

    def resume(self) -> None:
        """Plan from what the store holds (a pull starts or starts again); the
        peer has to prove its signed length again."""
        self.next = self.core.contiguous_length
        self.proved = None

    @property
    def busy(self) -> bool:
        """Something is asked and not answered."""
        return bool(self.inflight) or self.upgrade is not None

    def plan(self, fork: int, length: int, window: int, run_bytes: int = 0) -> List[Ask]:
        """New asks to send now to a peer at ``fork`` and signed ``length``:
        the upgrade to its length while we are behind (or the proof of its
        signed state, which we may hold already), then blocks, keeping at
        most ``window`` blocks asked and not here.  A run's values should
        fill about ``run_bytes``."""
        core = self.core   # (its state read once: plan runs for every envelope received)
        our_fork, our_length, contiguous = core.fork, core.length, core.contiguous_length
        self.room_wanted = 0
        claimed = self.claimed = (fork, length)
        if self.proved is not None and self.proved > claimed:
            fork, length = self.proved  # its signature beats its SYNC
        behind = fork > our_fork or (fork == our_fork and length > our_length)
        asks = []
        if self.upgrade is None and claimed != self.refused:
            if behind:
                start = our_length if fork == our_fork else 0
                up = Ask(None, (start, length - start), [])
                # Live following: ask for the first new block with the upgrade.
                if start == our_length == contiguous and not self.inflight:
                    up.index = start
                asks.append(up)
            elif self.proved is None:
                # Its signed state, whatever it claims: an upgrade from 0 (to its
                # length with the additional nodes), only checked if we hold some.
                asks.append(Ask(None, (0, 1), [], confirm=our_length > 0))
            if asks:
                self.upgrade = asks[0]
        if behind or (self.upgrade is not None and not self.upgrade.confirm):
            return asks
        self.next = max(self.next, contiguous)
        while (self.flight < window and self.held < WAITING * window
               and self.next < our_length):
            i = self.next
            if i in self.inflight or i in self.ahead:
                self.next += self.inflight[i].size if i in self.inflight else 1
                continue
            size = self._run_size(i, run_bytes, window, our_length)
            if self.flight and size > window - self.flight:
                self.room_wanted = size
                break  # wait for room for the whole run (no silly window: RFC 1122)
            ask = Ask(i, None, self._plan_nodes(i), batch.Run(i, size) if size > 1 else None)
            self.next += size
            self.flight += size
            self.held += size
            self._promise(ask.nodes, +1)
            self.inflight[i] = ask
            asks.append(ask)
        return asks

    def send(self, ask: Ask) -> Tuple[int, bytes]:
        """``ask`` as a message, under a new request id: ``(wire.REQUEST,
        body)``, or ``(wire.RUN, body)`` for a run (a retried run asks only for
        what is still missing)."""
        rid = self._next_id
        self._next_id += 1
        ask.prev_id, ask.prev_sent = ask.id, ask.sent
        ask.id = rid
        ask.tries += 1
        core = self.core
        run = ask.run
        if run is not None:
            need_first = core.contiguous_length <= run.start and run.start not in self.ahead
            wanted = run.wanted(need_first) if ask.tries > 1 else None
            return wire.RUN, wire.Run(rid, core.fork, run.start, run.count,
                                      len(ask.nodes) // 2, wanted).encode()
        if ask.index is None:
            block = None
        else:  # with an upgrade the prover picks the path; alone, ask for our levels
            block = (ask.index, 0 if ask.upgrade else len(ask.nodes) // 2)
        return wire.REQUEST, wire.Request(
            rid, core.fork, block=block, upgrade=ask.upgrade,
            manifest=ask.upgrade is not None and core.manifest is None).encode()

    def retry(self, ask: Ask) -> None:
        """Before ``ask`` is sent again: its nodes are planned anew if a reset
        dropped them."""
        self.counters.inc("retries")
        if not ask.nodes and ask is not self.upgrade:
            assert ask.index is not None
            ask.nodes = self._plan_nodes(ask.index)
            self._promise(ask.nodes, +1)

    def restart(self) -> None:
        """The peer restarted: nothing it was asked will be answered."""
        self.upgrade = None
        for ask in self.inflight.values():
            ask.deadline = 0.0

    def caught_up(self, fork: int, length: int) -> bool:
        """The core holds everything of a peer at ``fork`` and ``length``, and
        at least the signed length the peer proved."""
        if self.proved is None:
            return False
        fork, length = max((fork, length), self.proved)
        core = self.core
        return (core.fork == fork and core.length >= length
                and core.contiguous_length >= core.length and self.upgrade is None)

    def _run_size(self, start: int, run_bytes: int, room: int, length: int) -> int:
        """The largest aligned run at ``start`` whose values fill about
        ``run_bytes``, of at most ``room`` blocks, below ``length``."""
        average = max(1, self.core.byte_length // max(1, length))
        limit = max(1, min(self.max_run, run_bytes // average, room))
        size = 1
        while size * 2 <= limit and start % (size * 2) == 0 and start + size * 2 <= length:
            size *= 2
        return size

    def _plan_nodes(self, index: int) -> List[int]:
        """Levels above leaf 2*index that neither the store nor an in-flight
        proof provides: the nodes this block's proof will bring (per level,
        the node on the path and its sibling)."""
        levels = self.core.missing_nodes(index)  # what the store lacks
        promised = self.promised
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

    def _promise(self, nodes: List[int], delta: int) -> None:
        for n in nodes:
            left = self.promised.get(n, 0) + delta
            if left > 0:
                self.promised[n] = left
            else:
                self.promised.pop(n, None)

    # --- answers -----------------------------------------------------------------------

    def on_data(self, body: bytes, head: Optional[DataHead] = None,
                pushed_ok: bool = False) -> Answered:
        """A DATA message (a Hypercore proof): applied if it is the next block
        or an upgrade we asked for, kept if it builds on a block still to come,
        otherwise counted and dropped.  ``head``: its head, if the caller
        peeked already.  With ``pushed_ok`` (it comes from the peer we follow
        live) an unasked upgrade with our next block - a push, request id
        ``wire.PUSHED`` - is applied when nothing is in flight: the core
        verifies it like any other."""
        if self.core.writable:
            self.counters.inc("dropped_unsolicited")
            return NOTHING
        try:
            head = head or DataMessage.peek(body)
        except errors.DecodeError:
            self.counters.inc("dropped_malformed")
            return NOTHING
        if head.upgrade:
            up = self.upgrade
            if up is None or (up.confirm and head.request == wire.PUSHED):
                # (a push while the proof of the peer's state is asked proves it too)
                if not (pushed_ok and head.request == wire.PUSHED and self._pushable(head)):
                    # a late answer to a retried upgrade, or a push we cannot use
                    self.counters.inc("duplicates")
                    return NOTHING
                self.counters.inc("pushes")
            if up is not None and up.confirm and head.request != wire.PUSHED:
                self._confirm(body)
            else:
                self._apply(body, upgrade=True)   # (an upgrade we asked for: checked alike)
            return _answering(up, head.request)
        index = head.block_index
        if index is None:
            self.counters.inc("dropped_unsolicited")
            return NOTHING
        ask = self.inflight.get(index)
        answered = _answering(ask, head.request)
        contiguous = self.core.contiguous_length
        if index < contiguous:
            self.counters.inc("duplicates")
            return answered
        if index > contiguous:
            if ask is None:
                self.counters.inc("dropped_unsolicited")
                return answered
            if self._wait(index, body, answered.ask is not None):
                self._mark(ask)
            return answered._replace(early=True)
        self._apply(body)
        return answered

    def _pushable(self, head: DataHead) -> bool:
        """A push we take: for our next block, while we hold our whole signed
        length and no block is in flight (with an upgrade in flight, a push
        counts as its answer)."""
        core = self.core
        return (not self.inflight
                and head.block_index == core.length == core.contiguous_length)

    def on_values(self, msg: wire.Values) -> Answered:
        """VALUES of a run in flight (the caller takes them only from the peer
        the run was asked of: values are checked when the whole run is here)."""
        ask = self._run_at(msg.first)
        if ask is None or ask.run is None:
            self.counters.inc("duplicates" if msg.first < self.core.contiguous_length
                              else "dropped_unsolicited")
            return NOTHING
        ask.run.add(msg.first, msg.values)
        self._mark(ask)
        answered = _answering(ask, msg.request, early=True)
        answered = answered if answered.ask is not None else NOTHING
        self._advance()
        return answered

    def on_broadcast(self, body: bytes) -> None:
        """A DATA message nobody asked for that proves itself: a writer's live
        block or signed head (sync/broadcast.py).  Applied if it verifies,
        with what it unblocks; otherwise counted and dropped."""
        if self.core.writable:
            self.counters.inc("dropped_unsolicited")
            return
        self._apply(body, upgrade=True)

    def on_no_data(self, request: int) -> List[Ask]:
        """The peer has no answer to ``request``: the asks that carried it
        (ask them again later)."""
        self.counters.inc("no_data")
        if self.upgrade is not None and self.upgrade.id == request:
            self.upgrade = None
            self.refused = self.claimed  # ask again when it claims something else
        return [ask for ask in self.inflight.values() if ask.id == request]

    def unanswered(self) -> List[Ask]:
        """Asks in flight still missing blocks."""
        return [ask for ask in self.inflight.values() if ask.missing]

    # --- applying ----------------------------------------------------------------------

    def _confirm(self, body: bytes) -> None:
        """The proof of the peer's signed state, from 0: checked, not stored."""
        core = self.core
        try:
            fork, length, digest = core.check_upgrade(body)
        except (errors.InvalidProofError, errors.DecodeError, errors.TooLargeError) as e:
            self.counters.inc("dropped_invalid_proof")
            log.debug("proof of the peer's state rejected: %s", e)
            if self.upgrade is not None and DataMessage.peek(body).request == self.upgrade.id:
                self.upgrade = None  # the answer to our request: ask again
            return
        self.upgrade = None
        if (fork, length) == (core.fork, core.length) and digest != core.tree_hash():
            # a second signed tree at our fork and length: the writer forked its history
            self.counters.inc("dropped_invalid_proof")
            log.warning("the peer proves another tree at fork %d, length %d", fork, length)
            return
        self.proved = (fork, length)

    def _apply(self, body: bytes, upgrade: bool = False) -> None:
        """Apply a proof, then every waiting proof or run it unblocks, in order."""
        self._apply_one(body, upgrade)
        self._advance()

    def _advance(self) -> None:
        core = self.core
        while True:
            c = core.contiguous_length
            waiting = self.ahead.pop(c, None)
            if waiting is not None:
                for body in waiting:  # the first that verifies is stored
                    self._apply_one(body, False)
                    if core.contiguous_length != c:
                        break
            else:
                ask = self._run_at(c) if self.max_run > 1 else None
                if ask is None or ask.run is None or c == ask.index or not ask.run.complete:
                    return
                self._apply_run(ask)
            if core.contiguous_length == c:
                return

    def _wait(self, index: int, body: bytes, answers_ask: bool) -> bool:
        """Keep a proof of block ``index`` until the blocks before it are here.
        A different proof of a block already waiting waits too (up to
        :data:`CANDIDATES`; the answer to the ask in flight displaces another),
        so a forged proof never pushes out the real one.  False if not kept."""
        waiting = self.ahead.setdefault(index, [])
        if body in waiting:
            self.counters.inc("duplicates")
            return False
        if len(waiting) >= CANDIDATES:
            if not answers_ask:
                self.counters.inc("dropped_unsolicited")
                return False
            waiting.pop()
        waiting.insert(0 if answers_ask else len(waiting), body)
        return True

    def held_bytes(self) -> int:
        """Bytes of proofs and run values received and waiting here."""
        return (sum(len(b) for bodies in self.ahead.values() for b in bodies)
                + sum(ask.run.bytes for ask in self.inflight.values() if ask.run is not None))

    def shed(self, needed: int) -> int:
        """Give back at least ``needed`` bytes of what waits here (a memory
        budget is spent), farthest ahead first: those blocks are asked for
        again.  Returns the bytes given back."""
        freed = 0
        waiting = sorted([(i, "proof") for i in self.ahead] +
                         [(i, "run") for i, a in self.inflight.items()
                          if a.run is not None and a.run.values], reverse=True)
        for index, kind in waiting:
            if freed >= needed:
                break
            ask = self.inflight.get(index)
            if kind == "proof":
                freed += sum(len(b) for b in self.ahead.pop(index))
            elif ask is not None and ask.run is not None:
                freed += ask.run.bytes
                ask.run = batch.Run(ask.run.start, ask.run.count)
            if ask is not None:
                ask.deadline = 0.0   # ask again
                self._mark(ask)
            self.counters.inc("dropped_memory")
        return freed

    def _run_at(self, index: int) -> Optional[Ask]:
        """The in-flight run covering block ``index`` (aligned; most are the size found last)."""
        for size in (self._run_hint, *RUN_SIZES):
            ask = self.inflight.get(index - index % size)
            if ask is not None and ask.run is not None and ask.run.count == size:
                self._run_hint = size
                return ask
        return None

    def _apply_run(self, ask: Ask) -> None:
        """The run's first block is stored and its values are here: the core
        rebuilds the run's tree from them and stores them all if its root is
        the node it holds over the run (batch.py)."""
        core, run = self.core, ask.run
        assert run is not None
        try:
            added = core.apply_run(run.start, run.blocks(core.get))
        except (errors.InvalidProofError, errors.BlockNotAvailableError) as e:
            self.counters.inc("dropped_invalid_proof")
            log.debug("run at %d rejected: %s", run.start, e)
            ask.run = batch.Run(run.start, run.count)  # a wrong value: fetch the run again
            ask.deadline = 0.0
            self._mark(ask)
            return
        self.counters.inc("blocks", added)
        if core.contiguous_length >= run.start + run.count:
            self._finish(ask)
        self._progress()

    def _apply_one(self, body: bytes, upgrade: bool) -> None:
        core = self.core
        before = (core.fork, core.length)
        try:
            result = core.apply_proof(body)
        except errors.BlockNotAvailableError:
            self.counters.inc("proofs_waiting")  # its nodes come with an earlier proof
            index = DataMessage.peek(body).block_index
            if index is not None and not upgrade and self._wait(index, body, False):
                ask = self.inflight.get(index)
                if ask is not None:
                    self._mark(ask)
            return
        except (errors.InvalidProofError, errors.DecodeError, errors.TooLargeError) as e:
            self.counters.inc("dropped_invalid_proof")
            log.debug("proof rejected: %s", e)
            head = DataMessage.peek(body)
            if upgrade:
                # only the answer to our request settles it; a forgery changes nothing
                if self.upgrade is not None and head.request == self.upgrade.id:
                    self.upgrade = None
            else:
                index = head.block_index
                ask = self.inflight.get(index) if index is not None else None
                if ask is not None:
                    ask.deadline = 0.0  # ask again
                    self._mark(ask)
            return
        if upgrade or result.upgraded:
            self.upgrade = None
            if result.upgraded:
                self.proved = (core.fork, core.length)
            if result.reorg or (core.fork, core.length) != before:
                self._reset(result.reorg or core.fork != before[0])
        if result.block_stored:
            self._stored(result.block_index, body)

    def _stored(self, index: Optional[int], body: bytes) -> None:
        if index is None:
            return
        self.ahead.pop(index, None)  # whatever waited for this block was not it
        ask = self.inflight.get(index)
        if ask is not None:
            if ask.run is None:
                self._finish(ask)
            else:  # a run's first block: its proof's nodes are real now, its value verified
                ask.run.first = DataMessage.value(body)
                self._promise(ask.nodes, -1)
                ask.nodes = []
                self._mark(ask)
        self.counters.inc("blocks")
        self._progress()

    def _progress(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.core.contiguous_length)

    def _reset(self, reorg: bool) -> None:
        """The signed tree changed (upgrade or reorg): node plans start over;
        after a reorg nothing received for the old history is kept."""
        contiguous = self.core.contiguous_length
        for index, ask in list(self.inflight.items()):
            if reorg and (ask.run is not None or index >= contiguous):
                del self.inflight[index]
                self._drop(ask)
            elif index >= contiguous:
                ask.deadline = 0.0
        self.promised.clear()
        for ask in self.inflight.values():
            ask.nodes = []
        self.ahead = {} if reorg else {i: b for i, b in self.ahead.items() if i >= contiguous}
        self.next = min(self.next, contiguous)
        for ask in self.inflight.values():
            self._mark(ask)

    def _finish(self, ask: Ask) -> None:
        assert ask.index is not None
        if self.inflight.get(ask.index) is ask:
            del self.inflight[ask.index]
            self._drop(ask)
            self._promise(ask.nodes, -1)
            ask.nodes = []

    def _drop(self, ask: Ask) -> None:
        """Account for ``ask`` leaving :attr:`inflight`."""
        self.held -= ask.size
        self.flight -= ask.missing

    def _mark(self, ask: Ask) -> None:
        """Recount ``ask.missing``, the blocks of its answer not here yet (a
        proof waiting at the contiguous length waits for nothing: missing);
        :attr:`flight`, their sum, is what the window bounds."""
        index, contiguous = ask.index, self.core.contiguous_length
        assert index is not None
        here = index > contiguous and index in self.ahead or (
            ask.run is not None and index < contiguous)
        missing = 0 if here else 1
        if ask.run is not None:
            missing += ask.run.count - 1 - len(ask.run.values)
        self.flight += missing - ask.missing
        ask.missing = missing
