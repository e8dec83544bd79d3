"""Coremachine under concurrency on real cores in tmp_path: threads and asyncio
tasks are serialised, sync/async action paths, re-entrant and racing actions."""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import warnings
from typing import Any, Callable, Dict, List

import pytest

from coremachine_embedded import (ConcurrentActionError, Coremachine, EntryActionError,
                                  GuardRejectedError, Snapshot, create_machine)
from tests.unit.coremachine_helpers import (Stores, blocks, frozen, increment_n, raw_blocks,
                                            readme_machine, run)


# --------------------------------------------------------------------------------
# concurrency


def test_threads_are_serialised(stores: Stores) -> None:
    active = [0]
    overlaps = [0]

    def slow_increment(ctx: Dict[str, Any], _: Any) -> None:
        active[0] += 1
        if active[0] > 1:
            overlaps[0] += 1
        time.sleep(0)  # let other threads run
        ctx["n"] += 1
        active[0] -= 1

    d = create_machine({"initial": "a", "context": {"n": 0},
                        "states": {"a": {"on": {"INC": {"action": slow_increment}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    threads_n, per_thread = 8, 25
    barrier = threading.Barrier(threads_n)
    errors: List[BaseException] = []

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(per_thread):
                m.action("INC")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    total = threads_n * per_thread
    assert errors == [] and overlaps == [0]
    assert core.length == total and m.context == {"n": total}
    assert [b["context"]["n"] for b in blocks(core)] == list(range(1, total + 1))


def test_asyncio_tasks_are_serialised(stores: Stores) -> None:
    active = [0]
    overlaps = [0]

    async def slow_increment(ctx: Dict[str, Any], _: Any) -> None:
        active[0] += 1
        if active[0] > 1:
            overlaps[0] += 1
        before = ctx["n"]
        await asyncio.sleep(0.001)
        ctx["n"] = before + 1
        active[0] -= 1

    d = create_machine({"initial": "a", "context": {"n": 0},
                        "states": {"a": {"on": {"INC": {"action": slow_increment}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    n = 20

    async def main() -> List[Snapshot]:
        return await asyncio.gather(*(m.action_async("INC") for _ in range(n)))

    snaps = run(main())
    assert overlaps == [0]
    assert sorted(s.context["n"] for s in snaps) == list(range(1, n + 1))
    assert core.length == n and m.context == {"n": n}
    assert [b["context"]["n"] for b in blocks(core)] == list(range(1, n + 1))


def test_async_guards_and_atomic_async_failures(stores: Stores) -> None:
    async def big(ctx: Dict[str, Any], v: Any) -> bool:
        await asyncio.sleep(0)
        return bool(v and v > 5)

    async def failing(ctx: Dict[str, Any], v: Any) -> None:
        ctx["n"] = 100
        await asyncio.sleep(0)
        raise RuntimeError("late")

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"GO": [{"target": "big", "guard": big}, {"target": "small"}],
                     "ONLY": {"target": "big", "guard": big},
                     "FAIL": {"target": "big", "action": failing}}},
        "big": {}, "small": {}}})
    core = stores.writer()

    async def main() -> None:
        m = Coremachine(core, d)
        before = frozen(m)
        with pytest.raises(GuardRejectedError):
            await m.action_async("ONLY", 1)
        with pytest.raises(RuntimeError, match="late"):
            await m.action_async("FAIL")
        assert frozen(m) == before
        assert (await m.action_async("GO", 9)).state == "big"
        m2 = Coremachine(stores.writer("w2"), d)
        assert (await m2.action_async("GO", 1)).state == "small"

    run(main())


def test_action_async_on_a_sync_machine(stores: Stores) -> None:
    m = Coremachine(stores.writer(), readme_machine())
    snap = run(m.action_async("START", 4))
    assert (snap.state, snap.context["counter"], m.length) == ("running", 4, 1)


def test_sync_action_on_an_async_machine(stores: Stores) -> None:
    async def act(ctx: Dict[str, Any], v: Any) -> None:
        ctx["n"] = 1

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"GO": {"action": act}, "SYNC": None}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    with pytest.raises(ConcurrentActionError, match="action_async"):
        m.action("SYNC")  # even an event whose own callables are sync
    assert core.length == 0
    assert run(m.action_async("GO")).context == {"n": 1}


def test_sync_action_with_a_callable_that_returns_a_coroutine(stores: Stores) -> None:
    async def later(ctx: Dict[str, Any], v: Any) -> Any:
        ctx["n"] = 1
        return True

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"GUARD": {"target": "b", "guard": lambda c, v: later(c, v)},
                     "ACT": {"target": "b", "action": lambda c, v: later(c, v)},
                     "OK": {"action": increment_n}}},
        "b": {"entry": lambda c, s: later(c, s)}}})
    core = stores.writer()
    m = Coremachine(core, d)
    assert not d.is_async  # plain functions: not detectable at definition time
    before = frozen(m)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for event in ("GUARD", "ACT"):
            with pytest.raises(ConcurrentActionError, match="action_async"):
                m.action(event)
            assert frozen(m) == before
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert m.action("OK").context == {"n": 1}
    # the async path awaits them all
    snap = run(m.action_async("ACT"))
    assert (snap.state, snap.context) == ("b", {"n": 1})


