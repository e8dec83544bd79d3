"""Hypercore 11's replication messages (``hypercore/lib/messages.js``, ``wire.*``).

A ``hypercore/alpha`` channel carries ten message types; their bodies are
compact-encoded exactly as hypercore writes them, so a decoded JS message
re-encodes to the same bytes.  sync, request, noData and range are shared
with our UDP/serial wire (sync/wire.py), data is the proof message the core
builds and verifies (encoding.DataMessage).  Decoding treats input as hostile:
every failure is a DecodeError or TooLargeError.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, Iterator, NamedTuple, Tuple, Type

from ...caps import NS_REPLICATE_INITIATOR, NS_REPLICATE_RESPONDER
from ...encoding import DataMessage, Reader, encode_buffer, encode_uint
from ...errors import DecodeError
from ..wire import NoData, Range, Request, Sync

PROTOCOL = "hypercore/alpha"
ALIASES = ("hypercore",)

SYNC, REQUEST, CANCEL, DATA, NO_DATA, WANT, UNWANT, BITFIELD, RANGE, EXTENSION = range(10)
NAMES = ("sync", "request", "cancel", "data", "noData", "want", "unwant", "bitfield", "range",
         "extension")

NOT_AVAILABLE = 1      # noData reasons
INVALID_REQUEST = 2


def capability(initiator: bool, key: bytes, handshake_hash: bytes) -> bytes:
    """What the ``initiator`` (or responder) side of a stream sends to prove it
    knows the core ``key`` (``caps.replicate`` in hypercore)."""
    ns = NS_REPLICATE_INITIATOR if initiator else NS_REPLICATE_RESPONDER
    return hashlib.blake2b(ns + key, digest_size=32, key=handshake_hash).digest()


class Handshake(NamedTuple):
    """The channel-open payload: ``uint flags (1 = seeks) | fixed32 capability``."""

    capability: bytes
    seeks: bool = True

    def encode(self) -> bytes:
        return encode_uint(1 if self.seeks else 0) + self.capability

    @classmethod
    def decode(cls, body: bytes) -> "Handshake":
        r = Reader(body)
        flags = r.uint()
        return cls(r.fixed(32), bool(flags & 1))


class Cancel(NamedTuple):
    request: int

    def encode(self) -> bytes:
        return encode_uint(self.request)

    @classmethod
    def decode(cls, body: bytes) -> "Cancel":
        return cls(Reader(body).uint())


class Want(NamedTuple):
    """Ask a peer which blocks of ``[start, start+length)`` it holds (``any``:
    one of them is enough); unwant withdraws it."""

    start: int
    length: int
    any: bool = False

    def encode(self) -> bytes:
        out = encode_uint(self.start) + encode_uint(self.length)
        return out + b"\x01" if self.any else out

    @classmethod
    def decode(cls, body: bytes) -> "Want":
        r = Reader(body)
        start, length = r.uint(), r.uint()
        flags = 0 if r.done() else r.uint()
        return cls(start, length, bool(flags & 1))


class Unwant(Want):
    pass


class Bitfield(NamedTuple):
    """The blocks a peer holds from ``start`` (a multiple of 32): bit ``i`` of
    the little-endian 32-bit words in ``words`` is block ``start + i``."""

    start: int
    words: bytes

    def encode(self) -> bytes:
        return encode_uint(self.start) + encode_uint(len(self.words) // 4) + self.words

    @classmethod
    def decode(cls, body: bytes) -> "Bitfield":
        r = Reader(body)
        start = r.uint()
        count = r.uint()
        if count > len(body):
            raise DecodeError("a bitfield of %d words in %d bytes" % (count, len(body)))
        return cls(start, r.fixed(4 * count))

    def has(self, index: int) -> bool:
        i = index - self.start
        return 0 <= i < 8 * len(self.words) and bool(self.words[i >> 3] >> (i & 7) & 1)

    def runs(self) -> Iterator[Tuple[int, int]]:
        """The ``[start, end)`` runs of blocks it marks, in order."""
        value = int.from_bytes(self.words, "little")
        pos = self.start
        while value:
            skip = (value & -value).bit_length() - 1    # zeros below the next set bit
            value >>= skip
            pos += skip
            run = (~value & (value + 1)).bit_length() - 1   # ones from here
            yield pos, pos + run
            value >>= run
            pos += run


class Extension(NamedTuple):
    """A named application message; '' means the name sent last time."""

    name: str
    message: bytes

    def encode(self) -> bytes:
        return encode_buffer(self.name.encode()) + self.message

    @classmethod
    def decode(cls, body: bytes) -> "Extension":
        r = Reader(body)
        name = r.buffer().decode("utf-8", "replace")
        return cls(name, bytes(body[r.pos:]))


_CODECS: Dict[int, Type[Any]] = {
    SYNC: Sync, REQUEST: Request, CANCEL: Cancel, DATA: DataMessage, NO_DATA: NoData,
    WANT: Want, UNWANT: Unwant, BITFIELD: Bitfield, RANGE: Range, EXTENSION: Extension,
}


def decode(kind: int, body: bytes) -> Any:
    """The message of type ``kind``, or None for a type hypercore does not
    define (ignored, as a JS peer ignores it).

    :raises DecodeError, TooLargeError: malformed.
    """
    codec = _CODECS.get(kind)
    return None if codec is None else codec.decode(body)
