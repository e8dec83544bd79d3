"""Signed heads and live blocks on carriers that fan out (MQTT), for an
:class:`~coremachine_embedded.sync.endpoint.Endpoint`.

A writer publishes, whenever its core changes, two envelopes: its *head* (a
Hypercore upgrade proof from length 0 with the signature and the manifest; the
broker retains it) and the *live* block (the proof of the first new block with
the upgrade from the length it published before).  Both prove themselves: a
replica applies the live block when it is at that length (no round trip), an
empty replica applies the head, and any other replica checks the head against
the writer's signature in a scratch core in memory (:func:`verify_head`) and
then asks its server for the rest.  Nothing here trusts the sender: these
envelopes carry no session or cookie, a replay is a duplicate, and only what
verifies is stored.  (A link restores a retained head someone replaced.)

A link that fans out has ``broadcasts = True``, ``watch(dk, roles)``,
``broadcast(envelope, kind)`` and an ``on_connect`` callback slot; it hands
envelopes from the fan-out topics to the endpoint with the address
:data:`BROADCAST`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set, Tuple

from .. import errors
from ..core import Core
from ..encoding import DataMessage
from ..storage import CREATE
from . import wire

if TYPE_CHECKING:
    from .endpoint import Endpoint
    from .peers import Entry

log = logging.getLogger("coremachine_embedded.sync")

BROADCAST = "@broadcast"   # the address of an envelope from a fan-out topic


class _MemoryFile:
    def __init__(self) -> None:
        self.data = bytearray()

    def read(self, size: int, offset: int) -> bytes:
        return bytes(self.data[offset:offset + size])

    def write(self, data: bytes, offset: int) -> None:
        if len(self.data) < offset:
            self.data.extend(bytes(offset - len(self.data)))
        self.data[offset:offset + len(data)] = data

    def truncate(self, size: int) -> None:
        del self.data[size:]
        self.data.extend(bytes(size - len(self.data)))

    def size(self) -> int:
        return len(self.data)

    def sync(self) -> None:
        pass  # a scratch core: nothing to make durable

    def lock(self) -> None:
        pass  # nobody else sees it

    def close(self) -> None:
        pass


class _MemoryStorage:
    def __init__(self) -> None:
        self.files: Dict[str, _MemoryFile] = {}

    def open(self, name: str, flags: int = 0) -> _MemoryFile:
        if name not in self.files:
            if not flags & CREATE:
                raise errors.StoreNotFoundError("no %s" % name)
            self.files[name] = _MemoryFile()
        return self.files[name]


def verify_head(core: Core, head: bytes) -> Tuple[int, int]:
    """``(fork, length)`` that ``head`` (an upgrade proof from 0) proves with
    the signature of ``core``'s writer; ``core`` is not touched.

    :raises InvalidProofError, DecodeError: it does not verify.
    """
    scratch = Core(storage=_MemoryStorage(), key=core.key, compat=core.compat,
                   durability="none")
    try:
        scratch.apply_proof(head)
        return scratch.fork, scratch.length
    finally:
        scratch.close()


class _State:
    """What the fan-out knows of one core."""

    def __init__(self) -> None:
        self.serving = False                          # served explicitly (answers req)
        self.published: Optional[Tuple[int, int]] = None  # (fork, length) last broadcast
        self.head: Tuple[int, int] = (-1, -1)         # a verified head beyond our length


class Fanout:
    """The endpoint's side of fan-out links (see module docstring).

    It drives ``endpoint`` through its public methods only: ``seal`` (an
    envelope with the endpoint's session and next counter), ``announce`` (a
    core changed), ``send_sync``, ``hello`` and ``pump``, ``open_envelope``;
    ``entries`` is the endpoint's map of cores by discovery key (read, never
    changed here)."""

    def __init__(self, endpoint: "Endpoint", entries: Dict[bytes, "Entry"]) -> None:
        self.ep = endpoint
        self.entries = entries
        self.links: List[Any] = []    # the attached links that fan out
        self._states: Dict[bytes, _State] = {}

    def _state(self, entry: "Entry") -> _State:
        st = self._states.get(entry.dk)
        if st is None:
            st = self._states[entry.dk] = _State()
        return st

    def head_of(self, entry: "Entry") -> Optional[Tuple[int, int]]:
        """The newest (fork, length) a verified head showed for ``entry``, if any."""
        st = self._states.get(entry.dk)
        return st.head if st is not None and st.head[1] >= 0 else None

    # --- subscriptions ----------------------------------------------------------------

    def attach(self, link: Any) -> None:
        if not getattr(link, "broadcasts", False):
            return
        self.links.append(link)
        link.on_connect = lambda: self.connected(link)
        for entry in list(self.entries.values()):
            self._watch_on(entry, link)

    def serve(self, entry: "Entry") -> None:
        self._state(entry).serving = True
        self.watch(entry)
        self.announce(entry)

    def watch(self, entry: "Entry") -> None:
        """(Re)subscribe ``entry``'s topics on every fan-out link."""
        for link in self.links:
            self._watch_on(entry, link)

    def forget(self, entry: "Entry") -> None:
        """``entry`` left the endpoint: its topics are unsubscribed."""
        self._states.pop(entry.dk, None)
        for link in self.links:
            link.unwatch(entry.dk)

    def _watch_on(self, entry: "Entry", link: Any) -> None:
        roles: Set[str] = set()
        if self._state(entry).serving or entry.core.writable:
            roles.add("serve")
        if entry.core.writable:
            roles.add("writer")
        if entry.pulling and entry.source is not None and entry.source[0] is link:
            roles.add("pull")
            if entry.live:
                roles.add("live")
        link.watch(entry.dk, roles)

    # --- a writer publishes -----------------------------------------------------------

    def announce(self, entry: "Entry", links: Optional[List[Any]] = None,
                 force: bool = False) -> None:
        """A writer's core changed: publish its head, and the live block."""
        core = entry.core
        links = self.links if links is None else links
        if not core.writable or not links:
            return
        st = self._state(entry)
        state = (core.fork, core.length)
        if state[1] == 0 or (state == st.published and not force):
            return
        try:
            live = None
            before = st.published
            if before is not None and before[0] == state[0] and before[1] < state[1]:
                live = self._seal(entry, core.proof(block=before[1],
                                                    upgrade=(before[1], state[1] - before[1])))
            head = self._seal(entry, core.proof(upgrade=(0, state[1]), manifest=True))
        except errors.CoreMachineError as e:  # a core that failed: report, go on
            self.ep.counters.inc("errors")
            log.warning("head of %s: %s", entry.dk.hex()[:16], e)
            return
        st.published = state
        for link in links:
            if live is not None:
                link.broadcast(live, "live")
            link.broadcast(head, "head")
        self.ep.counters.inc("tx_broadcasts", len(links) * (2 if live else 1))

    def _seal(self, entry: "Entry", proof: bytes) -> bytes:
        return self.ep.seal(entry, bytes(8), [(wire.DATA, proof)])

    # --- a link came (back) -----------------------------------------------------------

    def connected(self, link: Any) -> None:
        """``link`` (re)connected: what was sent while it was down is lost, so
        publish heads again, tell live peers our length, and retry at once."""
        ep = self.ep
        ep.counters.inc("reconnects")
        for entry in list(self.entries.values()):
            self.announce(entry, [link], force=True)
            for peer in entry.peers.values():
                if peer.link is link:
                    peer.told = None
            if entry.pulling and entry.source is not None and entry.source[0] is link:
                download = entry.download
                for ask in download.inflight.values():
                    ask.deadline = 0.0
                if download.upgrade is not None:
                    download.upgrade.deadline = 0.0
                entry.last_keepalive = 0.0
                self._nudge(entry)
            ep.announce(entry)

    def _nudge(self, entry: "Entry") -> None:
        """Ask the source for its state now (a newer head was seen, or the link is back)."""
        ep = self.ep
        if entry.source is None:
            return
        peer = entry.source_peer()
        if peer is not None and peer.ready:
            ep.send_sync(entry, peer, force=True)
        else:
            ep.hello(entry, entry.source[0], entry.source[1], peer)

    # --- receiving --------------------------------------------------------------------

    def receive(self, data: bytes) -> bool:
        """An envelope from a fan-out topic: only signed proofs are taken."""
        ep, c = self.ep, self.ep.counters
        c.inc("rx_broadcasts")
        opened = ep.open_envelope(data)
        if opened is None:
            return False
        entry, payload = opened
        for kind, body in payload.messages:
            if kind != wire.DATA:
                c.inc("dropped_unsolicited")
                continue
            try:
                self._on_signed(entry, body)
            except errors.CoreMachineError as e:
                c.inc("dropped_malformed")
                log.debug("bad broadcast for %s: %s", entry.dk.hex()[:16], e)
        return True

    def _on_signed(self, entry: "Entry", body: bytes) -> None:
        ep, c, core = self.ep, self.ep.counters, entry.core
        msg = DataMessage.decode(body)
        if msg.upgrade is None or not entry.pulling:
            c.inc("dropped_unsolicited")
            return
        start, count = msg.upgrade[0], msg.upgrade[1]
        claim = (msg.fork, start + count)
        st = self._state(entry)
        if claim <= (core.fork, core.length):
            c.inc("duplicates")  # nothing we do not hold already
            return
        # claim is newer than what we hold, so another fork is a newer one
        if start == (core.length if msg.fork == core.fork else 0):
            before = (core.fork, core.length)
            entry.download.on_broadcast(body)  # verified, or dropped_invalid_proof
            if (core.fork, core.length) != before:
                c.inc("broadcasts_applied")
            ep.pump(entry)
        elif start == 0:
            if claim <= st.head:
                c.inc("duplicates")  # a head we verified already
                return
            try:
                head = verify_head(core, body)
            except (errors.InvalidProofError, errors.DecodeError, errors.TooLargeError) as e:
                c.inc("dropped_invalid_proof")
                log.debug("head for %s rejected: %s", entry.dk.hex()[:16], e)
                return
            c.inc("heads_verified")
            st.head = max(st.head, head)
            self._nudge(entry)
        else:
            c.inc("broadcasts_skipped")  # a live block for another length: the head follows
