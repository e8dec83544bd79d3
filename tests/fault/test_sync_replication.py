"""Replication of a machine log, writer -> reader, over real carriers: UDP on
127.0.0.1 and a pseudo-terminal pair (socat) at 4,000,000 baud.  The reader's
Coremachine must end in the writer's state and context, the logs must be equal
block for block (same tree hash and signature) and the replica must verify.
A live reader must replay new transitions in order as the writer makes them.

The helpers here (the counter machine, building a log, comparing two logs) are
shared by the other tests/fault/test_sync_*.py files."""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

import pytest

from coremachine_embedded import Core, Coremachine, KeyPair, create_machine, sync
from coremachine_embedded.coremachine import Snapshot
from coremachine_embedded.sync import Endpoint, UDPLink
from coremachine_embedded.sync.serial import SerialLink
from tests.fault.serial_line import PtyPair, pty_pair  # noqa: F401

T = TypeVar("T")

BAUD = 4_000_000        # SerialLink paces to the baud: fast enough for 20,000 entries
PULL_TIMEOUT = 180.0    # generous: nothing here asserts speed


# --- shared helpers --------------------------------------------------------------------

def _start(ctx: Dict[str, Any], value: Any) -> None:
    ctx["runs"] += 1


def _inc(ctx: Dict[str, Any], value: Any) -> None:
    ctx["count"] += value
    ctx["last"] = value


COUNTER = create_machine({
    "initial": "idle",
    "context": {"count": 0, "last": None, "runs": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": _start}}},
        "running": {"on": {"INC": {"action": _inc}, "STOP": {"target": "idle"}}},
    },
})


def act(machine: Coremachine, rng: random.Random, n: int) -> None:
    """``n`` actions of the counter machine: mostly INC, now and then STOP/START."""
    for _ in range(n):
        if machine.state == "idle":
            machine.action("START")
        elif rng.random() < 0.002:
            machine.action("STOP")
        else:
            machine.action("INC", rng.randint(1, 9))


def build_writer(directory: str, n: int, seed: int = 1,
                 durability: str = "none") -> Tuple[Core, Coremachine]:
    """A writer core holding ``n`` machine transitions (made through
    ``machine.action``); flushed, still open."""
    core = Core(directory, key_pair=KeyPair.from_seed(seed.to_bytes(32, "big")),
                durability=durability)
    machine = Coremachine(core, COUNTER)
    act(machine, random.Random(seed), n)
    core.flush()
    assert core.length == n
    return core, machine


def build_writer_store(directory: str, n: int, seed: int = 1) -> Tuple[bytes, Dict[str, Any]]:
    """Build a writer store and close it (for other processes to serve):
    returns the core key and the machine's final state."""
    core, machine = build_writer(directory, n, seed)
    try:
        return core.key, {"state": machine.state, "context": machine.context}
    finally:
        machine.close()
        core.close()


def assert_same_log(reader: Core, writer: Core, every_block: bool = False) -> None:
    """Same signed tree (tree hash, signature, lengths) and the replica
    verifies: ``verify()`` re-hashes every held block against that tree, so
    each block is the writer's.  ``every_block`` also compares them directly."""
    assert reader.key == writer.key
    assert (reader.fork, reader.length, reader.contiguous_length) == \
        (writer.fork, writer.length, writer.length)
    assert reader.byte_length == writer.byte_length
    assert reader.tree_hash() == writer.tree_hash()
    assert reader.signature == writer.signature and reader.signature is not None
    assert reader.verify() == writer.length
    if every_block:
        for i in range(writer.length):
            assert reader.get(i) == writer.get(i), "block %d differs" % i


def assert_same_machine(reader: Core, writer: Coremachine) -> None:
    """A Coremachine opened on the replica is where the writer's machine is."""
    machine = Coremachine(reader, COUNTER)
    try:
        assert machine.length == writer.length
        assert machine.state == writer.state
        assert machine.context == writer.context
        assert machine.snapshot() == writer.snapshot()
    finally:
        machine.close()


def run(coro: Awaitable[T], timeout: float = PULL_TIMEOUT + 60) -> T:
    """Run a test coroutine with an outer bound (a hang fails instead of blocking CI)."""
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


async def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %gs waiting for %s" % (timeout, what))
        await asyncio.sleep(0.01)


class Follower:
    """A Coremachine on a replica that records every change it emits."""

    def __init__(self, core: Core) -> None:
        self.machine = Coremachine(core, COUNTER)
        self.seen: List[Snapshot] = []
        self.machine.on_change(self.seen.append)

    def check_against(self, writer: Coremachine, start: int = 0, sample: int = 1000) -> None:
        """The changes came one per entry, in log order, each the writer's
        entry (all of them compared, or ``sample`` of them and the last on a
        long log: the logs themselves are compared elsewhere)."""
        indices = [s.index for s in self.seen]
        assert indices == list(range(start, writer.length)), \
            "changes out of order or missing: %s..." % indices[:20]
        snaps = self.seen
        if len(snaps) > sample:
            snaps = random.Random(len(snaps)).sample(snaps[:-1], sample) + snaps[-1:]
        for snap in snaps:
            assert snap.index is not None
            mine = writer.entry(snap.index)
            assert (snap.state, snap.context, snap.event, snap.value) == \
                (mine.state, mine.context, mine.event, mine.value)
        assert self.machine.state == writer.state
        assert self.machine.context == writer.context


# --- 20,000 entries --------------------------------------------------------------------

N = 20_000


