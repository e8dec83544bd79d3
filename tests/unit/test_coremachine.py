"""Coremachine on real cores in tmp_path: the README quick start, the exact
block bytes, restore, atomicity, guards, entry/exit, copies, concurrency,
history, available_actions and following a read-only replica."""
from __future__ import annotations

import asyncio
import gc
import json
import threading
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import coremachine_embedded as cm
from coremachine_embedded import (MISSING, ConcurrentActionError, Coremachine,
                                  EntryActionError, GuardRejectedError, InvalidActionError,
                                  NotAtHeadError, ReadOnlyError, RestoreError, Snapshot,
                                  create_machine)
from coremachine_embedded._json import JSONValueError


def run(coro: Any, timeout: float = 10) -> Any:
    """asyncio.run with a deadline: a hang is a failure, not a stuck suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------------
# helpers


class Stores:
    """Real writer cores (and replicas) in tmp_path, closed at the end."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.cores: List[cm.Core] = []

    def writer(self, name: str = "w") -> cm.Core:
        path = self.tmp_path / name
        core = cm.Core(path, key_pair=cm.KeyPair.generate()) if not path.exists() else \
            cm.Core(path)
        self.cores.append(core)
        return core

    def replica(self, key: bytes, name: str = "r") -> cm.Core:
        core = cm.Core(self.tmp_path / name, key=key)
        self.cores.append(core)
        return core

    def reopen(self, core: cm.Core) -> cm.Core:
        core.close()
        again = cm.Core(core.directory)
        self.cores.append(again)
        return again

    def close(self) -> None:
        for core in self.cores:
            core.close()


@pytest.fixture
def stores(tmp_path) -> Iterator[Stores]:
    s = Stores(tmp_path)
    yield s
    s.close()


def start(ctx: Dict[str, Any], counter: Any) -> None:
    ctx["running"] = True
    ctx["counter"] = counter


def increment(ctx: Dict[str, Any], _: Any) -> None:
    ctx["counter"] += 1


def stop(ctx: Dict[str, Any], final_count: Any) -> None:
    ctx["running"] = False
    if final_count is not None:
        ctx["counter"] = final_count


README = {
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": start}}},
        "running": {"on": {
            "INCREMENT": {"target": "running", "action": increment},
            "STOP": {"target": "idle", "action": stop},
        }},
    },
}


def readme_machine() -> cm.MachineDefinition:
    return create_machine(README)


def counter_machine(**extra: Any) -> cm.MachineDefinition:
    def tick(ctx: Dict[str, Any], value: Any) -> None:
        ctx["n"] += 1 if value is None else value
    cfg: Dict[str, Any] = {"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"TICK": {"action": tick}, "GO": {"target": "b", "action": tick}}},
        "b": {"on": {"TICK": {"action": tick}, "GO": {"target": "a", "action": tick}}}}}
    cfg.update(extra)
    return create_machine(cfg)


def raw_blocks(core: cm.Core) -> List[bytes]:
    return [core.get(i) for i in range(core.length)]


def blocks(core: cm.Core) -> List[Dict[str, Any]]:
    return [json.loads(b) for b in raw_blocks(core)]


def frozen(m: Coremachine) -> Tuple[Any, ...]:
    """Everything that must not change when an action fails."""
    return (m.state, m.context, m.core.length, m.core.fork, raw_blocks(m.core), m.length,
            m.snapshot())


# --------------------------------------------------------------------------------
# the README quick start and the block format


def test_readme_quick_start(stores: Stores) -> None:
    core = stores.writer()
    cube = Coremachine(core, readme_machine())
    assert (cube.state, cube.context, cube.is_empty) == ("idle",
                                                         {"running": False, "counter": 0}, True)
    seen: List[Tuple[str, Dict[str, Any]]] = []
    cube.on_change(lambda s: seen.append((s.state, s.context)))

    snap = cube.action("START", 1)
    assert (snap.state, snap.context) == ("running", {"running": True, "counter": 1})
    assert (cube.state, cube.context) == ("running", {"running": True, "counter": 1})
    assert not cube.is_empty

    assert cube.write({"event": "INCREMENT"}) is not None
    assert seen == [("running", {"running": True, "counter": 1}),
                    ("running", {"running": True, "counter": 2})]
    assert cube.available_actions() == ["INCREMENT", "STOP"]

    snap = cube.action("STOP")  # no finalCount: the counter stays
    assert (snap.state, snap.context) == ("idle", {"running": False, "counter": 2})
    cube.action("START", 5)
    snap = cube.action("STOP", 9)
    assert (snap.state, snap.context) == ("idle", {"running": False, "counter": 9})
    assert [(b["state"], b["context"]["counter"]) for b in blocks(core)] == [
        ("running", 1), ("running", 2), ("idle", 2), ("running", 5), ("idle", 9)]
    assert len(seen) == 5 and core.length == cube.length == 5


