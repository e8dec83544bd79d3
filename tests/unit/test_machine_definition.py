"""create_machine: every mistake is a DefinitionError at definition time, the
JavaScript Coremachine 1.1.0 forms are accepted and behave as documented, and
the ``all`` table / string shorthands compile as described in machine.py.

Behaviour is checked on a real Coremachine over a real Core in tmp_path."""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, Iterator, List

import pytest

import coremachine_embedded as cm
from coremachine_embedded import (Coremachine, DefinitionError, InvalidActionError,
                                  InvalidArgumentError, MachineDefinition, create_machine)


def noop(ctx: Dict[str, Any], value: Any) -> None:
    pass


def yes(ctx: Dict[str, Any], value: Any) -> bool:
    return True


@pytest.fixture
def open_core(tmp_path) -> Iterator[Callable[..., cm.Core]]:
    """Open real cores in tmp_path; all are closed at the end of the test."""
    cores: List[cm.Core] = []
    kps: Dict[str, cm.KeyPair] = {}

    def make(name: str = "w") -> cm.Core:
        kp = kps.setdefault(name, cm.KeyPair.generate())
        core = cm.Core(tmp_path / name, key_pair=kp)
        cores.append(core)
        return core
    yield make
    for core in cores:
        core.close()


def blocks(core: cm.Core) -> List[Dict[str, Any]]:
    return [json.loads(core.get(i)) for i in range(core.length)]


def base(**states: Any) -> Dict[str, Any]:
    return {"initial": "a", "context": {}, "states": states or {"a": {}}}


# --------------------------------------------------------------------------------
# mistakes


def bad(config: Any, *fragments: str) -> DefinitionError:
    with pytest.raises(DefinitionError) as info:
        create_machine(config)
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))
    return info.value


def test_definition_error_type() -> None:
    e = bad(5, "dict")
    assert isinstance(e, InvalidArgumentError) and isinstance(e, ValueError)
    assert isinstance(e, cm.CoreMachineError)
    assert e.code == "BAD_DEFINITION"


def test_missing_initial() -> None:
    bad({"states": {"a": {}}}, "missing 'initial'")


@pytest.mark.parametrize("initial", ["", 3, None, ["a"]])
def test_initial_not_a_name(initial: Any) -> None:
    bad({"initial": initial, "states": {"a": {}}}, "initial")


def test_initial_not_a_state() -> None:
    bad({"initial": "b", "states": {"a": {}}}, "'b'", "not in states")
    # 'all' is not a state either, even as the states.all table
    bad({"initial": "all", "states": {"a": {}, "all": {}}}, "'all'")


@pytest.mark.parametrize("states", [None, {}, [], "a"])
def test_states_missing_or_empty(states: Any) -> None:
    cfg: Dict[str, Any] = {"initial": "a"}
    if states is not None:
        cfg["states"] = states
    bad(cfg, "'states'")


def test_state_config_not_a_dict() -> None:
    bad({"initial": "a", "states": {"a": ["on"]}}, "state 'a' must be a dict")
    bad({"initial": "a", "states": {"a": {}, 3: {}}}, "state name")
    bad({"initial": "a", "states": {"a": {}, "": {}}}, "state name")


def test_on_not_a_dict() -> None:
    bad(base(a={"on": [("X", "a")]}), "'on' must be a dict")


@pytest.mark.parametrize("spec", [
    {"target": "nope"},
    "nope",
    [{"target": "a", "guard": yes}, {"target": "nope"}],
])
def test_unknown_target(spec: Any) -> None:
    bad(base(a={"on": {"GO": spec}}), "unknown target state 'nope'", "GO")


def test_unknown_target_in_all() -> None:
    bad({"initial": "a", "states": {"a": {}, "b": {}}, "all": {"X": {"target": "nope"}}},
        "all.X", "'nope'")
    bad({"initial": "a", "states": {"a": {}, "all": {"X": "nope"}}}, "'nope'")


