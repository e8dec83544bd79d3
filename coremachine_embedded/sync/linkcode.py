"""Adaptive erasure coding of envelopes on noisy serial lines (the link side
of :class:`~.serial.SerialLink`): an envelope goes whole on a clean line and,
once the peer reports noise, as segments plus parity segments (:mod:`.fec`),
any ``k`` of the ``k + m`` rebuilding it, with ``k``, ``m`` and the segment
size chosen from the byte error rate the receiver reports.

Frame payloads on a serial line (inside COBS + CRC-32, :mod:`.framing`)::

    0x01 ...   a whole envelope (wire version 1), as before
    0xC1 seq(u16 LE) k(u8) m(u8) index(u8) length(u16 LE) chunk
               segment ``index`` of envelope ``seq``: data when index < k,
               parity after; ``length`` = envelope bytes; every chunk is
               ceil(length / k) bytes (the last data chunk zero-padded)
    0xC2 rx_bytes(u32 LE) good_bytes(u32 LE) bad_frames(u32 LE)
               a receiver's cumulative counters (mod 2^32): bytes received,
               bytes in frames whose CRC checked, frames dropped (less
               those a collision on a shared line explains)

The sender estimates the noise as bad frames per byte of exposure (a bad
frame counts half its bytes: the first hit comes on average before its
middle), forgetting old evidence with a 16 KiB half-life, so segments shrink
within a few reports of noise and grow back, up to whole frames, on a clean
line.  See docs/protocol.md ("Noisy serial lines").
"""
from __future__ import annotations

import math
import struct
from collections import OrderedDict, deque
from typing import Deque, Dict, List, Optional, Tuple

from .fec import MAX_SHARDS, decode, encode

SEGMENT = 0xC1
REPORT = 0xC2
SEGMENT_HEAD = 8                # type, seq, k, m, index, length
SEGMENT_OVERHEAD = SEGMENT_HEAD + 4 + 2   # + CRC-32, COBS code byte, delimiter
REPORT_SIZE = 13
MAX_DATA_SHARDS = 128
MIN_CHUNK = 24
MAX_CHUNK = 1024
WHOLE_FRAME_LOSS = 0.01         # send whole frames while one would be lost less often
ENVELOPE_LOSS = 0.003           # aim: an envelope is lost at most this often
HALF_LIFE = 16384.0             # bytes of exposure after which old evidence weighs half
MAX_RATE = 0.05                 # a byte error rate beyond this is taken as this
PENDING_SETS = 16               # envelopes being rebuilt at once
_SEG = struct.Struct("<BHBBBH")
_REPORT = struct.Struct("<BIII")


# --- choosing the code ------------------------------------------------------------------

def _tail_ok(n: int, m: int, q: float) -> bool:
    """P(more than ``m`` of ``n`` chunks lost, each with probability q) <= ENVELOPE_LOSS."""
    if q <= 0:
        return True
    term = (1 - q) ** n       # P(X = 0)
    total = term
    for x in range(1, m + 1):
        term *= (n - x + 1) / x * q / (1 - q)
        total += term
    return 1 - total <= ENVELOPE_LOSS