@pytest.fixture(scope="module")
def writer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One 20,000-entry writer for the module (serving does not change it)."""
    core, machine = build_writer(str(tmp_path_factory.mktemp("writer") / "store"), N, seed=3)
    yield core, machine
    machine.close()
    core.close()


def test_udp_replicates_a_20000_entry_machine_log(tmp_path: Any, writer: Any) -> None:
    wcore, wmachine = writer
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    follower = Follower(reader)   # follows while the blocks arrive

    async def main() -> Dict[str, int]:
        server = Endpoint()
        link = UDPLink("127.0.0.1", 0)
        await server.attach(link)
        server.serve(wcore)
        try:
            host, port = link.address
            progress: List[Tuple[int, int]] = []
            client = await asyncio.wait_for(
                sync.pull(reader, "udp://%s:%d" % (host, port),
                          progress=lambda done, total: progress.append((done, total))),
                PULL_TIMEOUT)
            await client.close()
            assert progress and progress[-1] == (N, N)
            return dict(client.counters)
        finally:
            await server.close()

    counters = run(main())
    assert counters["blocks"] >= N
    follower.check_against(wmachine)
    follower.machine.close()
    reader.close()
    with Core(str(tmp_path / "reader")) as again:   # what is on disk, reopened
        assert_same_log(again, wcore)
        assert_same_machine(again, wmachine)


def test_pty_replicates_a_20000_entry_machine_log(tmp_path: Any, writer: Any,
                                                  pty_pair: PtyPair) -> None:  # noqa: F811
    wcore, wmachine = writer
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")

    async def main() -> Tuple[Dict[str, int], Dict[str, int]]:
        server = Endpoint()
        link = SerialLink(pty_pair.a, BAUD)
        await server.attach(link)
        server.serve(wcore)
        try:
            client = await asyncio.wait_for(
                sync.pull(reader, "serial://%s?baud=%d" % (pty_pair.b, BAUD)), PULL_TIMEOUT)
            await client.close()
            return dict(client.counters), dict(link.counters)
        finally:
            await server.close()

    counters, line = run(main())
    assert counters["blocks"] >= N
    assert line["frames_tx"] > 0 and line["bad_crc"] == 0   # a clean line
    assert_same_log(reader, wcore)
    assert_same_machine(reader, wmachine)
    reader.close()


# --- live --------------------------------------------------------------------------------

@pytest.mark.parametrize("carrier", ["udp", "pty"])
def test_live_reader_replays_new_transitions_in_order(tmp_path: Any, carrier: str,
                                                      request: pytest.FixtureRequest) -> None:
    pair: Optional[PtyPair] = request.getfixturevalue("pty_pair") if carrier == "pty" else None
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 300, seed=11, durability="batch")
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    follower = Follower(reader)
    rng = random.Random(12)

    async def main() -> None:
        server, client = Endpoint(), Endpoint()
        slink: Any
        clink: Any
        if carrier == "udp":
            udp = UDPLink("127.0.0.1", 0)
            slink, clink = udp, UDPLink("127.0.0.1", 0)
            await server.attach(slink)
            addr: Optional[Tuple[str, int]] = udp.address
        else:
            assert pair is not None
            slink, clink = SerialLink(pair.a, BAUD), SerialLink(pair.b, BAUD)
            await server.attach(slink)
            addr = None
        server.serve(wcore)
        await client.attach(clink)
        task = asyncio.ensure_future(client.pull(reader, clink, addr, live=True))
        try:
            await wait_until(lambda: reader.contiguous_length == 300, 60, "the first 300")
            # the writer goes on while the reader follows: bursts, pauses, single actions
            for _ in range(12):
                act(wmachine, rng, rng.choice((1, 1, 5, 40, 120)))
                await asyncio.sleep(rng.choice((0.0, 0.01, 0.05)))
            if wmachine.state == "running":
                wmachine.action("STOP")     # a state change, then back
            wmachine.action("START")
            act(wmachine, rng, 25)
            await wait_until(lambda: reader.contiguous_length == wcore.length, 60,
                             "the reader to catch up live (%d)" % wcore.length)
            assert not task.done(), "a live pull does not end"
            # and once more after a quiet spell longer than the keepalive period
            await asyncio.sleep(2.5)
            act(wmachine, rng, 7)
            await wait_until(lambda: reader.contiguous_length == wcore.length, 60,
                             "the reader to catch up after a pause")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await server.close()

    run(main())
    assert wcore.length > 600
    follower.check_against(wmachine)
    assert_same_log(reader, wcore)
    follower.machine.close()
    wmachine.close()
    reader.close()
    wcore.close()


# --- giving up ---------------------------------------------------------------------------

def test_a_pull_that_times_out_closes_its_endpoint(tmp_path: Any) -> None:
    """``asyncio.wait_for(sync.pull(...), t)`` with nobody answering: after the
    timeout no socket and no timer task of the pull's own endpoint remain."""
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate())
    reader = Core(str(tmp_path / "reader"), key=writer.key)
    silent = UDPLink("127.0.0.1", 0)     # bound, never answers

    async def main() -> None:
        await silent.start(lambda data, addr: None)
        host, port = silent.address
        fds = sorted(os.listdir("/proc/self/fd"))
        tasks = asyncio.all_tasks()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(sync.pull(reader, "udp://%s:%d" % (host, port)), 0.5)
        await asyncio.sleep(0.05)
        assert asyncio.all_tasks() == tasks
        assert sorted(os.listdir("/proc/self/fd")) == fds
        assert silent.counters["datagrams_rx"] > 0     # it did try
        await silent.close()

    run(main(), timeout=30)
    reader.close()
    writer.close()
