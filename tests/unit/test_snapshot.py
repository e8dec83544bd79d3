"""Read-only snapshots (``Core(path, readonly=True)``) of stores that another
core holds open and writes: the newest committed state, verified reads, no
lock, nothing written, and clear errors (docs/format.md, "Read-only
snapshots").  Runs on the selected backend; tests/fault/test_snapshot_live.py
does the same across processes."""
from __future__ import annotations

import errno
import os
import shutil
from typing import List

import pytest

import coremachine_embedded as cm
from coremachine_embedded import caps
from coremachine_embedded.storage import FileStorage
from tests.fixtures import recipes
from tests.fixtures.recipes import read_files

KP = cm.KeyPair.from_seed(bytes(range(32)))


def blocks(tag: str, n: int, size: int = 50) -> List[bytes]:
    return recipes.blocks(tag, [size + i % 7 for i in range(n)])


def same_state(a: cm.Core, b: cm.Core) -> None:
    assert (a.key, a.length, a.fork, a.byte_length, a.tree_hash(), a.roots()) == \
        (b.key, b.length, b.fork, b.byte_length, b.tree_hash(), b.roots())
    assert a.signature == b.signature
    assert [a.get(i) for i in range(b.contiguous_length)] == \
        [b.get(i) for i in range(b.contiguous_length)]


def test_a_snapshot_of_a_live_writer_sees_its_state_and_writes_nothing(tmp_path) -> None:
    d = tmp_path / "w"
    with cm.Core(d, key_pair=KP, durability="batch", checkpoint_bytes=4096,
                 flush_interval=3600) as w:
        w.append(blocks("a", 60))
        w.append(blocks("b", 5))    # records since the last checkpoint
        assert w.signature   # (handing it out writes out the writer's write-behind)
        before = read_files(d)
        with cm.Core(d, readonly=True) as s:   # the writer holds the lock
            assert s.readonly and not s.writable
            same_state(w, s)
            assert s.verify() == 65 and s.get_range(0, 65) == [w.get(i) for i in range(65)]
            assert s.proof(block=3, upgrade=(0, 65)) == w.proof(block=3, upgrade=(0, 65))
            for write in (lambda: s.append(b"x"), lambda: s.truncate(1),
                          lambda: s.checkpoint(), lambda: s.apply_run(0, [b"", b""]),
                          lambda: s.apply_proof(w.proof(upgrade=(0, 1)))):
                with pytest.raises(cm.ReadOnlyError):
                    write()
            s.flush()  # nothing to make durable
        assert read_files(d) == before
        with cm.Core(d, readonly=True) as s:
            w.append(b"later")
            assert s.length == 65  # a snapshot keeps the state it took
            assert s.get(64) == w.get(64)
    with cm.Core(d, readonly=True) as s:
        assert s.length == 66 and s.get(65) == b"later"


def test_a_snapshot_never_writes_a_byte(tmp_path) -> None:
    """Opening and reading a snapshot of a closed store (whose writer would
    replay, sanitize or checkpoint on open) leaves every file as it was."""
    for name in recipes.STORES:
        copy = tmp_path / name
        recipes.copy_fixture(caps.FORMAT_OLDEST, name, str(copy))   # (a writer would migrate it)
        before = read_files(copy)
        with cm.Core(copy, readonly=True) as s:
            s.verify()
            [s.get(i) for i in range(s.contiguous_length)]
        assert read_files(copy) == before, name
        with cm.Core(copy) as core:   # and the store's own open agrees
            with cm.Core(copy, readonly=True) as s:
                same_state(core, s)


def test_a_snapshot_reads_records_its_writer_has_not_applied_yet(tmp_path) -> None:
    """The write-ahead records since the checkpoint are read into memory: a
    writer that wrote a record but not yet its tree and data (over blocks a
    truncation, checkpointed, dropped) is read right."""
    d, old, mix = tmp_path / "w", tmp_path / "old", tmp_path / "mix"
    with cm.Core(d, key_pair=KP, durability="none", flush_interval=3600) as w:
        w.append(blocks("a", 40))
        w.checkpoint()
        shutil.copytree(d, old)
        w.append(blocks("b", 6))
        w.truncate(30)
        w.append(blocks("c", 9, 300))
        shutil.copytree(d, mix)
        for name in ("tree", "data"):   # tree and data as they were at the checkpoint
            shutil.copy(old / name, mix / name)
        with cm.Core(mix, readonly=True) as s:
            assert s.recovery["records_replayed"] == 1   # (the truncation checkpointed)
            same_state(w, s)
            assert s.verify() == 39
            assert s.get_range(0, 39) == [w.get(i) for i in range(39)]