def test_unknown_target_in_all_even_if_every_state_overrides_it() -> None:
    # the 'all' entry is never used here, but it is still a mistake
    bad({"initial": "a", "states": {"a": {"on": {"X": "a"}}},
         "all": {"X": {"target": "nope"}}}, "'nope'")
    bad({"initial": "a", "states": {"a": {"final": True}},
         "all": {"X": {"target": "a", "action": 5}}}, "callable")


def test_target_not_a_string() -> None:
    bad(base(a={"on": {"GO": {"target": 5}}}), "target")
    bad(base(a={"on": {"GO": {"target": ["a"]}}}), "target")


@pytest.mark.parametrize("key", ["action", "guard"])
@pytest.mark.parametrize("value", [5, "noop", {"fn": noop}])
def test_non_callable_action_or_guard(key: str, value: Any) -> None:
    bad(base(a={"on": {"GO": {"target": "a", key: value}}}), "must be callable",
        "on.GO.%s" % key)
    bad({"initial": "a", "states": {"a": {}}, "all": {"GO": {key: value}}}, "must be callable")


@pytest.mark.parametrize("key", ["entry", "exit"])
@pytest.mark.parametrize("value", [5, "noop", [noop, 7]])
def test_non_callable_entry_or_exit(key: str, value: Any) -> None:
    bad(base(a={key: value}), "must be callable", key)


@pytest.mark.parametrize("event", ["enter", "exit"])
def test_non_callable_js_enter_exit_action(event: str) -> None:
    bad(base(a={"on": {event: {"action": "nope"}}}), "on.%s.action" % event, "callable")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), b"bytes", {1, 2}, 2**53,
                                   -(2**53), {"deep": [1, {"x": float("nan")}]},
                                   {1: "int key"}, object()])
def test_context_not_json_storable(value: Any) -> None:
    bad({"initial": "a", "context": {"v": value}, "states": {"a": {}}},
        "context cannot be stored as JSON")


@pytest.mark.parametrize("context", [[], "ctx", 5, None, (("a", 1),)])
def test_context_not_a_dict(context: Any) -> None:
    bad({"initial": "a", "context": context, "states": {"a": {}}}, "context must be a dict")


def test_context_limits_accepted() -> None:
    d = create_machine({"initial": "a", "context": {"max": 2**53 - 1, "min": -(2**53 - 1),
                                                    "f": 0.5, "s": "\u00e9", "n": None},
                        "states": {"a": {}}})
    assert d.context == {"max": 2**53 - 1, "min": -(2**53 - 1), "f": 0.5, "s": "\u00e9",
                         "n": None}


def test_unknown_top_level_key() -> None:
    bad({"initial": "a", "states": {"a": {}}, "transitions": {}}, "top-level", "transitions")
    bad({"initial": "a", "states": {"a": {}}, "on": {}}, "top-level", "on")


def test_unknown_state_key() -> None:
    bad(base(a={"onn": {}}), "state 'a'", "unknown key", "onn")
    bad(base(a={"always": "a"}), "always")


def test_unknown_transition_key() -> None:
    e = bad(base(a={"on": {"GO": {"target": "a", "actions": noop}}}), "unknown key", "actions")
    assert "guard" not in str(e)


@pytest.mark.parametrize("key", ["cond", "when"])
def test_cond_gets_a_hint(key: str) -> None:
    bad(base(a={"on": {"GO": {"target": "a", key: yes}}}), key, "guards are spelled 'guard'")
    bad({"initial": "a", "states": {"a": {}}, "all": {"GO": {key: yes}}}, key,
        "guards are spelled 'guard'")


def test_unknown_key_in_candidate_list() -> None:
    bad(base(a={"on": {"GO": [{"target": "a", "guard": yes}, {"target": "a", "x": 1}]}}),
        "on.GO[1]", "x")


def test_unknown_js_enter_exit_keys() -> None:
    bad(base(a={"on": {"enter": {"target": "a", "guard": yes}}}), "on.enter")
    bad(base(a={"on": {"exit": {"action": noop, "cond": yes}}}), "on.exit")
    bad(base(a={"on": {"enter": "a"}}), "on.enter")


