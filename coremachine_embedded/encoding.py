"""Hypercore's compact encoding, and the ``data`` message that carries proofs.

``uint`` is compact-encoding's varint (``<= 0xfc`` one byte, then ``fd``/``fe``/``ff``
followed by 2/4/8 little-endian bytes) - not LEB128.  Decoding treats input as
hostile: every length is checked and node arrays are capped.

A node is a tuple ``(index, size, hash)``.
"""
from __future__ import annotations

import struct
from typing import List, NamedTuple, Optional, Tuple

from .caps import MAX_MANIFEST, MAX_PROOF_NODES, MAX_SIGNATURE, MAX_SIGNERS
from .errors import DecodeError, InvalidArgumentError, TooLargeError

Node = Tuple[int, int, bytes]

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
ONE_BYTE = [bytes((n,)) for n in range(0xFD)]   # the one-byte uints, made once


def encode_uint(n: int) -> bytes:
    if 0 <= n <= 0xFC:
        return ONE_BYTE[n]
    if n < 0:
        raise InvalidArgumentError("a uint cannot be negative: %d" % n)
    if n <= 0xFFFF:
        return b"\xfd" + _U16.pack(n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + _U32.pack(n)
    if n <= 0xFFFFFFFFFFFFFFFF:
        return b"\xff" + _U64.pack(n)
    raise TooLargeError("integer does not fit 64 bits")


def encode_buffer(b: bytes) -> bytes:
    return encode_uint(len(b)) + b


def encode_buffers(buffers: List[bytes]) -> bytes:
    """The buffers one after another, each behind its length (a run's values)."""
    return b"".join([ONE_BYTE[len(b)] + b if len(b) <= 0xFC else encode_buffer(b)
                     for b in buffers])


def encode_nodes(nodes: List[Node]) -> bytes:
    out = [encode_uint(len(nodes))]
    for index, size, hash_ in nodes:
        out.append(encode_uint(index))
        out.append(encode_uint(size))
        out.append(hash_)
    return b"".join(out)


class Reader:
    """Bounds-checked reader over untrusted bytes."""

    __slots__ = ("buf", "pos")

    def __init__(self, buf: bytes) -> None:
        self.buf = buf
        self.pos = 0

    def uint(self) -> int:
        buf = self.buf
        pos = self.pos
        if pos >= len(buf):
            raise DecodeError("message ends inside an integer")
        first = buf[pos]
        if first <= 0xFC:
            self.pos = pos + 1
            return first
        width = 2 if first == 0xFD else 4 if first == 0xFE else 8
        end = pos + 1 + width
        if end > len(buf):
            raise DecodeError("message ends inside an integer")
        self.pos = end
        return int.from_bytes(buf[pos + 1:end], "little")

    def fixed(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise DecodeError("message ends inside a %d-byte field" % n)
        out = self.buf[self.pos:end]
        self.pos = end
        return bytes(out)

    def buffer(self) -> bytes:
        return self.fixed(self.uint())

    def buffers(self, count: int) -> List[bytes]:
        """``count`` buffers in a row: :meth:`buffer` inlined for the one-byte
        lengths a run's values have (the sync hot path)."""
        buf, pos, end = self.buf, self.pos, len(self.buf)
        out = []
        for _ in range(count):
            if pos >= end:
                raise DecodeError("message ends inside an integer")
            n = buf[pos]
            if n > 0xFC:
                self.pos = pos
                n = self.uint()
                pos = self.pos
            else:
                pos += 1
            stop = pos + n
            if stop > end:
                raise DecodeError("message ends inside a %d-byte field" % n)
            out.append(bytes(buf[pos:stop]))
            pos = stop
        self.pos = pos
        return out

    def nodes(self) -> List[Node]:
        count = self.uint()
        if count > MAX_PROOF_NODES:
            raise TooLargeError("%d nodes in one array (at most %d)" % (count, MAX_PROOF_NODES))
        out = []
        for _ in range(count):
            index = self.uint()
            size = self.uint()
            out.append((index, size, self.fixed(32)))
        return out

    def done(self) -> bool:
        return self.pos >= len(self.buf)


class DataHead(NamedTuple):
    """The head of a ``data`` message: which request it answers, on which
    fork, the index of the block it carries (or None) and whether it carries
    an upgrade."""

    request: int
    fork: int
    block_index: Optional[int]
    upgrade: bool


def _data_head(r: Reader) -> Tuple[int, DataHead]:
    """The flags and head of a ``data`` message, read up to the block's value."""
    flags = r.uint()
    request = r.uint()
    fork = r.uint()
    index = r.uint() if flags & 1 else None
    return flags, DataHead(request, fork, index, bool(flags & 8))


class DataMessage:
    """A hypercore ``data`` message (type 3): a proof and maybe a block.

    ``block`` is ``(index, value, nodes)``, ``hash`` is ``(index, nodes)``,
    ``seek`` is ``(bytes, nodes)``, ``upgrade`` is
    ``(start, length, nodes, additional_nodes, signature)``; each may be None.
    """

    __slots__ = ("request", "fork", "block", "hash", "seek", "upgrade", "manifest")

    def __init__(self, request: int = 0, fork: int = 0,
                 block: Optional[Tuple[int, bytes, List[Node]]] = None,
                 hash: Optional[Tuple[int, List[Node]]] = None,
                 seek: Optional[Tuple[int, List[Node]]] = None,
                 upgrade: Optional[Tuple[int, int, List[Node], List[Node], bytes]] = None,
                 manifest: Optional[bytes] = None) -> None:
        self.request = request
        self.fork = fork
        self.block = block
        self.hash = hash
        self.seek = seek
        self.upgrade = upgrade
        self.manifest = manifest

    def encode(self) -> bytes:
        flags = ((1 if self.block is not None else 0) | (2 if self.hash is not None else 0)
                 | (4 if self.seek is not None else 0) | (8 if self.upgrade is not None else 0)
                 | (16 if self.manifest is not None else 0))
        out = [encode_uint(flags), encode_uint(self.request), encode_uint(self.fork)]
        if self.block is not None:
            index, value, nodes = self.block
            out += [encode_uint(index), encode_buffer(value), encode_nodes(nodes)]
        if self.hash is not None:
            out += [encode_uint(self.hash[0]), encode_nodes(self.hash[1])]
        if self.seek is not None:
            out += [encode_uint(self.seek[0]), encode_nodes(self.seek[1])]
        if self.upgrade is not None:
            start, length, nodes, additional, signature = self.upgrade
            out += [encode_uint(start), encode_uint(length), encode_nodes(nodes),
                    encode_nodes(additional), encode_buffer(signature or b"")]
        if self.manifest is not None:
            out.append(self.manifest)
        return b"".join(out)

    @staticmethod
    def peek(buf: bytes) -> DataHead:
        """The head alone, without decoding the proof (what a replicator needs
        to route an answer before the core verifies it)."""
        return _data_head(Reader(buf))[1]

    @staticmethod
    def value(buf: bytes) -> Optional[bytes]:
        """The block's value alone (None if it carries no block)."""
        r = Reader(buf)
        return r.buffer() if _data_head(r)[1].block_index is not None else None

    @classmethod
    def decode(cls, buf: bytes) -> "DataMessage":
        r = Reader(buf)
        flags, head = _data_head(r)
        m = cls(head.request, head.fork)
        if head.block_index is not None:
            value = r.buffer()
            m.block = (head.block_index, value, r.nodes())
        if flags & 2:
            m.hash = (r.uint(), r.nodes())
        if flags & 4:
            m.seek = (r.uint(), r.nodes())
        if flags & 8:
            start = r.uint()
            length = r.uint()
            nodes = r.nodes()
            additional = r.nodes()
            signature = r.buffer()
            if len(signature) > MAX_SIGNATURE:
                raise TooLargeError("signature of %d bytes" % len(signature))
            m.upgrade = (start, length, nodes, additional, signature)
        if flags & 16:
            begin = r.pos
            Manifest.read(r)
            if r.pos - begin > MAX_MANIFEST:
                raise TooLargeError("manifest of %d bytes" % (r.pos - begin))
            m.manifest = bytes(buf[begin:r.pos])
        # Unknown flag bits and trailing bytes are ignored, as hypercore does.
        return m

    def __repr__(self) -> str:
        parts = ["request=%d" % self.request, "fork=%d" % self.fork]
        if self.block is not None:
            parts.append("block=%d(%d bytes, %d nodes)" % (
                self.block[0], len(self.block[1]), len(self.block[2])))
        if self.upgrade is not None:
            parts.append("upgrade=%d+%d" % (self.upgrade[0], self.upgrade[1]))
        if self.manifest is not None:
            parts.append("manifest")
        return "DataMessage(%s)" % ", ".join(parts)


class Manifest:
    """A decoded manifest (versions 1 and 2, ed25519 signers)."""

    __slots__ = ("version", "quorum", "allow_patch", "signers", "prologue", "linked",
                 "user_data")

    def __init__(self, signers: List[Tuple[bytes, bytes]], version: int = 1,
                 quorum: Optional[int] = None, allow_patch: bool = False,
                 prologue: Optional[Tuple[bytes, int]] = None,
                 linked: Optional[List[bytes]] = None,
                 user_data: Optional[bytes] = None) -> None:
        self.version = version
        self.signers = signers  # (namespace, public_key)
        self.quorum = len(signers) // 2 + 1 if quorum is None else quorum
        self.allow_patch = allow_patch
        self.prologue = prologue
        self.linked = linked
        self.user_data = user_data

    def encode(self) -> bytes:
        flags = ((1 if self.allow_patch else 0) | (2 if self.prologue else 0)
                 | (4 if self.linked is not None else 0)
                 | (8 if self.user_data is not None else 0))
        out = [encode_uint(self.version), encode_uint(flags), encode_uint(0),
               encode_uint(self.quorum), encode_uint(len(self.signers))]
        for namespace, public_key in self.signers:
            out += [encode_uint(0), namespace, public_key]
        if self.prologue:
            out += [self.prologue[0], encode_uint(self.prologue[1])]
        if self.linked is not None:
            out.append(encode_uint(len(self.linked)))
            out += self.linked
        if self.user_data is not None:
            out.append(encode_buffer(self.user_data))
        return b"".join(out)

    @classmethod
    def decode(cls, buf: bytes) -> "Manifest":
        if len(buf) > MAX_MANIFEST:
            raise TooLargeError("manifest of %d bytes (at most %d)" % (len(buf), MAX_MANIFEST))
        r = Reader(buf)
        m = cls.read(r)
        if not r.done():
            raise DecodeError("trailing bytes after the manifest")
        return m

    @classmethod
    def read(cls, r: "Reader") -> "Manifest":
        """Decode a manifest at the reader's position (it delimits itself)."""
        version = r.uint()
        if version not in (1, 2):
            raise DecodeError("manifest version %d is not supported" % version)
        flags = r.uint()
        if r.uint() != 0:
            raise DecodeError("manifest hash type is not blake2b")
        quorum = r.uint()
        count = r.uint()
        if count > MAX_SIGNERS:   # over a limit (as cm_encoding.c): not malformed
            raise TooLargeError("%d signers (at most %d)" % (count, MAX_SIGNERS))
        signers = []
        for _ in range(count):
            if r.uint() != 0:
                raise DecodeError("signer is not ed25519")
            signers.append((r.fixed(32), r.fixed(32)))
        prologue = None
        linked = None
        user_data = None
        if flags & 2:
            prologue = (r.fixed(32), r.uint())
        if flags & 4:
            n = r.uint()
            if n > (len(r.buf) - r.pos) // 32:
                raise DecodeError("%d linked cores in %d bytes" % (n, len(r.buf) - r.pos))
            linked = [r.fixed(32) for _ in range(n)]
        if flags & 8:
            user_data = r.buffer()
        # (a quorum of 0 or over the signers decodes; no signature verifies under it)
        return cls(signers, version, quorum, bool(flags & 1), prologue, linked, user_data)
