"""Hypothesis stateful test: random machines (guards, entry/exit, an `all`
table, final states, actions that fail or produce values JSON cannot carry) and
random event sequences, reopens, truncations and history moves, against a
simple reference model.  States, contexts and the decoded blocks must agree at
every step, and after every reopen the state equals the model's."""
from __future__ import annotations

import copy
import json
import shutil
import tempfile

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

import coremachine_embedded as cm
from coremachine_embedded import (Coremachine, GuardRejectedError, InvalidActionError,
                                  NotAtHeadError, create_machine)

STATES = ["s0", "s1", "s2", "s3"]
EVENTS = ["E0", "E1", "E2", "E3"]
ACTIONS = ["add", "push", "fail13", "nan7", "none"]
GUARDS = ["even", "big", "raise99"]


class Boom(Exception):
    pass


def run_action(kind, ctx, value):
    v = value if isinstance(value, int) else 0
    if kind == "add":
        ctx["n"] += v
    elif kind == "push":
        ctx["seen"].append(v)
        del ctx["seen"][:-4]
    elif kind == "fail13":
        if v == 13:
            raise Boom("13")
        ctx["n"] -= 1
    elif kind == "nan7":
        ctx["x"] = float("nan") if v == 7 else v / 2


def run_guard(kind, ctx, value):
    v = value if isinstance(value, int) else 0
    if kind == "raise99" and v == 99:
        raise Boom("99")
    if kind == "even":
        return v % 2 == 0
    if kind == "big":
        return v + ctx["n"] > 10
    return True


candidate = st.fixed_dictionaries({
    "target": st.one_of(st.none(), st.sampled_from(STATES)),
    "action": st.sampled_from(ACTIONS),
    "guard": st.sampled_from(GUARDS)})
spec_strategy = st.fixed_dictionaries({
    "own": st.dictionaries(st.tuples(st.sampled_from(STATES), st.sampled_from(EVENTS)),
                           st.lists(candidate, min_size=1, max_size=2), max_size=10),
    "all": st.dictionaries(st.sampled_from(EVENTS), st.lists(candidate, min_size=1, max_size=2),
                           max_size=2),
    "final": st.sampled_from(STATES[1:] + [None]),
    "exit_counts": st.booleans(),
})


def build(spec, entries):
    """The definition for a spec; entry actions record into `entries`."""
    def transition(c, last):
        t = {"target": c["target"],
             "action": (lambda ctx, v, k=c["action"]: run_action(k, ctx, v))}
        if not last:
            t["guard"] = lambda ctx, v, k=c["guard"]: run_guard(k, ctx, v)
        return t

    def cands(cs):
        return [transition(c, i == len(cs) - 1) for i, c in enumerate(cs)]

    states = {}
    for s in STATES:
        cfg = {"entry": (lambda ctx, state: entries.append(state))}
        if spec["exit_counts"]:
            cfg["exit"] = lambda ctx, state: ctx.__setitem__("exits", ctx["exits"] + 1)
        if s == spec["final"]:
            cfg["final"] = True
        else:
            cfg["on"] = {e: cands(cs) for (st_, e), cs in spec["own"].items() if st_ == s}
        states[s] = cfg
    return create_machine({
        "initial": "s0", "context": {"n": 0, "seen": [], "x": 0, "exits": 0},
        "states": states, "all": {e: cands(cs) for e, cs in spec["all"].items()}})


