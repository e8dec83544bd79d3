"""Opening a store: pick the header slot, replay the wal, check the roots and
the signature, sanitize a replica, checkpoint after a torn tail; creating one;
the secret key; closing (docs/format.md, "Opening"); read-only snapshots
("Read-only snapshots").

Twin of csrc/cm_opening.c.  ``Log`` is the backend's log: every operation of
the classes it derives from.
"""
from __future__ import annotations

import errno
from typing import Any, Dict, List, Optional

from .. import caps
from ..caps import Durability
from ..encoding import Manifest, Node
from ..errors import (ArgumentTypeError, CoreMachineError, CorruptionError, FormatVersionError,
                      InvalidArgumentError, InvalidProofError, KeyMismatchError, StorageError,
                      StoreNotFoundError, need_bytes)
from ..storage import CREATE, PRIVATE, READONLY, File, FileStorage
from .blocks import Blocks
from .crypto import Verifier, default_manifest, keypair_from_seed, manifest_hash
from .replica import Replica
from .snapshot import Overlay
from .store import HF_COMPAT, HF_MANIFEST, NODE_SLOT, SLOT_SIZE
from .wal import parse_slot, Slot
from .writer import Writer


SNAPSHOT_TRIES = 16


class Log(Writer, Replica, Blocks):
    """A signed log in a store.  Not thread-safe (the Python layer locks)."""

    def __init__(self, storage: Any, *, create: bool = False,
                 secret_key: Optional[bytes] = None, key: Optional[bytes] = None,
                 manifest: Optional[bytes] = None, compat: bool = False,
                 durability: Durability = Durability.SYNC, checkpoint_bytes: int = 0,
                 max_block_size: int = 0, readonly: bool = False) -> None:
        if not isinstance(durability, Durability):
            raise ArgumentTypeError("durability must be a Durability")
        if readonly and (create or secret_key is not None):
            raise InvalidArgumentError("a read-only snapshot creates nothing and takes no "
                                       "secret key")
        self.durability = durability
        self._checkpoint_bytes = checkpoint_bytes or caps.DEFAULT_CHECKPOINT_BYTES
        self._max_block = max_block_size or caps.DEFAULT_MAX_BLOCK
        self._readonly = readonly
        self._overlay = None
        self._closed = False
        self._failed = None
        self._files = []
        self._secret_key = None
        self._sig = None
        self.recovery = _no_recovery()
        if isinstance(storage, str):
            storage = FileStorage(storage)
        self._dir = getattr(storage, "directory", None)
        try:
            if secret_key is not None:
                secret_key = need_bytes("secret_key", secret_key, 64)
            if key is not None:
                key = need_bytes("key", key, 32)
            if manifest is not None:
                manifest = need_bytes("manifest", manifest)
            if readonly:
                self._open_snapshot(storage, key, manifest)
            else:
                self._open(storage, create, secret_key, key, manifest, compat)
        except BaseException:
            self._close_files()
            raise

    def _open(self, storage: Any, create: bool, secret_key: Optional[bytes],
              key: Optional[bytes], manifest: Optional[bytes], compat: bool) -> None:
        self._header = self._open_file(storage, "header", CREATE if create else 0)
        self._header.lock()
        self._wal = self._open_file(storage, "wal", CREATE)
        self._tree = self._open_file(storage, "tree", CREATE)
        self._data = self._open_file(storage, "data", CREATE)
        slot = self._newest_slot([self._wal, self._tree, self._data], create)
        if slot is None:
            self._create(storage, secret_key, key, manifest, compat)
            return
        self._load_state(slot, storage, secret_key, key, manifest)
        if self._seq:
            # What replay read may have come from the page cache (kill -9):
            # make it durable before later records count it as such.
            self._wal.sync()
            self._durable_count = self._seq
        c = self.contiguous
        if self._secret_key is None and (
                self.length > c or self._tree.size() > (NODE_SLOT * (2 * c - 1) if c else 0)
                or self._data.size() > self._contig_bytes):
            # Anything past the contiguous region may hold writes of records
            # that never became durable.
            self._sanitize()
        if self._secret_key is not None:
            self._refork_if_lost()
        if (self.recovery["bytes_discarded"] or slot.version < caps.FORMAT_VERSION) \
                and not self.recovery["forked"]:
            self._migrate()

    def _refork_if_lost(self) -> None:
        """A writer whose tree or data file holds more than its state (records
        were written and applied, then lost: a power cut before their sync,
        or damage to the wal) may have handed out signatures of states it no
        longer has: signing new states on the same fork could contradict
        them, so it moves to a new fork at what it holds (a truncation,
        checkpointed)."""
        n = self.length
        if (self._tree.size() > (NODE_SLOT * (2 * n - 1) if n else 0)
                or self._data.size() > self.byte_length):
            self.recovery["forked"] = 1
            self.truncate(n, self.fork + 1)

    def _migrate(self) -> None:
        """Format 1 -> 2 (and the checkpoint after a torn tail): the layout is
        the same; format 2 only checkpoints every truncation, which a header
        slot of version 2 written now (crash-safe as any checkpoint) starts
        to promise."""
        self._checkpoint()

    def _open_snapshot(self, storage: Any, key: Optional[bytes],
                       manifest: Optional[bytes]) -> None:
        """A read-only snapshot: no lock, nothing written (docs/format.md,
        "Read-only snapshots").  If a checkpoint started a new header slot
        while the records were read, the state read is still one that was
        committed, but the files may have moved on from it: read again from
        the new slot.  A check that failed may be the writer changing the
        files under the read (a truncation the records read do not reach
        yet): read again too, a few times."""
        self._header = self._open_file(storage, "header", READONLY)
        present = {}
        for name in ("wal", "tree", "data"):
            try:
                present[name] = self._open_file(storage, name, READONLY)
            except StoreNotFoundError:
                pass
        error: Optional[CorruptionError] = None
        for _ in range(SNAPSHOT_TRIES):
            self.recovery = _no_recovery()
            self._overlay = Overlay()
            slot = self._newest_slot(list(present.values()), False)
            assert slot is not None  # (no slot and no create: StoreNotFoundError)
            for name in ("wal", "tree", "data"):
                if name not in present:
                    raise self._damaged("the %s file is missing" % name, name)
            self._wal, self._tree, self._data = present["wal"], present["tree"], present["data"]
            try:
                self._load_state(slot, storage, None, key, manifest)
            except CorruptionError as e:
                error = e
                continue
            newest = self._newest_slot(list(present.values()), False)
            if newest is None or newest.seq <= slot.seq:
                return
        if error is not None:
            raise error

    def _newest_slot(self, files: List[File], create: bool) -> Optional[Slot]:
        """The valid header slot with the highest seq; None if there is none
        and a store is to be created."""
        raw = self._header.read(2 * SLOT_SIZE, 0)
        valid = [s for s in (parse_slot(raw, 0), parse_slot(raw, 1)) if s is not None]
        if not valid:
            # A torn first header with nothing else written is an interrupted
            # creation (or, for a snapshot, one under way): nothing to lose.
            # Otherwise the header is damaged.
            if any(f.size() for f in files):
                raise self._damaged("no valid header slot", "header")
            if not create:
                raise StoreNotFoundError("the store was never initialised", self._path("header"))
            return None
        slot = max(valid, key=lambda s: s.seq)
        self.recovery["header_slot"] = slot.seq % 2
        other = raw[SLOT_SIZE * (1 - slot.seq % 2):SLOT_SIZE * (2 - slot.seq % 2)]
        self.recovery["header_fallback"] = int(len(valid) == 1 and any(other))
        return slot

    def _load_state(self, slot: Slot, storage: Any, secret_key: Optional[bytes],
                    key: Optional[bytes], manifest: Optional[bytes]) -> None:
        """The state of ``slot`` plus the records after it, checked: the roots
        against the tree hash, a replica's signature."""
        self._header_seq = slot.seq
        if not caps.FORMAT_OLDEST <= slot.version <= caps.FORMAT_VERSION:
            # Older ones too: a format with no migration to this one is not read.
            raise FormatVersionError("the store is in format %d; this library reads format %d"
                                     % (slot.version, caps.FORMAT_VERSION),
                                     self._path("header"))
        self._load_header(slot, storage, secret_key, key, manifest)
        self._replay()
        self._load_roots()
        if not self._writer_store:
            if self._sig is None and (self.length or self.fork):
                raise self._damaged("a replica state without its signature", "header")
            if self._sig is not None:
                try:
                    self._verifier.check(self._tree_hash, self.length, self.fork, self._sig)
                except InvalidProofError:
                    raise self._damaged("the stored signature does not verify",
                                        "header") from None
        elif self.contiguous != self.length:
            raise self._damaged("a writer that lacks blocks", "header")
        self._contig_bytes = self._prefix_bytes(self.contiguous)

    def _load_header(self, slot: Slot, storage: Any, secret_key: Optional[bytes],
                     key: Optional[bytes], manifest: Optional[bytes]) -> None:
        """The state of an existing store, from its newest header slot."""
        if (slot.flags & ~(HF_COMPAT | HF_MANIFEST) or slot.flags == HF_COMPAT | HF_MANIFEST
                or slot.contiguous > slot.length or slot.length > caps.MAX_LENGTH
                or bool(slot.flags & HF_MANIFEST) != (slot.manifest is not None)):
            raise self._damaged("inconsistent header slot", "header")
        self.key = slot.key
        self._flags = slot.flags & HF_COMPAT
        self.manifest = None
        self._verifier = Verifier(self.key, None)
        if slot.manifest is not None:
            try:
                self._learn_manifest(slot.manifest)
            except CoreMachineError:
                raise self._damaged("the header's manifest is not this core's",
                                    "header") from None
        if key is not None and key != self.key:
            raise KeyMismatchError("the store holds another core")
        if manifest is not None and manifest != self.manifest:
            raise KeyMismatchError("the store holds another manifest")
        self._header_seq = slot.seq
        self._generation = slot.generation
        self._set_state(slot.fork, slot.length, slot.contiguous, slot.byte_length,
                        slot.tree_hash, slot.signature)
        self._secret_key = None
        self._writer_store = True   # a secret_key file, even one we may not read
        try:
            sk_file = storage.open("secret_key", PRIVATE | (READONLY if self._readonly else 0))
        except StoreNotFoundError:
            sk_file = None
            self._writer_store = False
        except StorageError as e:
            if not (self._readonly and e.errno == errno.EACCES):
                raise
            sk_file = None  # not ours to read: nothing signs
        if sk_file is not None:
            try:
                stored = sk_file.read(65, 0)
            finally:
                sk_file.close()
            self._check_secret(stored, True)
            if secret_key is not None and stored != secret_key:
                raise KeyMismatchError("the store holds another secret key")
            self._secret_key = stored
        elif secret_key is not None and not self._writer_store:
            # The signer's key given to a replica: it becomes the writer, which
            # needs every block.
            self._check_secret(secret_key, False)
            if self.contiguous != self.length:
                raise InvalidArgumentError("a replica that lacks blocks cannot become the writer")
            self._write_secret(storage, secret_key)
            self._writer_store = True
            self._sig = None  # a writer keeps no signature in its header

    def _open_file(self, storage: Any, name: str, flags: int) -> File:
        f: File = storage.open(name, flags)
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
        if self._flags & HF_MANIFEST:
            assert self.manifest is not None
            signers = Manifest.decode(self.manifest).signers
            ok = bool(signers) and signers[0][1] == pk
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
                flags = HF_COMPAT
            else:
                manifest = manifest if manifest is not None else default_manifest(pk)
                m = Manifest.decode(manifest)
                if not m.signers or m.signers[0][1] != pk or m.quorum != 1:
                    raise KeyMismatchError("the manifest's first signer must be this key pair, "
                                           "with quorum 1")
                core_key = manifest_hash(manifest)
                flags = HF_MANIFEST
            if key is not None and key != core_key:
                raise KeyMismatchError("key does not match the key pair")
        else:
            assert key is not None
            core_key = key
            if manifest is not None:
                Verifier(key, manifest)
                flags = HF_MANIFEST
        self.key = core_key
        self._flags = flags
        self._writer_store = secret_key is not None
        self.manifest = manifest if flags & HF_MANIFEST else None
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

    def close(self) -> None:
        if self._closed:
            return
        try:
            if self._failed is None and not self._readonly:
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


def _no_recovery() -> Dict[str, int]:
    return {"records_replayed": 0, "bytes_discarded": 0, "header_slot": 0, "header_fallback": 0,
            "forked": 0}