@pytest.mark.parametrize("final", [{"final": True}, {"type": "final"}])
def test_final_state_with_transitions(final: Dict[str, Any]) -> None:
    bad({"initial": "a", "states": {"a": {"on": {"GO": "z"}},
                                    "z": dict(final, on={"BACK": "a"})}},
        "final state 'z' cannot have transitions")


def test_final_state_may_have_entry() -> None:
    d = create_machine({"initial": "a", "states": {
        "a": {"on": {"GO": "z"}},
        "z": {"final": True, "entry": noop, "on": {"enter": {"action": noop}}}}})
    assert d.finals == (False, True)


def test_unguarded_candidate_before_the_last() -> None:
    bad(base(a={"on": {"GO": [{"target": "a"}, {"target": "a", "guard": yes}]}}),
        "on.GO[0]", "only the last candidate may have no guard")
    bad(base(a={"on": {"GO": [{"target": "a", "guard": yes}, "a", "a"]}}), "on.GO[1]")
    bad({"initial": "a", "states": {"a": {}}, "all": {"GO": ["a", "a"]}}, "last candidate")


def test_empty_candidate_list() -> None:
    bad(base(a={"on": {"GO": []}}), "empty list")


def test_transition_spec_not_a_dict() -> None:
    bad(base(a={"on": {"GO": 5}}), "on.GO must be a dict")
    bad(base(a={"on": {"GO": [{"target": "a", "guard": yes}, 5]}}), "on.GO[1] must be a dict")


def test_bad_event_names() -> None:
    bad(base(a={"on": {"": "a"}}), "event name")
    bad(base(a={"on": {5: "a"}}), "event name")
    bad({"initial": "a", "states": {"a": {}}, "all": {3: "a"}}, "'all' event name")


def test_both_all_and_states_all() -> None:
    bad({"initial": "a", "states": {"a": {}, "all": {"X": "a"}}, "all": {"Y": "a"}},
        "not both")


def test_all_not_a_dict_and_no_enter_exit() -> None:
    bad({"initial": "a", "states": {"a": {}}, "all": ["X"]}, "'all' must be a dict")
    bad({"initial": "a", "states": {"a": {}, "all": "X"}}, "'all' must be a dict")
    for event in ("enter", "exit"):
        bad({"initial": "a", "states": {"a": {}}, "all": {event: {"action": noop}}},
            "'all' cannot define %s" % event)


@pytest.mark.parametrize("target", ["nope", ["a"], 5, {"state": "a"}])
def test_bad_on_enter_target(target: Any) -> None:
    bad(base(a={"on": {"enter": {"target": target}}}), "on.enter")


def test_on_exit_takes_no_target() -> None:
    bad(base(a={"on": {"exit": {"target": "a"}}}), "on.exit takes no target")


def test_a_bad_config_given_to_coremachine_appends_nothing(open_core) -> None:
    core = open_core()
    with pytest.raises(DefinitionError):
        Coremachine(core, base(a={"on": {"GO": "nope"}}))
    assert core.length == 0


# --------------------------------------------------------------------------------
# accepted forms


def test_compiled_definition_shape() -> None:
    d = create_machine({"id": "m", "description": "doc", "initial": "idle",
                        "context": {"n": 0},
                        "states": {"idle": {"description": "x",
                                            "on": {"GO": {"target": "run", "action": noop,
                                                          "description": "go"}}},
                                   "run": {"on": {"STOP": "idle"}},
                                   "done": {"type": "final"}}})
    assert isinstance(d, MachineDefinition)
    assert d.initial == "idle" and d.states == ("idle", "run", "done")
    assert d.events == ("GO", "STOP")
    assert d.finals == (False, False, True)
    assert create_machine(d) is d
    assert not d.is_async
    (t,) = d.candidates(d.state_ids["idle"], "GO")
    assert (t.event, t.source, t.target, t.action) == ("GO", "idle", "run", noop)
    assert d.candidates(d.state_ids["idle"], "STOP") is None
    assert d.candidates(d.state_ids["idle"], "NOPE") is None


