"""Power cuts at every write of random operation sequences, on the selected
backend, through the injectable file interface (tests/fault/powerloss.py).

After each cut the disk is rebuilt with any subset of the unsynced writes (in
order, some torn at a random byte).  Reopening must always succeed, verify, hold
every append that was reported durable, and return nothing beyond a state the
writer actually reached; a read-only snapshot taken first writes nothing and
reads that same state.
"""
from __future__ import annotations

from typing import List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

import coremachine_embedded as cm
from tests.fault.powerloss import PowerCut, SimDisk

KP = cm.KeyPair.from_seed(bytes(range(32)))
State = Tuple[int, int, Tuple[bytes, ...]]  # length, fork, blocks

op_strategy = st.one_of(
    st.tuples(st.just("append"), st.lists(st.integers(0, 300), min_size=1, max_size=5)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("checkpoint"), st.none()),
    st.tuples(st.just("reopen"), st.none()),
)


def block(op: int, i: int, size: int) -> bytes:
    return (b"%d.%d|" % (op, i) * (size // 4 + 1))[:size]


def run(disk: SimDisk, ops: list, durability: str, compat: bool,
        states: List[State], floor: List[int]) -> None:
    """Run ops; states gets every state the writer reached or was reaching,
    floor[0] the index of the last one reported durable."""
    opts = dict(durability=durability, checkpoint_bytes=700, flush_interval=3600.0)
    states.append((0, 0, ()))
    core = cm.Core(storage=disk.storage(), key_pair=KP, compat=compat, **opts)
    try:
        for n, (kind, arg) in enumerate(ops):
            length, fork, blocks = states[-1]
            if kind == "append":
                new = tuple(block(n, i, s) for i, s in enumerate(arg))
                states.append((length + len(new), fork, blocks + new))
                core.append(list(new))
                if durability == "sync":
                    floor[0] = len(states) - 1
            elif kind == "truncate":
                cut = int(arg * length)
                states.append((cut, fork + 1, blocks[:cut]))
                core.truncate(cut)
                floor[0] = len(states) - 1  # a truncation is always durable
            elif kind in ("flush", "checkpoint"):
                getattr(core, kind)()
                floor[0] = len(states) - 1
            else:
                core.close()
                floor[0] = len(states) - 1
                core = cm.Core(storage=disk.storage(), **opts)
    except PowerCut:
        try:
            core.close()  # a dead core releases what it holds without writing
        except PowerCut:
            pass
        raise
    core.close()
    floor[0] = len(states) - 1


def check_recovered(disk: SimDisk, compat: bool, states: List[State], floor: int) -> None:
    # A read-only snapshot of the crashed disk, before anything repairs it:
    # it writes nothing and reads the state the writer's own open recovers.
    image = {name: bytes(f.current) for name, f in disk.files.items()}
    try:
        with cm.Core(storage=disk.storage(), readonly=True) as snap:
            seen = (snap.length, snap.fork, tuple(snap.get(i) for i in range(snap.length)))
            assert snap.verify() == snap.length
    except cm.StoreNotFoundError:
        seen = (0, 0, ())  # the power went before the store's creation committed
    assert {name: bytes(f.current) for name, f in disk.files.items()} == image
    core = cm.Core(storage=disk.storage(), key_pair=KP, compat=compat)
    try:
        # one of the states since the last durable one - on the next fork when
        # the files showed that records were lost (the writer re-forks, so it
        # never signs a state that contradicts one it may have handed out)
        forked = core.recovery["forked"]
        got = (core.length, core.fork - forked, tuple(core.get(i) for i in range(core.length)))
        assert seen == got
        assert got in states[floor:], (
            "recovered length %d fork %d (re-forked: %d); durable floor was %s"
            % (got[0], core.fork, forked, states[floor][:2]))
        assert core.verify() == core.length
        assert core.signature is None or len(core.signature) in (64, 68)
        core.append(b"after the crash")
        assert core.get(core.length - 1) == b"after the crash"
    finally:
        core.close()


@settings(max_examples=60)
@given(ops=st.lists(op_strategy, min_size=1, max_size=10),
       durability=st.sampled_from(["sync", "batch", "none"]), compat=st.booleans())
def test_power_cut_at_every_write(ops: list, durability: str, compat: bool) -> None:
    probe = SimDisk()
    run(probe, ops, durability, compat, [], [0])
    total = probe.ops
    assert total > 0
    for k in range(1, total + 1):
        disk = SimDisk(cut_at=k, seed=k)
        states: List[State] = []
        floor = [0]
        try:
            run(disk, ops, durability, compat, states, floor)
        except PowerCut:
            pass
        else:
            raise AssertionError("power was never cut at write %d of %d" % (k, total))
        for seed in (k, k + 1000):
            check_recovered(disk.crashed(seed), compat, states, floor[0])


def test_sync_appends_survive_losing_every_unsynced_write() -> None:
    """Deterministic worst case: power lost after 30 sync appends and all
    pending (unsynced) tree/data writes dropped."""
    disk = SimDisk()
    core = cm.Core(storage=disk.storage(), key_pair=KP, checkpoint_bytes=4096)
    for i in range(30):
        core.append(b"reading %d" % i)
    # No close: the process dies here.
    for f in disk.files.values():
        f.current = bytearray(f.durable)
        f.pending = []
    disk.locked.clear()
    with cm.Core(storage=disk.storage()) as again:
        assert again.length == 30
        assert [again.get(i) for i in range(30)] == [b"reading %d" % i for i in range(30)]
        assert again.recovery["records_replayed"] > 0
