"""The pure-Python log store: the same files, byte for byte, as csrc/cm_store.c.

The format and the commit protocol are specified in docs/format.md; this module
follows it step by step and is the reference the C core is tested against.
"""
from __future__ import annotations

import os
import struct
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import caps
from ..encoding import DataMessage, Node
from ..errors import (need_bytes, ArgumentTypeError, BlockNotAvailableError, ClosedError, CorruptionError,
                      FormatVersionError, InvalidArgumentError, InvalidProofError,
                      KeyMismatchError, OutOfRangeError, ReadOnlyError, StorageError,
                      StoreNotFoundError, TooLargeError, ForkError)
from ..proofs import ApplyResult
from ..storage import CREATE, PRIVATE, File, FileStorage
from . import flat, proof
from ..encoding import Manifest
from .crypto import (Verifier, default_manifest, discovery_key, hash_leaf,
                     hash_parent, keypair_from_seed, manifest_hash, tree_hash)

MAGIC = b"CMEH"
SLOT_SIZE = 4096
FLAG_COMPAT = 1
FLAG_MANIFEST = 2
REC_TRUNCATE = 1
REC_SIGNATURE = 2
REC_MANIFEST = 4

_HEADER = struct.Struct("<4sIQII32sQQQQ32sQHHI")       # 136 bytes
_RECORD = struct.Struct("<QQQIIQQQQ32sQQQQIIHHI")      # 144 bytes
_FRAME = struct.Struct("<II")
_TREE_NODE = struct.Struct("<Q32s")                     # 40 bytes on disk
_WAL_NODE = struct.Struct("<QQ32s")                     # 48 bytes in a record
_U64 = struct.Struct("<Q")
_ZERO_NODE = bytes(40)
_DURABILITY = {"sync": 0, "batch": 1, "none": 2}


def _pad8(n: int) -> int:
    return (n + 7) & ~7


def spanning_ancestors(n: int) -> List[int]:
    """Nodes below index 2n-1 whose span reaches past leaf 2n-2 (cut by a
    truncation to n blocks), in increasing order."""
    if n == 0:
        return []
    leaf = 2 * n - 2
    limit = 2 * n - 1
    out = []
    i = leaf
    while True:
        i = flat.parent(i)
        if i < limit and flat.right_span(i) > leaf:
            out.append(i)
        if flat.left_span(i) == 0 and i >= limit:
            break
    return sorted(out)


class _Record:
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


def _parse_record(buf: bytes, off: int) -> Optional[_Record]:
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
    need = _pad8(siglen + manlen) + 8 * nclear + 48 * nnodes + dlen
    if _RECORD.size + need != plen:
        return None
    r = _Record()
    r.crc, r.end = crc, off + _pad8(8 + plen)
    r.generation, r.seq, r.durable_count, r.prev_crc, r.flags = gen, seq, durable, prev, flags
    r.fork, r.length, r.contiguous, r.byte_length, r.tree_hash = fork, length, contig, blen, th
    r.tree_truncate, r.data_truncate, r.data_offset = tt, dt, doff
    r.signature = bytes(buf[p:p + siglen]) if flags & REC_SIGNATURE else None
    r.manifest = bytes(buf[p + siglen:p + siglen + manlen]) if flags & REC_MANIFEST else None
    p += _pad8(siglen + manlen)
    r.clear = [_U64.unpack_from(buf, p + 8 * k)[0] for k in range(nclear)]
    p += 8 * nclear
    r.nodes = [_WAL_NODE.unpack_from(buf, p + 48 * k) for k in range(nnodes)]
    p += 48 * nnodes
    r.data = bytes(buf[p:p + dlen])
    return r


class _Slot:
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


def _parse_slot(raw: bytes, i: int) -> Optional[_Slot]:
    s = raw[SLOT_SIZE * i:SLOT_SIZE * (i + 1)]
    if len(s) < 8 + _HEADER.size:
        return None
    crc, blen = _FRAME.unpack_from(s, 0)
    if blen < _HEADER.size or 8 + blen > len(s) or zlib.crc32(s[4:8 + blen]) != crc:
        return None
    (magic, version, seq, flags, _, key, fork, length, contig, byte_length, th, gen, siglen,
     manlen, _) = _HEADER.unpack_from(s, 8)
    if magic != MAGIC or _HEADER.size + siglen + manlen != blen or seq % 2 != i:
        return None
    slot = _Slot()
    slot.seq, slot.version, slot.flags, slot.key = seq, version, flags, key
    slot.fork, slot.length, slot.contiguous, slot.byte_length = fork, length, contig, byte_length
    slot.tree_hash, slot.generation = th, gen
    p = 8 + _HEADER.size
    slot.signature = bytes(s[p:p + siglen]) if siglen else None
    slot.manifest = bytes(s[p + siglen:p + siglen + manlen]) if manlen else None
    return slot