def test_context_is_copied_in_and_out() -> None:
    ctx = {"n": 0, "list": [1, {"x": 2}]}
    d = create_machine({"initial": "a", "context": ctx, "states": {"a": {}}})
    ctx["n"] = 99
    ctx["list"][1]["x"] = 99
    first = d.context
    assert first == {"n": 0, "list": [1, {"x": 2}]}
    first["list"].append(3)
    assert d.context == {"n": 0, "list": [1, {"x": 2}]}
    assert d.context is not d.context


def test_context_defaults_to_empty() -> None:
    assert create_machine({"initial": "a", "states": {"a": None}}).context == {}


def test_async_detection() -> None:
    async def act(ctx: Any, v: Any) -> None:
        pass

    class AsyncCallable:
        async def __call__(self, ctx: Any, v: Any) -> None:
            pass

    assert create_machine(base(a={"on": {"X": {"action": act}}})).is_async
    assert create_machine(base(a={"on": {"X": {"guard": act}}})).is_async
    assert create_machine(base(a={"entry": act})).is_async
    assert create_machine(base(a={"on": {"exit": {"action": act}}})).is_async
    assert create_machine(base(a={"on": {"X": {"action": AsyncCallable()}}})).is_async
    assert not create_machine(base(a={"on": {"X": {"action": noop, "guard": yes}}})).is_async


def test_string_shorthand_and_stay(open_core) -> None:
    d = create_machine({"initial": "a", "states": {
        "a": {"on": {"GO": "b", "STAY": None, "EMPTY": {"target": ""}}},
        "b": {"on": {"BACK": "a"}}}})
    m = Coremachine(open_core(), d)
    assert m.action("STAY").state == "a"
    assert m.action("EMPTY").state == "a"
    assert m.action("GO").state == "b"
    assert m.action("BACK").state == "a"
    assert [b["state"] for b in blocks(m.core)] == ["a", "a", "b", "a"]
    assert [b["event"] for b in blocks(m.core)] == ["STAY", "EMPTY", "GO", "BACK"]


def all_machine(where: str) -> Dict[str, Any]:
    def reset(ctx: Dict[str, Any], v: Any) -> None:
        ctx["resets"] += 1

    table = {"RESET": {"target": "a", "action": reset}, "PING": None}
    cfg: Dict[str, Any] = {"initial": "a", "context": {"resets": 0}, "states": {
        "a": {"on": {"GO": "b"}},
        "b": {"on": {"GO": "c", "RESET": {"target": "c"}}},  # its own RESET wins
        "c": {"on": {"END": "z"}},
        "z": {"final": True}}}
    if where == "top":
        cfg["all"] = table
    elif where == "states":
        cfg["states"]["all"] = table
    else:
        cfg["all"] = {"on": table}
    return cfg


@pytest.mark.parametrize("where", ["top", "states", "on"])
def test_all_applies_from_every_non_final_state(open_core, where: str) -> None:
    d = create_machine(all_machine(where))
    assert "all" not in d.states
    m = Coremachine(open_core(where), d)
    assert m.available_actions() == ["GO", "RESET", "PING"]
    assert m.action("PING").state == "a"
    assert m.action("RESET").context == {"resets": 1}
    m.action("GO")
    # b defines RESET itself: the state's own transition wins over 'all'
    assert m.available_actions() == ["GO", "RESET", "PING"]
    snap = m.action("RESET")
    assert (snap.state, snap.context) == ("c", {"resets": 1})
    assert m.action("RESET").state == "a" and m.context == {"resets": 2}
    m.action("GO"), m.action("GO"), m.action("END")
    assert m.state == "z" and m.is_final
    assert m.available_actions() == []
    for event in ("RESET", "PING", "GO"):
        with pytest.raises(InvalidActionError, match="Invalid action: %s for state z" % event):
            m.action(event)
    (t,) = d.candidates(d.state_ids["a"], "RESET")
    assert t.from_all
    (t,) = d.candidates(d.state_ids["b"], "RESET")
    assert not t.from_all