def test_block_bytes(stores: Stores) -> None:
    core = stores.writer()
    m = Coremachine(core, readme_machine())
    m.action("START", 1)
    m.action("INCREMENT")
    m.action("STOP", None)
    m.action("START", {"b": [1, 2.5, "\u00e9"], "a": None})
    assert raw_blocks(core) == [
        b'{"state":"running","context":{"running":true,"counter":1},"event":"START","value":1}',
        b'{"state":"running","context":{"running":true,"counter":2},"event":"INCREMENT"}',
        b'{"state":"idle","context":{"running":false,"counter":2},"event":"STOP","value":null}',
        b'{"state":"running","context":{"running":true,"counter":{"b":[1,2.5,"\xc3\xa9"],'
        b'"a":null}},"event":"START","value":{"b":[1,2.5,"\xc3\xa9"],"a":null}}',
    ]


def test_returned_snapshot_fields(stores: Stores) -> None:
    core = stores.writer()
    m = Coremachine(core, readme_machine())
    s0 = m.snapshot()
    assert (s0.state, s0.index, s0.event, s0.previous_state, s0.value, s0.fork) == (
        "idle", None, None, None, MISSING, 0)
    s1 = m.action("START", 3)
    assert (s1.state, s1.index, s1.event, s1.previous_state, s1.value) == (
        "running", 0, "START", "idle", 3)
    s2 = m.action("INCREMENT")
    assert (s2.index, s2.previous_state, s2.value) == (1, "running", MISSING)
    assert "value" not in s2.to_dict() and s1.to_dict()["value"] == 3
    now = m.snapshot()
    assert (now.state, now.context, now.index) == (s2.state, s2.context, s2.index)
    assert now is not s2 and m.snapshot() == now
    assert s1 != s2


# --------------------------------------------------------------------------------
# restore


def test_restore_after_reopen_happens_in_the_constructor(stores: Stores) -> None:
    core = stores.writer()
    m = Coremachine(core, readme_machine())
    m.action("START", 7)
    m.action("INCREMENT")
    last = m.snapshot()
    m.close()
    core = stores.reopen(core)
    m2 = Coremachine(core, readme_machine())
    # no open step: the constructor restored the last entry
    assert (m2.state, m2.context, m2.length, m2.is_empty) == (
        "running", {"running": True, "counter": 8}, 2, False)
    assert m2.snapshot().to_dict() == dict(last.to_dict(), previous_state=None)
    # and an action valid only in the restored state continues the log (the JS
    # quick-start pitfall would have acted on the initial state)
    assert m2.action("INCREMENT").context["counter"] == 9
    assert core.length == 3
    with pytest.raises(InvalidActionError):
        m2.action("START", 0)


def test_restore_uses_the_last_entry_only(stores: Stores) -> None:
    core = stores.writer()
    core.append(b'{"state":"running","context":{"counter":41}}')  # JS 1.x shape: no event
    core.append(b'{"state":"idle","context":{"running":false,"counter":3}}')
    m = Coremachine(core, readme_machine())
    assert (m.state, m.context) == ("idle", {"running": False, "counter": 3})
    snap = m.snapshot()
    assert (snap.index, snap.event, snap.value) == (1, None, MISSING)


def test_restore_on_an_empty_log_gives_a_fresh_initial_context(stores: Stores) -> None:
    ctx = {"running": False, "counter": 0, "tags": ["x"]}
    d = create_machine(dict(README, context=ctx))
    m1 = Coremachine(stores.writer("a"), d)
    m2 = Coremachine(stores.writer("b"), d)
    assert (m1.state, m1.context) == ("idle", ctx)
    assert m1.snapshot().index is None and m1.length == 0
    m1.action("START", 1)
    assert m2.context == ctx and d.context == ctx
    ctx["tags"].append("y")  # the config given to create_machine is not shared either
    assert m2.context["tags"] == ["x"]
    assert Coremachine(stores.writer("c"), d).context["tags"] == ["x"]


def test_restore_rejects_foreign_entries(stores: Stores) -> None:
    core = stores.writer("a")
    core.append(b"not json")
    with pytest.raises(RestoreError, match="entry 0"):
        Coremachine(core, readme_machine())
    core = stores.writer("b")
    core.append(b'{"state":"elsewhere","context":{}}')
    with pytest.raises(RestoreError, match="elsewhere"):
        Coremachine(core, readme_machine())
    core = stores.writer("c")
    core.append(b'{"state":"idle","context":[]}')
    with pytest.raises(RestoreError):
        Coremachine(core, readme_machine())
    assert core.length == 1


