"""Machine definitions: ``create_machine(config)`` validates and compiles one.

A definition is plain Python::

    create_machine({
        "initial": "idle",
        "context": {"running": False, "counter": 0},
        "states": {
            "idle": {"on": {"START": {"target": "running", "action": start}}},
            "running": {
                "entry": turn_led_on,                 # after the transition is durable
                "exit": turn_led_off,                 # before the action
                "on": {
                    "INCREMENT": {"action": increment},            # no target: stay
                    "STOP": [                                      # guarded candidates
                        {"target": "done", "guard": is_big, "action": stop},
                        {"target": "idle", "action": stop},
                    ],
                },
            },
            "done": {"final": True},
        },
        "all": {"RESET": {"target": "idle", "action": reset}},  # from any state
    })

Actions are ``fn(context, value)`` and mutate the context; guards are
``fn(context, value) -> bool``; entry/exit actions are ``fn(context, state)``.
Any of them may be ``async def`` (use :meth:`Coremachine.action_async`).
The JavaScript Coremachine 1.1.0 forms are accepted too: ``on.enter``
(``{target?, action?}``: an entry action, and a redirect applied when a machine
is opened in that state), ``on.exit`` and ``states.all``.

Every mistake is a :class:`DefinitionError` here, before anything can be
appended.  States and events are interned to integers and the transition
table is compiled into the backend's ``Table`` (C in the C backend).
"""
from __future__ import annotations

from collections.abc import Mapping
from types import FunctionType
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from . import _backend, _json
from .awaitables import is_coroutine_function
from .errors import CoreMachineError, InvalidArgumentError

Callback = Callable[..., Any]

_STATE_KEYS = {"on", "entry", "exit", "final", "type", "description"}
_TRANSITION_KEYS = {"target", "action", "guard", "description"}


class DefinitionError(InvalidArgumentError):
    """A machine definition is invalid (raised by :func:`create_machine`)."""

    code = "BAD_DEFINITION"


class InvalidActionError(CoreMachineError, ValueError):
    """The event cannot fire in the current state (``Invalid action: X for state Y``)."""

    code = "INVALID_ACTION"

    def __init__(self, event: object, state: str, why: str = "") -> None:
        super().__init__("Invalid action: %s for state %s%s" % (event, state,
                                                                 " (%s)" % why if why else ""))
        self.event = event
        self.state = state


class GuardRejectedError(InvalidActionError):
    """The event is known in this state but no candidate's guard passed."""

    code = "GUARD_REJECTED"


class Transition:
    """One compiled candidate transition."""

    __slots__ = ("event", "source", "target", "target_id", "action", "guard", "is_async",
                 "from_all")

    def __init__(self, event: str, source: str, target: Optional[str], target_id: int,
                 action: Optional[Callback], guard: Optional[Callback], from_all: bool) -> None:
        self.event = event
        self.source = source
        self.target = target          # None: stay in the current state (no exit/entry)
        self.target_id = target_id    # -1 with target None
        self.action = action
        self.guard = guard
        self.from_all = from_all
        self.is_async = _is_async(action) or _is_async(guard)

    def __repr__(self) -> str:
        return "Transition(%s: %s -> %s%s)" % (self.event, self.source, self.target or "(stay)",
                                               ", guarded" if self.guard else "")


class MachineDefinition:
    """A validated, compiled machine.  Build it with :func:`create_machine`."""

    def __init__(self, initial: str, context_json: bytes, states: Sequence[str],
                 events: Sequence[str], finals: Sequence[bool],
                 entry: Sequence[Tuple[Callback, ...]], exit_: Sequence[Tuple[Callback, ...]],
                 open_redirect: Sequence[int], cells: Dict[Tuple[int, int], List[Transition]],
                 config: Mapping[str, Any]) -> None:
        self.initial = initial
        self.states: Tuple[str, ...] = tuple(states)
        self.events: Tuple[str, ...] = tuple(events)
        self.state_ids: Dict[str, int] = {s: i for i, s in enumerate(self.states)}
        self.event_ids: Dict[str, int] = {e: i for i, e in enumerate(self.events)}
        self.initial_id = self.state_ids[initial]
        self.finals: Tuple[bool, ...] = tuple(finals)
        self.entry = tuple(entry)
        self.exit = tuple(exit_)
        self.open_redirect = tuple(open_redirect)
        self.config = config
        self._context_json = context_json   # the initial context as dumps writes it
        self.table = _backend.impl.Table(len(self.states), max(1, len(self.events)))
        # Per state, the events that have transitions, in definition order.
        self.events_by_state: Tuple[Tuple[Tuple[str, Tuple[Transition, ...]], ...], ...]
        rows: List[List[Tuple[str, Tuple[Transition, ...]]]] = [[] for _ in self.states]
        for (sid, eid), candidates in cells.items():
            run = tuple(candidates)
            self.table.set(sid, eid, run)
            rows[sid].append((self.events[eid], run))
        self.events_by_state = tuple(tuple(r) for r in rows)
        self.is_async = any(t.is_async for r in rows for _, run in r for t in run) or any(
            _is_async(f) for fns in self.entry + self.exit for f in fns)

    @property
    def context(self) -> Dict[str, Any]:
        """A fresh copy of the initial context."""
        return _json.loads(self._context_json)  # type: ignore[no-any-return]

    def candidates(self, state_id: int, event: str) -> Optional[Tuple[Transition, ...]]:
        """The transitions ``event`` may fire from ``state_id`` (None if none)."""
        eid = self.event_ids.get(event)
        if eid is None:
            return None
        return self.table.lookup(state_id, eid)

    def __repr__(self) -> str:
        return "MachineDefinition(initial=%r, %d states, %d events)" % (
            self.initial, len(self.states), len(self.events))


