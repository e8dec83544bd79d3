"""The serial carrier: one envelope per COBS/CRC32 frame on a UART, USB-serial
adapter or RS-485 bus (see :mod:`.framing`), driven from asyncio (Linux).

The port is opened with pyserial (``serial.Serial(path, baud, timeout=0)``,
non-blocking) and read from the event loop with ``loop.add_reader``.  Writes
go through a bounded queue and are paced by a token bucket at ``baud / 10``
bytes per second (start bit + 8 data bits + stop bit), so a real UART's
buffer is never flooded and a pseudo-terminal behaves like the line.  On a
noisy line envelopes go as erasure-coded segments sized to the noise the
peer reports (:mod:`.linkcode`; ``fec=False``: never).

``half_duplex=True`` (RS-485, any shared medium): never start a frame while
bytes are arriving - wait until the line has been idle for ``guard_time`` (a
few byte times + 2 ms; longer while a received frame is incomplete) - and if
bytes arrive while we transmit (a collision), stop sending that frame, back
off a random, growing time and send it again (up to ``max_attempts``).  This
assumes the transceiver does not echo our own bytes back to us; with one that
does, pass ``collision_detect=False``.

A pulled cable that the OS reports (USB-serial unplugged, a PTY whose other
end went away: an OSError/SerialException, or a hang-up) closes the port and
reopens the same path every ``reconnect_interval`` seconds until it works
(counted in ``reconnects``).  Frames queued or in flight then are lost; the
replicator retries.  A cable pulled between two real UARTs is not visible at
all: the bytes just vanish.

URL form: ``serial:///dev/ttyUSB0?baud=115200&half_duplex=1`` (see
:meth:`SerialLink.from_url`).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import importlib
import logging
import os
import random
import select
import time
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, unquote, urlsplit

from .framing import FrameDecoder, encode_frame, max_encoded_size
from .linkcode import HALF_DUPLEX_REPORT_INTERVAL, REPORT_INTERVAL, LinkCoder

log = logging.getLogger(__name__)

DEFAULT_BAUD = 115200
DEFAULT_MTU = 4096
TX_QUEUE_LIMIT = 256 * 1024     # encoded bytes queued before send() drops
RECONNECT_INTERVAL = 0.5
BITS_PER_BYTE = 10              # 8N1: start + 8 data + stop
READ_SIZE = 65536

_OK, _COLLISION, _LOST = 0, 1, 2


def _pyserial() -> Any:
    """The pyserial package (imported on first use; typed as Any)."""
    return importlib.import_module("serial")


class TokenBucket:
    """``rate`` tokens (bytes) per second, at most ``burst`` saved up.
    ``clock`` is injectable for tests."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = float(burst)
        self.clock = clock
        self.tokens = float(burst)
        self.stamp = clock()

    def _refill(self) -> None:
        now = self.clock()
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def available(self) -> int:
        """Whole tokens that may be spent now."""
        self._refill()
        return int(self.tokens)

    def consume(self, n: int) -> None:
        self._refill()
        self.tokens -= n

    def delay(self, n: int) -> float:
        """Seconds until ``min(n, burst)`` tokens are available (0: now)."""
        self._refill()
        want = min(float(n), self.burst)
        return 0.0 if self.tokens >= want else (want - self.tokens) / self.rate


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("not a boolean: %r" % value)


# URL query key -> (SerialLink argument, parser)
_URL_KEYS: Dict[str, Tuple[str, Callable[[str], Any]]] = {
    "mtu": ("mtu", int), "half_duplex": ("half_duplex", _flag),
    "guard_ms": ("guard_time", lambda v: float(v) / 1000.0),
    "collision_detect": ("collision_detect", _flag), "max_attempts": ("max_attempts", int),
    "queue": ("tx_queue_limit", int), "reconnect": ("reconnect_interval", float),
    "burst": ("burst", int), "rtscts": ("rtscts", _flag), "fec": ("fec", _flag)}


