"""Coremachine on real cores in tmp_path: the README quick start, the exact
block bytes, and restore (on open, from the last entry, of foreign entries)."""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

import pytest

from coremachine_embedded import (MISSING, Coremachine, InvalidActionError, RestoreError,
                                  create_machine)
from tests.unit.coremachine_helpers import (README, Stores, blocks, increment_n, raw_blocks,
                                            readme_machine)


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
