"""The sync wire format, version 1 (docs/protocol.md).

An *envelope* is what one UDP datagram or one serial frame carries::

    u8 version (1) | discovery key (32) | nonce (24) | XChaCha20-Poly1305(payload) (+16 tag)

The AEAD key is the core's *wire key*, ``BLAKE2b-256(key=core key,
"coremachine-embedded/wire/1")``, and the version byte and discovery key are
authenticated as associated data: knowing the core key is the read capability,
as in Hypercore.  The payload::

    fixed8 sender session | uint counter | fixed8 echo cookie | message*
    message = uint type | buffer body

Message bodies reuse Hypercore's encodings (sync 0, request 1, data 3, noData 4,
range 8) plus four of ours: HELLO 16 (``uint flags | fixed8 cookie``), FRAGMENT
17 (``uint id | uint part | uint parts | raw chunk``) for messages larger than one
envelope, and for batched transfer (see batch.py) RUN 18 (``uint id | uint fork
| uint start | uint size | uint nodes [| buffer wanted]``) answered by the DATA of the first
block and VALUES 19 (``uint request | uint first | array(buffer)``) with the
values of the others.  All decoding treats input as hostile.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, List, NamedTuple, Optional, Tuple

from .. import _backend, caps
from ..encoding import Reader, encode_buffer, encode_buffers, encode_uint
from ..errors import DecodeError

VERSION = caps.WIRE_VERSION
NONCE = caps.AEAD_NONCE
TAG = caps.AEAD_TAG
HEADER = 1 + 32
OVERHEAD = HEADER + NONCE + TAG
MAX_PAYLOAD = 1 << 16            # one envelope's plaintext, at most
MAX_MESSAGE = 16 << 20           # a reassembled message, at most

SYNC, REQUEST, CANCEL, DATA, NO_DATA, RANGE = 0, 1, 2, 3, 4, 8
HELLO, FRAGMENT, RUN, VALUES = 16, 17, 18, 19
TYPES = {SYNC, REQUEST, CANCEL, DATA, NO_DATA, RANGE, HELLO, FRAGMENT, VALUES, RUN}
MAX_RUN = caps.MAX_RUN   # blocks in one RUN request

HELLO_PULL = 1    # the sender pulls: tell it about new lengths (live)
PUSHED = 0        # the request id of a DATA nobody asked for: a push to a live puller
HELLO_SERVE = 2   # the sender serves this core

_impl = _backend.impl


def wire_key(core_key: bytes) -> bytes:
    """The AEAD key of a core's sync traffic, derived from its key."""
    return hashlib.blake2b(b"coremachine-embedded/wire/1", digest_size=32, key=core_key).digest()


def seal(key: bytes, discovery_key: bytes, payload: bytes) -> bytes:
    """One envelope around ``payload``."""
    header = bytes((VERSION,)) + discovery_key
    nonce = os.urandom(NONCE)
    sealed: bytes = _impl.aead_seal(key, nonce, header, payload)
    return header + nonce + sealed


def peek(envelope: bytes) -> Optional[bytes]:
    """The discovery key an envelope names, or None if it is not a v1 envelope."""
    if len(envelope) < OVERHEAD or envelope[0] != VERSION:
        return None
    return bytes(envelope[1:HEADER])


def unseal(key: bytes, envelope: bytes) -> Optional[bytes]:
    """The payload, or None if the envelope was not sealed with ``key`` (or was altered)."""
    if len(envelope) < OVERHEAD or len(envelope) > OVERHEAD + MAX_PAYLOAD:
        return None
    return _impl.aead_open(key, bytes(envelope[HEADER:HEADER + NONCE]),
                           bytes(envelope[:HEADER]), bytes(envelope[HEADER + NONCE:]))


class Payload(NamedTuple):
    session: bytes
    counter: int
    echo: bytes
    messages: List[Tuple[int, bytes]]


def encode_messages(messages: List[Tuple[int, bytes]]) -> bytes:
    return b"".join(encode_uint(kind) + encode_buffer(body) for kind, body in messages)


def decode_messages(r: Reader) -> List[Tuple[int, bytes]]:
    """Messages up to the end; unknown types are skipped (a newer peer may send more)."""
    messages = []
    while not r.done():
        kind = r.uint()
        body = r.buffer()
        if kind in TYPES:
            messages.append((kind, body))
    return messages