def plan(n: int, rate: float, max_chunk: int = MAX_CHUNK) -> Optional[Tuple[int, int]]:
    """``(k, m)`` for an envelope of ``n`` bytes at ``rate`` errors a byte, or
    None: send it whole.  The chunk size minimises header overhead plus loss
    (the optimum of (L - h) / L * (1 - p)^L is L = (h + sqrt(h^2 + 4h/p)) / 2),
    at most ``max_chunk`` (a segment must fit the peer's mtu)."""
    rate = min(rate, MAX_RATE)
    if rate * (n + 6) <= WHOLE_FRAME_LOSS:
        return None
    h = SEGMENT_OVERHEAD
    best = (h + math.sqrt(h * h + 4 * h / rate)) / 2 - h
    chunk = min(max_chunk, max(MIN_CHUNK, min(MAX_CHUNK, int(best))))
    k = max(1, min(MAX_DATA_SHARDS, -(-n // chunk)))
    size = -(-n // k)
    q = 1 - (1 - rate) ** (size + h)
    m = 1
    while k + m < MAX_SHARDS and not _tail_ok(k + m, m, q):
        m += 1
    return k, m


class NoiseEstimate:
    """The byte error rate of the line towards the peer, from its reports."""

    def __init__(self) -> None:
        self.events = 0.0
        self.exposure = 0.0
        self.last = (0, 0, 0)         # counters start at 0 when a link opens
        self.reports = 0

    @property
    def rate(self) -> float:
        return self.events / self.exposure if self.exposure > 0 else 0.0

    def report(self, rx: int, good: int, bad: int) -> None:
        """A REPORT's cumulative counters arrived."""
        self.reports += 1
        last, self.last = self.last, (rx, good, bad)
        d_rx, d_good, d_bad = ((a - b) & 0xFFFFFFFF for a, b in zip((rx, good, bad), last))
        if d_rx > 1 << 30 or d_bad > 1 << 30:   # counters went back: the peer restarted
            return
        exposure = d_good + max(0, d_rx - d_good) / 2
        keep = 0.5 ** (exposure / HALF_LIFE)
        self.events = self.events * keep + d_bad
        self.exposure = self.exposure * keep + exposure

    def silent(self) -> None:
        """No report for a long while though we sent: assume it got worse."""
        self.events = max(2 * self.events, 1.0)
        self.exposure = max(self.exposure, 1.0)


def encode_report(rx: int, good: int, bad: int) -> bytes:
    """A REPORT payload (the counters taken mod 2^32)."""
    return _REPORT.pack(REPORT, rx & 0xFFFFFFFF, good & 0xFFFFFFFF, bad & 0xFFFFFFFF)


def decode_report(payload: bytes) -> Tuple[int, int, int]:
    """``(rx_bytes, good_bytes, bad_frames)`` of a REPORT payload."""
    if len(payload) != REPORT_SIZE:
        raise ValueError("bad REPORT size")
    _, rx, good, bad = _REPORT.unpack(payload)
    return rx, good, bad


def segments(envelope: bytes, seq: int, k: int, m: int) -> List[bytes]:
    """The SEGMENT payloads of ``envelope`` (numbered ``seq``)."""
    return [_SEG.pack(SEGMENT, seq & 0xFFFF, k, m, i, len(envelope)) + chunk
            for i, chunk in enumerate(encode(envelope, k, m))]


class Assembler:
    """Puts envelopes together from segments; ``add`` returns one when its
    ``k``-th distinct segment arrives.  At most :data:`PENDING_SETS` sets are
    held (the oldest given up first); a segment whose header does not add up
    raises ValueError."""

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self.sets: "OrderedDict[Tuple[int, int, int, int], Dict[int, bytes]]" = OrderedDict()
        self.done: Deque[Tuple[int, int, int, int]] = deque(maxlen=64)
        self.abandoned = 0
        self.recovered = 0     # envelopes rebuilt with parity

    def add(self, payload: bytes) -> Optional[bytes]:
        if len(payload) <= SEGMENT_HEAD:
            raise ValueError("short SEGMENT")
        _, seq, k, m, index, length = _SEG.unpack_from(payload)
        chunk = payload[SEGMENT_HEAD:]
        if (k == 0 or k + m > MAX_SHARDS or index >= k + m or not 0 < length <= self.max_length
                or len(chunk) != -(-length // k)):
            raise ValueError("SEGMENT header does not add up")
        key = (seq, k, m, length)
        if key in self.done:
            return None
        chunks = self.sets.get(key)
        if chunks is None:
            chunks = self.sets[key] = {}
            while len(self.sets) > PENDING_SETS:
                self.sets.popitem(last=False)
                self.abandoned += 1
        chunks[index] = chunk
        if len(chunks) < k:
            return None
        del self.sets[key]
        self.done.append(key)
        if any(i >= k for i in chunks):
            self.recovered += 1
        return decode(chunks, k, length)

    def reset(self) -> None:
        self.sets.clear()
        self.done.clear()


REPORT_INTERVAL = 0.25          # seconds between two reports of a receiver that saw noise
HALF_DUPLEX_REPORT_INTERVAL = 1.0   # (each report contends for a shared line)
REPORT_TIMEOUTS = 4             # no report for this many intervals...
SILENT_BYTES = 8192             # ...while we sent this much: assume the line got worse
COUNTERS = ("fec_tx", "segments_tx", "fec_rx", "fec_recovered", "fec_abandoned",
            "fec_malformed", "reports_tx", "reports_rx", "report_timeouts",
            "chunk_shrunk", "chunk_grown")


class LinkCoder:
    """The coding state of one serial link, both ways.  ``counters`` is the
    link's dict (the keys of :data:`COUNTERS` are added): ``fec_tx``/
    ``segments_tx`` envelopes sent as segments and the segments,
    ``fec_rx``/``fec_recovered`` envelopes rebuilt and those that needed
    parity, ``fec_abandoned`` (a set given up: more than
    :data:`PENDING_SETS` in progress), ``fec_malformed`` (a segment or report
    that does not add up: dropped), ``reports_tx``/``reports_rx``,
    ``report_timeouts``, ``chunk_shrunk``/``chunk_grown`` (the segment size
    for a full envelope changed)."""

    def __init__(self, mtu: int, counters: Dict[str, int],
                 report_interval: float = REPORT_INTERVAL) -> None:
        self.mtu = mtu
        self.max_chunk = min(MAX_CHUNK, mtu - SEGMENT_HEAD)   # a segment fits a frame
        self.report_interval = report_interval
        self.counters = counters
        for key in COUNTERS:
            counters.setdefault(key, 0)
        self.noise = NoiseEstimate()
        self.assembler = Assembler(mtu)
        self.seq = 0
        self.good_bytes = 0           # bytes of frames whose CRC checked
        self.noise_frames = 0         # frames dropped, less those a collision explains
        self.last_report_tx = -1e9
        self.last_report_rx = 0.0
        self.sent_since_report = 0
        self.chunk = mtu              # segment size for a full envelope now...
        self.expansion = 1.0          # ...and line bytes per byte of it (>= 1)

    # --- sending ----------------------------------------------------------------------

    def outgoing(self, envelope: bytes, now: float) -> List[bytes]:
        """The frame payloads that carry ``envelope``: itself, until the peer
        has reported noise."""
        noise = self.noise
        if noise.reports:
            self.sent_since_report += len(envelope)
            if (now - self.last_report_rx > REPORT_TIMEOUTS * self.report_interval
                    and self.sent_since_report > SILENT_BYTES):
                self.counters["report_timeouts"] += 1
                self.last_report_rx = now
                noise.silent()
                self._resized()
        code = plan(len(envelope), noise.rate, self.max_chunk) if noise.reports else None
        if code is None:
            return [envelope]
        self.seq = (self.seq + 1) & 0xFFFF
        out = segments(envelope, self.seq, *code)
        self.counters["fec_tx"] += 1
        self.counters["segments_tx"] += len(out)
        return out

    def _resized(self) -> None:
        """The estimate changed: the code of a full envelope now."""
        code = plan(self.mtu, self.noise.rate, self.max_chunk)
        chunk = self.mtu if code is None else -(-self.mtu // code[0])
        if chunk < self.chunk:
            self.counters["chunk_shrunk"] += 1
        elif chunk > self.chunk:
            self.counters["chunk_grown"] += 1
        self.chunk = chunk
        self.expansion = 1.0 if code is None else (
            sum(code) * (chunk + SEGMENT_OVERHEAD) / self.mtu)

    # --- receiving --------------------------------------------------------------------

    def incoming(self, payload: bytes, now: float) -> Optional[bytes]:
        """A frame's payload arrived: the envelope to deliver, if any."""
        self.good_bytes += len(payload) + 6
        kind = payload[0]
        if kind not in (SEGMENT, REPORT):
            return payload
        c = self.counters
        try:
            if kind == REPORT:
                rx, good, bad = decode_report(payload)
                c["reports_rx"] += 1
                self.last_report_rx = now
                self.sent_since_report = 0
                self.noise.report(rx, good, bad)
                self._resized()
                return None
            envelope = self.assembler.add(payload)
        except ValueError:
            c["fec_malformed"] += 1
            return None
        c["fec_abandoned"] = self.assembler.abandoned
        c["fec_recovered"] = self.assembler.recovered
        if envelope is not None:
            c["fec_rx"] += 1
        return envelope

    def report(self, rx_bytes: int, bad_frames: int, now: float,
               collisions: int = 0) -> Optional[bytes]:
        """A REPORT to send now, if one is due: we have seen noise, and the
        last report is ``report_interval`` old.  On a shared line each
        collision we saw spoiled about one frame we received: that is not
        noise (parity does not help against it), so those are not counted."""
        self.noise_frames = max(self.noise_frames, bad_frames - collisions)
        if not self.noise_frames or now - self.last_report_tx < self.report_interval:
            return None
        self.last_report_tx = now
        self.counters["reports_tx"] += 1
        return encode_report(rx_bytes, self.good_bytes, self.noise_frames)

    def reset(self) -> None:
        """The port was reopened: half-received envelopes are gone."""
        self.assembler.reset()
