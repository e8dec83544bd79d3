"""Change notifications reach every subscriber in commit order, also when a
subscriber's callback makes a change of its own (issue 10, line 10): that
change is told to everyone after the one being told."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List, Tuple

import coremachine_embedded as cm


def _writer(tmp_path: Any) -> cm.Core:
    return cm.Core(os.path.join(str(tmp_path), "w"), key_pair=cm.KeyPair.generate(),
                   durability="none")


def test_core_listeners_see_changes_in_commit_order_when_one_appends(tmp_path: Any) -> None:
    core = _writer(tmp_path)
    seen: Dict[str, List[Tuple[str, int]]] = {"first": [], "second": [], "third": []}

    def first(change: cm.CoreChange) -> None:
        seen["first"].append((change.kind, change.length))
        if (change.kind, change.length) == ("append", 1):
            core.append(b"appended by a listener")          # a change while telling one
        if (change.kind, change.length) == ("append", 2):
            core.truncate(1)

    core.on_change(first)
    core.on_change(lambda c: seen["second"].append((c.kind, c.length)))
    core.on_change(lambda c: seen["third"].append((c.kind, c.length)))
    core.append(b"first")
    expected = [("append", 1), ("append", 2), ("truncate", 1)]
    assert seen == {"first": expected, "second": expected, "third": expected}
    core.close()


def _go_inc() -> Dict[str, Any]:
    def inc(ctx: Dict[str, Any], _: Any) -> None:
        ctx["n"] += 1
    return {"initial": "idle", "context": {"n": 0}, "states": {
        "idle": {"on": {"GO": "running"}},
        "running": {"on": {"INC": {"action": inc}}}}}


def test_machine_subscribers_see_transitions_in_commit_order_when_one_acts(
        tmp_path: Any) -> None:
    """The issue's case: commits [GO, INC], the second subscriber saw [INC, GO]."""
    core = _writer(tmp_path)
    machine = cm.Coremachine(core, _go_inc())
    first: List[Any] = []
    second: List[Any] = []

    def act(snap: Any) -> None:
        first.append((snap.event, snap.context["n"]))
        if snap.event == "GO":
            machine.action("INC")

    async def main() -> List[Any]:
        changes = machine.changes()
        machine.on_change(act)
        machine.on_change(lambda snap: second.append((snap.event, snap.context["n"])))
        machine.action("GO")
        got = []
        async for snap in changes:
            got.append((snap.event, snap.context["n"]))
            if len(got) == 2:
                return got
        return got

    committed = [("GO", 0), ("INC", 1)]
    assert asyncio.run(asyncio.wait_for(main(), 10)) == committed
    assert first == committed and second == committed
    assert [core.get(i) for i in range(core.length)] and core.length == 2
    machine.close()
    core.close()