def test_on_enter_target_redirect_on_open_does_not_append(stores: Stores) -> None:
    d = create_machine({"initial": "idle", "context": {"n": 0}, "states": {
        "idle": {"on": {"CRASH": {"target": "crashed", "action": increment_n}}},
        "crashed": {"on": {"enter": {"target": "recovering"}}},
        "recovering": {"on": {"OK": "idle"}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    assert m.action("CRASH").state == "crashed"
    assert m.state == "crashed"
    before = raw_blocks(core)
    core = stores.reopen(core)
    m2 = Coremachine(core, d)
    assert (m2.state, m2.context) == ("recovering", {"n": 1})
    assert m2.available_actions() == ["OK"]
    assert raw_blocks(core) == before
    assert m2.action("OK").state == "idle"


def increment_n(ctx: Dict[str, Any], _: Any) -> None:
    ctx["n"] += 1


def test_a_config_dict_is_compiled_on_the_spot(stores: Stores) -> None:
    m = Coremachine(stores.writer(), README)
    assert m.action("START", 2).state == "running"
    with pytest.raises(TypeError):
        Coremachine("not a core", README)  # type: ignore[arg-type]


def test_a_second_machine_on_the_same_core_follows(stores: Stores) -> None:
    core = stores.writer()
    a = Coremachine(core, readme_machine())
    b = Coremachine(core, readme_machine())
    seen: List[Tuple[str, int]] = []
    b.on_change(lambda s: seen.append((s.state, s.index)))
    a.action("START", 1)
    a.action("INCREMENT")
    assert (b.state, b.context, b.length) == (a.state, a.context, 2)
    assert seen == [("running", 0), ("running", 1)]


# --------------------------------------------------------------------------------
# atomicity


def failing_machine(kind: str) -> cm.MachineDefinition:
    def guard(ctx: Dict[str, Any], v: Any) -> bool:
        ctx["n"] = 666
        raise RuntimeError("guard")

    def exit_(ctx: Dict[str, Any], s: str) -> None:
        ctx["n"] = 666
        raise RuntimeError("exit")

    def action(ctx: Dict[str, Any], v: Any) -> None:
        ctx["n"] += 1
        ctx["list"].append("partial")
        if kind == "action":
            raise RuntimeError("action")
        if kind == "set":
            ctx["bad"] = {1, 2}
        if kind == "nan":
            ctx["nested"] = {"x": [float("nan")]}
        if kind == "bigint":
            ctx["big"] = 2**53
        if kind == "bytes_key":
            ctx[b"k"] = 1

    spec: Dict[str, Any] = {"target": "b", "action": action}
    if kind == "guard":
        spec["guard"] = guard
    return create_machine({"initial": "a", "context": {"n": 0, "list": []}, "states": {
        "a": {"exit": exit_ if kind == "exit" else None,
              "on": {"GO": spec, "OK": {"action": increment_n}}},
        "b": {"on": {"BACK": "a"}}}})


@pytest.mark.parametrize("kind,error", [
    ("guard", RuntimeError), ("exit", RuntimeError), ("action", RuntimeError),
    ("set", JSONValueError), ("nan", JSONValueError), ("bigint", JSONValueError),
    ("bytes_key", JSONValueError), ("value", JSONValueError),
])
def test_a_failed_action_changes_nothing(stores: Stores, kind: str, error: type) -> None:
    core = stores.writer()
    m = Coremachine(core, failing_machine(kind))
    m.action("OK")  # one block already there
    changes: List[Snapshot] = []
    m.on_change(changes.append)
    before = frozen(m)
    value: Any = b"bytes are not JSON" if kind == "value" else 1
    for _ in range(2):
        with pytest.raises(error):
            m.action("GO", value)
        assert frozen(m) == before
    assert changes == []
    # still usable, from the untouched context
    assert m.action("OK").context == {"n": 2, "list": []}
    assert blocks(core)[-1] == {"state": "a", "context": {"n": 2, "list": []}, "event": "OK"}
    assert changes[-1].context == {"n": 2, "list": []}
    assert core.length == 2


def test_a_failed_value_changes_nothing(stores: Stores) -> None:
    m = Coremachine(stores.writer(), readme_machine())
    m.action("START", 1)
    before = frozen(m)
    for bad in (float("nan"), {"s": {1}}, 2**60, [b"x"], object()):
        with pytest.raises(JSONValueError):
            m.action("INCREMENT", bad)
        assert frozen(m) == before
    assert m.action("INCREMENT").context["counter"] == 2


def test_a_closed_core_changes_nothing(stores: Stores) -> None:
    core = stores.writer()
    m = Coremachine(core, readme_machine())
    m.action("START", 1)
    before_blocks = raw_blocks(core)
    state, context = m.state, m.context
    core.close()
    with pytest.raises(cm.ClosedError):
        m.action("INCREMENT")
    assert (m.state, m.context) == (state, context)
    assert m.available_actions() == ["INCREMENT", "STOP"]
    core = stores.reopen(core)
    assert raw_blocks(core) == before_blocks
    m2 = Coremachine(core, readme_machine())
    assert (m2.state, m2.context) == (state, context)
    assert m2.action("INCREMENT").context["counter"] == 2


# --------------------------------------------------------------------------------
# guards


def test_first_passing_candidate_fires(stores: Stores) -> None:
    calls: List[str] = []

    def g(name: str, result: bool) -> Callable[[Dict[str, Any], Any], bool]:
        def guard(ctx: Dict[str, Any], v: Any) -> bool:
            calls.append(name)
            return result
        return guard

    def act(name: str) -> Callable[[Dict[str, Any], Any], None]:
        return lambda ctx, v: ctx["done"].append(name)

    d = create_machine({"initial": "s", "context": {"done": []}, "states": {
        "s": {"on": {"GO": [
            {"target": "x", "guard": g("g1", False), "action": act("x")},
            {"target": "y", "guard": g("g2", True), "action": act("y")},
            {"target": "z", "guard": g("g3", True), "action": act("z")},
            {"target": "w", "action": act("w")}]}},
        "x": {}, "y": {}, "z": {}, "w": {}}})
    m = Coremachine(stores.writer(), d)
    snap = m.action("GO")
    assert (snap.state, snap.context) == ("y", {"done": ["y"]})
    assert calls == ["g1", "g2"]


def test_no_guard_passes(stores: Stores) -> None:
    d = create_machine({"initial": "s", "context": {"n": 0}, "states": {
        "s": {"on": {"GO": [{"target": "x", "guard": lambda c, v: False},
                            {"target": "y", "guard": lambda c, v: 0}],
                     "INC": {"action": increment_n}}},
        "x": {}, "y": {}}})
    core = stores.writer()
    m = Coremachine(core, d)
    m.action("INC")
    before = frozen(m)
    with pytest.raises(GuardRejectedError) as info:
        m.action("GO", 5)
    e = info.value
    assert isinstance(e, InvalidActionError) and isinstance(e, ValueError)
    assert e.code == "GUARD_REJECTED" and (e.event, e.state) == ("GO", "s")
    assert "Invalid action: GO for state s" in str(e)
    assert frozen(m) == before
    assert m.action("INC").context == {"n": 2}


def test_guards_see_the_value_and_the_context(stores: Stores) -> None:
    seen: List[Tuple[Dict[str, Any], Any]] = []

    def big(ctx: Dict[str, Any], v: Any) -> bool:
        seen.append((dict(ctx), v))
        return v is not None and v > ctx["limit"]

    d = create_machine({"initial": "s", "context": {"limit": 10}, "states": {
        "s": {"on": {"SET": [{"target": "high", "guard": big},
                             {"target": "low"}]}},
        "high": {"on": {"BACK": "s"}}, "low": {"on": {"BACK": "s"}}}})
    m = Coremachine(stores.writer(), d)
    assert m.action("SET", 11).state == "high"
    m.action("BACK")
    assert m.action("SET", 10).state == "low"
    m.action("BACK")
    assert m.action("SET").state == "low"
    assert seen == [({"limit": 10}, 11), ({"limit": 10}, 10), ({"limit": 10}, None)]


# --------------------------------------------------------------------------------
# entry and exit


def test_order_exit_action_append_change_entry(stores: Stores) -> None:
    core = stores.writer()
    log: List[Tuple[str, Any, int]] = []
    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"exit": lambda c, s: log.append(("exit", s, core.length)),
              "entry": lambda c, s: log.append(("entry-a", s, core.length)),
              "on": {"GO": {"target": "b",
                            "action": lambda c, v: log.append(("action", v, core.length))}}},
        "b": {"entry": lambda c, s: log.append(("entry", s, core.length)),
              "exit": lambda c, s: log.append(("exit-b", s, core.length))}}})
    m = Coremachine(core, d)
    m.on_change(lambda s: log.append(("change", s.state, core.length)))
    m.action("GO", 42)
    assert log == [("exit", "a", 0), ("action", 42, 0), ("change", "b", 1), ("entry", "b", 1)]