class SerialLink:
    """One serial port carrying envelopes of at most ``mtu`` bytes.

    The carrier interface of the replicator: ``await start(on_receive)``,
    ``send(envelope, addr=None)`` (never blocks), ``await close()``, ``mtu``
    and ``counters``.  ``on_receive(envelope, None)`` is called from the event
    loop for every frame whose CRC checks; the address is always None (a
    serial line is point-to-point, or a bus where the envelope says who).
    Use it from the event loop's thread only.

    ``burst``: bytes the pacer may write at once (default 4 ms of line time,
    1.5 ms in half duplex).  ``clock``: the time source of the pacer and the
    guard times; the link sleeps with asyncio, so keep it real monotonic time
    (the pacing itself is tested through :class:`TokenBucket` with a fake one).

    ``counters``: ``frames_rx``/``frames_tx``/``bytes_rx``/``bytes_tx`` (bytes
    on the wire, delimiters and noise included); ``bad_crc``, ``bad_cobs``,
    ``oversize`` (frames received and discarded); ``disconnects``,
    ``reconnects``, ``open_failures``; ``tx_dropped`` (queue full),
    ``tx_lost`` (port down or lost mid-frame), ``tx_oversize`` (empty or over
    ``mtu``); half duplex: ``collisions``, ``tx_retries``,
    ``tx_collision_drops``; ``rx_callback_errors`` (on_receive raised: logged,
    the link goes on); with ``fec`` (default) those of
    :class:`~.linkcode.LinkCoder`.
    """

    def __init__(self, path: str, baud: int = DEFAULT_BAUD, *, mtu: int = DEFAULT_MTU,
                 half_duplex: bool = False, guard_time: Optional[float] = None,
                 collision_detect: bool = True, max_attempts: int = 8,
                 tx_queue_limit: int = TX_QUEUE_LIMIT,
                 reconnect_interval: float = RECONNECT_INTERVAL,
                 burst: Optional[int] = None, rtscts: bool = False, fec: bool = True,
                 clock: Callable[[], float] = time.monotonic,
                 rng: Optional[random.Random] = None) -> None:
        if not 16 <= mtu <= 65535:
            raise ValueError("mtu must be between 16 and 65535")
        if baud <= 0:
            raise ValueError("baud must be > 0")
        self.path = path
        self.baud = int(baud)
        self.mtu = mtu
        self.half_duplex = half_duplex
        self.byte_time = BITS_PER_BYTE / self.baud
        self.guard_time = (4 * self.byte_time + 0.002) if guard_time is None else guard_time
        # an incomplete frame in the receiver keeps the line "busy" this long
        self.partial_timeout = max(10 * self.guard_time, 64 * self.byte_time)
        self.collision_detect = collision_detect
        self.max_attempts = max(1, max_attempts)
        self.tx_queue_limit = tx_queue_limit
        self.reconnect_interval = reconnect_interval
        self.rtscts = rtscts
        self.clock = clock
        self.rng = rng or random.Random()
        rate = self.baud / BITS_PER_BYTE
        if burst is None:
            # half duplex: short chunks, so a peer never mistakes a pause between
            # two of them for an idle line
            burst = max(16, int(rate * (0.0015 if half_duplex else 0.004)))
        self.bucket = TokenBucket(rate, burst, clock)
        self.counters: Dict[str, int] = dict.fromkeys((
            "frames_rx", "frames_tx", "bytes_rx", "bytes_tx", "bad_crc", "bad_cobs", "oversize",
            "reconnects", "disconnects", "open_failures", "tx_dropped", "tx_lost", "tx_oversize",
            "collisions", "tx_retries", "tx_collision_drops", "rx_callback_errors"), 0)
        self._decoder = FrameDecoder(mtu)
        self._coder = LinkCoder(mtu, self.counters, HALF_DUPLEX_REPORT_INTERVAL if half_duplex
                                else REPORT_INTERVAL) if fec else None
        self._ser: Any = None
        self._fd: Optional[int] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._on_receive: Optional[Callable[[bytes, Any], None]] = None
        # envelopes (cut into segments as they go, for the noise known then), reports
        self._queue: Deque[Tuple[bytes, bool]] = collections.deque()
        self._queued_bytes = 0
        self._wakeup: Optional[asyncio.Event] = None
        self._writer_task: Optional[asyncio.Task[None]] = None
        self._reconnect_task: Optional[asyncio.Task[None]] = None
        self._closing = False
        self._started = False
        self._last_rx = -1e9          # clock() of the last byte received
        self._tx_active = False       # between the first and last write of a frame
        self._tx_busy_until = -1e9    # when the bytes written so far are out on the wire
        self._tx_window_end = -1e9    # bytes arriving before this are a collision
        self._gen = 0                 # bumped on every successful open
        self._last_tx_end = -1e9
        self._collided = False
        self._need_prefix = True      # send a 0x00 first: flush the receiver's garbage

    # --- construction from a URL ----------------------------------------------------

    @classmethod
    def from_url(cls, url: str, **overrides: Any) -> "SerialLink":
        """``serial:///dev/ttyUSB0?baud=115200&half_duplex=1``.  Query keys:
        ``baud``, ``mtu``, ``half_duplex``, ``guard_ms``, ``collision_detect``,
        ``max_attempts``, ``queue`` (bytes), ``reconnect`` (seconds), ``burst``,
        ``rtscts``, ``fec``.  Keyword arguments override the URL."""
        parts = urlsplit(url)
        if parts.scheme != "serial":
            raise ValueError("not a serial:// URL: %r" % url)
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValueError("no device path in %r" % url)
        kw: Dict[str, Any] = {}
        baud = DEFAULT_BAUD
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key == "baud":
                baud = int(value)
            elif key in _URL_KEYS:
                name, parse = _URL_KEYS[key]
                kw[name] = parse(value)
            else:
                raise ValueError("unknown serial URL parameter %r" % key)
        if "baud" in overrides:
            baud = overrides.pop("baud")
        kw.update(overrides)
        return cls(path, baud, **kw)

    # --- public interface -----------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._fd is not None

    @property
    def frame_seconds(self) -> float:
        """Line time of a full envelope (10 bits a byte, COBS, CRC and the
        parity segments of a noisy line included)."""
        grow = self._coder.expansion if self._coder is not None else 1.0
        return (self.mtu + self.mtu // 254 + 6) * grow * 10 / self.baud

    @property
    def queued_bytes(self) -> int:
        """Bytes waiting to be written (as whole frames, without parity)."""
        return self._queued_bytes

    async def start(self, on_receive: Callable[[bytes, Any], None]) -> None:
        """Open the port and start reading and writing.  If the port cannot be
        opened now (adapter not plugged in yet), keep trying in the background
        every ``reconnect_interval`` seconds."""
        if self._started:
            raise RuntimeError("SerialLink already started")
        self._started = True
        self._loop = asyncio.get_running_loop()
        self._on_receive = on_receive
        self._wakeup = asyncio.Event()
        if not self._open():
            log.warning("serial %s: cannot open yet, retrying every %.1f s",
                        self.path, self.reconnect_interval)
            self._reconnect_task = self._loop.create_task(self._reconnect(initial=True))
        self._writer_task = self._loop.create_task(self._writer())
        if self._queue:
            self._wakeup.set()

    def send(self, envelope: bytes, addr: Any = None) -> None:
        """Queue one envelope; never blocks.  Dropped (and counted) when the
        link is closed or down (``tx_lost``), empty or larger than
        ``mtu`` (``tx_oversize``), or the queue holds more than ``tx_queue_limit``
        bytes (``tx_dropped``)."""
        c = self.counters
        if not 0 < len(envelope) <= self.mtu:
            c["tx_oversize"] += 1     # (an empty envelope counts here too)
            return
        if self._closing or (self._started and self._fd is None):
            c["tx_lost"] += 1
            return
        size = max_encoded_size(len(envelope))
        if self._queued_bytes + size > self.tx_queue_limit:
            c["tx_dropped"] += 1
            return
        self._queue.append((bytes(envelope), False))
        self._queued_bytes += size
        if self._wakeup is not None:
            self._wakeup.set()

    async def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        for task in (self._writer_task, self._reconnect_task):
            if task is not None and not task.done():
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # pragma: no cover - already logged by the task
                    pass
        self._close_port()
        self._drop_queue("tx_lost")

    # --- the port -------------------------------------------------------------------

    def _open(self) -> bool:
        try:
            ser = _pyserial().Serial(self.path, self.baud, timeout=0, write_timeout=0,
                                     rtscts=self.rtscts)
        except (OSError, ValueError, _pyserial().SerialException) as e:
            self.counters["open_failures"] += 1
            log.debug("serial %s: open failed: %s", self.path, e)
            return False
        self._ser = ser
        self._fd = fd = int(ser.fileno())
        self._gen += 1
        self._decoder.reset()
        if self._coder is not None:
            self._coder.reset()
        self._need_prefix = True
        assert self._loop is not None
        try:
            self._loop.add_reader(fd, self._on_readable)
        except (OSError, ValueError) as e:  # pragma: no cover - e.g. closed under us
            log.warning("serial %s: cannot watch the port: %s", self.path, e)
            self._close_port()
            return False
        if self._wakeup is not None:
            self._wakeup.set()
        return True

    def _close_port(self) -> None:
        fd, ser = self._fd, self._ser
        self._fd = None
        self._ser = None
        if fd is not None and self._loop is not None:
            try:
                self._loop.remove_reader(fd)
                self._loop.remove_writer(fd)
            except Exception:  # pragma: no cover - loop already closed
                pass
        if ser is not None:
            try:
                ser.close()
            except Exception:
                pass

    def _drop_queue(self, counter: str) -> None:
        self.counters[counter] += len(self._queue)
        self._queue.clear()
        self._queued_bytes = 0

    def _port_lost(self, why: object) -> None:
        """The port failed: close it, drop what was queued, reconnect."""
        if self._fd is None:
            return
        log.warning("serial %s: port lost (%s); reopening every %.1f s",
                    self.path, why, self.reconnect_interval)
        self.counters["disconnects"] += 1
        self._close_port()
        self._drop_queue("tx_lost")
        self._decoder.reset()
        if not self._closing and self._loop is not None and (
                self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = self._loop.create_task(self._reconnect(initial=False))

    async def _reconnect(self, initial: bool) -> None:
        while not self._closing and self._fd is None:
            await asyncio.sleep(self.reconnect_interval)
            if self._closing:
                return
            if self._open():
                if not initial:
                    self.counters["reconnects"] += 1
                log.info("serial %s: port open again", self.path)
                return

    def _hung_up(self, fd: int) -> bool:
        try:
            p = select.poll()
            p.register(fd, select.POLLIN)
            return any(ev & (select.POLLHUP | select.POLLERR | select.POLLNVAL)
                       for _, ev in p.poll(0))
        except (OSError, ValueError):
            return True

    # --- receiving ------------------------------------------------------------------

    def _on_readable(self) -> None:
        fd = self._fd
        if fd is None:
            return
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError as e:
            if e.errno == errno.EINTR:
                return
            self._port_lost(e)
            return
        if not data:
            # With VMIN=0 an empty read is not EOF by itself; a hang-up is.
            if self._hung_up(fd):
                self._port_lost("hang-up")
            return
        now = self.clock()
        self._last_rx = now
        c = self.counters
        c["bytes_rx"] += len(data)
        if (self.half_duplex and self.collision_detect
                and (self._tx_active or now < self._tx_window_end)):
            if not self._collided:
                c["collisions"] += 1
            self._collided = True
        dec = self._decoder
        payloads = dec.feed(data)
        c["bad_crc"] = dec.bad_crc
        c["bad_cobs"] = dec.bad_cobs
        c["oversize"] = dec.oversize
        coder = self._coder
        for payload in payloads:
            c["frames_rx"] += 1
            envelope = coder.incoming(payload, now) if coder is not None else payload
            cb = self._on_receive
            if cb is None or envelope is None:
                continue
            try:
                cb(envelope, None)
            except Exception:
                c["rx_callback_errors"] += 1
                log.exception("serial %s: on_receive failed", self.path)
        report = coder.report(c["bytes_rx"], dec.bad_crc + dec.bad_cobs + dec.oversize, now,
                              c["collisions"]) if coder is not None else None
        if report is not None and self._fd is not None:
            self._queue.appendleft((report, True))   # first: it steers how the rest goes
            self._queued_bytes += max_encoded_size(len(report))
            if self._wakeup is not None:
                self._wakeup.set()

    # --- sending --------------------------------------------------------------------

    def _line_busy_for(self) -> float:
        """Seconds to wait before the line counts as idle (half duplex)."""
        idle = self.clock() - self._last_rx
        wait = self.guard_time - idle
        if self._decoder.buffered:
            wait = max(wait, self.partial_timeout - idle)
        return wait

    async def _writer(self) -> None:
        while not self._closing:
            try:
                await self._write_queue()
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug must not leave the link silently mute
                log.exception("serial %s: writer failed; going on", self.path)
                await asyncio.sleep(0.1)

    async def _write_queue(self) -> None:
        assert self._wakeup is not None
        wakeup = self._wakeup
        while not self._closing:
            if not self._queue or self._fd is None:
                wakeup.clear()
                await wakeup.wait()
                continue
            payload, raw = self._queue.popleft()
            self._queued_bytes -= max_encoded_size(len(payload))
            coder = self._coder
            parts: List[bytes] = [payload] if raw or coder is None else coder.outgoing(
                payload, self.clock())
            for part in parts:
                if not await self._send_frame(encode_frame(part)):
                    break

    async def _send_frame(self, frame: bytes) -> bool:
        """Transmit one frame, again after collisions; whether it went."""
        attempt = 0
        while not self._closing:
            attempt += 1
            result = await self._transmit(frame)
            if result == _OK:
                self.counters["frames_tx"] += 1
                return True
            if result == _LOST:
                self.counters["tx_lost"] += 1
                return False
            # collision
            self._need_prefix = True
            if attempt >= self.max_attempts:
                self.counters["tx_collision_drops"] += 1
                return False
            self.counters["tx_retries"] += 1
            slot = max(0.002, 64 * self.byte_time)
            await asyncio.sleep(self.guard_time
                                + self.rng.uniform(0, 2 ** min(attempt, 6)) * slot)
        return False

    async def _transmit(self, frame: bytes) -> int:
        """Write one frame paced by the bucket.  _OK, _COLLISION or _LOST."""
        if self.half_duplex:
            while True:
                wait = self._line_busy_for()
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
        fd = self._fd
        gen = self._gen
        if fd is None:
            return _LOST
        now = self.clock()
        if self._need_prefix or self.half_duplex or now - self._last_tx_end > 0.02:
            frame = b"\x00" + frame
        self._need_prefix = False
        self._collided = False
        self._tx_active = True
        bucket = self.bucket
        chunk_min = max(1, int(bucket.burst) // 2)
        view = memoryview(frame)
        pos, n = 0, len(frame)
        try:
            while pos < n:
                if self.half_duplex and self._collided:
                    return _COLLISION
                delay = bucket.delay(min(n - pos, chunk_min))
                if delay > 0:
                    await asyncio.sleep(delay)
                    continue
                if self._gen != gen or self._fd is None:
                    return _LOST
                k = min(n - pos, max(1, bucket.available()))
                try:
                    written = os.write(fd, view[pos:pos + k])
                except BlockingIOError:
                    await self._writable(fd, gen)
                    continue
                except OSError as e:
                    if e.errno == errno.EINTR:
                        continue
                    self._port_lost(e)
                    return _LOST
                if written <= 0:
                    await self._writable(fd, gen)
                    continue
                bucket.consume(written)
                pos += written
                self.counters["bytes_tx"] += written
                now = self.clock()
                self._tx_busy_until = max(now, self._tx_busy_until) + written * self.byte_time
                # A peer that heard our last byte answers no sooner than a guard
                # time later: bytes arriving before that collided with ours.
                self._tx_window_end = now + self.guard_time
        finally:
            self._tx_active = False
            self._last_tx_end = self.clock()
        if self.half_duplex:
            # the frame counts as sent once its last byte is out on the wire
            wait = self._tx_busy_until - self.clock()
            if wait > 0:
                await asyncio.sleep(wait)
            if self._collided:
                return _COLLISION
        return _OK

    async def _writable(self, fd: int, gen: int) -> None:
        """Wait (at most 0.5 s) until ``fd`` accepts more bytes."""
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not fut.done():
                fut.set_result(None)

        try:
            loop.add_writer(fd, ready)
        except (OSError, ValueError):
            await asyncio.sleep(0.01)
            return
        try:
            await asyncio.wait_for(fut, 0.5)
        except asyncio.TimeoutError:
            pass
        finally:
            if self._gen == gen and self._fd == fd:
                try:
                    loop.remove_writer(fd)
                except (OSError, ValueError):  # pragma: no cover
                    pass


def open_link(url: str, **overrides: Any) -> SerialLink:
    """Shorthand for :meth:`SerialLink.from_url`."""
    return SerialLink.from_url(url, **overrides)
