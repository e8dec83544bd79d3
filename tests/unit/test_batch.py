"""Batched transfer: a run's blocks are stored from their values alone when
the tree they rebuild matches the node the replica holds over the run."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coremachine_embedded as cm
from coremachine_embedded.sync import batch


def fill(writer: cm.Core, replica: cm.Core, count: int, tamper: int = -1) -> int:
    """Pull everything in aligned runs; returns how many blocks came as values."""
    replica.apply_proof(writer.proof(upgrade=(replica.length, writer.length - replica.length),
                                     manifest=replica.manifest is None))
    from_values = 0
    while replica.contiguous_length < writer.length:
        start = replica.contiguous_length
        size = count
        while size > 1 and (start % size or start + size > writer.length):
            size //= 2
        first = writer.proof(block=start, nodes=replica.missing_nodes(start))
        assert replica.apply_proof(first).block_stored
        if size == 1:
            continue
        run = batch.Run(start, size)
        run.add(start + 1, [writer.get(i) if i != tamper else b"forged" for i in
                            range(start + 1, start + size)])
        assert run.complete
        added = replica.apply_run(start, run.blocks(replica.get))
        assert added == size - 1 and replica.contiguous_length == start + size
        from_values += added
    return from_values


@settings(max_examples=40)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=200),
       count=st.sampled_from([2, 4, 8, 16, 32, 64, 256]), seed=st.integers(0, 2**31))
def test_runs_replicate_exactly(tmp_path_factory, sizes, count, seed) -> None:
    d = tmp_path_factory.mktemp("batch")
    rng = random.Random(seed)
    with cm.Core(d / "w", key_pair=cm.KeyPair.generate(), durability="none") as w, \
            cm.Core(d / "r", key=w.key, durability="none") as r:
        cut = rng.randrange(len(sizes) + 1)
        w.append([rng.randbytes(s) for s in sizes[:cut]] or [b"first"])
        fill(w, r, count)
        w.append([rng.randbytes(s) for s in sizes[cut:]] or [b"more"])
        fill(w, r, count)
        assert (r.length, r.tree_hash(), r.signature) == (w.length, w.tree_hash(), w.signature)
        assert [r.get(i) for i in range(r.length)] == [w.get(i) for i in range(w.length)]
        assert r.verify() == r.length
    with cm.Core(d / "r") as r2:   # and it all survives a reopen
        assert r2.contiguous_length == r2.length


def test_a_forged_value_stores_nothing(tmp_path) -> None:
    with cm.Core(tmp_path / "w", key_pair=cm.KeyPair.generate()) as w, \
            cm.Core(tmp_path / "r", key=w.key) as r:
        w.append([b"block %d" % i for i in range(32)])
        with pytest.raises(cm.InvalidProofError):
            fill(w, r, 16, tamper=5)
        assert r.contiguous_length == 1   # the first block's own proof; the run: nothing
        assert r.get(0) == w.get(0)


def test_run_preconditions(tmp_path) -> None:
    with cm.Core(tmp_path / "w", key_pair=cm.KeyPair.generate()) as w, \
            cm.Core(tmp_path / "r", key=w.key) as r:
        w.append([b"%d" % i for i in range(16)])
        values = [w.get(i) for i in range(16)]
        r.apply_proof(w.proof(upgrade=(0, 16), manifest=True))
        with pytest.raises(cm.BlockNotAvailableError):   # first block not held yet
            r.apply_run(0, values[:8])
        r.apply_proof(w.proof(block=0, nodes=r.missing_nodes(0)))
        for start, vals in ((0, values[:3]), (2, values[2:6]), (0, values[:1]), (12, values[8:16])):
            with pytest.raises(cm.InvalidArgumentError):
                r.apply_run(start, vals)
        with pytest.raises(cm.InvalidArgumentError):
            w.apply_run(0, values[:2])                     # a writer takes no runs
        assert r.apply_run(0, values[:8]) == 7
        assert r.apply_run(0, values[:8]) == 0             # nothing new
        assert batch.is_aligned(8, 8) and not batch.is_aligned(4, 8) and not batch.is_aligned(0, 6)


def test_a_retry_names_what_is_missing() -> None:
    """The RUN a retry sends carries a bitmap of the blocks still missing; the
    encoding round-trips, and a bitmap of the wrong size is a DecodeError."""
    from coremachine_embedded.errors import DecodeError
    from coremachine_embedded.sync import wire

    run = batch.Run(64, 16)
    run.add(65, [b"v%d" % i for i in range(65, 72)])       # blocks 65..71 are here
    run.add(75, [b"v75"])
    bits = run.wanted(need_first=False)
    wanted = [k for k in range(16) if bits[k >> 3] >> (k & 7) & 1]
    assert wanted == [8, 9, 10, 12, 13, 14, 15]
    assert run.wanted(need_first=True)[0] & 1

    msg = wire.Run(7, 0, 64, 16, 3, bits)
    back = wire.Run.decode(msg.encode())
    assert back == msg and [k for k in range(16) if back.wants(k)] == wanted
    whole = wire.Run.decode(wire.Run(7, 0, 64, 16, 3).encode())
    assert whole.wanted is None and all(whole.wants(k) for k in range(16))
    with pytest.raises(DecodeError):
        wire.Run.decode(wire.Run(7, 0, 64, 16, 3, bits + b"\0").encode())
