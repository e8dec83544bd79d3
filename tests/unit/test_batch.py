"""Batched transfer: a run's later blocks are proven from values alone, by
proofs the reader synthesises and the core verifies like any other."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import coremachine_embedded as cm
from coremachine_embedded.sync import batch


def fill(writer: cm.Core, replica: cm.Core, count: int, tamper: int = -1) -> int:
    """Pull everything in aligned runs; returns how many blocks were stored
    from synthesised proofs."""
    replica.apply_proof(writer.proof(upgrade=(replica.length, writer.length - replica.length),
                                     manifest=replica.manifest is None))
    synthesised = 0
    while replica.contiguous_length < writer.length:
        start = replica.contiguous_length
        size = count
        while size > 1 and (start % size or start + size > writer.length):
            size //= 2
        first = writer.proof(block=start, nodes=replica.missing_nodes(start))
        assert replica.apply_proof(first).block_stored
        run = batch.Run(start, size)
        run.add(start, [writer.get(i) if i != tamper else b"forged" for i in
                        range(start, start + size)])
        assert run.complete
        for i, proof in run.proofs(replica.fork, replica._log.has_node, 2 * replica.length):
            assert proof is not None
            result = replica.apply_proof(proof)
            assert result.block_stored and result.block_index == i
            synthesised += 1
    return synthesised


@settings(max_examples=30)
@given(sizes=st.lists(st.integers(0, 300), min_size=1, max_size=200),
       count=st.sampled_from([2, 4, 8, 16, 32, 64]), seed=st.integers(0, 2**31))
def test_runs_replicate_exactly(tmp_path_factory, sizes, count, seed) -> None:
    d = tmp_path_factory.mktemp("batch")
    rng = random.Random(seed)
    with cm.Core(d / "w", key_pair=cm.KeyPair.generate(), durability="none") as w, \
            cm.Core(d / "r", key=w.key, durability="none") as r:
        cut = rng.randrange(len(sizes) + 1)
        w.append([rng.randbytes(s) for s in sizes[:cut]] or [b"first"])
        fill(w, r, count)
        w.append([rng.randbytes(s) for s in sizes[cut:]] or [b"more"])
        n = fill(w, r, count)
        assert n >= 0
        assert (r.length, r.tree_hash(), r.signature) == (w.length, w.tree_hash(), w.signature)
        assert [r.get(i) for i in range(r.length)] == [w.get(i) for i in range(w.length)]


def test_a_forged_value_is_rejected_and_nothing_after_it_is_stored(tmp_path) -> None:
    with cm.Core(tmp_path / "w", key_pair=cm.KeyPair.generate()) as w, \
            cm.Core(tmp_path / "r", key=w.key) as r:
        w.append([b"block %d" % i for i in range(32)])
        with pytest.raises(cm.InvalidProofError):
            fill(w, r, 16, tamper=5)
        # Block 4 shares a parent with the forged block 5, so its proof fails too.
        assert r.contiguous_length == 4
        assert [r.get(i) for i in range(4)] == [w.get(i) for i in range(4)]


def test_incomplete_runs_cannot_be_synthesised(tmp_path) -> None:
    with cm.Core(tmp_path / "w", key_pair=cm.KeyPair.generate()) as w, \
            cm.Core(tmp_path / "r", key=w.key) as r:
        w.append([b"%d" % i for i in range(16)])
        r.apply_proof(w.proof(upgrade=(0, 16), manifest=True))
        r.apply_proof(w.proof(block=0, nodes=r.missing_nodes(0)))
        nodes = batch.subtree_nodes(0, [w.get(i) for i in range(4)])  # only a quarter
        assert batch.synthesize(1, w.get(1), r.fork, nodes, r._log.has_node, 32) is not None
        assert batch.synthesize(5, w.get(5), r.fork, nodes, r._log.has_node, 32) is None
        assert batch.is_aligned(8, 8) and not batch.is_aligned(4, 8) and not batch.is_aligned(0, 6)