def test_targetless_transitions_run_neither_exit_nor_entry(stores: Stores) -> None:
    calls: List[str] = []
    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"entry": lambda c, s: calls.append("entry"),
              "exit": lambda c, s: calls.append("exit"),
              "on": {"STAY": {"action": increment_n}, "SELF": {"target": "a"}}}}})
    m = Coremachine(stores.writer(), d)
    m.action("STAY")
    assert calls == []
    m.action("SELF")  # an explicit self-transition leaves and re-enters
    assert calls == ["exit", "entry"]


def test_exit_mutations_are_committed_entry_gets_a_copy(stores: Stores) -> None:
    got: List[Dict[str, Any]] = []

    def on_exit(ctx: Dict[str, Any], s: str) -> None:
        ctx["left"] = s

    def on_entry(ctx: Dict[str, Any], s: str) -> None:
        got.append(json.loads(json.dumps(ctx)))
        ctx["entered"] = True
        ctx["left"] = "mutated"

    d = create_machine({"initial": "a", "context": {}, "states": {
        "a": {"exit": on_exit, "on": {"GO": "b"}},
        "b": {"entry": on_entry, "on": {"STAY": None}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    snap = m.action("GO")
    assert got == [{"left": "a"}]
    assert snap.context == {"left": "a"} and m.context == {"left": "a"}
    assert blocks(core) == [{"state": "b", "context": {"left": "a"}, "event": "GO"}]
    m.action("STAY")
    assert blocks(core)[-1]["context"] == {"left": "a"}


def test_a_raising_entry_action_still_commits(stores: Stores) -> None:
    ran: List[str] = []

    def boom(ctx: Dict[str, Any], s: str) -> None:
        ran.append("boom")
        raise KeyError("led")

    d = create_machine({"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"GO": {"target": "b", "action": increment_n}}},
        "b": {"entry": [boom, lambda c, s: ran.append("second")],
              "on": {"BACK": "a"}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    changes: List[Snapshot] = []
    m.on_change(changes.append)
    with pytest.raises(EntryActionError) as info:
        m.action("GO")
    e = info.value
    assert isinstance(e.__cause__, KeyError)
    assert (e.snapshot.state, e.snapshot.context, e.snapshot.index) == ("b", {"n": 1}, 0)
    assert ran == ["boom", "second"]  # the other entry actions still ran
    assert (m.state, m.context, core.length) == ("b", {"n": 1}, 1)
    assert [c.state for c in changes] == ["b"]
    assert m.action("BACK").state == "a"


def test_an_entry_action_may_start_the_next_transition(stores: Stores) -> None:
    holder: List[Coremachine] = []
    d = create_machine({"initial": "a", "states": {
        "a": {"on": {"GO": "b"}},
        "b": {"entry": lambda c, s: holder[0].action("NEXT"), "on": {"NEXT": "c"}},
        "c": {}}})
    core = stores.writer()
    m = Coremachine(core, d)
    holder.append(m)
    assert m.action("GO").state == "b"  # the snapshot of GO's own transition
    assert m.state == "c"
    assert [b["state"] for b in blocks(core)] == ["b", "c"]


# --------------------------------------------------------------------------------
# invalid actions


def test_invalid_action_message(stores: Stores) -> None:
    core = stores.writer()
    m = Coremachine(core, readme_machine())
    with pytest.raises(InvalidActionError) as info:
        m.action("STOP")  # known, but not in this state
    assert info.value.message == "Invalid action: STOP for state idle"
    assert str(info.value) == "INVALID_ACTION: Invalid action: STOP for state idle"
    assert (info.value.event, info.value.state) == ("STOP", "idle")
    assert not isinstance(info.value, GuardRejectedError)
    with pytest.raises(InvalidActionError, match="^INVALID_ACTION: Invalid action: NOPE for "
                                                 "state idle$"):
        m.action("NOPE")
    for event in (5, None, b"START", ("START",)):
        with pytest.raises(InvalidActionError, match="Invalid action: .* for state idle"):
            m.action(event)  # type: ignore[arg-type]
    assert core.length == 0 and m.state == "idle"
    assert m.action("START", 1).state == "running"


# --------------------------------------------------------------------------------
# copies


def test_snapshots_events_and_context_are_copies(stores: Stores) -> None:
    core = stores.writer()
    d = create_machine({"initial": "a", "context": {"n": 0, "items": [{"k": 1}]},
                        "states": {"a": {"on": {"INC": {"action": increment_n}}}}})
    m = Coremachine(core, d)
    first: List[Snapshot] = []
    second: List[Snapshot] = []

    def vandal(s: Snapshot) -> None:
        first.append(s)
        s.context["items"][0]["k"] = "vandal"
        s.context["n"] = -100
        s.state = "vandal"

    m.on_change(vandal)
    m.on_change(second.append)
    snap = m.action("INC")
    assert second[0].context == {"n": 1, "items": [{"k": 1}]} and second[0].state == "a"
    snap.context["items"].append("x")
    snap.context["n"] = 99
    ctx = m.context
    ctx["items"][0]["k"] = 2
    ctx["n"] = 55
    m.snapshot().context["n"] = 77
    assert m.context == {"n": 1, "items": [{"k": 1}]}
    assert m.snapshot().context == {"n": 1, "items": [{"k": 1}]}
    m.action("INC")
    assert second[1].context == {"n": 2, "items": [{"k": 1}]}
    assert blocks(core)[-1]["context"] == {"n": 2, "items": [{"k": 1}]}
    e0 = m.entry(0)
    e0.context["n"] = 1000
    assert m.entry(0).context["n"] == 1


def test_the_callers_value_is_not_shared_with_the_machine(stores: Stores) -> None:
    d = create_machine({"initial": "a", "context": {"v": None}, "states": {
        "a": {"on": {"SET": {"action": lambda c, v: c.update(v=v)}, "NOOP": None}}}})
    core = stores.writer()
    m = Coremachine(core, d)
    value = {"k": [1]}
    snap = m.action("SET", value)
    value["k"].append(2)
    assert m.context == {"v": {"k": [1]}} and snap.value == {"k": [1]}
    m.action("NOOP")
    assert blocks(core)[-1]["context"] == {"v": {"k": [1]}}
    # a tuple is stored as an array: the machine holds what the log holds
    m.action("SET", (1, [2]))
    assert m.context == {"v": [1, [2]]}
    core = stores.reopen(core)
    assert Coremachine(core, d).context == m.context


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


# --------------------------------------------------------------------------------
# history


def history_machine(stores: Stores, entries: int) -> Coremachine:
    m = Coremachine(stores.writer(), counter_machine())
    for i in range(entries):
        if i % 2:
            m.action("GO", i)
        else:
            m.action("TICK")
    return m


def recorded(m: Coremachine, i: int) -> Dict[str, Any]:
    return json.loads(m.core.get(i))


def assert_is_entry(snap: Optional[Snapshot], m: Coremachine, i: int) -> None:
    assert snap is not None
    block = recorded(m, i)
    assert (snap.index, snap.state, snap.context, snap.event) == (
        i, block["state"], block["context"], block["event"])
    assert snap.value == block.get("value", MISSING)
    assert snap.previous_state == (recorded(m, i - 1)["state"] if i > 0 else None)


def test_history_on_an_empty_log(stores: Stores) -> None:
    m = history_machine(stores, 0)
    assert m.backward() is None and m.forward() is None and m.cursor is None
    head = m.head()
    assert (head.state, head.context, head.index) == ("a", {"n": 0}, None)
    for i in (0, -1, 1):
        with pytest.raises(cm.OutOfRangeError):
            m.entry(i)
    assert m.action("TICK").context == {"n": 1}


def test_history_on_a_log_of_one(stores: Stores) -> None:
    m = history_machine(stores, 1)
    assert m.backward() is None and m.cursor is None
    assert m.forward() is None and m.cursor is None
    assert_is_entry(m.head(), m, 0)
    assert_is_entry(m.entry(0), m, 0)
    assert_is_entry(m.entry(-1), m, 0)
    with pytest.raises(cm.OutOfRangeError):
        m.entry(1)
    with pytest.raises(cm.OutOfRangeError):
        m.entry(-2)
    assert m.action("TICK").index == 1


def test_history_walk_on_several_entries(stores: Stores) -> None:
    m = history_machine(stores, 5)
    core = m.core
    head_state, head_context = m.state, m.context
    for i in range(5):
        assert_is_entry(m.entry(i), m, i)
        assert_is_entry(m.entry(i - 5), m, i)
    # backward from the head: 3, 2, 1, 0, then None (and no move)
    for i in (3, 2, 1, 0):
        snap = m.backward()
        assert_is_entry(snap, m, i)
        assert m.cursor == i
        assert (m.state, m.context) == (recorded(m, i)["state"], recorded(m, i)["context"])
        assert m.snapshot() == snap
    assert m.backward() is None and m.cursor == 0
    # forward: 1, 2, 3, then the head (cursor back to None), then None
    for i in (1, 2, 3):
        snap = m.forward()
        assert_is_entry(snap, m, i)
        assert m.cursor == i
    snap = m.forward()
    assert_is_entry(snap, m, 4)
    assert m.cursor is None and (m.state, m.context) == (head_state, head_context)
    assert m.forward() is None and m.cursor is None
    assert core.length == 5  # looking never appends


def test_action_away_from_the_head(stores: Stores) -> None:
    m = history_machine(stores, 4)
    core = m.core
    head_context = m.context
    m.backward()
    m.backward()
    before = raw_blocks(core)
    with pytest.raises(NotAtHeadError):
        m.action("TICK")
    assert m.write({"event": "TICK"}) is None
    assert raw_blocks(core) == before and m.cursor == 1
    head = m.head()
    assert_is_entry(head, m, 3)
    assert m.cursor is None and m.context == head_context
    snap = m.action("TICK")
    assert snap.index == 4 and snap.context == {"n": head_context["n"] + 1}


def test_truncate_reloads_from_the_new_last_entry(stores: Stores) -> None:
    m = history_machine(stores, 5)
    core = m.core
    expected = recorded(m, 1)
    changes: List[Snapshot] = []
    m.on_change(changes.append)
    m.backward()  # the cursor is reset by a truncation
    previous = m.head().state
    m.backward()
    fork = core.fork
    snap = m.truncate(2)
    assert (snap.state, snap.context, snap.index) == (expected["state"], expected["context"], 1)
    assert (m.state, m.context, m.cursor, m.length) == (expected["state"], expected["context"],
                                                          None, 2)
    assert core.length == 2 and core.fork == fork + 1 and snap.fork == fork + 1
    assert [(c.state, c.context, c.index, c.previous_state) for c in changes] == [
        (expected["state"], expected["context"], 1, previous)]
    m.action("TICK")
    assert recorded(m, 2)["context"] == {"n": expected["context"]["n"] + 1}
    # to zero: the initial state and a fresh initial context
    snap = m.truncate(0)
    assert (snap.state, snap.context, snap.index) == ("a", {"n": 0}, None)
    assert m.is_empty and core.length == 0 and core.fork == fork + 2
    assert len(changes) == 3
    assert m.action("TICK").context == {"n": 1}


def test_truncate_beyond_the_end_changes_nothing(stores: Stores) -> None:
    m = history_machine(stores, 2)
    before = frozen(m)
    with pytest.raises(cm.OutOfRangeError):
        m.truncate(5)
    assert frozen(m) == before
    assert m.action("TICK").index == 2


# --------------------------------------------------------------------------------
# available_actions


def test_available_actions(stores: Stores) -> None:
    async def async_guard(ctx: Dict[str, Any], v: Any) -> bool:
        return False

    def broken_guard(ctx: Dict[str, Any], v: Any) -> bool:
        raise RuntimeError("needs the value")

    seen_values: List[Any] = []

    def armed(ctx: Dict[str, Any], v: Any) -> bool:
        seen_values.append(v)
        ctx["mutated"] = True
        return bool(ctx["armed"])

    d = create_machine({"initial": "a", "context": {"armed": False}, "states": {
        "a": {"on": {"enter": {"action": lambda c, s: None},
                     "exit": {"action": lambda c, s: None},
                     "FIRE": [{"target": "b", "guard": armed},
                              {"target": "b", "guard": lambda c, v: False}],
                     "ARM": {"action": lambda c, v: c.update(armed=True)},
                     "MAYBE": {"guard": broken_guard},
                     "LATER": {"guard": async_guard},
                     "OPEN": [{"guard": lambda c, v: False}, {"target": "b"}]}},
        "b": {"on": {"BACK": "a"}},
        "z": {"final": True}},
        "all": {"RESET": {"target": "a", "guard": lambda c, v: c["armed"]}, "PING": None}})
    m = Coremachine(stores.writer(), d)
    assert d.is_async  # the async guard: act with action_async
    assert m.available_actions() == ["ARM", "MAYBE", "LATER", "OPEN", "PING"]
    assert m.available_actions(evaluate_guards=False) == [
        "FIRE", "ARM", "MAYBE", "LATER", "OPEN", "RESET", "PING"]
    assert seen_values and set(seen_values) == {None}
    assert m.context == {"armed": False}  # guards got a copy
    run(m.action_async("ARM"))
    assert m.available_actions() == ["FIRE", "ARM", "MAYBE", "LATER", "OPEN", "RESET", "PING"]
    run(m.action_async("FIRE"))
    assert m.available_actions() == ["BACK", "RESET", "PING"]
    for listed in m.available_actions():
        assert listed not in ("enter", "exit")


# --------------------------------------------------------------------------------
# a read-only replica follows the writer


def upgrade(writer: cm.Core, replica: cm.Core) -> Any:
    start = 0 if replica.fork != writer.fork else replica.length
    return replica.apply_proof(writer.proof(upgrade=(start, writer.length - start),
                                            manifest=replica.manifest is None))


def send_block(writer: cm.Core, replica: cm.Core, i: int) -> Any:
    return replica.apply_proof(writer.proof(block=i, nodes=replica.missing_nodes(i)))


def test_replica_follows_the_writer(stores: Stores) -> None:
    wcore = stores.writer()
    writer = Coremachine(wcore, readme_machine())
    writer.action("START", 1)
    writer.action("INCREMENT")
    writer.action("STOP", 10)
    rcore = stores.replica(wcore.key)
    replica = Coremachine(rcore, readme_machine())
    assert (replica.state, replica.context, replica.is_empty) == (
        "idle", {"running": False, "counter": 0}, True)
    changes: List[Snapshot] = []
    replica.on_change(changes.append)

    assert upgrade(wcore, rcore).upgraded
    assert changes == [] and replica.state == "idle"  # no block yet
    for i in range(wcore.length):
        assert send_block(wcore, rcore, i).block_stored
        assert len(changes) == i + 1
        assert_is_entry(writer.entry(i), writer, i)
        want = json.loads(wcore.get(i))
        assert (replica.state, replica.context, replica.length) == (
            want["state"], want["context"], i + 1)
    assert [(c.index, c.state, c.event, c.value, c.previous_state) for c in changes] == [
        (0, "running", "START", 1, "idle"), (1, "running", "INCREMENT", MISSING, "running"),
        (2, "idle", "STOP", 10, "running")]

    # more appends, delivered out of order: changes still come in log order
    writer.action("START", 20)
    writer.action("INCREMENT")
    upgrade(wcore, rcore)
    send_block(wcore, rcore, 4)  # ahead of the gap: not contiguous, so nothing to follow
    assert replica.length == 3 and len(changes) == 3 and replica.state == "idle"
    send_block(wcore, rcore, 3)
    if rcore.contiguous_length < 5:  # a block that arrived ahead may need sending again
        send_block(wcore, rcore, 4)
    assert [c.index for c in changes] == [0, 1, 2, 3, 4]
    assert (replica.state, replica.context) == (writer.state, writer.context)

    # a replica cannot act, and trying touches nothing
    before = frozen(replica)
    for call in (lambda: replica.action("INCREMENT"), lambda: replica.truncate(1)):
        with pytest.raises(ReadOnlyError):
            call()
        assert frozen(replica) == before
    assert replica.write({"event": "INCREMENT"}) is None
    assert frozen(replica) == before and len(changes) == 5

    # a machine opened on the filled replica restores its last entry
    again = Coremachine(rcore, readme_machine())
    assert (again.state, again.context) == (writer.state, writer.context)
    assert_is_entry(replica.entry(4), writer, 4)


def test_replica_reloads_after_a_writer_truncation(stores: Stores) -> None:
    wcore = stores.writer()
    writer = Coremachine(wcore, readme_machine())
    writer.action("START", 1)
    writer.action("INCREMENT")
    writer.action("INCREMENT")
    rcore = stores.replica(wcore.key)
    replica = Coremachine(rcore, readme_machine())
    upgrade(wcore, rcore)
    for i in range(3):
        send_block(wcore, rcore, i)
    assert replica.context["counter"] == 3
    changes: List[Snapshot] = []
    replica.on_change(changes.append)

    writer.truncate(1)
    assert upgrade(wcore, rcore).upgraded  # from 0, on the new fork
    assert rcore.fork == wcore.fork == 1
    assert (replica.state, replica.context, replica.length) == (
        "running", {"running": True, "counter": 1}, 1)
    assert len(changes) == 1 and changes[-1].context == {"running": True, "counter": 1}
    assert changes[-1].fork == 1

    writer.action("STOP", 7)
    upgrade(wcore, rcore)
    send_block(wcore, rcore, 1)
    assert (replica.state, replica.context) == ("idle", {"running": False, "counter": 7})
    assert [c.index for c in changes] == [0, 1]

    # a truncation that keeps every block still bumps the fork: the replica reloads
    writer.truncate(wcore.length)
    assert wcore.fork == 2
    upgrade(wcore, rcore)
    assert rcore.fork == 2 and len(changes) == 3
    assert (changes[-1].index, changes[-1].fork, changes[-1].state) == (1, 2, "idle")

    # truncated to nothing and rebuilt
    writer.truncate(0)
    writer.action("START", 100)
    upgrade(wcore, rcore)
    assert replica.state in ("idle", "running")
    send_block(wcore, rcore, 0)
    assert (replica.state, replica.context) == ("running", {"running": True, "counter": 100})
    assert changes[-1].index == 0 and changes[-1].fork == 3
