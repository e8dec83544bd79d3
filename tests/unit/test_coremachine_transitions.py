"""Coremachine transitions on real cores in tmp_path: atomicity (a failed
action changes nothing), guards, entry/exit order, invalid actions, copies."""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Tuple

import pytest

import coremachine_embedded as cm
from coremachine_embedded import (Coremachine, EntryActionError, GuardRejectedError,
                                  InvalidActionError, Snapshot, create_machine)
from coremachine_embedded._json import JSONValueError
from tests.unit.coremachine_helpers import (Stores, blocks, frozen, increment_n, raw_blocks,
                                            readme_machine)


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