def _is_async(fn: Optional[Callback]) -> bool:
    # a callable object may have an async __call__; a function's is never async
    return fn is not None and (is_coroutine_function(fn) or (
        type(fn) is not FunctionType and is_coroutine_function(getattr(fn, "__call__", None))))


def _callable_or_none(value: Any, where: str, key: str = "") -> Optional[Callback]:
    if value is None:
        return None
    if not callable(value):
        raise DefinitionError("%s%s must be callable, not %s" % (where, key,
                                                                 type(value).__name__))
    return value  # type: ignore[no-any-return]


def _callables(value: Any, where: str) -> Tuple[Callback, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(_callable_or_none(v, "%s[%d]" % (where, i)) for i, v in  # type: ignore[misc]
                     enumerate(value) if v is not None)
    fn = _callable_or_none(value, where)
    return (fn,) if fn is not None else ()


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise DefinitionError("%s must be a non-empty string, not %r" % (where, value))
    return value


def create_machine(config: Union[MachineDefinition, Mapping[str, Any]]) -> MachineDefinition:
    """Validate and compile a machine definition (see the module docstring).

    :raises DefinitionError: naming what is wrong and where.
    """
    if isinstance(config, MachineDefinition):
        return config
    if not isinstance(config, Mapping):
        raise DefinitionError("a machine definition is a dict, not %s" % type(config).__name__)
    unknown = set(config) - {"initial", "context", "states", "all", "id", "description"}
    if unknown:
        raise DefinitionError("unknown top-level key(s): %s" % ", ".join(sorted(map(str, unknown))))
    if "initial" not in config:
        raise DefinitionError("missing 'initial'")
    initial = _name(config["initial"], "initial")
    context = config.get("context", {})
    if not isinstance(context, dict):
        raise DefinitionError("context must be a dict (a JSON object)")
    try:  # the bytes dumps would write; no library to import for a definition
        context_json = _json.encoder("pure")(context)
    except _json.JSONValueError as e:
        raise DefinitionError("context cannot be stored as JSON: %s" % e) from None
    states_cfg = config.get("states")
    if not isinstance(states_cfg, Mapping) or not states_cfg:
        raise DefinitionError("'states' must be a non-empty dict")
    all_cfg = config.get("all")
    names: List[str] = []
    state_cfgs: List[Mapping[str, Any]] = []
    for name, scfg in states_cfg.items():
        _name(name, "a state name")
        if name == "all":  # the JS 1.1.0 form: states.all is the any-state table
            if all_cfg is not None:
                raise DefinitionError("give the any-state table as 'all' or states.all, not both")
            all_cfg = scfg
            continue
        if scfg is None:
            scfg = {}
        if not isinstance(scfg, Mapping):
            raise DefinitionError("state %r must be a dict" % name)
        bad = set(scfg) - _STATE_KEYS
        if bad:
            raise DefinitionError("state %r: unknown key(s) %s" % (name, ", ".join(sorted(bad))))
        names.append(name)
        state_cfgs.append(scfg)
    if initial not in names:
        raise DefinitionError("initial state %r is not in states" % initial)
    ids = {n: i for i, n in enumerate(names)}

    events: List[str] = []
    event_ids: Dict[str, int] = {}
    cells: Dict[Tuple[int, int], List[Transition]] = {}

    def compile_candidates(spec: Any, event: str, source: str, from_all: bool,
                           where: str) -> List[Transition]:
        specs = spec if isinstance(spec, list) else [spec]
        if not specs:
            raise DefinitionError("%s: an empty list of transitions" % where)
        out = []
        for k, t in enumerate(specs):
            w = where if len(specs) == 1 else "%s[%d]" % (where, k)
            if isinstance(t, str) or t is None:
                t = {"target": t}
            if not isinstance(t, Mapping):
                raise DefinitionError("%s must be a dict {target, action, guard}" % w)
            bad = set(t) - _TRANSITION_KEYS
            if bad:
                hint = " (guards are spelled 'guard')" if bad & {"cond", "when"} else ""
                raise DefinitionError("%s: unknown key(s) %s%s" % (w, ", ".join(sorted(bad)),
                                                                   hint))
            target = t.get("target")
            if target == "":
                target = None  # JS: '' means stay
            if target is not None:
                _name(target, "%s.target" % w)
                if target not in ids:
                    raise DefinitionError("%s: unknown target state %r" % (w, target))
            action = _callable_or_none(t.get("action"), w, ".action")
            guard = _callable_or_none(t.get("guard"), w, ".guard")
            if guard is None and k < len(specs) - 1:
                raise DefinitionError("%s: only the last candidate may have no guard" % w)
            out.append(Transition(event, source, target, -1 if target is None else ids[target],
                                  action, guard, from_all))
        return out

    def intern(event: str) -> int:
        if event not in event_ids:
            event_ids[event] = len(events)
            events.append(event)
        return event_ids[event]

    finals: List[bool] = []
    entry: List[Tuple[Callback, ...]] = []
    exit_: List[Tuple[Callback, ...]] = []
    redirect: List[int] = []
    for sid, (name, scfg) in enumerate(zip(names, state_cfgs)):
        final = bool(scfg.get("final")) or scfg.get("type") == "final"
        on = scfg.get("on") or {}
        if not isinstance(on, Mapping):
            raise DefinitionError("state %r: 'on' must be a dict of EVENT -> transition" % name)
        s_entry = list(_callables(scfg.get("entry"), "state %r entry" % name))
        s_exit = list(_callables(scfg.get("exit"), "state %r exit" % name))
        target_on_open = -1
        for event, spec in on.items():
            _name(event, "state %r: an event name" % name)
            if event in ("enter", "exit"):  # JS 1.1.0 pseudo-events
                if not isinstance(spec, Mapping) or set(spec) - {"target", "action"}:
                    raise DefinitionError("state %r: on.%s must be {target?, action?}"
                                          % (name, event))
                fn = _callable_or_none(spec.get("action"), "state %r on.%s.action" % (name, event))
                if fn is not None:
                    (s_entry if event == "enter" else s_exit).append(fn)
                if event == "enter" and spec.get("target"):
                    _name(spec["target"], "state %r: on.enter.target" % name)
                    if spec["target"] not in ids:
                        raise DefinitionError("state %r: on.enter.target %r is not a state"
                                              % (name, spec["target"]))
                    target_on_open = ids[spec["target"]]
                elif spec.get("target"):
                    raise DefinitionError("state %r: on.exit takes no target" % name)
                continue
            if final:
                raise DefinitionError("final state %r cannot have transitions" % name)
            cells[(sid, intern(event))] = compile_candidates(
                spec, event, name, False, "state %r on.%s" % (name, event))
        finals.append(final)
        entry.append(tuple(s_entry))
        exit_.append(tuple(s_exit))
        redirect.append(target_on_open)

    if all_cfg is not None:
        if not isinstance(all_cfg, Mapping):
            raise DefinitionError("'all' must be a dict of EVENT -> transition")
        if "on" in all_cfg and isinstance(all_cfg.get("on"), Mapping) and len(all_cfg) == 1:
            all_cfg = all_cfg["on"]  # tolerate {"on": {...}}, the shape the JS types suggest
        for event, spec in all_cfg.items():
            _name(event, "an 'all' event name")
            if event in ("enter", "exit"):
                raise DefinitionError("'all' cannot define %s" % event)
            eid = intern(event)
            # Checked once even if no state receives it (every state defines the
            # event itself or is final): a mistake in 'all' is still a mistake.
            compile_candidates(spec, event, "all", True, "all.%s" % event)
            for sid, name in enumerate(names):
                if finals[sid] or (sid, eid) in cells:
                    continue  # a state's own transition wins over 'all'
                cells[(sid, eid)] = compile_candidates(spec, event, name, True,
                                                       "all.%s" % event)
    return MachineDefinition(initial, context_json, names, events, finals, entry, exit_, redirect,
                             cells, config)
