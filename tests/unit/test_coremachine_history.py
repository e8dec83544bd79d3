"""Coremachine history on real cores in tmp_path: walking entries, actions away
from the head, truncation, available_actions, and a read-only replica that
follows the writer."""
from __future__ import annotations

import json
from typing import Any, Dict, List, Optional

import pytest

import coremachine_embedded as cm
from coremachine_embedded import (MISSING, Coremachine, NotAtHeadError, ReadOnlyError, Snapshot,
                                  create_machine)
from tests.unit.coremachine_helpers import (Stores, counter_machine, frozen, raw_blocks,
                                            readme_machine, run)


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