def test_a_checkpoint_racing_the_snapshot_is_read_again(tmp_path) -> None:
    """A writer that checkpoints (and writes a new generation over the wal)
    while the snapshot reads it: the snapshot starts again from the new
    header slot and gets the newest state, never a torn one."""
    d = tmp_path / "w"
    w = cm.Core(d, key_pair=KP, durability="batch", flush_interval=3600)
    w.append(blocks("a", 10))
    w.checkpoint()
    w.append(blocks("b", 10))
    raced = []

    class RacingWal:
        """The wal file; under the snapshot's first read of it, the writer
        checkpoints and appends (a new generation over the old records)."""

        def __init__(self, f) -> None:
            self.f = f

        def read(self, size: int, offset: int) -> bytes:
            if not raced:
                raced.append(True)
                w.checkpoint()
                w.append(blocks("c", 7))
            return self.f.read(size, offset)

        def __getattr__(self, name: str):
            return getattr(self.f, name)

    class RacingStorage(FileStorage):
        def open(self, name: str, flags: int = 0):  # type: ignore[override]
            f = super().open(name, flags)
            return RacingWal(f) if name == "wal" else f

    try:
        with cm.Core(storage=RacingStorage(str(d)), readonly=True) as s:
            assert raced
            same_state(w, s)
            assert s.length == 27
    finally:
        w.close()


def test_a_snapshot_of_a_replica_holds_what_it_held(tmp_path) -> None:
    with cm.Core(tmp_path / "w", key_pair=KP) as w, \
            cm.Core(tmp_path / "r", key=w.key, durability="batch", flush_interval=3600) as r:
        w.append(blocks("a", 50))
        r.apply_proof(w.proof(upgrade=(0, 50), manifest=True))
        for i in range(20):
            r.apply_proof(w.proof(block=i, nodes=r.missing_nodes(i)))
        with cm.Core(tmp_path / "r", readonly=True) as s:
            same_state(r, s)
            assert s.contiguous_length == 20 and s.manifest == w.manifest
            assert s.verify() == 20
            with pytest.raises(cm.BlockNotAvailableError):
                s.get(30)
            with pytest.raises(cm.KeyMismatchError):
                cm.Core(tmp_path / "r", key=bytes(32), readonly=True)


def test_a_snapshot_the_writer_truncated_away_says_so(tmp_path) -> None:
    d = tmp_path / "w"
    with cm.Core(d, key_pair=KP, flush_interval=3600) as w:
        w.append(blocks("a", 30))
        w.checkpoint()   # the snapshot then reads every block from the files
        with cm.Core(d, readonly=True) as s:
            w.truncate(0)
            w.append(blocks("other", 30))
            w.checkpoint()
            with pytest.raises(cm.SnapshotStaleError) as e:
                s.verify()
            assert e.value.code == "SNAPSHOT_STALE" and "open it again" in str(e.value)
        with cm.Core(d, readonly=True) as s:
            assert s.fork == 1 and s.verify() == 30


def test_errors_are_clear(tmp_path) -> None:
    with pytest.raises(cm.StoreNotFoundError):
        cm.Core(tmp_path / "nothing", readonly=True)
    assert not (tmp_path / "nothing").exists()
    with pytest.raises(cm.InvalidArgumentError):
        cm.Core(tmp_path / "x", key_pair=KP, readonly=True)
    d = tmp_path / "w"
    with cm.Core(d, key_pair=KP) as w:
        w.append(b"x")
    from tests.unit.test_core import _rewrite_header_version
    _rewrite_header_version(d / "header", caps.FORMAT_VERSION + 1)   # mid-way through a change
    with pytest.raises(cm.FormatVersionError):
        cm.Core(d, readonly=True)
    d2 = tmp_path / "half"                        # a store being created
    d2.mkdir()
    (d2 / "header").write_bytes(b"")
    with pytest.raises(cm.StoreNotFoundError):
        cm.Core(d2, readonly=True)
    (d2 / "wal").write_bytes(b"x" * 200)
    with pytest.raises(cm.CorruptionError):
        cm.Core(d2, readonly=True)


def test_a_snapshot_signs_a_writer_state_only_with_a_readable_key(tmp_path) -> None:
    d = tmp_path / "w"
    with cm.Core(d, key_pair=KP) as w:
        w.append(blocks("a", 3))
        sig = w.signature
    with cm.Core(d, readonly=True) as s:
        assert s.signature == sig and s.public_key == KP.public_key

    class NoKeyForYou(FileStorage):  # as for another user (a chmod does not stop root)
        def open(self, name: str, flags: int = 0):  # type: ignore[override]
            if name == "secret_key":
                raise cm.StorageError("Permission denied", name, errno.EACCES)
            return super().open(name, flags)

    with cm.Core(storage=NoKeyForYou(str(d)), readonly=True) as s:
        assert s.signature is None and s.verify() == 3 and s.get(2) == recipes.blocks(
            "a", [50, 51, 52])[2]
        with pytest.raises(cm.OutOfRangeError):   # errors after it are its own
            s.get(3)
