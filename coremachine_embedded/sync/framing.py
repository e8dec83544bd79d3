"""Frames for byte streams (UART, USB-serial, RS-485): COBS + CRC32 + 0x00.

One frame on the line is::

    COBS(payload + CRC32(payload) as 4 bytes little-endian)  0x00

COBS (Cheshire & Baker, "Consistent Overhead Byte Stuffing", 1999) removes
every 0x00 from the body at a cost of one byte per 254, so 0x00 only ever
appears as the delimiter: a receiver that lost its place (noise, a dropped or
inserted byte, a cable plugged in mid-frame) discards what it has at the next
0x00 and is in step again from the following frame on.  An empty frame (two
0x00 in a row) is idle fill and is ignored without being counted; senders may
put a 0x00 *before* a frame to flush whatever garbage the receiver holds.
Payloads are 1 byte or more (see :func:`encode_frame`).

This module also runs on MicroPython (tested with the unix port): it uses only
bytes/bytearray operations and ``binascii.crc32`` (or a 16-entry table when a
port lacks it); annotations are never evaluated there and ``typing`` is only
imported for type checkers.
"""

TYPE_CHECKING = False   # mypy takes this name as True; nothing from typing is imported at run time
if TYPE_CHECKING:
    from typing import Dict, List, Optional, Union

try:
    from binascii import crc32 as _crc32
except ImportError:  # pragma: no cover - MicroPython ports built without it
    _crc32 = None  # type: ignore[assignment]

_TABLE16 = (
    0x00000000, 0x1DB71064, 0x3B6E20C8, 0x26D930AC, 0x76DC4190, 0x6B6B51F4,
    0x4DB26158, 0x5005713C, 0xEDB88320, 0xF00F9344, 0xD6D6A3E8, 0xCB61B38C,
    0x9B64C2B0, 0x86D3D2D4, 0xA00AE278, 0xBDBDF21C,
)

MAX_FRAME = 1024      # default largest payload a decoder accepts
CRC_SIZE = 4


def crc32(data: bytes) -> int:
    """CRC-32 (IEEE 802.3, as zlib/binascii) of ``data``, unsigned."""
    if _crc32 is not None:
        return _crc32(data) & 0xFFFFFFFF
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        crc = (crc >> 4) ^ _TABLE16[crc & 15]
        crc = (crc >> 4) ^ _TABLE16[crc & 15]
    return crc ^ 0xFFFFFFFF


def _crc_bytes(data: bytes) -> bytes:
    c = crc32(data)
    return bytes((c & 0xFF, (c >> 8) & 0xFF, (c >> 16) & 0xFF, (c >> 24) & 0xFF))


def cobs_encode(data: bytes) -> bytes:
    """COBS-encode ``data`` (no delimiter added).  The output holds no 0x00
    and is at most ``len(data) + len(data) // 254 + 1`` bytes."""
    out = bytearray()
    n = len(data)
    i = 0
    last_full = False   # the previous block was a full 254-byte block (code 0xFF)
    while True:
        j = data.find(b"\x00", i)
        end = n if j < 0 else j
        while end - i >= 254:
            out.append(0xFF)
            out += data[i:i + 254]
            i += 254
            last_full = True
        if j < 0:
            if not (last_full and i == n):
                out.append(end - i + 1)
                out += data[i:end]
            return bytes(out)
        out.append(end - i + 1)
        out += data[i:end]
        i = end + 1
        last_full = False


def cobs_decode(data: bytes) -> bytes:
    """Decode one COBS block sequence (without the delimiter).  Raises
    ValueError when ``data`` is not valid COBS (a 0x00 inside, or a code byte
    that points past the end)."""
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        if code == 0:
            raise ValueError("0x00 inside a COBS frame")
        end = i + code
        if end > n:
            raise ValueError("COBS code points past the end of the frame")
        block = data[i + 1:end]
        if b"\x00" in block:
            raise ValueError("0x00 inside a COBS frame")
        out += block
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


def max_encoded_size(payload_size: int) -> int:
    """Largest encoded frame (delimiter included) for a payload of this size."""
    n = payload_size + CRC_SIZE
    return n + n // 254 + 2


