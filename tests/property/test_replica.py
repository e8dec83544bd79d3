"""A replica built only from the writer's proofs equals the writer, through
random appends, batches, truncations (reorgs on the replica), reopens and
out-of-order block delivery."""
from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

import coremachine_embedded as cm

ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.binary(max_size=80), min_size=1, max_size=6)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("sync"), st.integers(0, 2**32)),
    st.tuples(st.just("reopen"), st.none()),
), min_size=1, max_size=12)


def sync_replica(writer: cm.Core, replica: cm.Core, rng: random.Random) -> None:
    """Pull everything the writer has, as a network peer would: an upgrade,
    then blocks in a shuffled order; blocks that arrive ahead are kept and
    applied again once the gap is filled."""
    if writer.length == 0:
        return
    if replica.fork != writer.fork or replica.length < writer.length:
        start = 0 if replica.fork != writer.fork else replica.length
        res = replica.apply_proof(writer.proof(upgrade=(start, writer.length - start),
                                               manifest=replica.manifest is None))
        assert res.upgraded
    todo = list(range(replica.contiguous_length, writer.length))
    rng.shuffle(todo)
    ahead = {}
    for i in todo:
        msg = writer.proof(block=i, nodes=replica.missing_nodes(i))
        if rng.random() < 0.2:  # a duplicate delivery changes nothing
            replica.apply_proof(msg)
        res = replica.apply_proof(msg)
        if not res.block_stored and i >= replica.contiguous_length:
            ahead[i] = msg
        while replica.contiguous_length in ahead:
            assert replica.apply_proof(ahead.pop(replica.contiguous_length)).block_stored


def assert_equal(writer: cm.Core, replica: cm.Core) -> None:
    assert (replica.length, replica.fork, replica.byte_length) == (
        writer.length, writer.fork, writer.byte_length)
    assert replica.contiguous_length == writer.length
    assert replica.tree_hash() == writer.tree_hash()
    assert replica.signature == writer.signature
    assert replica.roots() == writer.roots()
    assert [replica.get(i) for i in range(replica.length)] == [writer.get(i) for i in
                                                               range(writer.length)]
    for i in range(2 * writer.length - 1):
        try:
            w = writer.get_node(i)
        except cm.OutOfRangeError:
            continue  # a parent that is not complete yet
        assert replica.get_node(i) == w


@settings(max_examples=40)
@given(ops=ops, compat=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_replica_from_proofs_equals_writer(tmp_path_factory, ops, compat: bool, seed: int) -> None:
    d = tmp_path_factory.mktemp("rep")
    kp = cm.KeyPair.from_seed(seed.to_bytes(4, "big") * 8)
    rng = random.Random(seed)
    writer = cm.Core(d / "w", key_pair=kp, compat=compat, durability="none")
    replica = cm.Core(d / "r", key=writer.key, durability="batch", flush_interval=3600)
    try:
        for kind, arg in ops:
            if kind == "append":
                writer.append(arg)
            elif kind == "truncate":
                writer.truncate(int(arg * writer.length))
            elif kind == "sync":
                sync_replica(writer, replica, random.Random(arg))
            else:
                replica.close()
                replica = cm.Core(d / "r")
        writer.append(b"last")
        sync_replica(writer, replica, rng)
        assert_equal(writer, replica)
        replica.close()
        replica = cm.Core(d / "r")
        assert_equal(writer, replica)
        assert replica.verify() == writer.length
    finally:
        writer.close()
        replica.close()