class Model:
    """The documented semantics, written as plainly as possible."""

    def __init__(self, spec):
        self.spec = spec
        self.initial_context = {"n": 0, "seen": [], "x": 0, "exits": 0}
        self.state = "s0"
        self.context = copy.deepcopy(self.initial_context)
        self.log = []       # decoded blocks
        self.entries = []   # entry actions run, in order
        self.cursor = None

    def candidates(self, event):
        if self.state == self.spec["final"]:
            return None
        return self.spec["own"].get((self.state, event)) or self.spec["all"].get(event)

    def act(self, event, value):
        """Returns the exception type the machine must raise, or None."""
        if self.cursor is not None:
            return NotAtHeadError
        cs = self.candidates(event)
        if not cs:
            return InvalidActionError
        ctx = copy.deepcopy(self.context)
        chosen = None
        for i, c in enumerate(cs):
            if i == len(cs) - 1:
                chosen = c
                break
            try:
                if run_guard(c["guard"], ctx, value):
                    chosen = c
                    break
            except Boom:
                return Boom
        if chosen is None:
            return GuardRejectedError
        if chosen["target"] is not None and self.spec["exit_counts"]:
            ctx["exits"] += 1
        try:
            run_action(chosen["action"], ctx, value)
        except Boom:
            return Boom
        if ctx["x"] != ctx["x"]:  # NaN: JSON cannot carry it
            return ValueError
        target = chosen["target"] or self.state
        self.log.append({"state": target, "context": ctx, "event": event, "value": value})
        self.state, self.context = target, ctx
        if chosen["target"] is not None:
            self.entries.append(target)
        return None

    def reload(self):
        if self.log:
            self.state = self.log[-1]["state"]
            self.context = copy.deepcopy(self.log[-1]["context"])
        else:
            self.state, self.context = "s0", copy.deepcopy(self.initial_context)
        self.cursor = None


class MachineVsModel(RuleBasedStateMachine):
    @initialize(spec=spec_strategy, seed=st.binary(min_size=32, max_size=32))
    def setup(self, spec, seed):
        self.dir = tempfile.mkdtemp(prefix="cm-model-")
        self.entries = []
        self.definition = build(spec, self.entries)
        self.model = Model(spec)
        self.core = cm.Core(self.dir, key_pair=cm.KeyPair.from_seed(seed), durability="none")
        self.machine = Coremachine(self.core, self.definition)

    def teardown(self):
        if hasattr(self, "core"):
            self.core.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    @rule(event=st.sampled_from(EVENTS + ["NOPE"]),
          value=st.one_of(st.integers(-20, 120), st.sampled_from([7, 13, 99])))
    def act(self, event, value):
        expected = self.model.act(event, value)
        try:
            snap = self.machine.action(event, value)
        except Exception as e:  # noqa: BLE001 - compared with the model's expectation
            assert expected is not None, "machine raised %r, model accepted" % e
            assert isinstance(e, expected), (e, expected)
            return
        assert expected is None, "model expected %s" % expected.__name__
        assert snap.state == self.model.state and snap.context == self.model.context
        assert snap.index == len(self.model.log) - 1

    @rule()
    def reopen(self):
        self.core.close()
        self.core = cm.Core(self.dir, durability="none")
        self.machine = Coremachine(self.core, self.definition)
        self.model.reload()

    @rule(fraction=st.floats(0, 1))
    def truncate(self, fraction):
        n = int(fraction * len(self.model.log))
        self.machine.truncate(n)
        self.model.log = self.model.log[:n]
        self.model.reload()

    @rule()
    def backward(self):
        snap = self.machine.backward()
        head = len(self.model.log) - 1
        cur = head if self.model.cursor is None else self.model.cursor
        if cur <= 0:
            assert snap is None
            return
        self.model.cursor = cur - 1
        assert snap.state == self.model.log[cur - 1]["state"]
        assert snap.context == self.model.log[cur - 1]["context"]

    @rule()
    def forward(self):
        snap = self.machine.forward()
        if self.model.cursor is None:
            assert snap is None
            return
        self.model.cursor += 1
        if self.model.cursor >= len(self.model.log) - 1:
            self.model.cursor = None
            assert snap.state == self.model.state
        else:
            assert snap.context == self.model.log[self.model.cursor]["context"]

    @precondition(lambda self: self.model.cursor is not None)
    @rule()
    def head(self):
        self.machine.head()
        self.model.cursor = None

    @invariant()
    def agrees(self):
        if not hasattr(self, "machine"):
            return
        view = (self.model.log[self.model.cursor] if self.model.cursor is not None
                else {"state": self.model.state, "context": self.model.context})
        assert self.machine.state == view["state"]
        assert self.machine.context == view["context"]
        assert self.core.length == len(self.model.log)
        blocks = [json.loads(self.core.get(i)) for i in range(self.core.length)]
        assert blocks == self.model.log
        assert self.entries == self.model.entries
        assert set(self.machine.available_actions(evaluate_guards=False)) == {
            e for e in EVENTS if self.model.candidates(e)}


MachineVsModel.TestCase.settings = settings(max_examples=100, stateful_step_count=40,
                                            deadline=None)
test_machine_matches_model = MachineVsModel.TestCase
