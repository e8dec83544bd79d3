"""The public log API and its errors, on real files, for the selected backend."""
from __future__ import annotations

import os
import stat
import struct
import zlib
from typing import List

import pytest

import coremachine_embedded as cm
from coremachine_embedded import caps, errors

SEED = bytes(range(32))


@pytest.fixture
def kp() -> cm.KeyPair:
    return cm.KeyPair.from_seed(SEED)


def test_keypair_matches_libsodium_seed_derivation(kp: cm.KeyPair) -> None:
    import pysodium
    pk, sk = pysodium.crypto_sign_seed_keypair(SEED)
    assert kp.public_key == pk and kp.secret_key == sk
    assert "secret" not in repr(kp) or sk.hex() not in repr(kp)
    other = cm.KeyPair.generate()
    assert other != kp and len(other.secret_key) == 64


def test_append_get_reopen(tmp_path, kp: cm.KeyPair) -> None:
    d = tmp_path / "store"
    with cm.Core(d, key_pair=kp) as core:
        assert core.length == 0 and core.signature is None
        assert core.append(b"one") == 1
        assert core.append([b"two", b"", b"four"]) == 4
        assert [core.get(i) for i in range(4)] == [b"one", b"two", b"", b"four"]
        assert core.byte_length == 10
        assert len(core.signature) == 68
        state = (core.key, core.tree_hash(), core.signature, core.discovery_key)
    with cm.Core(d) as core:
        assert core.writable
        assert (core.key, core.tree_hash(), core.signature, core.discovery_key) == state
        assert list(core) == [b"one", b"two", b"", b"four"]
        core.append(b"five")
        assert core.length == 5


def test_append_locked_is_append_of_one_block_under_the_held_lock(tmp_path,
                                                                  kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "a", key_pair=kp, max_block_size=100) as a, \
            cm.Core(tmp_path / "b", key_pair=kp) as b:
        seen_a, seen_b, skipped = [], [], []
        origin = skipped.append   # one bound method: the one the core compares
        a.on_change(seen_a.append)
        a.on_change(origin)
        b.on_change(seen_b.append)
        with a.lock:
            assert a.append_locked(b"one") == 1
            assert a.append_locked(bytearray(b"two"), origin) == 2  # type: ignore
        with b.lock:
            b.append(b"one")
        b.append(b"two", origin=seen_a.append)  # not a listener of b: all are told
        assert [a.get(i) for i in range(2)] == [b"one", b"two"]
        assert (a.tree_hash(), a.signature) == (b.tree_hash(), b.signature)
        assert [(c.kind, c.length) for c in seen_a] == [("append", 1), ("append", 2)]
        assert [c.length for c in skipped] == [1]   # the origin is not told of its own
        assert [c.length for c in seen_b] == [1, 2]
        with pytest.raises(errors.ArgumentTypeError), a.lock:
            a.append_locked("text")  # type: ignore
        with pytest.raises(errors.TooLargeError), a.lock:
            a.append_locked(b"x" * 101)
        assert a.length == 2


def test_compat_mode_key_is_public_key(tmp_path, kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "c", key_pair=kp, compat=True) as core:
        core.append(b"x")
        assert core.key == kp.public_key and core.compat
        assert len(core.signature) == 64


def test_secret_key_file_is_private(tmp_path, kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "s", key_pair=kp):
        pass
    mode = stat.S_IMODE(os.stat(tmp_path / "s" / "secret_key").st_mode)
    assert mode == 0o600


def test_errors_are_specific(tmp_path, kp: cm.KeyPair) -> None:
    d = tmp_path / "e"
    with cm.Core(d, key_pair=kp, max_block_size=1024) as core:
        core.append(b"a")
        with pytest.raises(cm.OutOfRangeError) as e:
            core.get(1)
        assert isinstance(e.value, IndexError) and e.value.code == "OUT_OF_RANGE"
        with pytest.raises(cm.OutOfRangeError):
            core.get(-1)
        with pytest.raises(cm.ArgumentTypeError) as te:
            core.append("text is not bytes")  # type: ignore[arg-type]
        assert isinstance(te.value, TypeError)
        with pytest.raises(cm.ArgumentTypeError):
            core.append([b"ok", 5])  # type: ignore[list-item]
        with pytest.raises(cm.ArgumentTypeError):
            core.get("0")  # type: ignore[arg-type]
        with pytest.raises(cm.TooLargeError) as tl:
            core.append(bytes(1025))
        assert isinstance(tl.value, ValueError)
        assert core.length == 1  # nothing was appended
        with pytest.raises(cm.OutOfRangeError):
            core.truncate(5)
        with pytest.raises(cm.InvalidArgumentError):
            core.truncate(1, fork=0)
    with pytest.raises(cm.ArgumentTypeError):
        cm.Core(tmp_path / "x", key="00" * 32)  # type: ignore[arg-type]
    with pytest.raises(cm.InvalidArgumentError):
        cm.Core(tmp_path / "x", key=b"\x00" * 31)
    with pytest.raises(cm.ArgumentTypeError):
        cm.Core(tmp_path / "x", key_pair=b"\x00" * 64)  # type: ignore[arg-type]
    with pytest.raises(cm.ArgumentTypeError):
        cm.KeyPair.from_seed("0" * 32)  # type: ignore[arg-type]
    with pytest.raises(cm.StoreNotFoundError) as nf:
        cm.Core(tmp_path / "missing")
    assert isinstance(nf.value, FileNotFoundError)
    with pytest.raises(cm.KeyMismatchError):
        cm.Core(d, key_pair=cm.KeyPair.from_seed(bytes(32)))
    with pytest.raises(cm.KeyMismatchError):
        cm.Core(d, key=bytes(32))
    core = cm.Core(d)
    core.close()
    core.close()  # idempotent
    with pytest.raises(cm.ClosedError):
        core.append(b"late")
    with pytest.raises(cm.ClosedError):
        core.get(0)


