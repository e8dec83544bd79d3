"""The public log API: :class:`KeyPair` and :class:`Core`.

``Core`` is a thin, thread-safe layer over the selected backend's ``Log`` (C or
pure Python): it checks argument types, serialises calls with a lock and runs
the group-commit timer of the ``batch`` durability.
"""
from __future__ import annotations

import os
import threading
from collections import deque
from typing import Any, Callable, Deque, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from . import _backend
from .caps import Durability
from .encoding import DataMessage, Node
from .errors import (ArgumentTypeError, CoreMachineError, CorruptionError, InvalidArgumentError,
                     InvalidProofError, SnapshotStaleError, need_bytes)
from .proofs import ApplyResult
from .storecheck import check_store

BytesLike = Union[bytes, bytearray, memoryview]
_impl = _backend.impl


class KeyPair:
    """An Ed25519 key pair, as libsodium's ``crypto_sign_seed_keypair`` makes it.

    ``secret_key`` is 64 bytes (``seed || public_key``), ``public_key`` 32.
    """

    __slots__ = ("public_key", "secret_key")

    def __init__(self, public_key: bytes, secret_key: bytes) -> None:
        self.public_key = need_bytes("public_key", public_key, 32)
        self.secret_key = need_bytes("secret_key", secret_key, 64)
        if self.secret_key[32:] != self.public_key:
            raise InvalidArgumentError("secret_key does not end with public_key")

    @classmethod
    def from_seed(cls, seed: BytesLike) -> "KeyPair":
        """The key pair of a 32-byte seed (deterministic)."""
        pk, sk = _impl.keypair_from_seed(need_bytes("seed", seed, 32))
        return cls(pk, sk)

    @classmethod
    def generate(cls) -> "KeyPair":
        """A new random key pair."""
        pk, sk = _impl.keypair_generate()
        return cls(pk, sk)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPair) and other.secret_key == self.secret_key

    def __hash__(self) -> int:
        return hash(self.public_key)

    def __repr__(self) -> str:  # never print the secret key
        return "KeyPair(public_key=%s)" % self.public_key.hex()


class InOrder:
    """Runs deliveries in the order they were asked for: one asked while
    another runs (a change notification whose callback makes a change) waits
    until that one has reached everybody.  Used under the owner's lock."""

    __slots__ = ("_queue", "_running")

    def __init__(self) -> None:
        self._queue: Deque[Callable[[], None]] = deque()
        self._running = False

    def __call__(self, deliver: Callable[[], None]) -> None:
        self._queue.append(deliver)
        if self._running:
            return
        self._running = True
        try:
            while self._queue:
                self._queue.popleft()()
        finally:   # a callback raised: what is queued goes out with the next one
            self._running = False


class CoreChange:
    """What changed in a core: ``kind`` is ``"append"``, ``"truncate"`` or
    ``"proof"`` (a replica stored something); lengths and forks before and after."""

    __slots__ = ("kind", "previous_length", "previous_contiguous", "previous_fork", "length",
                 "contiguous_length", "fork", "result")

    def __init__(self, kind: str, before: Tuple[int, int, int], after: Tuple[int, int, int],
                 result: Any) -> None:
        self.kind = kind
        self.previous_length, self.previous_contiguous, self.previous_fork = before
        self.length, self.contiguous_length, self.fork = after
        self.result = result

    def __repr__(self) -> str:
        return "CoreChange(%s, length %d->%d, contiguous %d->%d, fork %d->%d)" % (
            self.kind, self.previous_length, self.length, self.previous_contiguous,
            self.contiguous_length, self.previous_fork, self.fork)


