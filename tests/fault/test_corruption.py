"""Bit rot: one flipped byte in any store file is detected (a CorruptionError
naming that file) or provably harmless (the store reads back exactly what was
written); flipped bytes are never returned as data."""
from __future__ import annotations

import os
import random
import shutil
import struct
import subprocess
import sys
import textwrap
from typing import List

import pytest

import coremachine_embedded as cm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ("header", "wal", "tree", "data", "secret_key")
BLOCKS = [b"block %d " % i * (1 + i % 7) for i in range(60)]


def make_store(path: str, clean: bool) -> None:
    """A writer store with checkpoints behind it and, unless clean, live
    records in the wal (the writer process dies without closing)."""
    script = textwrap.dedent("""
        import os, sys
        import coremachine_embedded as cm
        blocks = [b"block %d " % i * (1 + i % 7) for i in range(60)]
        core = cm.Core(sys.argv[1], key_pair=cm.KeyPair.from_seed(bytes(32)),
                       checkpoint_bytes=2048)
        for b in blocks[:40]:
            core.append(b)
        core.append(blocks[40:55])
        for b in blocks[55:]:
            core.append(b)  # these stay in the wal: no checkpoint after them
        if sys.argv[2] == "clean":
            core.close()
        os._exit(0)
    """)
    subprocess.run([sys.executable, "-c", script, path, "clean" if clean else "dirty"],
                   check=True, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


def read_back(path: str):
    """Every block by get() and by get_range() (which checks whole subtrees
    instead of paths): the same blocks or a CorruptionError, never other bytes."""
    with cm.Core(path) as core:
        recovery = core.recovery  # what opening the damaged store found
        try:
            ranged = core.get_range(0, core.length)
        except cm.CorruptionError as e:
            ranged = e
    with cm.Core(path) as core:  # reopened: nothing verified is cached from get_range
        if isinstance(ranged, list):
            assert ranged == BLOCKS[:len(ranged)], "get_range returned damaged bytes"
        blocks = [core.get(i) for i in range(core.length)]
        core.verify()
        if isinstance(ranged, cm.CorruptionError):
            raise ranged
        assert ranged == blocks
        return blocks, recovery


@pytest.mark.parametrize("clean", [False, True], ids=["after-crash", "after-close"])
def test_flipped_byte_in_each_file(tmp_path, clean: bool) -> None:
    pristine = str(tmp_path / "pristine")
    make_store(pristine, clean)
    shutil.copytree(pristine, str(tmp_path / "check"))
    assert read_back(str(tmp_path / "check"))[0] == BLOCKS  # (opening a copy checkpoints it)
    rng = random.Random(7)
    detected = {name: 0 for name in FILES}
    for name in FILES:
        size = os.path.getsize(os.path.join(pristine, name))
        offsets = sorted(set([0, size - 1] + [rng.randrange(size) for _ in range(40)]))
        for off in offsets:
            work = str(tmp_path / "work")
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            with open(os.path.join(work, name), "r+b") as f:
                f.seek(off)
                byte = f.read(1)[0]
                f.seek(off)
                f.write(bytes([byte ^ 0x40]))
            try:
                blocks, recovery = read_back(work)
            except cm.CorruptionError as e:
                assert os.path.basename(str(e.filename)) == name, (name, off, e)
                detected[name] += 1
                continue
            # Not detected: then nothing may differ, except that damage to the
            # last wal record reads as a torn write, which recovery reports.
            if blocks != BLOCKS:
                assert name == "wal" and recovery["bytes_discarded"] > 0, (name, off)
                assert blocks == BLOCKS[:len(blocks)], (name, off)
    # Every file that holds live data had flips detected.
    for name in ("tree", "data", "secret_key"):
        assert detected[name] > 0, detected
    if not clean:
        assert detected["wal"] > 0, detected


def test_replica_store_flips(tmp_path) -> None:
    """A replica keeps the writer's signature; damage to it is caught too."""
    kp = cm.KeyPair.from_seed(bytes(32))
    w_dir, r_dir = str(tmp_path / "w"), str(tmp_path / "r")
    with cm.Core(w_dir, key_pair=kp) as w, cm.Core(r_dir, key=w.key) as r:
        w.append(BLOCKS)
        r.apply_proof(w.proof(upgrade=(0, w.length), manifest=True))
        for i in range(w.length):
            r.apply_proof(w.proof(block=i, nodes=r.missing_nodes(i)))
    rng = random.Random(3)
    for name in ("header", "tree", "data"):
        size = os.path.getsize(os.path.join(r_dir, name))
        for off in [rng.randrange(size) for _ in range(25)]:
            work = str(tmp_path / "work")
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(r_dir, work)
            with open(os.path.join(work, name), "r+b") as f:
                f.seek(off)
                byte = f.read(1)[0]
                f.seek(off)
                f.write(bytes([byte ^ 0x01]))
            try:
                blocks, _ = read_back(work)
            except cm.CorruptionError as e:
                assert os.path.basename(str(e.filename)) == name
                continue
            assert blocks == BLOCKS


def test_verify_checks_header_slots_and_wal_records(tmp_path) -> None:
    """verify() checks every checksummed region: damage to the header slot or
    a wal record in use is a CorruptionError naming the file; damage to an
    older copy (the other header slot, a record of an earlier generation)
    is a warning.  Found in an open store (damage after opening)."""
    from coremachine_embedded._pure.wal import parse_record
    path = str(tmp_path / "s")
    with cm.Core(path, key_pair=cm.KeyPair.from_seed(bytes(32)), durability="none",
                 checkpoint_bytes=1 << 20) as core:
        core.append([b"a" * 300] * 8)
        core.checkpoint()
        core.append(b"b" * 40)                    # record A, then B, of one generation
        core.append(b"b" * 40)
    with cm.Core(path) as core:                   # clean: no warning
        warnings: List[str] = []
        assert core.verify(warnings=warnings) == 10 and warnings == []
    with cm.Core(path) as core:
        core.append(b"c" * 40)                    # the live record, over A: B is stale
        core.flush()
        wal = open(os.path.join(path, "wal"), "rb").read()
        live = parse_record(wal, 0)
        stale = parse_record(wal, live.end)
        assert stale is not None and stale.generation < live.generation
        header = open(os.path.join(path, "header"), "rb").read()
        seqs = [struct.unpack_from("<Q", header, base + 16)[0] for base in (0, 4096)]
        in_use = 4096 * (seqs[1] > seqs[0])

        def flip(file: str, offset: int) -> None:
            with open(os.path.join(path, file), "r+b") as f:
                f.seek(offset)
                byte = f.read(1)
                f.seek(offset)
                f.write(bytes([byte[0] ^ 0x10]))

        for file, offset, expected in (("header", 4096 - in_use + 40, "warning"),
                                       ("wal", live.end + 160, "warning"),
                                       ("wal", 160, "error"),
                                       ("header", in_use + 40, "error")):
            flip(file, offset)
            warnings = []
            try:
                core.verify(warnings=warnings)
                got = "warning" if warnings else "clean"
            except cm.CorruptionError as e:
                assert os.path.basename(str(e.filename)) == file
                got = "error"
            flip(file, offset)
            assert got == expected, (file, offset, got, warnings)
        assert core.verify() == 11


def test_verify_of_a_snapshot_judges_the_wal_as_opening_does(tmp_path) -> None:
    """A read-only snapshot's files may be a crash image: a last record cut
    short is a torn write (a warning, and the writer's open drops it), while
    a damaged record that a later one says had been synced is a
    CorruptionError naming the wal - on the snapshot and on the writer's open."""
    from coremachine_embedded._pure.wal import parse_record
    path = str(tmp_path / "s")
    make_store(path, clean=False)         # sync durability: each record says the last was synced
    wal = open(os.path.join(path, "wal"), "rb").read()
    first = parse_record(wal, 0)
    second = parse_record(wal, first.end)
    assert second is not None and second.durable_count > first.seq
    ends = [first.end]
    while (rec := parse_record(wal, ends[-1])) is not None and rec.generation == first.generation:
        ends.append(rec.end)
    torn, damaged = str(tmp_path / "torn"), str(tmp_path / "damaged")
    for copy in (torn, damaged):
        shutil.copytree(path, copy)
    with open(os.path.join(torn, "wal"), "r+b") as f:
        f.truncate(ends[-2] + 100)        # the last record, cut short
    with open(os.path.join(damaged, "wal"), "r+b") as f:
        f.seek(first.end - 20)
        byte = f.read(1)
        f.seek(first.end - 20)
        f.write(bytes([byte[0] ^ 0x01]))   # inside the first record
    with cm.Core(torn, readonly=True) as snap:
        warnings: List[str] = []
        assert snap.verify(warnings=warnings) == snap.length
        assert any("incomplete" in w for w in warnings), warnings
    with cm.Core(torn) as core:
        assert core.recovery["bytes_discarded"] > 0 and core.verify() == core.length

    def snapshot_verify() -> None:
        with cm.Core(damaged, readonly=True) as snap:
            snap.verify()
    for opening in (snapshot_verify, lambda: cm.Core(damaged).close()):
        with pytest.raises(cm.CorruptionError) as e:
            opening()
        assert os.path.basename(str(e.value.filename)) == "wal"
