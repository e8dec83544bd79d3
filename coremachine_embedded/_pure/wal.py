"""The write-ahead log: header slots, records, commit, replay, checkpoints
(docs/format.md, "header", "wal", "Commit protocol", "Opening" step 2).

Twin of csrc/cm_wal.c.
"""
from __future__ import annotations

import struct
import zlib
from typing import List, Optional, Sequence

from .. import caps
from ..caps import Durability
from ..encoding import Node
from ..errors import ReadOnlyError, TooLargeError
from .store import (BODY_STABLE, MAGIC, MAX_RECORD, NODE_ENTRY, NODE_SLOT, RF_MANIFEST,
                    RF_SIGNATURE, RF_TRUNCATE, SLOT_SIZE, TREE_NODE, ZERO_NODE, StoreState)

_HEADER = struct.Struct("<4sIQII32sQQQQ32sQHHI")       # BODY_FIXED bytes
_STABLE = struct.Struct("<4sIQ")                        # BODY_STABLE bytes
_RECORD = struct.Struct("<QQQIIQQQQ32sQQQQIIHHI")      # REC_FIXED bytes
_FRAME = struct.Struct("<II")
_WAL_NODE = struct.Struct("<QQ32s")                     # NODE_ENTRY bytes in a record
_U64 = struct.Struct("<Q")
_U64_MAX = (1 << 64) - 1


def _pad8(n: int) -> int:
    return (n + 7) & ~7


class Record:
    """A decoded WAL record."""

    __slots__ = ("crc", "end", "generation", "seq", "durable_count", "prev_crc", "flags",
                 "fork", "length", "contiguous", "byte_length", "tree_hash", "tree_truncate",
                 "data_truncate", "data_offset", "data", "clear", "nodes", "signature",
                 "manifest")
    crc: int
    end: int
    generation: int
    seq: int
    durable_count: int
    prev_crc: int
    flags: int
    fork: int
    length: int
    contiguous: int
    byte_length: int
    tree_hash: bytes
    tree_truncate: int
    data_truncate: int
    data_offset: int
    data: bytes
    clear: List[int]
    nodes: List[Node]
    signature: Optional[bytes]
    manifest: Optional[bytes]