def encode_frame(payload: bytes) -> bytes:
    """One frame: COBS(payload + CRC32-LE(payload)) + 0x00.  The payload must
    not be empty: CRC32 of nothing is 0, so four 0x00 bytes (which noise can
    make out of a run of 0x01 code bytes) would pass as an empty frame -
    receivers reject empty payloads instead."""
    payload = bytes(payload)
    if not payload:
        raise ValueError("empty payload")
    return cobs_encode(payload + _crc_bytes(payload)) + b"\x00"


def decode_frame(frame: bytes) -> bytes:
    """The payload of one frame (delimiter optional).  Raises ValueError for
    a bad frame."""
    if frame and frame[-1] == 0:
        frame = frame[:-1]
    raw = cobs_decode(frame)
    if len(raw) <= CRC_SIZE or _crc_bytes(raw[:-CRC_SIZE]) != raw[-CRC_SIZE:]:
        raise ValueError("bad CRC")
    return raw[:-CRC_SIZE]


class FrameDecoder:
    """Incremental decoder: ``feed(data)`` returns the payloads of the frames
    completed by ``data``, oldest first.

    A bad frame is counted and dropped: ``bad_cobs`` (not valid COBS),
    ``bad_crc`` (CRC mismatch, or too short to hold a CRC and one payload
    byte), ``oversize``
    (more bytes than a payload of ``max_frame`` can encode to: the bytes are
    discarded as they come until the next 0x00, so an endless stream without
    a delimiter never holds more than ``max_encoded_size(max_frame)`` bytes).
    ``frames`` counts good frames, ``bytes_in`` every byte fed.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self.max_frame = max_frame
        self._limit = max_encoded_size(max_frame) - 1   # without the delimiter
        self._buf = bytearray()
        self._skip = False
        self.frames = 0
        self.bad_crc = 0
        self.bad_cobs = 0
        self.oversize = 0
        self.bytes_in = 0

    @property
    def buffered(self) -> int:
        """Bytes of the frame in progress held now."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget the frame in progress (e.g. after the port was reopened)."""
        self._buf = bytearray()
        self._skip = False

    def _append(self, chunk: "Union[bytes, bytearray]") -> None:
        if self._skip:
            return
        if len(self._buf) + len(chunk) > self._limit:
            self.oversize += 1
            self._buf = bytearray()
            self._skip = True
            return
        self._buf += chunk

    def _finish(self) -> "Optional[bytes]":
        """End the frame in progress: its payload, or None."""
        frame = self._buf
        skipped = self._skip
        self._buf = bytearray()
        self._skip = False
        if skipped or not frame:
            return None
        try:
            raw = cobs_decode(bytes(frame))
        except ValueError:
            self.bad_cobs += 1
            return None
        if len(raw) <= CRC_SIZE:          # no room for a CRC and a payload byte
            self.bad_crc += 1
            return None
        payload = raw[:-CRC_SIZE]
        if _crc_bytes(payload) != raw[-CRC_SIZE:]:
            self.bad_crc += 1
            return None
        if len(payload) > self.max_frame:  # short enough encoded, still too long
            self.oversize += 1
            return None
        self.frames += 1
        return payload

    def feed(self, data: "Union[bytes, bytearray, memoryview]") -> "List[bytes]":
        """Consume ``data`` (bytes, bytearray or memoryview)."""
        if not isinstance(data, (bytes, bytearray)):
            data = bytes(data)
        out = []  # type: List[bytes]
        n = len(data)
        self.bytes_in += n
        pos = 0
        while pos < n:
            j = data.find(b"\x00", pos)
            if j < 0:
                self._append(data[pos:])
                break
            if j > pos:
                self._append(data[pos:j])
            payload = self._finish()
            if payload is not None:
                out.append(payload)
            pos = j + 1
        return out

    def stats(self) -> "Dict[str, int]":
        return {"frames": self.frames, "bad_crc": self.bad_crc,
                "bad_cobs": self.bad_cobs, "oversize": self.oversize,
                "bytes_in": self.bytes_in}
