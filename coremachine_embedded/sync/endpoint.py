"""The datagram endpoint: serves and pulls cores over links that carry
envelopes (UDP datagrams, serial frames, anything with ``await
start(on_receive)``, ``send(envelope, addr)``, ``mtu`` and ``frame_seconds``,
the line time of a full envelope).

DEV NOTES.  An :class:`Endpoint` holds cores (by discovery key) and links,
and ties together one module per concern:

- ``sessions.py``: who may make us keep state - cookies bound to the source
  address (address validation) and replay windows;
- ``peers.py``: what is kept per core and per validated peer;
- ``outbox.py``: envelope packing and fragmentation;
- ``memory.py``: one budget for all that others make us hold;
- ``serving.py``: the answers to requests and runs, announcements, rate limits;
- ``download.py``: what to request next for a pulled core, and applying answers;
- ``broadcast.py``: signed heads and live blocks on links that fan out (MQTT);
- ``flow.py``: round-trip estimates and retry timing;
- ``congestion.py``: the window of blocks in flight per link, shared by its pulls.

Every envelope is authenticated with the core's wire key.  An envelope that
does not echo the cookie we sent to its source address gets a stateless
answer (our HELLO, no bigger than 3x what it sent) and creates nothing; a peer
is a validated address (link and source address) with the random session id
of its envelopes, and answers are taken only from the peer a request went
to.  Serving: SYNC answers SYNC (fork, signed length), REQUEST answers DATA
or NO_DATA, RUN answers DATA and VALUES; appends are announced to peers that
pull live (the next block pushed to one that holds all).  Pulling: HELLO until
the source answers, then what the core's :class:`Download` plans, retried as
``flow.py`` says (the timer visits pulls with something pending; all per SWEEP).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from .. import errors
from ..core import Core
from ..encoding import Reader
from . import congestion, flow, serving, sessions, wire
from .broadcast import BROADCAST, Fanout
from .counters import Counters
from .download import Ask, Download
from .memory import Memory, default_budget
from .outbox import Message, budget, fragments
from .peers import NO_COOKIE, Entry, Peer, Pulled, SourceStatus, open_envelope, origin

log = logging.getLogger("coremachine_embedded.sync")

PEER_TIMEOUT = 60.0   # a live puller that was silent this long gets no announcements
ANSWERS = frozenset((wire.DATA, wire.VALUES, wire.NO_DATA))   # taken only from the source


class Endpoint:
    """Serves and pulls cores over one or more links.

    :param window: blocks requested and not received yet, per pulled core, at
        most (received ones waiting for an earlier block may hold
        ``download.WAITING`` times more); all the pulls from one peer share
        that link's congestion window (congestion.py).
    :param max_run: blocks per batched run a puller asks for (1 turns runs off).
    :param request_rate: requests per second served to one peer (a run counts as
        one), after a burst of ``serving.REQUEST_BURST``; beyond that they are
        dropped and counted as ``dropped_flood``.
    :param memory: bytes this endpoint may hold for others: fragments, proofs
        waiting, queued answers, peers (memory.py; default: a quarter of the
        board profile's memory budget).
    """

    def __init__(self, window: int = 256, max_run: int = 64,
                 request_rate: float = serving.REQUEST_RATE,
                 memory: Optional[int] = None) -> None:
        self.window = window
        self.request_rate = request_rate
        self.max_run = max(1, min(max_run, wire.MAX_RUN))
        self.counters = Counters()
        self.sessions = sessions.Sessions()
        self.memory = Memory(memory if memory is not None else default_budget())
        self.session = self.sessions.session
        self._counter = 0
        self._entries: Dict[bytes, Entry] = {}
        self._links: List[Any] = []
        self._frag_id = 1
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._timer: Optional["asyncio.Task[None]"] = None
        self._active: Set[Entry] = set()    # pulls the timer visits every tick
        self.links = congestion.Links()     # congestion windows, per peer pulled from
        self._fanout = Fanout(self, self._entries)   # signed heads on fan-out links (MQTT)

    # --- setup ----------------------------------------------------------------------

    async def attach(self, link: Any) -> None:
        """Start a link and route what it receives here."""
        self._loop = asyncio.get_running_loop()
        self._links.append(link)
        await link.start(lambda data, addr: self.receive(link, data, addr))
        self._fanout.attach(link)
        if self._timer is None:
            self._timer = self._loop.create_task(self._tick())

    def serve(self, core: Core) -> None:
        """Answer requests for ``core`` from anyone who knows its key."""
        self._fanout.serve(self._entry(core))

    def download(self, core: Core) -> Optional[Download]:
        """The state of pulling ``core`` here (None if it is not served here)."""
        entry = self._entries.get(core.discovery_key)
        return entry.download if entry is not None else None

    def _entry(self, core: Core) -> Entry:
        dk = core.discovery_key
        entry = self._entries.get(dk)
        if entry is not None and entry.core is not core:
            raise errors.InvalidArgumentError("this endpoint already has a core with this key")
        if entry is None:
            entry = self._entries[dk] = Entry(core, Download(core, self.counters,
                                                              self.max_run))
            self._loop = self._loop or asyncio.get_running_loop()
            entry.unsubscribe = serving.watch(core, self._loop, lambda: self.announce(entry))
        return entry

    async def pull(self, core: Core, link: Any, addr: Any = None, *, live: bool = False,
                   progress: Optional[Callable[[int, int], None]] = None) -> Pulled:
        """Pull ``core`` from the peer at ``addr`` on ``link`` until this replica
        holds the signed length the peer proved (with the writer's signature:
        what it claims unsigned never ends a pull); with ``live``, keep
        following until cancelled.  The core keeps serving what it holds."""
        entry = self._entry(core)
        entry.pulling = True
        entry.live = live
        entry.source = (link, addr)
        entry.caught_up.clear()
        entry.report_progress(progress)
        entry.download.resume()
        self._active.add(entry)
        self._fanout.watch(entry)
        self.hello(entry, link, addr)
        try:
            if live:
                await asyncio.Event().wait()
            await entry.caught_up.wait()
        finally:
            if not live:
                entry.pulling = False
                self._fanout.watch(entry)
            self._link_idle(entry)
        proved = entry.download.proved
        assert proved is not None  # caught_up is set only then
        return Pulled(addr, core.fork, core.length, proved[1])

    def remove(self, core: Core) -> None:
        """Stop serving and pulling ``core`` (the caller cancels its :meth:`pull`)."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core:
            return
        del self._entries[entry.dk]
        self._active.discard(entry)
        self._link_idle(entry)
        self._fanout.forget(entry)
        if entry.unsubscribe:
            entry.unsubscribe()
        entry.pulling = False

    def source_status(self, core: Core) -> Optional[SourceStatus]:
        """What the peer ``core`` is pulled from last said (None: not pulled here)."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core or not entry.pulling:
            return None
        return entry.source_status()

    def ping(self, core: Core) -> bool:
        """HELLO the peer ``core`` is pulled from (it answers with a SYNC, which
        :meth:`source_status` shows); False if ``core`` is not pulled here."""
        entry = self._entries.get(core.discovery_key)
        if entry is None or entry.core is not core or not entry.pulling or entry.source is None:
            return False
        self.hello(entry, *entry.source, entry.source_peer())
        return True

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

    def receive(self, link: Any, data: bytes, addr: Any) -> bool:
        """One envelope from ``addr`` on ``link``; everything invalid is dropped
        and counted.  True if it was authentic, and new from a validated
        address or a greeting we answer."""
        if addr == BROADCAST:
            return self._fanout.receive(data)
        opened = self.open_envelope(data)
        if opened is None:
            return False
        entry, payload = opened
        dk, c = entry.dk, self.counters
        where = origin(link, addr)
        if not self.sessions.valid(dk, where, payload.echo):
            if self.sessions.replayed(dk, payload.session, payload.counter):
                c.inc("dropped_replay")   # (from another address, or before a restart)
                return False
            return self._stateless_answer(entry, link, addr, where, payload, len(data))
        if not self.sessions.fresh(dk, payload.session, payload.counter):
            c.inc("dropped_replay")
            return False
        peer, first = entry.peer(link, addr, payload.session, self.memory)
        greeted = False
        for kind, body in payload.messages:
            greeted = greeted or kind == wire.HELLO
            try:
                self._handle(entry, peer, kind, body)
            except errors.CoreMachineError as e:
                c.inc("dropped_malformed")
                log.debug("bad %d message from %r: %s", kind, addr, e)
        if not peer.ready or (first and greeted):
            # we lack its cookie (we forgot it), or it told us its cookie
            # before it knew that we keep its state: greet it
            self.hello(entry, link, addr, peer)
        elif peer.outbox.messages and not peer.outbox.scheduled:
            self._flush(entry, peer)  # answers held while its cookie was unknown
        entry.next_check = 0.0   # an answer may have made asks due (or asked them again)
        self.pump(entry)
        if entry.source_peer() is peer:
            for waiting in self._link(peer).heard(time.monotonic()):
                self.pump(waiting)   # pulls its answers made room for
        return True

    def open_envelope(self, data: bytes) -> Optional[Tuple[Entry, wire.Payload]]:
        """Count ``data`` and open it: its core and payload, or None (dropped
        and counted: not an envelope, a core we do not have, not sealed with
        its key, malformed, or our own)."""
        return open_envelope(self._entries, self.session, data, self.counters)

    def _stateless_answer(self, entry: Entry, link: Any, addr: Any, where: bytes,
                          payload: wire.Payload, received: int) -> bool:
        """An authentic envelope without our cookie for its source address
        (a first contact, a restart, a spoofed address): nothing is kept.  A
        HELLO is answered with ours, echoing its cookie, and our state (SYNC,
        RANGE); anything else with our HELLO alone, echoing the cookie of the
        peer we know there if any (our secret rotated: it learns the new
        cookie), else nothing (it greets us again).  Never more than
        AMPLIFICATION x its size, nor more than ANSWER_RATE a second.  The
        answer goes out once the carrier has taken the envelope (an MQTT link
        then knows it was authentic and tags the answer for its sender).
        True if it was a greeting that gets an answer."""
        try:
            their = wire.greeting_cookie(payload)
        except errors.DecodeError:
            self.counters.inc("dropped_malformed")
            return False
        self.counters.inc("dropped_stale_cookie" if their is None else "hellos")
        if not self.sessions.may_answer():
            self.counters.inc("unanswered")
            return False
        messages = [self._hello_message(entry, where)]
        if their is None:
            known = entry.peers.get((id(link), addr))
            echo = known.echo if known is not None else NO_COOKIE
        else:
            echo = their
            messages += entry.announcement()
        envelope = self.seal(entry, echo, messages)
        if len(envelope) > sessions.AMPLIFICATION * received:
            return False
        loop = self._loop or asyncio.get_running_loop()
        loop.call_soon(self._count_sent, link.send, envelope, addr)
        return their is not None

    def _handle(self, entry: Entry, peer: Peer, kind: int, body: bytes) -> None:
        msg = wire.decode_message(kind, body)
        if kind in ANSWERS and peer is not entry.source_peer():
            # answers only from the peer the requests went to (address and session)
            self.counters.inc("dropped_unsolicited")
            return
        if kind == wire.HELLO:
            if peer.hellos == 1:  # the answer to our only HELLO: a first RTT (Karn)
                peer.rtt.sample(time.monotonic() - peer.hello_sent)
            peer.hellos = 0
            peer.echo = msg.cookie
            peer.live = bool(msg.flags & wire.HELLO_PULL)
            peer.serves = bool(msg.flags & wire.HELLO_SERVE)
            self.send_sync(entry, peer, force=True)
        elif kind == wire.SYNC:
            core = entry.core
            peer.fork, peer.length = msg.fork, msg.length
            if msg.downloading:
                peer.live = True
            if (msg.remote_length, msg.fork) == (core.length, core.fork):
                peer.told = (core.fork, core.length)  # it knows (it pushed us our new length)
            elif (msg.remote_length, msg.fork) != (core.length, core.fork) or \
                    peer.told != (core.fork, core.length):
                # a wrong remote length: our last SYNC to it was lost - send it again
                self.send_sync(entry, peer, force=msg.remote_length != core.length)
        elif kind == wire.RANGE:
            if not msg.drop and msg.start == 0:
                peer.contiguous = msg.length
        elif kind == wire.REQUEST:
            if self._admit(peer, msg.id):
                answer = serving.answer_request(entry.core, msg, self.counters)
                self._answer(entry, peer, answer)
                if msg.upgrade is not None and answer.resync is None:
                    # take it to hold what the answer gives it, as after a push: a
                    # puller that fell behind is pushed again after one ordinary round
                    peer.length = msg.upgrade[0] + msg.upgrade[1]
        elif kind == wire.RUN:
            if self._admit(peer, msg.id):
                self._answer(entry, peer, serving.answer_run(
                    entry.core, msg, self.counters, budget(peer.link.mtu)))
        elif kind == wire.DATA:
            self._on_data(entry, peer, body)
        elif kind == wire.VALUES:
            self._on_values(entry, peer, msg)
        elif kind == wire.NO_DATA:
            for ask in entry.download.on_no_data(msg.request):
                ask.deadline = time.monotonic() + peer.rtt.rto()
        elif kind == wire.FRAGMENT:
            whole = peer.reassembly.add(msg, self.counters)
            if whole is not None:
                for inner, inner_body in wire.decode_messages(Reader(whole)):
                    if inner != wire.FRAGMENT:
                        self._handle(entry, peer, inner, inner_body)

    # --- serving ---------------------------------------------------------------------

    def send_sync(self, entry: Entry, peer: Peer, force: bool = False) -> None:
        """Queue our state (SYNC, RANGE) for ``peer``, unless told (``force``: again)."""
        core = entry.core
        state = (core.fork, core.length)
        if not force and peer.told == state:
            return
        peer.told = state
        for kind, body in serving.announcement(core, peer.length, entry.pulling):
            self._queue(entry, peer, kind, body)

    def _admit(self, peer: Peer, request: int) -> bool:
        return peer.limit.admit(request, self.request_rate,
                                peer.outbox.full or self.memory.over, self.counters)

    def _answer(self, entry: Entry, peer: Peer, answer: serving.Answer) -> None:
        for kind, body in answer.messages:
            self._queue(entry, peer, kind, body)
        if answer.resync is not None:
            self.send_sync(entry, peer, force=answer.resync)

    def announce(self, entry: Entry) -> None:
        """``entry``'s core changed: tell fan-out links and live pullers; pump."""
        self._fanout.announce(entry)
        now = time.monotonic()
        for peer in list(entry.peers.values()):
            if peer.live and peer.ready and now - peer.last_seen < PEER_TIMEOUT:
                # pushed ahead of the SYNC, in its envelope (serving.push says why)
                proof = serving.push(entry.core, peer.fork, peer.length, budget(peer.link.mtu))
                if proof is not None:
                    self.counters.inc("pushed")
                    self._queue(entry, peer, wire.DATA, proof)
                    peer.length = entry.core.length   # the SYNC tells it so
                self.send_sync(entry, peer)
        self.pump(entry)

    # --- pulling ---------------------------------------------------------------------

    def _hello_message(self, entry: Entry, where: bytes) -> Message:
        flags = wire.HELLO_SERVE | (wire.HELLO_PULL if entry.pulling else 0)
        return wire.HELLO, wire.Hello(flags, self.sessions.cookie(entry.dk, where)).encode()

    def hello(self, entry: Entry, link: Any, addr: Any, peer: Optional[Peer] = None) -> None:
        """Greet the peer at ``addr``: our cookie for its address, queued with
        what goes to it, or alone if we do not know its cookie."""
        if peer is None:
            key = (id(link), addr)
            peer = entry.peers.get(key)
            if peer is None:  # a source we pull from: state we choose to keep
                peer = entry.peers[key] = Peer(link, addr, b"", self.memory)
        peer.hello_sent = time.monotonic()
        peer.hellos += 1
        entry.next_check = min(entry.next_check, peer.hello_sent + flow.hello_backoff(peer.hellos))
        kind, body = self._hello_message(entry, origin(link, addr))
        if peer.ready:
            self._queue(entry, peer, kind, body)
        else:
            self._count_sent(link.send, self.seal(entry, NO_COOKIE, [(kind, body)]), addr)

    def pump(self, entry: Entry) -> None:
        """Send whatever requests pulling ``entry`` needs now."""
        if not entry.pulling:
            return
        peer = entry.source_peer()
        if peer is None or not peer.ready or peer.length < 0:
            return
        download = entry.download
        if (download.room_wanted and download.flight + download.room_wanted > self.window
                and download.claimed == (peer.fork, peer.length)):
            return   # the next run cannot fit in any window before more answers come
        link = self._link(peer)
        flight = download.flight + (download.upgrade is not None)   # (an upgrade counts 1)
        window = link.allow(entry, flight)   # this pull's part of the link's window
        if window > flight:
            if not download.busy:   # this pull waits for answers from now on
                peer.last_answer = time.monotonic()
            run_bytes = flow.RUN_ENVELOPES * budget(peer.link.mtu)
            for ask in download.plan(peer.fork, peer.length, min(self.window, window), run_bytes):
                self._ask(entry, peer, ask)
            link.update(entry, download.flight + (download.upgrade is not None), time.monotonic())
        if not download.caught_up(peer.fork, peer.length):
            return
        if entry.live:
            # tell the source where we are, so that it can push what comes next
            self.send_sync(entry, peer)
        if not entry.caught_up.is_set():
            entry.caught_up.set()
            # What pull() returns on is durable; a live pull's later updates are
            # as durable as the core's setting makes them (batch: within its
            # flush interval) - not one fdatasync per update.
            try:
                entry.core.flush()
            except errors.CoreMachineError:
                pass

    def _ask(self, entry: Entry, peer: Peer, ask: Ask, lost: bool = False) -> None:
        self._active.add(entry)
        kind, body = entry.download.send(ask)
        ask.sent = time.monotonic()
        ask.deadline = flow.deadline(ask.sent, peer.rtt.rto(), ask.tries, lost)
        entry.next_check = min(entry.next_check, ask.deadline)
        self._queue(entry, peer, kind, body)
        if kind == wire.RUN and ask.tries > 1:
            # a retried run goes in two envelopes: one loss does not cost another round
            self._flush(entry, peer)
            self._queue(entry, peer, kind, body)

    def _retry(self, entry: Entry, peer: Peer, asks: List[Ask], lost: bool = False) -> None:
        for ask in asks:
            entry.download.retry(ask)
            self._ask(entry, peer, ask, lost=lost)

    def _link(self, peer: Peer) -> congestion.LinkWindow:
        return self.links.of(peer)

    def _link_idle(self, entry: Entry) -> None:
        peer = entry.source_peer()
        if peer is not None:
            self._link(peer).update(entry, 0, time.monotonic())

    def _on_data(self, entry: Entry, peer: Peer, body: bytes) -> None:
        if not entry.pulling:
            self.counters.inc("dropped_unsolicited")
            return
        now = time.monotonic()
        answered = entry.download.on_data(body, pushed_ok=entry.live)  # (from the source)
        rtt = None if answered.sent is None else now - answered.sent
        peer.last_answer = now
        self._link(peer).on_answer(1, rtt, now)
        peer.rtt.answered(rtt)
        if rtt is not None and answered.early:
            self._lost_before(entry, peer, answered.sent)

    def _on_values(self, entry: Entry, peer: Peer, msg: wire.Values) -> None:
        now = time.monotonic()
        answered = entry.download.on_values(msg)
        rtt = None if answered.sent is None else now - answered.sent
        peer.last_answer = now
        self._link(peer).on_answer(len(msg.values), rtt, now)
        peer.rtt.answered(None)   # (a run's answer time includes packing it: no sample)
        if answered.sent is not None:
            self._lost_before(entry, peer, answered.sent)

    def _lost_before(self, entry: Entry, peer: Peer, sent: Optional[float]) -> None:
        assert sent is not None
        lost = entry.retries.lost_before(entry.download, sent)
        if lost:
            self._link(peer).on_loss(len(lost), time.monotonic())
            self._retry(entry, peer, lost, lost=True)

    # --- sending ---------------------------------------------------------------------

    def _queue(self, entry: Entry, peer: Peer, kind: int, body: bytes) -> None:
        room = budget(peer.link.mtu)
        if wire.message_size(body) > room:
            fid = self._frag_id
            self._frag_id += 1
            for part in fragments(fid, kind, body, room):
                self._queue(entry, peer, wire.FRAGMENT, part)
            return
        outbox = peer.outbox
        outbox.add(kind, body)
        if outbox.bytes >= room:  # full envelopes go now: answers stream out
            self._flush(entry, peer, full_only=True)
        if outbox.messages and not outbox.scheduled:
            outbox.scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._scheduled_flush, entry, peer)

    def _scheduled_flush(self, entry: Entry, peer: Peer) -> None:
        peer.outbox.scheduled = False
        self._flush(entry, peer)

    def _flush(self, entry: Entry, peer: Peer, full_only: bool = False) -> None:
        """Send what is queued for ``peer``, packed into envelopes; with
        ``full_only`` the last, unfilled envelope's messages stay queued.
        Nothing goes while we do not know its cookie."""
        if not peer.ready:
            return
        for messages in peer.outbox.pack(budget(peer.link.mtu), full_only):
            self._count_sent(peer.link.send, self.seal(entry, peer.echo, messages), peer.addr)

    def seal(self, entry: Entry, echo: bytes, messages: List[Message]) -> bytes:
        """``messages`` for ``entry``'s core in an envelope echoing ``echo``."""
        self._counter += 1
        payload = wire.encode_payload(self.session, self._counter, echo, messages)
        return wire.seal(entry.wire_key, entry.dk, payload)

    def _count_sent(self, send: Callable[[bytes, Any], None], envelope: bytes,
                    addr: Any) -> None:
        self.counters.inc("tx_envelopes")
        self.counters.inc("tx_bytes", len(envelope))
        send(envelope, addr)

    # --- timers ----------------------------------------------------------------------

    async def _tick(self) -> None:
        """Timers of the pulls with something pending (``_active``), and every
        ``flow.SWEEP`` seconds of every pull (keepalives): a thousand idle pulls
        are not visited every tick.  The memory budget is counted here."""
        swept = 0.0
        pace = flow.Pace()
        while True:
            period = pace.period(bool(self._active))
            before = time.monotonic()
            await asyncio.sleep(period)
            now = time.monotonic()
            if pace.stalled(now - before - period):
                continue
            self.sessions.rotate(now)
            self.memory.count(now, list(self._entries.values()), len(self.sessions.windows),
                              self.counters)
            if now - swept >= flow.SWEEP:
                swept = now
                self.links.sweep(now)
                entries = [e for e in self._entries.values() if e.pulling]
            else:   # the pending ones, when something of theirs may be due
                entries = [e for e in self._active if now >= e.next_check]
            for entry in entries:
                try:
                    self._timeouts(entry, now)
                except errors.CoreMachineError as e:  # a core that failed: report, go on
                    self.counters.inc("errors")
                    log.warning("sync of %s: %s", entry.dk.hex()[:16], e)
                # (a swept one not in _active has had nothing in flight since)
                if entry in self._active and not entry.visited(now):
                    self._active.discard(entry)

    def _timeouts(self, entry: Entry, now: float) -> None:
        if not entry.pulling or entry.source is None:
            return
        link, addr = entry.source
        peer = entry.source_peer()
        if peer is None or not peer.ready or peer.length < 0:
            # no answer to our HELLO yet, or the SYNC answering it was lost
            if peer is None or flow.hello_due(now, peer.hello_sent, peer.hellos):
                self.hello(entry, link, addr, peer)
            return
        # A source quiet for KEEPALIVE may have lost our answers: ask it; any
        # other needs a SYNC per LIVE_REFRESH only (to keep pushing to us).
        since = now - entry.last_keepalive
        if entry.live and (since > flow.LIVE_REFRESH or (
                since > flow.KEEPALIVE and now - peer.last_seen > flow.KEEPALIVE)):
            entry.last_keepalive = now
            self.send_sync(entry, peer, force=True)
        download = entry.download
        if not download.busy:
            return
        # Timeouts are for a quiet link, so a backlog of answers is not taken
        # for losses (on a slow serial line the gap between two full frames is
        # not quiet), nor what comes for other cores pulled from this peer
        # ahead of ours (unless this core waited far longer than they do).
        wait = max(peer.rtt.rto(), flow.QUIET_FRAMES * peer.link.frame_seconds)
        link = self._link(peer)
        quiet = (now - link.last_heard > wait
                 or now - peer.last_answer > wait * flow.OTHERS_PATIENCE)
        up = download.upgrade
        retried = up is not None and now > up.deadline and quiet
        if up is not None and retried:
            peer.rtt.timed_out()
            self._retry(entry, peer, [up])
        expired = entry.retries.expired(download, now, peer.rtt.rto(), quiet)
        if expired:
            self.counters.inc("timeouts", len(expired))
            peer.rtt.timed_out()
            link.on_loss(len(expired), now)
            self._retry(entry, peer, expired)
        if retried or expired:   # (every envelope received pumps already)
            self.pump(entry)