def parse_record(buf: bytes, off: int) -> Optional[Record]:
    """The record at ``off`` of the wal bytes ``buf``, or None if it does not
    check (C: ``frame_at`` and ``rec_parse`` in ``cm_wal.c``)."""
    if off + 8 + _RECORD.size > len(buf):
        return None
    crc, plen = _FRAME.unpack_from(buf, off)
    if plen < _RECORD.size or off + 8 + plen > len(buf):
        return None
    view = memoryview(buf)
    if zlib.crc32(view[off + 4:off + 8 + plen]) != crc:
        return None
    (gen, seq, durable, prev, flags, fork, length, contig, blen, th, tt, dt, doff, dlen,
     nclear, nnodes, siglen, manlen, _) = _RECORD.unpack_from(buf, off + 8)
    p = off + 8 + _RECORD.size
    need = _pad8(siglen + manlen) + 8 * nclear + NODE_ENTRY * nnodes + dlen
    if (_RECORD.size + need != plen or flags & ~(RF_TRUNCATE | RF_SIGNATURE | RF_MANIFEST)
            or siglen > caps.MAX_SIGNATURE or manlen > caps.MAX_MANIFEST
            or contig > length or length > caps.MAX_LENGTH
            or doff > _U64_MAX - dlen or tt > _U64_MAX // NODE_SLOT
            or (flags & RF_MANIFEST and not manlen)):
        return None  # a valid CRC over an inconsistent layout (as cm_wal.c's rec_parse)
    r = Record()
    r.crc, r.end = crc, off + _pad8(8 + plen)
    r.generation, r.seq, r.durable_count, r.prev_crc, r.flags = gen, seq, durable, prev, flags
    r.fork, r.length, r.contiguous, r.byte_length, r.tree_hash = fork, length, contig, blen, th
    r.tree_truncate, r.data_truncate, r.data_offset = tt, dt, doff
    r.signature = bytes(buf[p:p + siglen]) if flags & RF_SIGNATURE else None
    r.manifest = bytes(buf[p + siglen:p + siglen + manlen]) if flags & RF_MANIFEST else None
    p += _pad8(siglen + manlen)
    r.clear = [_U64.unpack_from(buf, p + 8 * k)[0] for k in range(nclear)]
    if r.clear and (not flags & RF_TRUNCATE or max(r.clear) >= tt):
        return None
    p += 8 * nclear
    r.nodes = [_WAL_NODE.unpack_from(buf, p + NODE_ENTRY * k) for k in range(nnodes)]
    if any(n[0] > _U64_MAX // NODE_SLOT - 1 for n in r.nodes):
        return None
    p += NODE_ENTRY * nnodes
    r.data = bytes(buf[p:p + dlen])
    return r


class Slot:
    """A decoded header slot (C: ``cm__hdr``)."""

    __slots__ = ("seq", "version", "flags", "key", "fork", "length", "contiguous",
                 "byte_length", "tree_hash", "generation", "signature", "manifest")
    seq: int
    version: int
    flags: int
    key: bytes
    fork: int
    length: int
    contiguous: int
    byte_length: int
    tree_hash: bytes
    generation: int
    signature: Optional[bytes]
    manifest: Optional[bytes]


def parse_slot(raw: bytes, i: int) -> Optional[Slot]:
    """Slot ``i`` of the header file, or None if it is not a valid slot.  A
    valid slot of another format version has only ``version`` and ``seq``
    read: the first BODY_STABLE bytes of a body are the same in every version
    (C: ``cm__hdr_parse``)."""
    s = raw[SLOT_SIZE * i:SLOT_SIZE * (i + 1)]
    if len(s) < 8 + BODY_STABLE:
        return None
    crc, blen = _FRAME.unpack_from(s, 0)
    if blen < BODY_STABLE or 8 + blen > len(s) or zlib.crc32(s[4:8 + blen]) != crc:
        return None
    magic, version, seq = _STABLE.unpack_from(s, 8)
    if magic != MAGIC or seq % 2 != i:
        return None
    slot = Slot()
    slot.seq, slot.version = seq, version
    if not caps.FORMAT_OLDEST <= version <= caps.FORMAT_VERSION:
        return slot  # refused on open, with the version in the message (the
        # versions from FORMAT_OLDEST have this one's layout)
    if blen < _HEADER.size:
        return None
    (_, _, _, flags, _, key, fork, length, contig, byte_length, th, gen, siglen, manlen,
     _) = _HEADER.unpack_from(s, 8)
    if _HEADER.size + siglen + manlen != blen:
        return None
    slot.flags, slot.key = flags, key
    slot.fork, slot.length, slot.contiguous, slot.byte_length = fork, length, contig, byte_length
    slot.tree_hash, slot.generation = th, gen
    p = 8 + _HEADER.size
    slot.signature = bytes(s[p:p + siglen]) if siglen else None
    slot.manifest = bytes(s[p + siglen:p + siglen + manlen]) if manlen else None
    return slot


class Wal(StoreState):
    """Header slots and write-ahead records of a store."""

    def _reset_wal(self) -> None:
        self._wal_offset = 0
        self._seq = 0
        self._prev_crc = 0
        self._durable_count = 0
        self._unsynced = False

    def _frame(self, off: int, size: int, any_generation: bool = False) -> Optional[Record]:
        """The valid record at ``off`` of the wal, or None.  Frames of another
        generation are rejected before their CRC is computed."""
        head = self._wal.read(8 + _RECORD.size, off)
        if len(head) < 8 + _RECORD.size:
            return None
        plen = _FRAME.unpack_from(head, 0)[1]
        generation = _U64.unpack_from(head, 8)[0]
        if (plen < _RECORD.size or plen > MAX_RECORD or off + 8 + plen > size
                or (generation != self._generation and not any_generation)):
            return None
        rest = self._wal.read(8 + plen - len(head), off + len(head))
        rec = parse_record(head + rest, 0)
        if rec is not None:
            rec.end += off
        return rec

    def _replay(self) -> None:
        """Apply the records of the header's generation (docs/format.md,
        "Opening" step 2; to the overlay in a snapshot); count a torn tail in
        ``recovery``."""
        self._reset_wal()
        size = self._wal.size()
        off = 0
        while True:
            rec = self._frame(off, size)
            if rec is None or rec.seq != self._seq or rec.prev_crc != self._prev_crc:
                break
            if self._overlay is not None:
                self._overlay.apply(bool(rec.flags & RF_TRUNCATE), rec.tree_truncate,
                                    rec.data_truncate, rec.clear, rec.nodes, rec.data_offset,
                                    rec.data)
            else:
                self._apply(rec.flags, rec.tree_truncate, rec.data_truncate, rec.clear,
                            rec.nodes, rec.data_offset, rec.data)
            self._set_state(rec.fork, rec.length, rec.contiguous, rec.byte_length,
                            rec.tree_hash, rec.signature)
            if rec.manifest is not None:
                self._learn_manifest(rec.manifest)
            self._seq += 1
            self._prev_crc = rec.crc
            off = rec.end
        self._wal_offset = off
        self.recovery["records_replayed"] = self._seq
        if self._overlay is not None:
            # A snapshot ends where the chain does: past it, the writer may be
            # writing this very moment (a checkpoint race is the opener's).
            self._overlay.seal()
            self._durable_count = self._seq
            return
        if off >= size:
            return
        head = self._wal.read(8 + _RECORD.size, off)
        if len(head) == 8 + _RECORD.size:
            generation = _U64.unpack_from(head, 8)[0]
            if generation < self._generation:
                return  # a record of an older checkpoint: a clean end
            if generation > self._generation and self._frame(off, size, True) is not None:
                raise self._damaged("the newest header slot is damaged (the wal is newer)", "header")
        self._check_torn_tail(self._wal.read(size - off, off), off)
        self.recovery["bytes_discarded"] = size - off

    def _check_torn_tail(self, tail: bytes, off: int) -> None:
        """Replay stopped at a bad frame (``tail`` is the wal from ``off`` on).
        If a later valid record says this one had been fsync'ed, the file was
        damaged after the fact."""
        needle = _U64.pack(self._generation)
        pos = tail.find(needle, 8)
        while pos >= 0:
            start = pos - 8
            if (off + start) % 8 == 0:
                rec = parse_record(tail, start)
                if rec is not None and rec.generation == self._generation \
                        and rec.durable_count > self._seq:
                    raise self._damaged("wal record %d is damaged but had been synced"
                                          % self._seq, "wal")
            pos = tail.find(needle, pos + 1)

    def _apply(self, flags: int, tree_truncate: int, data_truncate: int, clear: Sequence[int],
               nodes: Sequence[Node], data_offset: int, data: bytes) -> None:
        if flags & RF_TRUNCATE:
            self._tree.truncate(NODE_SLOT * tree_truncate)
            self._data.truncate(data_truncate)
            for i in clear:
                self._tree.write(ZERO_NODE, NODE_SLOT * i)
        # Write nodes in runs of consecutive indexes: one write per run.
        run_start = -1
        run: List[bytes] = []
        for index, size, digest in sorted(nodes):
            if run and index == run_start + len(run):
                run.append(TREE_NODE.pack(size, digest))
                continue
            if run:
                self._tree.write(b"".join(run), NODE_SLOT * run_start)
            run_start = index
            run = [TREE_NODE.pack(size, digest)]
        if run:
            self._tree.write(b"".join(run), NODE_SLOT * run_start)
        if data:
            self._data.write(data, data_offset)

    def _commit(self, flags: int, fork: int, length: int, contiguous: int, byte_length: int,
                digest: bytes, *, signature: Optional[bytes] = None,
                manifest: Optional[bytes] = None, tree_truncate: int = 0,
                data_truncate: int = 0, clear: Sequence[int] = (),
                nodes: Sequence[Node] = (), data_offset: int = 0, data: bytes = b"") -> None:
        """Write one record, sync it as the durability asks, apply it."""
        if signature is not None:
            flags |= RF_SIGNATURE
        if manifest is not None:
            flags |= RF_MANIFEST
        sig = signature or b""
        man = manifest or b""
        extra = sig + man
        parts = [extra, bytes(_pad8(len(extra)) - len(extra))]
        parts += [_U64.pack(i) for i in clear]
        parts += [_WAL_NODE.pack(*n) for n in nodes]
        parts.append(data)
        body = b"".join(parts)
        fixed = _RECORD.pack(self._generation, self._seq, self._durable_count, self._prev_crc,
                             flags, fork, length, contiguous, byte_length, digest,
                             tree_truncate, data_truncate, data_offset if data else 0, len(data),
                             len(clear),
                             len(nodes), len(sig), len(man), 0)
        plen = len(fixed) + len(body)
        if plen > MAX_RECORD:
            raise TooLargeError("a record of %d bytes (at most %d)" % (plen, MAX_RECORD))
        head = struct.pack("<I", plen) + fixed
        crc = zlib.crc32(body, zlib.crc32(head))
        frame = struct.pack("<I", crc) + head + body
        frame += bytes(_pad8(len(frame)) - len(frame))
        try:
            self._wal.write(frame, self._wal_offset)
            self._wal_offset += len(frame)
            self._seq += 1
            self._prev_crc = crc
            if self.durability == Durability.SYNC or flags & RF_TRUNCATE:
                self._wal.sync()
                self._durable_count = self._seq
                self._unsynced = False
            else:
                self._unsynced = True
            self._apply(flags, tree_truncate, data_truncate, clear, nodes, data_offset, data)
        except BaseException as e:
            self._failed = e
            raise
        self._set_state(fork, length, contiguous, byte_length, digest, signature)
        if manifest is not None:
            self._learn_manifest(manifest)

    def _write_header(self, seq: int, generation: int) -> None:
        self._header_seq = seq
        self._generation = generation
        sig = self._sig if self._secret_key is None and self._sig else b""
        man = self.manifest or b""
        body = _HEADER.pack(MAGIC, caps.FORMAT_VERSION, self._header_seq, self._flags, 0,
                            self.key, self.fork, self.length, self.contiguous,
                            self.byte_length, self._tree_hash, self._generation, len(sig),
                            len(man), 0) + sig + man
        head = struct.pack("<I", len(body))
        slot = struct.pack("<I", zlib.crc32(body, zlib.crc32(head))) + head + body
        self._header.write(slot, SLOT_SIZE * (self._header_seq % 2))
        self._header.sync()

    def _checkpoint(self) -> None:
        try:
            self._data.sync()
            self._tree.sync()
            self._write_header(self._header_seq + 1, self._generation + 1)
        except BaseException as e:
            self._failed = e
            raise
        self._reset_wal()

    def _maybe_checkpoint(self) -> None:
        if self._wal_offset >= self._checkpoint_bytes:
            self._checkpoint()

    def flush(self) -> None:
        """Make every record so far durable."""
        self._check_open()
        if self._unsynced:
            try:
                self._wal.sync()
            except BaseException as e:
                self._failed = e
                raise
            self._durable_count = self._seq
            self._unsynced = False

    def checkpoint(self) -> None:
        self._check_open()
        if self._readonly:
            raise ReadOnlyError("a read-only snapshot does not checkpoint")
        if self._seq:
            self._checkpoint()