def test_action_inside_an_action_raises_instead_of_deadlocking(stores: Stores) -> None:
    holder: List[Coremachine] = []
    caught: List[BaseException] = []

    def nested(ctx: Dict[str, Any], v: Any) -> None:
        try:
            holder[0].action("INNER")
        except ConcurrentActionError as e:
            caught.append(e)
        ctx["n"] += 1

    def nested_uncaught(ctx: Dict[str, Any], v: Any) -> None:
        ctx["n"] += 1
        holder[0].action("INNER")

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"OUTER": {"action": nested}, "RAW": {"action": nested_uncaught},
                     "INNER": {"action": increment_n}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    holder.append(m)
    result: List[Any] = []

    def run() -> None:
        result.append(m.action("OUTER"))
        try:
            m.action("RAW")
        except ConcurrentActionError as e:
            result.append(e)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive(), "deadlock"
    assert len(caught) == 1 and isinstance(result[1], ConcurrentActionError)
    assert result[0].context == {"n": 1}
    assert core.length == 1 and m.context == {"n": 1}
    assert m.action("INNER").context == {"n": 2}


def test_sync_action_inside_action_async_raises(stores: Stores) -> None:
    holder: List[Coremachine] = []

    async def outer(ctx: Dict[str, Any], v: Any) -> None:
        await asyncio.sleep(0)
        with pytest.raises(ConcurrentActionError):
            holder[0].action("INNER")
        ctx["n"] += 1

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"OUTER": {"action": outer}, "INNER": {"action": increment_n}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    holder.append(m)
    assert run(m.action_async("OUTER")).context == {"n": 1}
    assert core.length == 1


def test_sync_entry_action_that_returns_a_coroutine(stores: Stores) -> None:
    async def later(ctx: Dict[str, Any], s: str) -> None:
        pass

    d = create_machine({"initial": "a", "states": {
        "a": {"on": {"GO": "b"}}, "b": {"entry": lambda c, s: later(c, s)}}})
    core = stores.writer()
    m = Coremachine(core, d)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(EntryActionError) as info:
            m.action("GO")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert isinstance(info.value.__cause__, ConcurrentActionError)
    assert info.value.snapshot.state == "b" and m.state == "b" and core.length == 1


def test_log_changed_while_an_async_action_awaited(stores: Stores) -> None:
    """The core's lock is re-entrant, so another coroutine of the same thread can
    truncate or append while an async action awaits: that action must not then
    append a block computed from the old log."""
    gate: List[asyncio.Event] = []

    async def slow(ctx: Dict[str, Any], v: Any) -> None:
        await gate[0].wait()
        ctx["n"] += 1

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"SLOW": {"action": slow}, "TEN": {"action": lambda c, v: c.update(
            n=c["n"] + 10)}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    other = Coremachine(core, d)  # a second machine on the same core

    async def interfere(meddle: Callable[[], Any]) -> None:
        gate[:] = [asyncio.Event()]
        task = asyncio.ensure_future(m.action_async("SLOW"))
        await asyncio.sleep(0.005)
        meddle()
        expected = raw_blocks(core)
        gate[0].set()
        with pytest.raises(ConcurrentActionError, match="nothing was appended"):
            await task
        assert raw_blocks(core) == expected
        assert m.context == (blocks(core)[-1]["context"] if core.length else {"n": 0})

    async def main() -> None:
        for _ in range(3):
            await m.action_async("TEN")
        await interfere(lambda: m.truncate(1))
        assert m.context == {"n": 10}
        await interfere(other_ten)
        assert m.context == {"n": 20}
        # and the machine goes on from the log as it is
        gate[0].set()
        assert (await m.action_async("SLOW")).context == {"n": 21}

    def other_ten() -> None:
        # sync action() is refused on this async machine: append as another writer would
        core.append(json.dumps({"state": "a", "context": {"n": 20}, "event": "TEN"},
                               separators=(",", ":")).encode())

    run(main())
    assert other.context == {"n": 21}
    assert [b["context"]["n"] for b in blocks(core)] == [10, 20, 21]


def test_a_callback_that_truncates_fails_the_action(stores: Stores) -> None:
    holder: List[Coremachine] = []

    def sneaky(ctx: Dict[str, Any], v: Any) -> None:
        holder[0].truncate(0)
        ctx["n"] += 100

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"INC": {"action": increment_n}, "SNEAKY": {"action": sneaky}}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    holder.append(m)
    m.action("INC")
    with pytest.raises(ConcurrentActionError):
        m.action("SNEAKY")
    assert core.length == 0 and m.context == {"n": 0} and m.is_empty
    assert m.action("INC").context == {"n": 1}