def test_second_opener_gets_a_lock_error(tmp_path, kp: cm.KeyPair) -> None:
    d = tmp_path / "l"
    with cm.Core(d, key_pair=kp):
        with pytest.raises(cm.StoreLockedError) as e:
            cm.Core(d)
        assert isinstance(e.value, OSError)
        assert "header" in str(e.value.filename)
    with cm.Core(d):
        pass  # released on close


def test_replica_is_read_only(tmp_path, kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "w", key_pair=kp) as w:
        w.append([b"a", b"b"])
        with cm.Core(tmp_path / "r", key=w.key) as r:
            assert not r.writable and r.length == 0
            with pytest.raises(cm.ReadOnlyError) as e:
                r.append(b"x")
            assert isinstance(e.value, PermissionError)
            with pytest.raises(cm.ReadOnlyError):
                r.truncate(0)
            r.apply_proof(w.proof(upgrade=(0, 2), manifest=True))
            assert r.length == 2 and r.contiguous_length == 0
            with pytest.raises(cm.BlockNotAvailableError):
                r.get(1)
            r.apply_proof(w.proof(block=0, nodes=r.missing_nodes(0)))
            assert r.get(0) == b"a" and r.contiguous_length == 1


def _rewrite_header_version(path, version: int, grow: int = 0) -> None:
    """Give every valid header slot another format version (and ``grow``
    more body bytes, as a later format's layout might), with a valid CRC."""
    with open(path, "r+b") as f:
        raw = f.read()
    for slot in (0, 1):
        base = 4096 * slot
        if len(raw) < base + 8:
            continue
        crc, blen = struct.unpack_from("<II", raw, base)
        body = bytearray(raw[base + 8:base + 8 + blen])
        if len(body) < 136 or zlib.crc32(raw[base + 4:base + 8 + blen]) != crc:
            continue
        struct.pack_into("<I", body, 4, version)
        body += bytes(grow)
        head = struct.pack("<I", len(body))
        new = struct.pack("<I", zlib.crc32(bytes(body), zlib.crc32(head))) + head + bytes(body)
        with open(path, "r+b") as f:
            f.seek(base)
            f.write(new)


@pytest.mark.parametrize("version,grow", [(caps.FORMAT_VERSION + 1, 0),
                                          (caps.FORMAT_VERSION + 1, 24),
                                          (caps.FORMAT_OLDEST - 1, 0),
                                          (caps.FORMAT_OLDEST - 1, 8)])
def test_other_format_versions_are_refused(tmp_path, kp: cm.KeyPair, version: int,
                                          grow: int) -> None:
    """A store in a format this library has no reader (or migration) for is a
    FormatVersionError naming the header, whatever that format's slot layout,
    newer or older - never a CorruptionError, never a fallback to a slot of
    an older state."""
    d = tmp_path / "v"
    with cm.Core(d, key_pair=kp) as core:
        core.append(b"x")
        core.checkpoint()
        core.append(b"y")  # both slots are valid
    _rewrite_header_version(d / "header", version, grow)
    with pytest.raises(cm.FormatVersionError) as e:
        cm.Core(d)
    assert e.value.code == "FORMAT_VERSION" and str(e.value.filename).endswith("header")


def test_the_oldest_format_still_read_is_migrated(tmp_path, kp: cm.KeyPair) -> None:
    """Format 1 has format 2's layout: it opens, reads the same log, and gets
    a header slot of the current version (format 2 checkpoints every
    truncation)."""
    d = tmp_path / "v"
    with cm.Core(d, key_pair=kp) as core:
        core.append([b"x", b"y"])
        core.checkpoint()
        core.append(b"z")
        expected = core.tree_hash()
    _rewrite_header_version(d / "header", caps.FORMAT_OLDEST, 0)
    with cm.Core(d) as core:
        assert (core.length, core.tree_hash()) == (3, expected)
    raw = (d / "header").read_bytes()
    versions = {struct.unpack_from("<I", raw, base + 12)[0] for base in (0, 4096)}
    assert caps.FORMAT_VERSION in versions