def encode_payload(session: bytes, counter: int, echo: bytes,
                   messages: List[Tuple[int, bytes]]) -> bytes:
    return session + encode_uint(counter) + echo + encode_messages(messages)


def message_size(body: bytes) -> int:
    """Bytes a message takes in a payload."""
    n = len(body)
    return n + (2 if n <= 0xFC else 1 + len(encode_uint(n)))


def decode_payload(data: bytes) -> Payload:
    r = Reader(data)
    session = r.fixed(8)
    counter = r.uint()
    echo = r.fixed(8)
    return Payload(session, counter, echo, decode_messages(r))


# --- message bodies ---------------------------------------------------------------

class Sync(NamedTuple):
    """Hypercore's sync message."""

    fork: int
    length: int
    remote_length: int = 0
    can_upgrade: bool = True
    uploading: bool = True
    downloading: bool = False
    has_manifest: bool = False
    allow_push: bool = False

    def encode(self) -> bytes:
        flags = ((1 if self.can_upgrade else 0) | (2 if self.uploading else 0)
                 | (4 if self.downloading else 0) | (8 if self.has_manifest else 0)
                 | (16 if self.allow_push else 0))
        return (encode_uint(flags) + encode_uint(self.fork) + encode_uint(self.length)
                + encode_uint(self.remote_length))

    @classmethod
    def decode(cls, body: bytes) -> "Sync":
        r = Reader(body)
        flags = r.uint()
        return cls(r.uint(), r.uint(), r.uint(), bool(flags & 1), bool(flags & 2),
                   bool(flags & 4), bool(flags & 8), bool(flags & 16))


class Request(NamedTuple):
    """Hypercore's request message (block and/or upgrade; hash/seek decoded only)."""

    id: int
    fork: int
    block: Optional[Tuple[int, int]] = None          # (index, nodes)
    upgrade: Optional[Tuple[int, int]] = None        # (start, length)
    manifest: bool = False
    hash: Optional[Tuple[int, int]] = None
    seek: Optional[Tuple[int, int]] = None
    priority: int = 0

    def encode(self) -> bytes:
        flags = ((1 if self.block else 0) | (2 if self.hash else 0) | (4 if self.seek else 0)
                 | (8 if self.upgrade else 0) | (16 if self.manifest else 0)
                 | (32 if self.priority else 0))
        out = [encode_uint(flags), encode_uint(self.id), encode_uint(self.fork)]
        for part in (self.block, self.hash, self.seek, self.upgrade):
            if part:
                out += [encode_uint(part[0]), encode_uint(part[1])]
        if self.priority:
            out.append(encode_uint(self.priority))
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes) -> "Request":
        r = Reader(body)
        flags = r.uint()
        rid = r.uint()
        fork = r.uint()
        parts: List[Optional[Tuple[int, int]]] = []
        for bit in (1, 2, 4, 8):
            parts.append((r.uint(), r.uint()) if flags & bit else None)
        priority = r.uint() if flags & 32 else 0
        return cls(rid, fork, parts[0], parts[3], bool(flags & 16), parts[1], parts[2], priority)


class NoData(NamedTuple):
    """Hypercore's noData: ``reason`` 1 not available, 2 invalid request."""

    request: int
    reason: int = 0

    def encode(self) -> bytes:  # the flags are always written, as hypercore does
        if not self.reason:
            return encode_uint(self.request) + b"\x00"
        return encode_uint(self.request) + encode_uint(1) + encode_uint(self.reason)

    @classmethod
    def decode(cls, body: bytes) -> "NoData":
        r = Reader(body)
        request = r.uint()
        reason = 0
        if not r.done() and r.uint() & 1:
            reason = r.uint()
        return cls(request, reason)


class Range(NamedTuple):
    """Hypercore's range: the sender holds blocks [start, start+length)."""

    start: int
    length: int
    drop: bool = False

    def encode(self) -> bytes:
        flags = (1 if self.drop else 0) | (2 if self.length == 1 else 0)
        out = encode_uint(flags) + encode_uint(self.start)
        return out if self.length == 1 else out + encode_uint(self.length)

    @classmethod
    def decode(cls, body: bytes) -> "Range":
        r = Reader(body)
        flags = r.uint()
        start = r.uint()
        return cls(start, 1 if flags & 2 else r.uint(), bool(flags & 1))