def _is_compat_manifest(manifest: bytes, key: bytes) -> bool:
    """Hypercore's compat case: one signer whose public key is the core key."""
    m = Manifest.decode(manifest)
    return len(m.signers) == 1 and m.signers[0][1] == key


class Log:
    """A signed log in a store.  Not thread-safe (the Python layer locks)."""

    def __init__(self, storage: Any, *, create: bool = False,
                 secret_key: Optional[bytes] = None, key: Optional[bytes] = None,
                 manifest: Optional[bytes] = None, compat: bool = False,
                 durability: str = "sync", checkpoint_bytes: int = 0,
                 max_block_size: int = 0) -> None:
        if durability not in _DURABILITY:
            raise InvalidArgumentError("durability must be one of %s" % ", ".join(_DURABILITY))
        self.durability = durability
        self._checkpoint_bytes = checkpoint_bytes or caps.DEFAULT_CHECKPOINT_BYTES
        self._max_block = max_block_size or caps.DEFAULT_MAX_BLOCK
        self._closed = False
        self._failed: Optional[BaseException] = None
        self._files: List[File] = []
        self._secret_key: Optional[bytes] = None
        self._sig: Optional[bytes] = None
        self.recovery: Dict[str, int] = {"records_replayed": 0, "bytes_discarded": 0,
                                         "header_slot": 0, "header_fallback": 0}
        try:
            self._open(storage, create, secret_key, key, manifest, compat)
        except BaseException:
            self._close_files()
            raise

    # --- opening -------------------------------------------------------------

    def _open(self, storage: Any, create: bool, secret_key: Optional[bytes],
              key: Optional[bytes], manifest: Optional[bytes], compat: bool) -> None:
        if isinstance(storage, str):
            storage = FileStorage(storage)
        self._dir: Optional[str] = getattr(storage, "directory", None)
        if secret_key is not None:
            secret_key = need_bytes("secret_key", secret_key, 64)
        if key is not None:
            key = need_bytes("key", key, 32)
        if manifest is not None:
            manifest = need_bytes("manifest", manifest)
        try:
            self._header = storage.open("header", 0)
            fresh = False
        except StoreNotFoundError:
            if not create:
                raise
            self._header = storage.open("header", CREATE)
            fresh = True
        self._files.append(self._header)
        self._header.lock()
        raw = self._header.read(2 * SLOT_SIZE, 0)
        slots = [_parse_slot(raw, 0), _parse_slot(raw, 1)]
        valid = [s for s in slots if s is not None]
        self._wal: File = self._open_file(storage, "wal")
        self._tree: File = self._open_file(storage, "tree")
        self._data: File = self._open_file(storage, "data")
        if not valid:
            # A torn first header with nothing else written is an interrupted
            # creation: nothing to lose.  Otherwise the header is damaged.
            if any(f.size() for f in (self._wal, self._tree, self._data)):
                raise self._damaged("no valid header slot", "header")
            if not create:
                raise StoreNotFoundError("the store was never initialised", "header")
            fresh = True
        if fresh:
            self._create(storage, secret_key, key, manifest, compat)
            return
        slot = max(valid, key=lambda s: s.seq)
        if slot.version > caps.FORMAT_VERSION:
            raise FormatVersionError("store format %d is newer than this library's %d"
                                     % (slot.version, caps.FORMAT_VERSION), "header")
        self.recovery["header_slot"] = slot.seq % 2
        other = raw[SLOT_SIZE * (1 - slot.seq % 2):SLOT_SIZE * (2 - slot.seq % 2)]
        self.recovery["header_fallback"] = int(len(valid) == 1 and any(other))
        self.key = slot.key
        self._flags = slot.flags
        self.manifest = slot.manifest
        self._header_seq = slot.seq
        self._generation = slot.generation
        self._set_state(slot.fork, slot.length, slot.contiguous, slot.byte_length,
                        slot.tree_hash, slot.signature)
        self._verifier = Verifier(self.key, self.manifest)
        if key is not None and key != self.key:
            raise KeyMismatchError("the store holds another core")
        if manifest is not None and manifest != self.manifest:
            raise KeyMismatchError("the store holds another manifest")
        try:
            sk_file = storage.open("secret_key", 0)
        except StoreNotFoundError:
            sk_file = None
        if sk_file is not None:
            try:
                stored = sk_file.read(65, 0)
            finally:
                sk_file.close()
            self._check_secret(stored, True)
            if secret_key is not None and stored != secret_key:
                raise KeyMismatchError("the store holds another secret key")
            self._secret_key = stored
        elif secret_key is not None:
            # The signer's key given to a replica: it becomes the writer, which
            # needs every block.
            self._check_secret(secret_key, False)
            if self.contiguous != self.length:
                raise InvalidArgumentError("a replica that lacks blocks cannot become the writer")
            self._write_secret(storage, secret_key)
        self._replay()
        self._load_roots()
        if self._secret_key is None:
            if self._sig is None and (self.length or self.fork):
                raise self._damaged("a replica state without its signature", "header")
        elif self.contiguous != self.length:
            raise self._damaged("a writer that lacks blocks", "header")
        c = self.contiguous
        if self._secret_key is None and (
                self.length > c or self._tree.size() > (40 * (2 * c - 1) if c else 0)
                or self._data.size() > self._contig_bytes):
            self._sanitize()
        if self.recovery["bytes_discarded"]:
            self._checkpoint()

    def _damaged(self, message: str, name: str) -> CorruptionError:
        """A CorruptionError naming the store file (its path for a directory store)."""
        return CorruptionError(message, os.path.join(self._dir, name) if self._dir else name)

    def _open_file(self, storage: Any, name: str) -> File:
        f: File = storage.open(name, CREATE)
        self._files.append(f)
        return f

    def _check_secret(self, sk: bytes, damaged_file: bool) -> None:
        """A stored secret key that does not fit is damage; a given one, a mismatch."""
        def fail(why: str) -> None:
            raise self._damaged(why, "secret_key") if damaged_file else KeyMismatchError(why)
        if len(sk) != 64:
            fail("secret key file holds %d bytes, not 64" % len(sk))
        pk, derived = keypair_from_seed(sk[:32])
        if derived != sk:
            fail("secret key is not a valid seed || public key")
        if self._flags & FLAG_MANIFEST:
            assert self.manifest is not None
            signers = Manifest.decode(self.manifest).signers
            ok = signers[0][1] == pk
        else:
            ok = pk == self.key
        if not ok:
            fail("secret key does not belong to this core")

    def _write_secret(self, storage: Any, sk: bytes) -> None:
        f = storage.open("secret_key", CREATE | PRIVATE)
        try:
            f.truncate(0)
            f.write(sk, 0)
            f.sync()
        finally:
            f.close()
        self._secret_key = sk

    def _create(self, storage: Any, secret_key: Optional[bytes], key: Optional[bytes],
                manifest: Optional[bytes], compat: bool) -> None:
        if secret_key is None and key is None:
            raise InvalidArgumentError("a new store needs a key pair (writer) or a key (replica)")
        flags = 0
        if secret_key is not None:
            pk, derived = keypair_from_seed(secret_key[:32])
            if derived != secret_key:
                raise InvalidArgumentError("secret_key is not a valid seed || public key")
            if compat:
                if manifest is not None:
                    raise InvalidArgumentError("compat cores have no manifest")
                core_key = pk
                flags = FLAG_COMPAT
            else:
                manifest = manifest if manifest is not None else default_manifest(pk)
                m = Manifest.decode(manifest)
                if m.signers[0][1] != pk or m.quorum != 1:
                    raise KeyMismatchError("the manifest's first signer must be this key pair, "
                                           "with quorum 1")
                core_key = manifest_hash(manifest)
                flags = FLAG_MANIFEST
            if key is not None and key != core_key:
                raise KeyMismatchError("key does not match the key pair")
        else:
            assert key is not None
            core_key = key
            if manifest is not None:
                Verifier(key, manifest)
                flags = FLAG_MANIFEST
        self.key = core_key
        self._flags = flags
        self.manifest = manifest if flags & FLAG_MANIFEST else None
        self._verifier = Verifier(self.key, self.manifest)
        if secret_key is not None:
            self._write_secret(storage, secret_key)
        for f in (self._wal, self._tree, self._data):
            f.truncate(0)
        self._set_state(0, 0, 0, 0, caps.EMPTY_TREE_HASH, None)
        self.roots: List[Node] = []
        self._contig_bytes = 0
        self._reset_wal()
        self._write_header(0, 0)

    def _set_state(self, fork: int, length: int, contiguous: int, byte_length: int,
                   digest: bytes, signature: Optional[bytes]) -> None:
        self.fork = fork
        self.length = length
        self.contiguous = contiguous
        self.byte_length = byte_length
        self._tree_hash = digest
        self._sig = signature or None

    def _reset_wal(self) -> None:
        self._wal_offset = 0
        self._seq = 0
        self._prev_crc = 0
        self._durable_count = 0
        self._unsynced = False

    def _frame(self, off: int, size: int, any_generation: bool = False) -> Optional[_Record]:
        """The valid record at ``off`` of the wal, or None.  Frames of another
        generation are rejected before their CRC is computed."""
        head = self._wal.read(8 + _RECORD.size, off)
        if len(head) < 8 + _RECORD.size:
            return None
        plen = _FRAME.unpack_from(head, 0)[1]
        generation = _U64.unpack_from(head, 8)[0]
        if (plen < _RECORD.size or off + 8 + plen > size
                or (generation != self._generation and not any_generation)):
            return None
        rest = self._wal.read(8 + plen - len(head), off + len(head))
        rec = _parse_record(head + rest, 0)
        if rec is not None:
            rec.end += off
        return rec

    def _replay(self) -> None:
        self._reset_wal()
        size = self._wal.size()
        off = 0
        while True:
            rec = self._frame(off, size)
            if rec is None or rec.seq != self._seq or rec.prev_crc != self._prev_crc:
                break
            self._apply(rec.flags, rec.tree_truncate, rec.data_truncate, rec.clear, rec.nodes,
                        rec.data_offset, rec.data)
            self._set_state(rec.fork, rec.length, rec.contiguous, rec.byte_length,
                            rec.tree_hash, rec.signature)
            if rec.manifest is not None:
                self._learn_manifest(rec.manifest)
            self._seq += 1
            self._prev_crc = rec.crc
            off = rec.end
        self._wal_offset = off
        if self._seq:
            # What replay read may have come from the page cache (kill -9):
            # make it durable before later records count it as such.
            self._wal.sync()
        self._durable_count = self._seq
        self.recovery["records_replayed"] = self._seq
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
                rec = _parse_record(tail, start)
                if rec is not None and rec.generation == self._generation \
                        and rec.durable_count > self._seq:
                    raise self._damaged("wal record %d is damaged but had been synced"
                                          % self._seq, "wal")
            pos = tail.find(needle, pos + 1)

    def _load_roots(self) -> None:
        roots = []
        for i in flat.full_roots(self.length):
            node = self._read_node(i)
            if node is None:
                raise self._damaged("root node %d is missing" % i, "tree")
            roots.append(node)
        if tree_hash(roots) != self._tree_hash or sum(r[1] for r in roots) != self.byte_length:
            raise self._damaged("the roots do not match the committed tree hash", "tree")
        self.roots = roots
        if self._sig is not None and self._secret_key is None:
            try:
                self._verifier.check(self._tree_hash, self.length, self.fork, self._sig)
            except InvalidProofError:
                raise self._damaged("the stored signature does not verify", "header") from None
        self._contig_bytes = self._prefix_bytes(self.contiguous)

    def _prefix_bytes(self, n: int) -> int:
        """Byte length of the first n blocks (n <= contiguous or a writer)."""
        if n == self.length:
            return self.byte_length
        total = 0
        for i in flat.full_roots(n):
            node = self._read_node(i)
            if node is None:
                raise self._damaged("node %d is missing" % i, "tree")
            total += node[1]
        return total

    def _learn_manifest(self, manifest: bytes) -> None:
        self._verifier = Verifier(self.key, manifest)
        self.manifest = manifest
        self._flags |= FLAG_MANIFEST

    # --- state ---------------------------------------------------------------

    @property
    def writable(self) -> bool:
        return self._secret_key is not None

    @property
    def compat(self) -> bool:
        return not self._flags & FLAG_MANIFEST

    @property
    def discovery_key(self) -> bytes:
        return discovery_key(self.key)

    @property
    def public_key(self) -> bytes:
        if self.manifest is not None:
            return Manifest.decode(self.manifest).signers[0][1]
        return self.key

    def tree_hash(self) -> bytes:
        return self._tree_hash

    def signature(self) -> Optional[bytes]:
        self._check_open()
        if self._sig is None and self._secret_key is not None and (self.length or self.fork):
            self._sig = self._verifier.sign(self._secret_key, self._tree_hash, self.length,
                                            self.fork)
        return self._sig

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the core is closed")
        if self._failed is not None:
            raise StorageError("the core stopped after an I/O error (%s); reopen it"
                               % self._failed)

    def _check_writer(self) -> None:
        self._check_open()
        if self._secret_key is None:
            raise ReadOnlyError("this core was opened without its secret key")

    # --- files ---------------------------------------------------------------

    def _read_node(self, index: int) -> Optional[Node]:
        raw = self._tree.read(40, 40 * index)
        if len(raw) < 40 or raw == _ZERO_NODE:
            return None
        size, digest = _TREE_NODE.unpack(raw)
        return (index, size, digest)

    def _apply(self, flags: int, tree_truncate: int, data_truncate: int, clear: Sequence[int],
               nodes: Sequence[Node], data_offset: int, data: bytes) -> None:
        if flags & REC_TRUNCATE:
            self._tree.truncate(40 * tree_truncate)
            self._data.truncate(data_truncate)
            for i in clear:
                self._tree.write(_ZERO_NODE, 40 * i)
        # Write nodes in runs of consecutive indexes: one write per run.
        run_start = -1
        run: List[bytes] = []
        for index, size, digest in sorted(nodes):
            if run and index == run_start + len(run):
                run.append(_TREE_NODE.pack(size, digest))
                continue
            if run:
                self._tree.write(b"".join(run), 40 * run_start)
            run_start = index
            run = [_TREE_NODE.pack(size, digest)]
        if run:
            self._tree.write(b"".join(run), 40 * run_start)
        if data:
            self._data.write(data, data_offset)

    def _commit(self, flags: int, fork: int, length: int, contiguous: int, byte_length: int,
                digest: bytes, *, signature: Optional[bytes] = None,
                manifest: Optional[bytes] = None, tree_truncate: int = 0,
                data_truncate: int = 0, clear: Sequence[int] = (),
                nodes: Sequence[Node] = (), data_offset: int = 0, data: bytes = b"") -> None:
        """Write one record, sync it as the durability asks, apply it."""
        if signature is not None:
            flags |= REC_SIGNATURE
        if manifest is not None:
            flags |= REC_MANIFEST
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
        head = struct.pack("<I", plen) + fixed
        crc = zlib.crc32(body, zlib.crc32(head))
        frame = struct.pack("<I", crc) + head + body
        frame += bytes(_pad8(len(frame)) - len(frame))
        try:
            self._wal.write(frame, self._wal_offset)
            self._wal_offset += len(frame)
            self._seq += 1
            self._prev_crc = crc
            if self.durability == "sync" or flags & REC_TRUNCATE:
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
        if self._seq:
            self._checkpoint()

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._failed is None:
                self.flush()
                if self._seq:
                    self._checkpoint()
        finally:
            self._closed = True
            self._close_files()

    def _close_files(self) -> None:
        for f in reversed(self._files):
            try:
                f.close()
            except Exception:
                pass
        self._files = []

    # --- writer ----------------------------------------------------------------

    def append(self, blocks: Sequence[bytes]) -> int:
        self._check_writer()
        if not blocks:
            return self.length
        if len(blocks) > caps.MAX_APPEND_BLOCKS:
            raise TooLargeError("%d blocks in one append (at most %d)"
                                % (len(blocks), caps.MAX_APPEND_BLOCKS))
        total = 0
        for b in blocks:
            if len(b) > self._max_block:
                raise TooLargeError("block of %d bytes (at most %d)" % (len(b), self._max_block))
            total += len(b)
        if total > caps.MAX_APPEND_BYTES:
            raise TooLargeError("%d bytes in one append (at most %d)"
                                % (total, caps.MAX_APPEND_BYTES))
        roots = list(self.roots)
        nodes: List[Node] = []
        index = self.length
        for b in blocks:
            leaf = hash_leaf(index, b)
            index += 1
            nodes.append(leaf)
            roots.append(leaf)
            while len(roots) >= 2 and flat.sibling(roots[-1][0]) == roots[-2][0]:
                parent = hash_parent(roots[-2], roots[-1], flat.parent(roots[-1][0]))
                del roots[-2:]
                roots.append(parent)
                nodes.append(parent)
        digest = tree_hash(roots)
        byte_length = self.byte_length + total
        self._commit(0, self.fork, index, index, byte_length, digest, nodes=nodes,
                     data_offset=self.byte_length, data=b"".join(blocks))
        self.roots = roots
        self._contig_bytes = byte_length
        self._maybe_checkpoint()
        return index

    def truncate(self, length: int, fork: int) -> None:
        self._check_writer()
        if length < 0 or length > self.length:
            raise OutOfRangeError("cannot truncate a log of %d blocks to %d"
                                  % (self.length, length))
        if fork <= self.fork:
            raise InvalidArgumentError("the new fork must be greater than %d" % self.fork)
        roots = [self._get_node(i) for i in flat.full_roots(length)]
        byte_length = sum(r[1] for r in roots)
        self._commit(REC_TRUNCATE, fork, length, length, byte_length, tree_hash(roots),
                     tree_truncate=2 * length - 1 if length else 0, data_truncate=byte_length,
                     clear=spanning_ancestors(length))
        self.roots = roots
        self._contig_bytes = byte_length
        self._maybe_checkpoint()

    # --- reading ---------------------------------------------------------------

    def _get_node_or_none(self, index: int) -> Optional[Node]:
        for r in self.roots:
            if r[0] == index:
                return r
        return self._read_node(index)

    def _get_node(self, index: int) -> Node:
        node = self._get_node_or_none(index)
        if node is None:
            raise BlockNotAvailableError("tree node %d is not held" % index)
        return node

    def get_node(self, index: int) -> Node:
        self._check_open()
        if index < 0 or index > 2 * self.length - 2 or flat.right_span(index) > 2 * self.length - 2:
            raise OutOfRangeError("node %d is outside a log of %d blocks" % (index, self.length))
        return self._get_node(index)

    def has_node(self, index: int) -> bool:
        self._check_open()
        return self._get_node_or_none(index) is not None

    def _locate(self, index: int) -> Tuple[int, Node]:
        """Verified walk from the root to leaf 2*index: (byte offset, leaf)."""
        self._check_open()
        if not isinstance(index, int):
            raise ArgumentTypeError("index must be an int")
        if index < 0 or index >= self.length:
            raise OutOfRangeError("block %d is outside a log of %d blocks" % (index, self.length))
        if index >= self.contiguous:
            raise BlockNotAvailableError("block %d is not held yet" % index)
        target = 2 * index
        offset = 0
        for node in self.roots:
            if flat.contains(node[0], target):
                break
            offset += node[1]
        while node[0] != target:
            li, ri = flat.left_child(node[0]), flat.right_child(node[0])
            left, right = self._read_node(li), self._read_node(ri)
            if (left is None or right is None or left[1] + right[1] != node[1]
                    or hash_parent(left, right, node[0])[2] != node[2]):
                raise self._damaged("tree node %d does not match its children" % node[0], "tree")
            if target <= flat.right_span(li):
                node = left
            else:
                offset += left[1]
                node = right
        return offset, node

    def block_size(self, index: int) -> int:
        return self._locate(index)[1][1]

    def get(self, index: int) -> bytes:
        offset, leaf = self._locate(index)
        data = self._data.read(leaf[1], offset)
        if len(data) != leaf[1] or hash_leaf(index, data)[2] != leaf[2]:
            raise self._damaged("block %d does not match its tree node" % index, "data")
        return data

    def get_range(self, start: int, end: int) -> List[bytes]:
        self._check_open()
        for name, value in (("start", start), ("end", end)):
            if not isinstance(value, int):
                raise ArgumentTypeError("%s must be an int" % name)
        if start < 0 or end < start:
            raise OutOfRangeError("blocks %d to %d: the end is before the start" % (start, end))
        if end > self.length:
            raise OutOfRangeError("blocks %d to %d are outside a log of %d blocks"
                                  % (start, end, self.length))
        if end > self.contiguous:
            raise BlockNotAvailableError("blocks %d to %d are not all held yet" % (start, end))
        return [self.get(i) for i in range(start, end)]

    # --- proofs ------------------------------------------------------------------

    def proof(self, request: int = 0, block: Optional[int] = None, nodes: int = 0,
              upgrade: Optional[Tuple[int, int]] = None, manifest: bool = False) -> bytes:
        self._check_open()
        sig = self.signature() or b""
        man = self.manifest if manifest and not self.compat else None
        msg = proof.build(self._get_node, self.length, self.fork, sig,
                          None if block is None else (block, b"", nodes), upgrade, request, man)
        if msg.block is not None:
            index = msg.block[0]
            if index >= self.contiguous:
                raise BlockNotAvailableError("block %d is not held" % index)
            msg.block = (index, self.get(index), msg.block[2])
        return msg.encode()

    def missing_nodes(self, index: int) -> int:
        self._check_open()
        head = 2 * self.length
        i = 2 * index
        if i >= head:
            return 0
        count = 0
        while not flat.contains(i, head) and not self.has_node(i):
            count += 1
            i = flat.parent(i)
        return count

    def apply_proof(self, message: bytes) -> ApplyResult:
        """Verify a data message and store what it proves (replicas only)."""
        self._check_open()
        if self._secret_key is not None:
            raise InvalidArgumentError("a writer does not take proofs")
        msg = DataMessage.decode(need_bytes("proof", message))
        res = ApplyResult()
        res.fork = msg.fork
        if msg.fork < self.fork:
            raise ForkError("proof is for fork %d, the core is at fork %d"
                            % (msg.fork, self.fork))
        reorg = msg.fork > self.fork
        if reorg and (msg.upgrade is None or msg.upgrade[0] != 0):
            raise ForkError("proof is for the newer fork %d: an upgrade from 0 is needed"
                            % msg.fork)
        verifier = self._verifier
        learned = None
        if msg.manifest is not None and not self._flags & (FLAG_COMPAT | FLAG_MANIFEST):
            if manifest_hash(msg.manifest) == self.key:
                verifier = Verifier(self.key, msg.manifest)
                learned = msg.manifest
            elif not _is_compat_manifest(msg.manifest, self.key):
                raise InvalidProofError("the manifest does not belong to this core")
        chk = proof.check(verifier, [] if reorg else self.roots, msg)
        if chk.unverified is not None:
            u = chk.unverified
            if reorg or flat.right_span(u[0]) > 2 * self.length - 2:
                raise InvalidProofError("the block is not covered by a trusted tree")
            local = self._get_node_or_none(u[0])
            if local is None:  # the proof that brings it may still be on its way
                raise BlockNotAvailableError("no local node %d to check the proof against yet"
                                             % u[0])
            if local != u:
                raise InvalidProofError("checksum mismatch at node %d" % u[0])
        contiguous = self.contiguous
        contig_bytes = self._contig_bytes
        prefix = 0
        if reorg:
            for r in chk.roots:
                if flat.right_span(r[0]) > 2 * self.length - 2 or self._get_node_or_none(r[0]) != r:
                    break
                prefix += flat.count_leaves(r[0])
            if prefix < contiguous:
                contiguous = prefix
                contig_bytes = self._prefix_bytes(prefix)
            res.reorg = True
            res.reorg_length = prefix
        length = chk.length if chk.upgraded else self.length
        store = (msg.block is not None and msg.block[0] == contiguous and msg.block[0] < length)
        if msg.block is not None:
            res.block_index = msg.block[0]
        if not (chk.upgraded or reorg or store or learned):
            res.length = self.length
            return res
        seen = set()
        nodes = []
        for n in sorted(chk.nodes):
            if n[0] not in seen:
                seen.add(n[0])
                nodes.append(n)
        data = msg.block[1] if store and msg.block is not None else b""
        if chk.upgraded and msg.upgrade is not None:
            byte_length, digest, sig = chk.byte_length, chk.tree_hash, msg.upgrade[4]
        else:
            byte_length, digest, sig = self.byte_length, self._tree_hash, self._sig or b""
        self._commit(REC_TRUNCATE if reorg else 0, msg.fork, length,
                     contiguous + (1 if store else 0), byte_length, digest,
                     signature=sig, manifest=learned,
                     tree_truncate=2 * prefix - 1 if reorg and prefix else 0,
                     data_truncate=contig_bytes if reorg else 0,
                     clear=spanning_ancestors(prefix) if reorg else (),
                     nodes=nodes, data_offset=contig_bytes, data=data)
        if chk.upgraded:
            self.roots = chk.roots
        self._contig_bytes = contig_bytes + len(data)
        res.upgraded = chk.upgraded
        res.block_stored = store
        res.manifest_learned = learned is not None
        res.length = self.length
        self._maybe_checkpoint()
        return res

    def apply_run(self, start: int, values: Sequence[bytes]) -> int:
        """Store a run of blocks proven by the node over them (batched
        transfer, see csrc/cm.h cm_core_apply_run).  Returns blocks added."""
        self._check_open()
        n = len(values)
        if self._secret_key is not None:
            raise InvalidArgumentError("a writer does not take runs")
        if (n < 2 or n > 256 or n & (n - 1) or start % n or start >= 1 << 61
                or start + n > self.length):
            raise InvalidArgumentError("a run is 2..256 blocks (a power of two) at a multiple "
                                       "of its size, inside the log")
        if self.contiguous <= start:
            raise BlockNotAvailableError("the run's first block is not held yet")
        if self.contiguous >= start + n:
            return 0
        for v in values:
            if len(v) > self._max_block:
                raise TooLargeError("block of %d bytes" % len(v))
        base = 2 * start
        tree: List[Node] = [(0, 0, b"")] * (2 * n - 1)
        for i, v in enumerate(values):
            tree[2 * i] = hash_leaf(start + i, v)
        width = 1
        while width * 2 <= n:   # parents, level by level (relative to base)
            for r in range(2 * width - 1, 2 * n - 1, 4 * width):
                tree[r] = hash_parent(tree[r - width], tree[r + width], base + r)
            width *= 2
        root = self._get_node_or_none(base + n - 1)
        if root is None:
            raise BlockNotAvailableError("the node over the run is not held yet")
        if root != tree[n - 1]:
            raise InvalidProofError("the run's values do not match node %d" % (base + n - 1))
        held = self.contiguous - start
        data = b"".join(values[held:])
        self._commit(0, self.fork, self.length, start + n, self.byte_length, self._tree_hash,
                     signature=self._sig or b"", nodes=tree, data_offset=self._contig_bytes,
                     data=data)
        self._contig_bytes += len(data)
        self._maybe_checkpoint()
        return n - held

    def _sanitize(self) -> None:
        """Drop sparse-region node slots that no durable record may own: cut
        ``tree`` at the contiguous region, then write back the roots of
        ``length`` and the path from the contiguous region up to its root."""
        c = self.contiguous
        keep = {r[0]: r for r in self.roots if flat.right_span(r[0]) > 2 * c - 2}
        c_roots = flat.full_roots(c)
        k = 0
        while k < len(c_roots) and k < len(self.roots) and self.roots[k][0] == c_roots[k]:
            k += 1
        if k < len(c_roots):
            top = self.roots[k][0]  # the root of `length` over the last held blocks
            stack = [self._read_node(i) for i in c_roots[k:]]
            path: Dict[int, Node] = {}
            while stack[-1] is not None and stack[-1][0] != top:
                sib = self._read_node(flat.sibling(stack[-1][0]))
                if sib is None:
                    path = {}  # nothing to rebuild from: keep the plain rule
                    break
                path[sib[0]] = sib
                _merge(stack, sib, path)  # type: ignore[arg-type]
            if path and stack[-1] != self.roots[k]:
                raise self._damaged("the nodes over the held blocks do not match root %d"
                                      % top, "tree")
            keep.update(path)
        self._commit(REC_TRUNCATE, self.fork, self.length, c, self.byte_length,
                     self._tree_hash, signature=self._sig or b"",
                     tree_truncate=2 * c - 1 if c else 0, data_truncate=self._contig_bytes,
                     clear=spanning_ancestors(c), nodes=[keep[i] for i in sorted(keep)])


def _merge(stack: List[Node], node: Node, out: Dict[int, Node]) -> None:
    """Push ``node`` and merge siblings into parents, recording each parent."""
    stack.append(node)
    while len(stack) >= 2 and flat.sibling(stack[-1][0]) == stack[-2][0]:
        parent = hash_parent(stack[-2], stack[-1], flat.parent(stack[-1][0]))
        del stack[-2:]
        stack.append(parent)
        out[parent[0]] = parent