class Core:
    """A signed, append-only, Merkle-verified log in a store directory.

    :param directory: the store directory (created for a new writer/replica).
    :param key_pair: a :class:`KeyPair` - makes a writer (creates the store if
        needed; must match an existing one).
    :param key: a 32-byte core key - makes a read-only replica of that core.
    :param compat: Hypercore 10 compat mode for a new writer (key = public key,
        64-byte signatures).  Default: Hypercore 11 manifest mode.
    :param manifest: an encoded manifest for a new writer (default: the
        single-signer manifest of ``key_pair``).
    :param durability: ``"sync"`` (default: ``append`` returns once durable),
        ``"batch"`` (group commit: durable after :meth:`flush` or within
        ``flush_interval`` seconds) or ``"none"`` (synced at checkpoints and close).
    :param storage: an injectable storage (see :mod:`coremachine_embedded.storage`)
        instead of ``directory``.
    :param create: create the store if missing (default: when a key pair or key
        is given).
    :param readonly: a read-only snapshot of a store that another core (in this
        or another process: ``coremachine serve``, ``pull --live``, a firmware
        script) may hold open and write: the newest committed state when it is
        opened, read and verified from then on; it takes no lock, never writes
        and never waits for the writer.  Open it again to see later appends.
        Writes raise :class:`ReadOnlyError`; a read that the writer truncated
        away since raises :class:`SnapshotStaleError`.
    :raises StoreNotFoundError, StoreLockedError, KeyMismatchError,
        CorruptionError, FormatVersionError:
    """

    def __init__(self, directory: Optional[Union[str, "os.PathLike[str]"]] = None, *,
                 key_pair: Optional[KeyPair] = None, key: Optional[BytesLike] = None,
                 compat: bool = False, manifest: Optional[BytesLike] = None,
                 durability: Union[str, Durability] = Durability.SYNC,
                 flush_interval: float = 1.0,
                 checkpoint_bytes: int = 0, max_block_size: int = 0,
                 storage: Any = None, create: Optional[bool] = None,
                 readonly: bool = False) -> None:
        if key_pair is not None and not isinstance(key_pair, KeyPair):
            raise ArgumentTypeError("key_pair must be a KeyPair, not %s"
                                    % type(key_pair).__name__)
        if key is not None:
            key = need_bytes("key", key, 32)
        if manifest is not None:
            manifest = need_bytes("manifest", manifest)
        durability = Durability.parse(durability)
        if storage is None:
            if directory is None:
                raise InvalidArgumentError("give a directory or a storage")
            storage = os.fspath(directory)
        elif directory is not None:
            raise InvalidArgumentError("give a directory or a storage, not both")
        if readonly and (key_pair is not None or create):
            raise InvalidArgumentError("a read-only snapshot takes no key pair and creates "
                                       "nothing")
        if create is None:
            create = not readonly and (key_pair is not None or key is not None)
        self.directory = None if directory is None else os.fspath(directory)
        self._storage = storage
        self._lock = threading.RLock()
        self._listeners: List[Callable[["CoreChange"], None]] = []
        #: runs change deliveries in commit order (Core's and its machines')
        self.in_order = InOrder()
        self._timer: Optional[threading.Timer] = None
        self._flush_interval = float(flush_interval)
        self._flush_interval_armed = durability is Durability.BATCH
        self._log: _backend.Log = _impl.Log(
            storage, create=create, secret_key=key_pair.secret_key if key_pair else None,
            key=key, manifest=manifest, compat=compat, durability=durability,
            checkpoint_bytes=checkpoint_bytes, max_block_size=max_block_size, readonly=readonly)

    @property
    def lock(self) -> "threading.RLock":
        """The re-entrant lock every call on this core holds while it runs.

        Hold it (``with core.lock:``) to make several calls one step that no
        other thread interleaves with, e.g. read the state and append after it.
        A :class:`Coremachine` shares its core's lock, so there is no lock
        order to get wrong; :meth:`on_change` callbacks run with it held."""
        return self._lock

    # --- state ---------------------------------------------------------------

    @property
    def length(self) -> int:
        """Signed length: the number of blocks the latest signature covers."""
        return self._log.length

    @property
    def contiguous_length(self) -> int:
        """Blocks held from 0 (equals ``length`` on a writer)."""
        return self._log.contiguous

    @property
    def fork(self) -> int:
        return self._log.fork

    @property
    def byte_length(self) -> int:
        return self._log.byte_length

    @property
    def key(self) -> bytes:
        """The core key: the manifest hash, or the public key in compat mode."""
        return self._log.key

    @property
    def discovery_key(self) -> bytes:
        """``BLAKE2b-256(key=core key, "hypercore")``: names the core on the wire."""
        return self._log.discovery_key

    @property
    def public_key(self) -> bytes:
        return self._log.public_key

    @property
    def manifest(self) -> Optional[bytes]:
        """The encoded manifest (None in compat mode or while a replica has not
        learned it)."""
        return self._log.manifest

    @property
    def writable(self) -> bool:
        return self._log.writable

    @property
    def readonly(self) -> bool:
        """A read-only snapshot (``Core(..., readonly=True)``)."""
        return self._log.readonly

    @property
    def compat(self) -> bool:
        return self._log.compat

    @property
    def durability(self) -> Durability:
        """When an append is durable (a :class:`Durability`, equal to its string)."""
        return self._log.durability

    @property
    def recovery(self) -> Dict[str, int]:
        """What opening found: records replayed, torn bytes discarded, header slot."""
        return dict(self._log.recovery)

    @property
    def signature(self) -> Optional[bytes]:
        """The signature of the current state, exactly as Hypercore stores and
        sends it (68-byte container in manifest mode, 64 bytes in compat mode);
        None for an empty, never truncated log."""
        with self._lock:
            return self._log.signature()

    def tree_hash(self) -> bytes:
        """The 32-byte Merkle tree hash of the current state."""
        return self._log.tree_hash()

    def roots(self) -> List[Node]:
        """The current roots as ``(index, size, hash)``."""
        return [(r[0], r[1], r[2]) for r in self._log.roots]

    # --- writing -------------------------------------------------------------

    def append(self, data: Union[BytesLike, Sequence[BytesLike]], *,
               origin: Optional[Callable[["CoreChange"], None]] = None) -> int:
        """Append one block or a list of blocks as ONE signed state.

        :param origin: an :meth:`on_change` callback whose owner makes this
            change and keeps track of it itself: it is not called for it.
        :returns: the new length.
        :raises TooLargeError: a block over ``max_block_size`` or a batch over 64 MiB.
        """
        if type(data) is bytes:
            blocks = [data]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            blocks = [bytes(data)]
        elif isinstance(data, (list, tuple)):
            blocks = [b if type(b) is bytes else need_bytes("block", b) for b in data]
        else:
            raise ArgumentTypeError("append takes bytes or a list of bytes, not %s"
                                    % type(data).__name__)
        with self._lock:
            log = self._log
            listeners = self._listeners
            before = (log.length, log.contiguous, log.fork) if listeners and (
                listeners[0] is not origin or len(listeners) > 1) else None
            length = log.append(blocks)
            if self._timer is None and self._flush_interval_armed:
                self._arm_timer()
            if before is not None:
                self._notify("append", before, None, origin)
            return length

    def append_locked(self, block: bytes,
                      origin: Optional[Callable[["CoreChange"], None]] = None) -> int:
        """:meth:`append` of one block for a caller that holds :attr:`lock`
        already (a :class:`Coremachine` acting): the same checks, durability
        and notifications, without taking the lock a second time (re-entering
        it costs as much as the rest of the Python side of a small append,
        measured).  Calling it without holding the lock is a race."""
        if type(block) is not bytes:
            block = need_bytes("block", block)
        log = self._log
        listeners = self._listeners
        before = (log.length, log.contiguous, log.fork) if listeners and (
            listeners[0] is not origin or len(listeners) > 1) else None
        length = log.append([block])
        if self._timer is None and self._flush_interval_armed:
            self._arm_timer()
        if before is not None:
            self._notify("append", before, None, origin)
        return length

    def truncate(self, length: int, fork: Optional[int] = None, *,
                 origin: Optional[Callable[["CoreChange"], None]] = None) -> None:
        """Cut the log to ``length`` blocks and sign the new state with
        ``fork`` (default: current fork + 1), as Hypercore does.  ``origin``:
        as for :meth:`append`."""
        if not isinstance(length, int) or isinstance(length, bool):
            raise ArgumentTypeError("length must be an int")
        with self._lock:
            before = self._snapshot()
            self._log.truncate(length, self._log.fork + 1 if fork is None else fork)
            self._notify("truncate", before, None, origin)

    def flush(self) -> None:
        """Make everything appended so far durable (one fdatasync)."""
        with self._lock:
            self._log.flush()

    def checkpoint(self) -> None:
        """Fold the write-ahead file into the tree/data files now."""
        with self._lock:
            self._log.checkpoint()

    def _arm_timer(self) -> None:
        if not self._flush_interval_armed or self._timer is not None:
            return
        self._timer = threading.Timer(self._flush_interval, self._timed_flush)
        self._timer.daemon = True
        self._timer.start()

    def _timed_flush(self) -> None:
        with self._lock:
            self._timer = None
            try:
                self._log.flush()
            except Exception:
                pass  # the core records the failure; the next call raises it

    # --- reading -------------------------------------------------------------

    def get(self, index: int) -> bytes:
        """Block ``index``, verified against the tree and the signed roots.

        :raises OutOfRangeError: outside the log.
        :raises BlockNotAvailableError: a replica that does not hold it yet.
        :raises CorruptionError: the store is damaged (``filename`` says where).
        """
        if not isinstance(index, int) or isinstance(index, bool):
            raise ArgumentTypeError("index must be an int, not %s" % type(index).__name__)
        with self._lock:
            try:
                return self._log.get(index)
            except CorruptionError as e:
                self._raise_if_stale(e)
                raise

    def get_range(self, start: int, end: int) -> List[bytes]:
        """Blocks ``start`` to ``end - 1``, each verified as :meth:`get` does,
        in far fewer reads: aligned runs inside the range are read and checked
        as whole subtrees (what a server answering batched pulls does).

        :raises OutOfRangeError: ``end`` before ``start`` or past the log.
        :raises BlockNotAvailableError: a replica that does not hold them all.
        :raises CorruptionError: the store is damaged (``filename`` says where).
        """
        for value in (start, end):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ArgumentTypeError("start and end must be ints, not %s"
                                        % type(value).__name__)
        with self._lock:
            try:
                return self._log.get_range(start, end)
            except CorruptionError as e:
                self._raise_if_stale(e)
                raise

    def get_node(self, index: int) -> Node:
        """Tree node ``index`` as ``(index, size, hash)``, verified from the
        signed roots down (it must lie inside the signed length).

        :raises OutOfRangeError: outside the tree of the signed length.
        :raises BlockNotAvailableError: a replica that does not hold it yet.
        """
        if not isinstance(index, int) or isinstance(index, bool):
            raise ArgumentTypeError("index must be an int, not %s" % type(index).__name__)
        with self._lock:
            return self._log.get_node(index)

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterable[bytes]:
        for i in range(self.contiguous_length):
            yield self.get(i)

    # --- proofs (sync) -------------------------------------------------------

    def proof(self, *, block: Optional[int] = None, nodes: int = 0,
              upgrade: Optional[Tuple[int, int]] = None, manifest: bool = False,
              request: int = 0) -> bytes:
        """A hypercore ``data`` message proving ``block`` and/or an upgrade.

        :param block: the block index to send, with its Merkle path.
        :param nodes: tree levels above the block the requester is missing
            (:meth:`missing_nodes` on the requester).
        :param upgrade: ``(start, length)``: take a requester at length ``start``
            to ``start + length``; the signature is always this core's latest.
        :param manifest: include the manifest (a new replica needs it once).
        """
        with self._lock:
            return self._log.proof(request, block, nodes, upgrade, manifest)

    def check_upgrade(self, message: BytesLike) -> Tuple[int, int, bytes]:
        """Verify an upgrade proof from length 0 against this core's key and
        manifest, storing nothing: how a peer proves the signed state it has
        when this replica may hold as much already.  Returns the ``(fork,
        length, tree hash)`` its signature signs.

        :raises InvalidProofError, InvalidSignatureError, DecodeError: it does
            not prove a signed state of this core.
        """
        message = need_bytes("message", message)
        with self._lock:
            key, manifest = self._log.key, self._log.manifest
        check = _impl.check_proof(key, manifest, [], message)
        if not check.upgraded:
            raise InvalidProofError("the proof carries no signed state")
        return DataMessage.peek(message).fork, check.length, check.tree_hash

    def missing_nodes(self, index: int) -> int:
        """How many tree levels above block ``index`` this replica lacks."""
        with self._lock:
            return self._log.missing_nodes(index)

    def apply_proof(self, message: BytesLike) -> ApplyResult:
        """Verify a ``data`` message from the writer (Merkle path and signature)
        and only then store what it proves.  Returns an ``ApplyResult``
        (``upgraded``, ``block_stored``, ``reorg``, ``length`` ...).

        :raises InvalidProofError, InvalidSignatureError, ForkError, DecodeError:
            nothing was stored.
        """
        message = need_bytes("message", message)
        with self._lock:
            before = self._snapshot()
            result = self._log.apply_proof(message)
            self._arm_timer()
            if result.upgraded or result.block_stored or result.reorg:
                self._notify("proof", before, result)
            return result

    def apply_run(self, start: int, values: Sequence[BytesLike]) -> int:
        """Store the blocks of an aligned run ``[start, start+len(values))``
        (a power of two, at a multiple of it) whose first block this replica
        holds, if the tree rebuilt from ``values`` matches the node it holds
        over the run (batched transfer).  Returns the blocks added.

        :raises InvalidProofError: the values do not match; nothing stored.
        :raises BlockNotAvailableError: the first block or the node is not held yet.
        """
        blocks = [b if type(b) is bytes else need_bytes("value", b) for b in values]
        with self._lock:
            before = self._snapshot()
            added = self._log.apply_run(start, blocks)
            self._arm_timer()
            if added:
                self._notify("proof", before, None)
            return added

    def verify(self, progress: Any = None, warnings: Optional[List[str]] = None) -> int:
        """Check every checksummed region of the store files (both header
        slots, the wal records), re-hash every held block against the tree
        and check the signature of the current state.  Returns the number of
        blocks checked.

        :param progress: optional callable ``progress(done, total)``.
        :param warnings: a list that gets what is wrong with older copies
            nothing reads (the other header slot, wal records of earlier
            generations): damage there loses nothing; and, on a read-only
            snapshot, a last record not completely written (a torn write,
            or one under way), which the writer's next open drops.
        :raises CorruptionError: naming the damaged file.
        :raises InvalidSignatureError: the signature does not sign the tree.
        """
        with self._lock:
            log = self._log
            found = check_store(self.directory, self._storage, self._log.readonly)
            if warnings is not None:
                warnings.extend(found)
            sig = log.signature()
            if sig is not None:
                _impl.check_signature(log.key, log.manifest, log.tree_hash(), log.length,
                                      log.fork, sig)
            total = log.contiguous
            try:
                for i in range(total):
                    log.get(i)
                    if progress is not None and (i & 1023 == 1023 or i + 1 == total):
                        progress(i + 1, total)
            except CorruptionError as e:
                self._raise_if_stale(e)
                raise
            return total

    def _raise_if_stale(self, error: CorruptionError) -> None:
        """On a read-only snapshot, a read that failed because the writer has
        truncated the store since is a SnapshotStaleError (else ``error`` stands)."""
        if not self._log.readonly:
            return
        try:
            now = _impl.Log(self._storage, readonly=True)
        except CoreMachineError:
            return
        try:
            fork = now.fork
        finally:
            now.close()
        if fork != self._log.fork:
            raise SnapshotStaleError("the store was truncated after this snapshot was taken "
                                     "(fork %d, now %d): open it again" % (self._log.fork, fork),
                                     error.filename) from error

    def has(self, index: int) -> bool:
        """True if block ``index`` is held locally."""
        return 0 <= index < self.contiguous_length

    # --- change notifications --------------------------------------------------

    def on_change(self, callback: Callable[["CoreChange"], None]) -> Callable[[], None]:
        """Call ``callback(change)`` after every append, truncation and stored
        proof (inside the core's lock: keep it short), in commit order: a
        change a callback makes is told to every callback after the one being
        told.  Returns a function that removes the callback."""
        with self._lock:
            self._listeners.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._listeners:
                    self._listeners.remove(callback)
        return remove

    def _snapshot(self) -> Tuple[int, int, int]:
        log = self._log
        return (log.length, log.contiguous, log.fork)

    def _notify(self, kind: str, before: Tuple[int, int, int], result: Any,
                origin: Optional[Callable[["CoreChange"], None]] = None) -> None:
        if not self._listeners:
            return
        change = CoreChange(kind, before, self._snapshot(), result)

        def deliver() -> None:
            for callback in list(self._listeners):
                if callback is not origin:
                    callback(change)
        self.in_order(deliver)

    # --- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Flush, checkpoint and release the store (idempotent)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._log.close()

    def __enter__(self) -> "Core":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return "Core(key=%s, length=%d, fork=%d, %s)" % (
            self.key.hex()[:16], self.length, self.fork,
            "writer" if self.writable else "replica")
