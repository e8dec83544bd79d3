"""The stream side of a Coremachine: write()/send() in, on_change()/changes()
out, and the streams.pipe helpers, on real cores in tmp_path."""
from __future__ import annotations

import asyncio
import json
import threading
from typing import Any, AsyncIterator, Dict, Iterator, List, Tuple

import pytest

import coremachine_embedded as cm
from coremachine_embedded import (Coremachine, InvalidActionError, Snapshot, create_machine,
                                  streams)
from coremachine_embedded._json import JSONValueError


def run(coro: Any, timeout: float = 10) -> Any:
    """asyncio.run with a deadline: a hang is a failure, not a stuck suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def core(tmp_path) -> Iterator[cm.Core]:
    c = cm.Core(tmp_path / "w", key_pair=cm.KeyPair.generate())
    yield c
    c.close()


def start(ctx: Dict[str, Any], counter: Any) -> None:
    ctx["running"] = True
    ctx["counter"] = counter


def increment(ctx: Dict[str, Any], _: Any) -> None:
    ctx["counter"] += 1


def stop(ctx: Dict[str, Any], final: Any) -> None:
    ctx["running"] = False
    if final is not None:
        ctx["counter"] = final


README = create_machine({
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": start}}},
        "running": {"on": {"INCREMENT": {"target": "running", "action": increment},
                           "STOP": {"target": "idle", "action": stop}}},
    },
})


def add(ctx: Dict[str, Any], value: Any) -> None:
    ctx["log"].append(value)


LOGGER = create_machine({"initial": "on", "context": {"log": []}, "states": {
    "on": {"on": {"ADD": {"action": add}, "OFF": "off"}}, "off": {"on": {"ON": "on"}}}})


def logged(core: cm.Core) -> List[Any]:
    return json.loads(core.get(core.length - 1))["context"]["log"] if core.length else []


class Errors:
    def __init__(self, m: Coremachine) -> None:
        self.seen: List[Tuple[BaseException, Any]] = []
        self.remove = m.on_error(lambda e, msg: self.seen.append((e, msg)))

    def types(self) -> List[type]:
        return [type(e) for e, _ in self.seen]


# --------------------------------------------------------------------------------
# write()


def test_write_event_and_js_action_shapes(core: cm.Core) -> None:
    m = Coremachine(core, README)
    errors = Errors(m)
    snap = m.write({"event": "START", "value": 1})
    assert isinstance(snap, Snapshot)
    assert (snap.state, snap.context) == ("running", {"running": True, "counter": 1})
    assert m.write({"action": "INCREMENT"}).context["counter"] == 2  # the JS message shape
    assert m.write({"action": "STOP", "value": 10}).context == {"running": False,
                                                                "counter": 10}
    assert m.write({"event": "START", "action": "ignored", "value": 3}).state == "running"
    assert errors.seen == []
    assert [json.loads(core.get(i))["event"] for i in range(core.length)] == [
        "START", "INCREMENT", "STOP", "START"]
    assert json.loads(core.get(1)) == {"state": "running",
                                       "context": {"running": True, "counter": 2},
                                       "event": "INCREMENT"}


@pytest.mark.parametrize("message,error", [
    ({"event": "NOPE"}, InvalidActionError),
    ({"event": "STOP"}, InvalidActionError),       # known event, wrong state
    ({"value": 1}, InvalidActionError),            # no event
    ({"event": None}, InvalidActionError),
    ({"event": 5}, InvalidActionError),
    (["START", 1], InvalidActionError),            # not a dict
    ("START", InvalidActionError),
    (None, InvalidActionError),
    ({"event": "START", "value": float("nan")}, JSONValueError),
])
def test_write_invalid_messages_are_reported(core: cm.Core, message: Any, error: type) -> None:
    m = Coremachine(core, README)
    errors = Errors(m)
    changes: List[Snapshot] = []
    m.on_change(changes.append)
    assert m.write(message) is None
    assert errors.types() == [error] and errors.seen[0][1] is message
    assert core.length == 0 and changes == [] and m.state == "idle"
    # the machine keeps working
    assert m.write({"event": "START", "value": 2}).context == {"running": True, "counter": 2}
    assert len(errors.seen) == 1 and len(changes) == 1


def test_error_and_change_callbacks_that_raise(core: cm.Core) -> None:
    m = Coremachine(core, README)
    m.on_error(lambda e, msg: 1 / 0)  # a broken error callback is ignored
    errors = Errors(m)

    def broken(snap: Snapshot) -> None:
        raise RuntimeError("consumer bug")

    m.on_change(broken)
    after: List[Snapshot] = []
    m.on_change(after.append)
    assert m.write({"event": "START", "value": 1}) is not None
    # the change callback's failure is reported; the transition stands and others get it
    assert errors.types() == [RuntimeError] and errors.seen[0][1].state == "running"
    assert core.length == 1 and [s.state for s in after] == ["running"]
    errors.remove()
    assert m.write({"event": "NOPE"}) is None
    assert len(errors.seen) == 1


def test_on_change_unsubscribe_and_eager(core: cm.Core) -> None:
    m = Coremachine(core, README)
    got: List[Snapshot] = []
    remove = m.on_change(got.append)
    m.action("START", 1)
    remove()
    remove()  # twice is harmless
    m.action("INCREMENT")
    assert [s.context["counter"] for s in got] == [1]
    eager = Coremachine(core, README, eager=True)
    first: List[Snapshot] = []
    eager.on_change(first.append)
    assert [(s.state, s.context, s.index) for s in first] == [
        ("running", {"running": True, "counter": 2}, 1)]


# --------------------------------------------------------------------------------
# send() and drain()


def test_send_applies_everything_in_order(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)
    errors = Errors(m)

    async def main() -> None:
        for i in range(30):
            await m.send({"event": "ADD", "value": i}, maxsize=2)
        await m.drain()

    run(main())
    assert errors.seen == []
    assert core.length == 30 and logged(core) == list(range(30))
    assert [json.loads(core.get(i))["value"] for i in range(30)] == list(range(30))


def test_send_waits_when_the_queue_is_full(core: cm.Core) -> None:
    gate: List[asyncio.Event] = []

    async def slow_add(ctx: Dict[str, Any], value: Any) -> None:
        await gate[0].wait()
        ctx["log"].append(value)

    d = create_machine({"initial": "s", "context": {"log": []},
                        "states": {"s": {"on": {"ADD": {"action": slow_add}}}}})
    m = Coremachine(core, d)

    async def main() -> None:
        gate.append(asyncio.Event())
        await m.send({"event": "ADD", "value": 0}, maxsize=1)
        await asyncio.sleep(0.01)          # the worker took message 0 and waits in the action
        await asyncio.wait_for(m.send({"event": "ADD", "value": 1}), 1)  # fills the queue
        third = asyncio.ensure_future(m.send({"event": "ADD", "value": 2}))
        for _ in range(5):
            await asyncio.sleep(0.005)
        assert not third.done(), "send() did not wait for room in a full queue"
        assert core.length == 0
        gate[0].set()
        await asyncio.wait_for(third, 2)
        await asyncio.wait_for(m.drain(), 2)

    run(main())
    assert logged(core) == [0, 1, 2] and core.length == 3


def test_send_reports_invalid_messages_and_keeps_going(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)
    errors = Errors(m)
    bad = [{"event": "NOPE"}, {"value": 3}, "ADD", {"event": "ON"},
           {"event": "ADD", "value": {1, 2}}]

    async def main() -> None:
        await m.send({"action": "ADD", "value": "a"}, maxsize=2)
        for msg in bad:
            await m.send(msg)
            await m.send({"event": "ADD", "value": len(errors.seen)})
        await m.drain()

    run(main())
    assert [msg for _, msg in errors.seen] == bad
    assert errors.types() == [InvalidActionError] * 4 + [JSONValueError]
    assert core.length == 6 and logged(core)[0] == "a" and m.state == "on"


def test_send_on_a_second_event_loop(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)

    async def batch(start: int) -> None:
        for i in range(start, start + 3):
            await m.send({"event": "ADD", "value": i})
        await m.drain()

    run(batch(0))
    run(batch(3))  # the first loop's worker is gone: a new one starts
    assert logged(core) == list(range(6))


# --------------------------------------------------------------------------------
# changes()


def test_changes_receives_each_change(core: cm.Core) -> None:
    m = Coremachine(core, README)

    async def main() -> List[Tuple[str, int, Any]]:
        changes = m.changes()
        m.action("START", 1)
        await m.action_async("INCREMENT")
        m.write({"event": "STOP"})
        out = []
        async for snap in changes:
            out.append((snap.state, snap.context["counter"], snap.event))
            snap.context["counter"] = -1  # a copy
            if len(out) == 3:
                break
        await changes.aclose()
        return out

    assert run(main()) == [("running", 1, "START"), ("running", 2, "INCREMENT"),
                                   ("idle", 2, "STOP")]
    assert m.context == {"running": False, "counter": 2}


def test_changes_eager_delivers_the_current_state_first(core: cm.Core) -> None:
    m = Coremachine(core, README, eager=True)

    async def main() -> List[Tuple[str, Any, Any]]:
        changes = m.changes()
        m.action("START", 4)
        out = []
        async for snap in changes:
            out.append((snap.state, snap.context, snap.index))
            if len(out) == 2:
                break
        return out

    assert run(main()) == [("idle", {"running": False, "counter": 0}, None),
                                   ("running", {"running": True, "counter": 4}, 0)]
    m2 = Coremachine(core, README, eager=True)  # reopened: the restored state first

    async def first() -> Snapshot:
        changes = m2.changes()
        return await changes.__anext__()

    snap = run(first())
    assert (snap.state, snap.context, snap.index) == ("running",
                                                      {"running": True, "counter": 4}, 0)


def test_changes_from_another_thread_and_close(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)

    async def main() -> List[int]:
        changes = m.changes()
        worker = threading.Thread(target=lambda: [m.action("ADD", i) for i in range(10)])
        worker.start()
        out: List[int] = []
        async for snap in changes:
            out.append(snap.context["log"][-1])
            if len(out) == 10:
                m.close()  # ends the iterator
        worker.join()
        return out

    assert run(main()) == list(range(10))


def test_changes_drops_the_oldest_when_the_consumer_falls_behind(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)

    async def main() -> Tuple[List[int], int]:
        changes = m.changes(maxsize=3)
        for i in range(8):
            m.action("ADD", i)
        changes.end()
        got = [snap.context["log"][-1] async for snap in changes]
        return got, changes.dropped

    got, dropped = run(main())
    assert got == [5, 6, 7] and dropped == 5


# --------------------------------------------------------------------------------
# streams.pipe


async def agen(messages: List[Any]) -> AsyncIterator[Any]:
    for msg in messages:
        await asyncio.sleep(0)
        yield msg


MESSAGES = [{"event": "ADD", "value": 1}, {"action": "ADD", "value": 2},
            {"event": "NOPE"}, "not a dict", {"event": "OFF"}, {"event": "ADD"},  # (off)
            {"event": "ON"}, {"event": "ADD", "value": 3}]
GOOD_STATES = ["on", "on", "off", "on", "on"]


@pytest.mark.parametrize("source_kind", ["agen", "list", "queue"])
@pytest.mark.parametrize("sink_kind", ["append", "async", "queue"])
def test_pipe(core: cm.Core, source_kind: str, sink_kind: str) -> None:
    m = Coremachine(core, LOGGER)
    errors = Errors(m)

    async def main() -> Tuple[int, List[Snapshot]]:
        if source_kind == "agen":
            source: Any = agen(MESSAGES)
        elif source_kind == "list":
            source = list(MESSAGES)
        else:
            source = asyncio.Queue()
            for msg in MESSAGES:
                source.put_nowait(msg)
            source.put_nowait(None)  # the end
            source.put_nowait({"event": "ADD", "value": "after the end"})
        got: List[Snapshot] = []
        if sink_kind == "append":
            sink: Any = got.append
        elif sink_kind == "async":
            async def sink(snap: Snapshot) -> None:
                await asyncio.sleep(0)
                got.append(snap)
        else:
            sink = asyncio.Queue()
        count = await streams.pipe(source, m, sink)
        if sink_kind == "queue":
            while not sink.empty():
                got.append(sink.get_nowait())
        return count, got

    count, got = run(main())
    assert count == len(MESSAGES)
    assert [s.state for s in got] == GOOD_STATES
    assert [s.index for s in got] == list(range(5))
    assert got[-1].context == {"log": [1, 2, 3]}
    # ADD while "off" is invalid too
    assert [msg for _, msg in errors.seen] == [{"event": "NOPE"}, "not a dict", {"event": "ADD"}]
    assert errors.types() == [InvalidActionError] * 3
    assert core.length == 5 and logged(core) == [1, 2, 3]


def test_pipe_without_a_sink_and_pipe_changes(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)

    async def main() -> Tuple[int, int, List[Any]]:
        got: List[Any] = []
        consumer = asyncio.ensure_future(
            streams.pipe_changes(m, lambda s: got.append(s.context["log"][-1]), limit=4))
        await asyncio.sleep(0)
        n = await streams.pipe(agen([{"event": "ADD", "value": i} for i in range(6)]), m)
        return n, await asyncio.wait_for(consumer, 2), got

    n, delivered, got = run(main())
    assert (n, delivered, got) == (6, 4, [0, 1, 2, 3])
    assert logged(core) == list(range(6))


def test_pipe_actions_applies_with_backpressure(core: cm.Core) -> None:
    m = Coremachine(core, LOGGER)
    assert run(streams.pipe_actions(
        [{"event": "ADD", "value": i} for i in range(20)], m, maxsize=1)) == 20
    assert logged(core) == list(range(20))