def test_replica_refuses_blocks_over_its_max_block_size(tmp_path, kp: cm.KeyPair) -> None:
    """A replica's max_block_size bounds what it stores, as a writer's bounds
    what it appends: a larger block is TooLargeError and nothing is stored."""
    with cm.Core(tmp_path / "w", key_pair=kp) as w, \
            cm.Core(tmp_path / "r", key=w.key, max_block_size=1024) as r:
        w.append([b"small", bytes(1025), b"after"])
        r.apply_proof(w.proof(upgrade=(0, 3), manifest=True))
        r.apply_proof(w.proof(block=0, nodes=r.missing_nodes(0)))
        with pytest.raises(cm.TooLargeError):
            r.apply_proof(w.proof(block=1, nodes=r.missing_nodes(1)))
        assert r.contiguous_length == 1
        with pytest.raises(cm.TooLargeError):
            r.apply_run(0, [w.get(0), w.get(1)])
        assert r.contiguous_length == 1 and r.get(0) == b"small"


def test_truncate_bumps_fork_and_resigns(tmp_path, kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "t", key_pair=kp) as core:
        core.append([b"%d" % i for i in range(10)])
        before = core.signature
        core.truncate(4)
        assert (core.length, core.fork) == (4, 1)
        assert core.signature != before
        core.append(b"new")
        assert core.get(4) == b"new"
        with pytest.raises(cm.OutOfRangeError):
            core.get(5)
    with cm.Core(tmp_path / "t") as core:
        assert (core.length, core.fork) == (5, 1)
        assert core.get(4) == b"new"


def test_batch_durability_flushes(tmp_path, kp: cm.KeyPair) -> None:
    with cm.Core(tmp_path / "b", key_pair=kp, durability="batch", flush_interval=0.05) as core:
        for i in range(100):
            core.append(b"%d" % i)
        core.flush()
        assert core.durability == "batch"
    with cm.Core(tmp_path / "b") as core:
        assert core.length == 100
    with pytest.raises(cm.InvalidArgumentError):
        cm.Core(tmp_path / "z", key_pair=kp, durability="sometimes")


def test_backend_is_reported() -> None:
    assert cm.backend in ("c", "python")
    assert cm.backend == os.environ.get("COREMACHINE_IMPL", cm.backend).replace("auto", cm.backend)


def test_error_codes_are_distinct_and_subclass_builtins() -> None:
    classes = set(errors.C_ERRORS.values())
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes))
    for cls in classes:
        assert issubclass(cls, cm.CoreMachineError)
        assert any(issubclass(cls, b) for b in (ValueError, OSError, IndexError, LookupError,
                                                 PermissionError, TypeError))


def test_get_range(tmp_path, kp: cm.KeyPair) -> None:
    """get_range returns what get returns for any range (aligned runs and the
    odd blocks around them), with get's errors for ranges it cannot serve."""
    blocks = [b"%d" % i * (i % 5) for i in range(300)]  # empty blocks too
    with cm.Core(str(tmp_path / "w"), key_pair=kp) as core:
        core.append(blocks[:1])
        core.append(blocks[1:])
        for start, end in ((0, 300), (0, 0), (299, 300), (5, 6), (3, 200), (64, 128),
                           (1, 299), (128, 300)):
            assert core.get_range(start, end) == blocks[start:end], (start, end)
        with pytest.raises(cm.OutOfRangeError):
            core.get_range(10, 9)
        with pytest.raises(cm.OutOfRangeError):
            core.get_range(0, 301)
        with pytest.raises(cm.ArgumentTypeError):
            core.get_range(0, "3")  # type: ignore[arg-type]
        with cm.Core(str(tmp_path / "r"), key=core.key) as replica:
            replica.apply_proof(core.proof(upgrade=(0, core.length), manifest=True))
            for i in range(10):
                replica.apply_proof(core.proof(block=i, nodes=replica.missing_nodes(i)))
            assert replica.get_range(2, 10) == blocks[2:10]
            with pytest.raises(cm.BlockNotAvailableError):
                replica.get_range(5, 11)


def test_failed_opens_in_threads_name_their_own_files(tmp_path, kp: cm.KeyPair) -> None:
    """Opens run without the GIL: two threads failing to open different
    damaged stores each get the file of their own store (issue 10: the C
    backend kept the failing file in a global)."""
    import threading

    def damaged(name: str, file: str) -> str:
        path = str(tmp_path / name)
        with cm.Core(path, key_pair=kp) as core:
            core.append([b"x" * 100] * 9)
        with open(os.path.join(path, file), "r+b") as f:
            f.write(b"\xff" * (8192 if file == "header" else 40 * 17))
        return path

    stores = {"tree": damaged("a", "tree"), "header": damaged("b", "header")}
    wrong: List[str] = []

    def open_many(file: str) -> None:
        for _ in range(300):
            try:
                cm.Core(stores[file])
            except cm.CorruptionError as e:
                if os.path.basename(str(e.filename)) != file:
                    wrong.append("%s named %s" % (file, e.filename))
    threads = [threading.Thread(target=open_many, args=(f,)) for f in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, wrong[:5]