class Hello(NamedTuple):
    flags: int
    cookie: bytes    # what the receiver must echo from now on

    def encode(self) -> bytes:
        return encode_uint(self.flags) + self.cookie

    @classmethod
    def decode(cls, body: bytes) -> "Hello":
        r = Reader(body)
        flags = r.uint()
        return cls(flags, r.fixed(8))


def greeting_cookie(payload: Payload) -> Optional[bytes]:
    """The cookie of the HELLO in ``payload`` (the last one), None if it has
    none; raises DecodeError for a malformed HELLO."""
    their = None
    for kind, body in payload.messages:
        if kind == HELLO:
            their = Hello.decode(body).cookie
    return their


class Fragment(NamedTuple):
    id: int
    part: int
    parts: int
    chunk: bytes

    def encode(self) -> bytes:
        return encode_uint(self.id) + encode_uint(self.part) + encode_uint(self.parts) + self.chunk

    @classmethod
    def decode(cls, body: bytes) -> "Fragment":
        r = Reader(body)
        fid, part, parts = r.uint(), r.uint(), r.uint()
        if parts == 0 or part >= parts or parts > MAX_MESSAGE // 64:
            raise DecodeError("fragment %d of %d" % (part, parts))
        return cls(fid, part, parts, bytes(body[r.pos:]))


class Run(NamedTuple):
    """Blocks ``[start, start+size)`` (``size`` a power of two, ``start`` a
    multiple of it); ``nodes`` are the levels the first block's proof needs.
    ``wanted``, on a retry, is a bitmap (bit k of byte k//8 = block start+k)
    of what is still missing: bit 0 the first block's DATA, the others its
    VALUES; without it the whole run is sent."""

    id: int
    fork: int
    start: int
    size: int
    nodes: int
    wanted: Optional[bytes] = None

    def encode(self) -> bytes:
        head = b"".join(encode_uint(x) for x in self[:5])
        return head if self.wanted is None else head + encode_buffer(self.wanted)

    @classmethod
    def decode(cls, body: bytes) -> "Run":
        r = Reader(body)
        fields = (r.uint(), r.uint(), r.uint(), r.uint(), r.uint())
        wanted = r.buffer() if r.pos < len(body) else None
        run = cls(*fields, wanted=wanted)
        if run.size == 0 or run.size > MAX_RUN or run.size & (run.size - 1) or \
                run.start % run.size or run.start >= 1 << 60:
            raise DecodeError("run of %d blocks at %d" % (run.size, run.start))
        if wanted is not None and len(wanted) != (run.size + 7) // 8:
            raise DecodeError("a wanted bitmap of %d bytes for %d blocks" % (len(wanted), run.size))
        return run

    def wants(self, k: int) -> bool:
        """Whether block ``start + k`` is asked for."""
        return self.wanted is None or bool(self.wanted[k >> 3] >> (k & 7) & 1)


class Values(NamedTuple):
    """The values of blocks ``first, first+1, ...`` answering RUN ``request``."""

    request: int
    first: int
    values: List[bytes]

    def encode(self) -> bytes:
        return b"".join((encode_uint(self.request), encode_uint(self.first),
                         encode_uint(len(self.values)), encode_buffers(self.values)))

    @classmethod
    def decode(cls, body: bytes) -> "Values":
        r = Reader(body)
        request, first, count = r.uint(), r.uint(), r.uint()
        if count > MAX_RUN or first >= 1 << 60:
            raise DecodeError("%d values at %d" % (count, first))
        return cls(request, first, r.buffers(count))


def decode_message(kind: int, body: bytes) -> Any:
    """The decoded body of a message type we act on (raises DecodeError)."""
    if kind == SYNC:
        return Sync.decode(body)
    if kind == REQUEST:
        return Request.decode(body)
    if kind == NO_DATA:
        return NoData.decode(body)
    if kind == RANGE:
        return Range.decode(body)
    if kind == HELLO:
        return Hello.decode(body)
    if kind == FRAGMENT:
        return Fragment.decode(body)
    if kind == RUN:
        return Run.decode(body)
    if kind == VALUES:
        return Values.decode(body)
    return body  # DATA stays encoded: the core decodes and verifies it
