"""One replication stream with a Hypercore peer over any asyncio stream pair
(TCP, a Unix socket, an SSH channel, a serial byte pipe): the secret-stream,
protomux channels, the capability check, keepalives and limits.

What a channel carries is not decided here: each ``hypercore/alpha`` channel
belongs to a *handler* (peer.py) that the connection asks for by discovery
key (:attr:`Connection.lookup`) when the peer opens a channel, or that opened
the channel itself (:meth:`Connection.open_channel`).  A handler has ``key``
(the core key, for the capability) and ``on_open(conn, channel)``,
``on_message(type, body)``, ``on_close()``.

Everything a peer gets wrong is counted in :attr:`Connection.counters`; what
cannot be trusted any more (a broken handshake, frame or protomux message, a
wrong capability, too many malformed messages) closes the connection, and
nothing else: the other connections of a server go on.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from ...encoding import encode_uint
from ...errors import CapabilityError, CoreMachineError, DecodeError, ProtocolError
from ..counters import Counters
from . import messages, protomux
from .noise import KeyPair
from .secretstream import MAX_FRAME, SecretStream

log = logging.getLogger("coremachine_embedded.sync.hyper")

READ_SIZE = 1 << 18            # bytes read from the stream at a time
KEEPALIVE = 5.0                # seconds of silence before we send an empty frame (as hypercore)
TIMEOUT = 30.0                 # seconds without a byte from the peer before we close
MAX_MALFORMED = 64             # malformed messages tolerated on one connection
BATCH_BYTES = 1 << 20          # outgoing bytes queued before they are sealed and written
HIGH_WATER = 1 << 20           # bytes waiting to go out before we stop answering requests
BATCH_MESSAGES = 16            # answers per protomux batch frame (see flush)
BATCH_MAX_BYTES = 1 << 16      # and their bytes (a batch of big blocks goes one by one)
BATCHED = frozenset((messages.DATA, messages.NO_DATA))   # the answers to requests
ALIASES = {alias: messages.PROTOCOL for alias in messages.ALIASES}
_TX = ["tx_" + name for name in messages.NAMES]


class Connection:
    """A replication stream.  ``initiator``: we connected (Noise initiator).

    :param lookup: the handler for a core the peer opens a channel for (by
        discovery key), or None to reject it.
    :param key_pair: our static Noise key pair (random by default).
    :param keepalive: seconds of silence before an empty frame goes out.
    :param timeout: seconds without anything from the peer before closing
        (0: never).
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 initiator: bool, lookup: Callable[[bytes], Any] = lambda dk: None, *,
                 key_pair: Optional[KeyPair] = None, counters: Optional[Counters] = None,
                 keepalive: float = KEEPALIVE, timeout: float = TIMEOUT,
                 max_frame: int = MAX_FRAME) -> None:
        self.reader = reader
        self.writer = writer
        self.initiator = initiator
        self.lookup = lookup
        self.counters = counters if counters is not None else Counters()
        self.stream = SecretStream(initiator, key_pair, max_frame=max_frame)
        self.mux = protomux.Mux(ALIASES)
        self.keepalive = keepalive
        self.timeout = timeout
        self.closed = asyncio.Event()
        self.error: Optional[BaseException] = None
        self._out: List[Tuple[int, bytes]] = []     # (channel, type | body) to send
        self._out_bytes = 0
        self._flush_pending = False
        self._ready_waiters: List[Callable[[], None]] = []
        self._last_rx = self._last_tx = time.monotonic()
        self._malformed = 0
        self._drain_waiters: List[Callable[[], None]] = []
        self._draining = False
        self._loop = asyncio.get_running_loop()
        self._quickack = _quickack(writer)

    @property
    def handshake_hash(self) -> bytes:
        return self.stream.handshake_hash

    @property
    def remote_public_key(self) -> bytes:
        return self.stream.remote_public_key

    @property
    def peer_address(self) -> Any:
        return self.writer.get_extra_info("peername")

    # --- running --------------------------------------------------------------------

    async def run(self) -> None:
        """Handshake, then replicate until the peer or :meth:`close` ends it.
        A peer breaking the protocol ends it too (:attr:`error` says how)."""
        timer = self._loop.create_task(self._timers())
        try:
            self._write(self.stream.take_output())
            while not self.closed.is_set():
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
                self._last_rx = time.monotonic()
                self._quickack()
                self.counters.inc("rx_bytes", len(data))
                self._receive(data)
                self.flush()
                # no drain() here: while our answers wait to go out, we keep reading
                # (the peer may be waiting for us to read before it reads ours);
                # handlers hold requests back while we are congested instead
        except (ConnectionError, OSError) as e:  # the socket failed
            self.error = self.error or e
        finally:
            timer.cancel()
            await self._shutdown()

    def when_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once the handshake is done (now if it is)."""
        if self.stream.handshake_done:
            callback()
        else:
            self._ready_waiters.append(callback)

    def close(self, error: Optional[BaseException] = None) -> None:
        """End the connection (``error``: why, when the peer broke something)."""
        if error is not None and self.error is None:
            self.error = error
            self.counters.inc("closed_" + getattr(error, "code", "error").lower())
            log.info("closing %s: %s", self.peer_address, error)
        if not self.closed.is_set():
            self.closed.set()
            self.flush()
            self.writer.close()
            self.reader.feed_eof()  # wakes the read loop

    async def _shutdown(self) -> None:
        self.closed.set()
        for ch in self.mux.channels():
            self.mux.close(ch)
            if ch.user is not None:
                ch.user.on_close()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def _timers(self) -> None:
        while True:
            await asyncio.sleep(min(self.keepalive, self.timeout or self.keepalive) / 2)
            now = time.monotonic()
            if self.timeout and now - self._last_rx > self.timeout:
                self.close(ProtocolError("no data from the peer for %.0f s" % self.timeout))
                return
            if self.stream.ready and now - self._last_tx > self.keepalive:
                self.stream.keepalive()
                self._write(self.stream.take_output())

    # --- receiving ------------------------------------------------------------------

    def _receive(self, data: bytes) -> None:
        was_done = self.stream.handshake_done
        try:
            frames = self.stream.feed(data)
        except CoreMachineError as e:
            self.counters.inc("dropped_stream")
            self.close(e)
            return
        if not was_done and self.stream.handshake_done:
            waiters, self._ready_waiters = self._ready_waiters, []
            for callback in waiters:
                callback()
        closed = self.closed
        for frame in frames:
            if closed.is_set():
                return
            if 0 < frame[0] < 0xFD and len(frame) > 1 and frame[1] < 0xFD:
                # the common case, a message on a channel: no decoder objects
                self._on_channel_message(frame[0], frame[1], frame[2:])
                continue
            try:
                events = protomux.decode(frame)
            except DecodeError as e:
                self.counters.inc("dropped_malformed")
                self.close(ProtocolError("malformed protomux message: %s" % e))
                return
            for event in events:
                self._dispatch(event)

    def _on_channel_message(self, remote_id: int, kind: int, body: bytes) -> None:
        ch = self.mux.channel(remote_id)
        if ch is None or ch.user is None:
            self.counters.inc("dropped_unknown_channel")
            return
        try:
            ch.user.on_message(kind, body)
        except ProtocolError as e:
            self.close(e)
        except CoreMachineError as e:
            self.malformed(e)

    def _dispatch(self, event: protomux.Event) -> None:
        if isinstance(event, protomux.Message):
            self._on_channel_message(event.remote_id, event.type, event.body)
            return
        try:
            if isinstance(event, protomux.Open):
                self._on_open(event)
            elif isinstance(event, protomux.Close):
                ch = self.mux.on_close(event)
                if ch is not None and ch.user is not None:
                    ch.user.on_close()
            else:
                ch = self.mux.on_reject(event)
                if ch is not None and ch.user is not None:
                    self.counters.inc("channels_rejected")
                    ch.user.on_close()
        except ProtocolError as e:
            self.close(e)
        except (DecodeError, CoreMachineError) as e:
            self.malformed(e)

    def malformed(self, error: BaseException) -> None:
        """A message that could not be used: counted; too many close the connection."""
        self.counters.inc("dropped_malformed")
        self._malformed += 1
        log.debug("malformed message from %s: %s", self.peer_address, error)
        if self._malformed > MAX_MALFORMED:
            self.close(ProtocolError("more than %d malformed messages" % MAX_MALFORMED))

    def _on_open(self, event: protomux.Open) -> None:
        ch = self.mux.on_open(event)   # paired with our open of the same core, or None
        if ch is None:
            handler = None
            ident = event.id or b""
            if ALIASES.get(event.protocol, event.protocol) != messages.PROTOCOL:
                self.counters.inc("dropped_unknown_protocol")
            elif len(ident) != 32:
                self.counters.inc("dropped_malformed")
            else:
                handler = self.lookup(ident)
                if handler is None:
                    self.counters.inc("dropped_unknown_core")
            if handler is None:
                self._queue(0, self.mux.reject(event)[1:])
                return
            ch = self._open(handler, ident)   # pairs with the peer's open
        handler = ch.user
        hs = messages.Handshake.decode(ch.remote_handshake)
        if hs.capability != messages.capability(not self.initiator, handler.key,
                                                self.handshake_hash):
            self.counters.inc("dropped_capability")
            raise CapabilityError("the peer sent a wrong capability for %s (it does not "
                                  "know the core key)" % (ch.id or b"").hex()[:16])
        self.counters.inc("channels_opened")
        handler.on_open(self, ch)

    # --- channels -------------------------------------------------------------------

    def open_channel(self, handler: Any, discovery_key: bytes) -> None:
        """Open a channel for ``handler``'s core (once the handshake is done)."""
        def go() -> None:
            if self.mux.find(messages.PROTOCOL, discovery_key) is None:
                self._open(handler, discovery_key)
        self.when_ready(go)

    def _open(self, handler: Any, discovery_key: bytes) -> protomux.Channel:
        cap = messages.capability(self.initiator, handler.key, self.handshake_hash)
        ch, msg = self.mux.open(messages.PROTOCOL, discovery_key,
                                messages.Handshake(cap, seeks=False).encode())
        ch.user = handler
        self._queue(0, msg[1:])
        self.schedule_flush()
        return ch

    # --- sending --------------------------------------------------------------------

    def send(self, ch: protomux.Channel, kind: int, body: bytes) -> None:
        """Queue a message on ``ch`` (sent at the next flush, batched)."""
        if ch.closed or self.closed.is_set():
            return
        self._queue(ch.local_id, encode_uint(kind) + body)
        self.counters.inc(_TX[kind])

    def _queue(self, channel: int, item: bytes) -> None:
        self._out.append((channel, item))
        self._out_bytes += len(item)
        if self._out_bytes >= BATCH_BYTES:
            self.flush()

    def schedule_flush(self) -> None:
        """Flush soon (messages queued outside of a read, e.g. on an append)."""
        if not self._flush_pending:
            self._flush_pending = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Seal what is queued, in one call and one write.

        Runs of answers (data, noData) go out as protomux batches of at most
        BATCH_MESSAGES and BATCH_MAX_BYTES: a JS reader processes a batch
        corked, so its next requests leave in one frame and one socket write,
        not one each (half its socket writes per block), and a bounded batch
        leaves most of its 48 requests in flight meanwhile.  Everything else
        goes alone: a JS writer answers a batch of our requests corked too,
        all at once when the last is ready, which slowed our pulls."""
        self._flush_pending = False
        out, self._out, self._out_bytes = self._out, [], 0
        if out:
            self.stream.send(protomux.encode_frames(out, BATCH_MESSAGES, BATCH_MAX_BYTES,
                                                     BATCHED))
        self._write(self.stream.take_output())  # with handshake messages, if any

    @property
    def congested(self) -> bool:
        """Our answers are piling up unsent: hold new requests back."""
        transport = self.writer.transport
        return transport.get_write_buffer_size() > HIGH_WATER

    def when_drained(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once what waits to go out has drained."""
        self._drain_waiters.append(callback)
        if not self._draining:
            self._draining = True
            self._loop.create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.congested and not self.closed.is_set():
                await self.writer.drain()
        except (ConnectionError, OSError):
            return
        finally:
            self._draining = False
        waiters, self._drain_waiters = self._drain_waiters, []
        for callback in waiters:
            callback()
        self.flush()

    def _write(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.counters.inc("tx_bytes", len(data))
            self._last_tx = time.monotonic()
            self.writer.write(data)

    def stats(self) -> Dict[str, int]:
        return dict(self.counters)


def _quickack(writer: asyncio.StreamWriter) -> Callable[[], None]:
    """A function acknowledging what was read at once (Linux TCP_QUICKACK),
    or doing nothing.  A peer with Nagle's algorithm on (Node's default) holds
    its next small write until our ACK; a delayed ACK (up to 40 ms) after a
    message we do not answer, such as a sync, would stall its next request."""
    sock = writer.get_extra_info("socket")
    option = getattr(socket, "TCP_QUICKACK", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return lambda: None

    def quickack() -> None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, option, 1)
        except OSError:
            pass
    return quickack