def test_all_with_guarded_candidates(open_core) -> None:
    d = create_machine({"initial": "a", "context": {"ok": False}, "states": {
        "a": {"on": {"ARM": {"action": lambda c, v: c.update(ok=True)}}}, "b": {}, "c": {}},
        "all": {"JUMP": [{"target": "b", "guard": lambda c, v: c["ok"]}, {"target": "c"}]}})
    m = Coremachine(open_core(), d)
    assert m.action("JUMP").state == "c"
    m2 = Coremachine(open_core("w2"), d)
    m2.action("ARM")
    assert m2.action("JUMP").state == "b"


# --------------------------------------------------------------------------------
# the JavaScript 1.1.0 forms


def test_js_on_enter_and_on_exit_actions(open_core) -> None:
    calls: List[Any] = []
    d = create_machine({"initial": "idle", "context": {"n": 0}, "states": {
        "idle": {"on": {"START": {"target": "running",
                                  "action": lambda c, v: calls.append(("action", dict(c)))},
                        "exit": {"action": lambda c, s: calls.append(("exit", s, dict(c)))}}},
        "running": {"on": {"enter": {"action": lambda c, s: calls.append(("enter", s,
                                                                          dict(c)))},
                           "STOP": "idle"}}}})
    m = Coremachine(open_core(), d)
    assert m.available_actions() == ["START"]  # never enter/exit
    for pseudo in ("enter", "exit"):
        with pytest.raises(InvalidActionError, match="Invalid action: %s for state idle" % pseudo):
            m.action(pseudo)
    m.action("START")
    assert calls == [("exit", "idle", {"n": 0}), ("action", {"n": 0}),
                     ("enter", "running", {"n": 0})]
    assert m.available_actions() == ["STOP"]


def test_js_on_enter_and_on_exit_combine_with_entry_and_exit(open_core) -> None:
    calls: List[str] = []
    d = create_machine({"initial": "a", "states": {
        "a": {"exit": lambda c, s: calls.append("exit"),
              "on": {"exit": {"action": lambda c, s: calls.append("on.exit")}, "GO": "b"}},
        "b": {"entry": [lambda c, s: calls.append("entry1"), lambda c, s: calls.append("entry2")],
              "on": {"enter": {"action": lambda c, s: calls.append("on.enter")}}}}})
    Coremachine(open_core(), d).action("GO")
    assert calls == ["exit", "on.exit", "entry1", "entry2", "on.enter"]


def test_js_on_enter_target_redirects_on_open_only(open_core) -> None:
    entered: List[str] = []
    d = create_machine({"initial": "idle", "context": {"n": 0}, "states": {
        "idle": {"on": {"BOOT": "booting"}},
        "booting": {"on": {"enter": {"target": "ready",
                                     "action": lambda c, s: entered.append(s)},
                           "DONE": "ready"}},
        "ready": {"on": {"RESET": "idle"}}}})
    core = open_core()
    m = Coremachine(core, d)
    # while running, entering 'booting' does not redirect: only its action runs
    assert m.action("BOOT").state == "booting"
    assert m.state == "booting" and entered == ["booting"]
    assert core.length == 1
    # opened in 'booting': the redirect applies, nothing is appended, no entry action
    m2 = Coremachine(core, d)
    assert m2.state == "ready" and m2.context == {"n": 0}
    assert m2.available_actions() == ["RESET"]
    assert core.length == 1 and entered == ["booting"]
    assert m2.action("RESET").state == "idle"
    assert [b["state"] for b in blocks(core)] == ["booting", "idle"]


def test_js_on_enter_target_applies_to_the_initial_state_of_an_empty_log(open_core) -> None:
    d = create_machine({"initial": "start", "context": {"x": 1}, "states": {
        "start": {"on": {"enter": {"target": "main"}}},
        "main": {"on": {"TICK": {"action": lambda c, v: c.update(x=c["x"] + 1)}}}}})
    core = open_core()
    m = Coremachine(core, d)
    assert m.state == "main" and m.is_empty and core.length == 0
    assert m.action("TICK").state == "main"
    assert blocks(core) == [{"state": "main", "context": {"x": 2}, "event": "TICK"}]
