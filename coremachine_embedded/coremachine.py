"""The Coremachine: a state machine whose every transition is a signed log entry.

DEV NOTES.  The machine keeps the current state id and context in memory and
the log on a :class:`Core`.  ``action()`` works on a copy of the context:
guard(s) -> exit actions -> the transition's action -> JSON encoding -> one
``core.append`` -> (now committed) swap in the new state and context -> entry
actions (post-commit side effects, given a copy) -> change events.  Anything
that raises before the append leaves state, context and log exactly as they
were.  Calls are serialised on the core's lock, so a machine and the sync
engine that feeds its replica never interleave.  Each block is
``{"state", "context", "event", "value"}`` in that order, so the JavaScript
Coremachine restores our logs and the log is an audit trail.  Opening restores
the last block only (O(1)); a machine on a replica follows the blocks the core
verifies and stores.
"""
from __future__ import annotations

import asyncio
import inspect
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Tuple, Union

from . import _json
from .core import Core, CoreChange
from .errors import CoreMachineError, CorruptionError, OutOfRangeError, ReadOnlyError
from .machine import (GuardRejectedError, InvalidActionError, MachineDefinition, Transition,
                      create_machine)

MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING", "__slots__": ()})()


class NotAtHeadError(CoreMachineError, RuntimeError):
    """``action()`` while the history cursor is not at the newest entry."""

    code = "NOT_AT_HEAD"


class ConcurrentActionError(CoreMachineError, RuntimeError):
    """An action was started from inside another action in the same thread
    (e.g. a coroutine calling the synchronous ``action()`` while an
    ``action_async`` awaits): it would interleave with it."""

    code = "CONCURRENT_ACTION"


class RestoreError(CorruptionError):
    """A log entry is not a state of this machine (wrong definition or foreign data)."""

    code = "RESTORE"


class EntryActionError(CoreMachineError, RuntimeError):
    """An entry action raised after its transition was committed.
    ``snapshot`` is the committed state; the original exception is the cause."""

    code = "ENTRY_ACTION"

    def __init__(self, message: str, snapshot: "Snapshot") -> None:
        super().__init__(message)
        self.snapshot = snapshot


_CONTAINERS = (dict, list, tuple)


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, immutables); a tuple is
    stored as an array, so it is copied as a list."""
    if isinstance(value, dict):
        return {k: (copy_json(v) if isinstance(v, _CONTAINERS) else v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_json(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


class Snapshot:
    """A state of the machine.  ``context`` is a copy: changing it changes nothing.

    ``index`` is the log entry (None for the initial state of an empty log);
    ``event``/``value`` are what caused it (None for a restore or truncation;
    ``value`` is :data:`MISSING` when the action had none).
    """

    __slots__ = ("state", "context", "index", "previous_state", "event", "value", "fork")

    def __init__(self, state: str, context: Dict[str, Any], index: Optional[int],
                 previous_state: Optional[str] = None, event: Optional[str] = None,
                 value: Any = MISSING, fork: int = 0) -> None:
        self.state = state
        self.context = context
        self.index = index
        self.previous_state = previous_state
        self.event = event
        self.value = value
        self.fork = fork

    def copy(self) -> "Snapshot":
        return Snapshot(self.state, copy_json(self.context), self.index, self.previous_state,
                        self.event, copy_json(self.value), self.fork)

    def to_dict(self) -> Dict[str, Any]:
        out = {"state": self.state, "context": copy_json(self.context), "index": self.index,
               "previous_state": self.previous_state, "event": self.event, "fork": self.fork}
        if self.value is not MISSING:
            out["value"] = copy_json(self.value)
        return out

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "Snapshot(%s, %r, index=%s, event=%s)" % (self.state, self.context, self.index,
                                                         self.event)


class _Plan:
    """A transition worked out on a copy of the context, not committed yet."""

    __slots__ = ("event", "value", "transition", "context", "pending", "at")

    def __init__(self, event: str, value: Any, context: Dict[str, Any],
                 at: Tuple[int, int]) -> None:
        self.event = event
        self.value = value
        self.context = context
        self.at = at  # (head, fork) the plan was made on
        self.transition: Optional[Transition] = None
        self.pending: Optional[Tuple[Transition, ...]] = None  # candidates behind an async guard


class Coremachine:
    """A state machine persisted, signed and synced as a Hypercore log.

    :param core: the log (a writer, or a read-only replica it will follow).
    :param definition: from :func:`create_machine` (a plain config dict is
        compiled on the spot).
    :param eager: deliver the current state to every new change subscriber
        first (the JS ``eager`` option).

    The latest state is restored from the last block before the constructor
    returns, whatever the log length.
    """

    def __init__(self, core: Core, definition: Union[MachineDefinition, Mapping[str, Any]],
                 eager: bool = False) -> None:
        if not isinstance(core, Core):
            raise TypeError("core must be a Core, not %s" % type(core).__name__)
        self.core = core
        self.definition = create_machine(definition)
        self.eager = eager
        self._lock = core.lock  # one lock for the log and the machine: no ordering issues
        self._acting = False
        self._local = False      # our own core call is running: ignore its notification
        self._async_locks: Dict[Any, asyncio.Lock] = {}
        self._change_callbacks: List[Callable[[Snapshot], Any]] = []
        self._error_callbacks: List[Callable[[BaseException, Any], Any]] = []
        self._subscribers: List["_Subscriber"] = []
        self._cursor: Optional[int] = None
        self._view: Optional[Snapshot] = None
        self._inbox: Optional["asyncio.Queue[Any]"] = None
        self._worker: Optional["asyncio.Task[None]"] = None
        with self._lock:
            self._load_head()
            self._unsubscribe = core.on_change(self._on_core_change)

    # --- state ------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state (the viewed entry's while the history cursor is moved)."""
        return self._view.state if self._view is not None else self.definition.states[self._sid]

    @property
    def context(self) -> Dict[str, Any]:
        """A copy of the current context."""
        context: Dict[str, Any] = copy_json(self._view.context if self._view is not None
                                            else self._context)
        return context

    @property
    def is_empty(self) -> bool:
        """True while the log holds no entry."""
        return self._head < 0

    @property
    def is_final(self) -> bool:
        return self.definition.finals[self._sid]

    @property
    def length(self) -> int:
        """Entries in the log that this machine holds."""
        return self._head + 1

    @property
    def cursor(self) -> Optional[int]:
        """The history entry being viewed, or None at the head."""
        return self._cursor

    def snapshot(self) -> Snapshot:
        """The current state as a :class:`Snapshot` (a copy)."""
        with self._lock:
            if self._view is not None:
                return self._view.copy()
            return self._head_snapshot()

    def _head_snapshot(self, previous: Optional[str] = None, event: Optional[str] = None,
                       value: Any = MISSING) -> Snapshot:
        return Snapshot(self.definition.states[self._sid], copy_json(self._context),
                        self._head if self._head >= 0 else None, previous, event,
                        copy_json(value), self.core.fork)

    def available_actions(self, evaluate_guards: bool = True) -> List[str]:
        """Events that can fire now: the state's own and the ``all`` table's,
        never entry/exit.  With ``evaluate_guards``, an event whose candidates
        are all guarded is listed only if a guard passes on the current context
        (called with value None; a guard that raises or is async counts as
        passing, since only the real value can decide)."""
        with self._lock:
            out = []
            for event, run in self.definition.events_by_state[self._sid]:
                if not evaluate_guards or any(self._guard_might_pass(t) for t in run):
                    out.append(event)
            return out

    def _guard_might_pass(self, t: Transition) -> bool:
        if t.guard is None or inspect.iscoroutinefunction(t.guard):
            return True
        try:
            result = t.guard(copy_json(self._context), None)
        except Exception:
            return True
        if inspect.isawaitable(result):
            getattr(result, "close", lambda: None)()
            return True
        return bool(result)

    # --- restoring and following --------------------------------------------------

    def _decode(self, index: int) -> Snapshot:
        raw = self.core.get(index)
        try:
            entry = _json.loads(raw)
        except ValueError as e:
            raise RestoreError("log entry %d is not JSON: %s" % (index, e), "data") from None
        if (not isinstance(entry, dict) or not isinstance(entry.get("state"), str)
                or not isinstance(entry.get("context"), dict)):
            raise RestoreError("log entry %d is not a {state, context} object" % index, "data")
        if entry["state"] not in self.definition.state_ids:
            raise RestoreError("log entry %d is in state %r, which this definition does not have"
                               % (index, entry["state"]), "data")
        event = entry.get("event")
        return Snapshot(entry["state"], entry["context"], index, None,
                        event if isinstance(event, str) else None,
                        entry.get("value", MISSING), self.core.fork)

    def _load_head(self) -> None:
        """Restore from the last held entry (O(1)); JS's on.enter.target
        redirect is applied, without appending anything."""
        length = self.core.contiguous_length
        if length == 0:
            sid = self.definition.initial_id
            self._context = self.definition.context
        else:
            snap = self._decode(length - 1)
            sid = self.definition.state_ids[snap.state]
            self._context = snap.context
        redirect = self.definition.open_redirect[sid]
        self._sid = redirect if redirect >= 0 else sid
        self._head = length - 1
        self._cursor = None
        self._view = None

    def _on_core_change(self, change: CoreChange) -> None:
        if self._local:
            return
        previous = self.definition.states[self._sid]
        if (change.kind == "truncate" or change.fork != change.previous_fork
                or change.contiguous_length < change.previous_contiguous):
            self._load_head()
            self._emit(self._head_snapshot(previous))
            return
        for index in range(change.previous_contiguous, change.contiguous_length):
            snap = self._decode(index)
            self._sid = self.definition.state_ids[snap.state]
            self._context = snap.context
            self._head = index
            snap.previous_state = previous
            previous = snap.state
            self._emit(snap)

    # --- actions --------------------------------------------------------------------

    def action(self, event: str, value: Any = MISSING) -> Snapshot:
        """Fire ``event`` with ``value``; returns the new state as a snapshot.

        Atomic: if a guard, exit action or action raises, the value cannot be
        stored as JSON, or the append fails, nothing changed.  Change events
        go out in commit order, then the target's entry actions run (they get
        a copy of the context: they are side effects of a durable transition).

        :raises InvalidActionError: the event cannot fire in this state
            (:class:`GuardRejectedError` if only guards stopped it).
        :raises NotAtHeadError: the history cursor is not at the newest entry.
        :raises ReadOnlyError: the machine follows a replica.
        :raises EntryActionError: committed, but an entry action raised.
        """
        if self.definition.is_async:
            raise ConcurrentActionError("this machine has async callables: use action_async")
        with self._lock:
            self._begin()
            try:
                plan = self._plan(event, value)
                self._run_exit_and_action(plan)
                snap = self._commit(plan)
            finally:
                self._acting = False
            self._emit(snap)
        error = None
        for fn in self._entry_actions(plan):
            try:
                _no_awaitable(fn(copy_json(snap.context), snap.state), "an entry action")
            except Exception as e:
                error = error or e
        return self._entry_result(snap, error)

    async def action_async(self, event: str, value: Any = MISSING) -> Snapshot:
        """Like :meth:`action`, for coroutines; guards and actions may be async.
        Calls from concurrent tasks run one after the other."""
        loop = asyncio.get_running_loop()
        alock = self._async_locks.get(loop)
        if alock is None:
            alock = self._async_locks[loop] = asyncio.Lock()
        async with alock:
            while not self._lock.acquire(blocking=False):
                await asyncio.sleep(0.0005)  # another thread is acting
            try:
                self._begin()
                try:
                    plan = self._plan(event, value)
                    await self._run_exit_and_action_async(plan)
                    snap = self._commit(plan)
                finally:
                    self._acting = False
                self._emit(snap)
            finally:
                self._lock.release()
            error = None
            for fn in self._entry_actions(plan):
                try:
                    r = fn(copy_json(snap.context), snap.state)
                    if inspect.isawaitable(r):
                        await r
                except Exception as e:
                    error = error or e
            return self._entry_result(snap, error)

    def _entry_actions(self, plan: _Plan) -> Tuple[Callable[..., Any], ...]:
        t = plan.transition
        assert t is not None
        return () if t.target is None else self.definition.entry[t.target_id]

    @staticmethod
    def _entry_result(snap: Snapshot, error: Optional[Exception]) -> Snapshot:
        if error is not None:
            raise EntryActionError("entry action of %s failed after the transition was "
                                   "committed: %s" % (snap.state, error), snap) from error
        return snap

    def _begin(self) -> None:
        if self._acting:
            raise ConcurrentActionError("an action is already running in this thread")
        self._acting = True

    def _plan(self, event: str, value: Any) -> _Plan:
        if not self.core.writable:
            raise ReadOnlyError("this machine follows a read-only replica: only its writer acts")
        if self._cursor is not None:
            raise NotAtHeadError("viewing history entry %d of %d: call head() before acting"
                                 % (self._cursor, self._head + 1))
        if not isinstance(event, str):
            raise InvalidActionError(event, self.state, "events are strings")
        run = self.definition.candidates(self._sid, event)
        if run is None:
            raise InvalidActionError(event, self.state)
        plan = _Plan(event, value, copy_json(self._context), (self._head, self.core.fork))
        arg = None if value is MISSING else value
        for k, t in enumerate(run):
            if t.guard is None:
                plan.transition = t
                return plan
            ok = t.guard(plan.context, arg)
            if inspect.isawaitable(ok):
                getattr(ok, "close", lambda: None)()
                plan.pending = run[k:]  # decided by _run_exit_and_action_async
                return plan
            if ok:
                plan.transition = t
                return plan
        raise GuardRejectedError(event, self.state, "no guard passed")

    def _run_exit_and_action(self, plan: _Plan) -> None:
        t = plan.transition
        if t is None:  # a guard returned an awaitable (a plain function wrapping a coroutine)
            raise ConcurrentActionError("a guard of %s returned an awaitable: use action_async"
                                        % plan.event)
        if t.target is not None:
            for fn in self.definition.exit[self._sid]:
                _no_awaitable(fn(plan.context, self.state), "an exit action")
        if t.action is not None:
            _no_awaitable(t.action(plan.context, None if plan.value is MISSING else plan.value),
                          "the action of %s" % plan.event)

    async def _run_exit_and_action_async(self, plan: _Plan) -> None:
        arg = None if plan.value is MISSING else plan.value
        if plan.pending is not None:
            for candidate in plan.pending:
                ok = True if candidate.guard is None else candidate.guard(plan.context, arg)
                if inspect.isawaitable(ok):
                    ok = await ok
                if ok:
                    plan.transition = candidate
                    break
            else:
                raise GuardRejectedError(plan.event, self.state, "no guard passed")
        t = plan.transition
        assert t is not None
        if t.target is not None:
            for fn in self.definition.exit[self._sid]:
                r = fn(plan.context, self.state)
                if inspect.isawaitable(r):
                    await r
        if t.action is not None:
            r = t.action(plan.context, arg)
            if inspect.isawaitable(r):
                await r

    def _commit(self, plan: _Plan) -> Snapshot:
        t = plan.transition
        assert t is not None
        target_id = self._sid if t.target is None else t.target_id
        entry: Dict[str, Any] = {"state": self.definition.states[target_id],
                                 "context": plan.context, "event": plan.event}
        if plan.value is not MISSING:
            entry["value"] = plan.value
        block = _json.dumps(entry)  # JSONValueError: nothing was changed
        log = self.core
        if plan.at != (self._head, log.fork) or log.length != self._head + 1:
            # The lock is re-entrant: a coroutine of the same thread (while an
            # async action awaited) or a callback truncated or appended.  The
            # plan was made on an older log: appending it would lose that.
            raise ConcurrentActionError("the log changed while %s was running: nothing was "
                                        "appended" % plan.event)
        previous = self.definition.states[self._sid]
        self._local = True
        try:
            length = self.core.append(block)
        finally:
            self._local = False
        self._sid = target_id
        # A copy: the action may have put the caller's objects (its value, a
        # global) in the context; later changes to those must not change the
        # machine behind the log's back.
        self._context = copy_json(plan.context)
        self._head = length - 1
        return Snapshot(self.definition.states[target_id], copy_json(self._context), length - 1,
                        previous, plan.event, copy_json(plan.value), log.fork)

    # --- history ----------------------------------------------------------------------

    def entry(self, index: int) -> Snapshot:
        """The state recorded by log entry ``index`` (negative counts from the end)."""
        with self._lock:
            if index < 0:
                index += self._head + 1
            if not 0 <= index <= self._head:
                raise OutOfRangeError("entry %d is outside a history of %d"
                                      % (index, self._head + 1))
            snap = self._decode(index)
            if index > 0:
                snap.previous_state = self._decode(index - 1).state
            return snap

    def backward(self) -> Optional[Snapshot]:
        """View the previous entry; None (and no move) at the oldest one."""
        with self._lock:
            current = self._head if self._cursor is None else self._cursor
            if current <= 0:
                return None
            self._cursor = current - 1
            self._view = self.entry(self._cursor)  # as entry(i) gives it (previous_state too)
            return self._view.copy()

    def forward(self) -> Optional[Snapshot]:
        """View the next entry; at the newest one the cursor is back at the
        head.  None (and no move) when already at the head."""
        with self._lock:
            if self._cursor is None:
                return None
            if self._cursor + 1 >= self._head:
                self._cursor = None
                self._view = None
                return self._newest()
            self._cursor += 1
            self._view = self.entry(self._cursor)
            return self._view.copy()

    def head(self) -> Snapshot:
        """Leave history: back to the newest entry."""
        with self._lock:
            self._cursor = None
            self._view = None
            return self._newest()

    def _newest(self) -> Snapshot:
        """The head as the log records it (event and value included)."""
        if self._head < 0:
            return self._head_snapshot()
        snap = self.entry(self._head)
        snap.state = self.definition.states[self._sid]  # an on-open redirect applies
        snap.context = copy_json(self._context)
        return snap

    def truncate(self, length: int) -> Snapshot:
        """Cut the log to ``length`` entries (fork + 1, re-signed) and reload
        the state and context from the new last entry (the initial state at 0)."""
        if not self.core.writable:
            raise ReadOnlyError("this machine follows a read-only replica")
        with self._lock:
            previous = self.definition.states[self._sid]
            self._local = True
            try:
                self.core.truncate(length)
            finally:
                self._local = False
            self._load_head()
            snap = self._head_snapshot(previous)
        self._emit(snap)
        return snap

    # --- the stream side --------------------------------------------------------------

    def on_change(self, callback: Callable[[Snapshot], Any]) -> Callable[[], None]:
        """Call ``callback(snapshot)`` after every transition (own or followed).
        Returns a function that unsubscribes."""
        with self._lock:
            self._change_callbacks.append(callback)
            if self.eager:
                callback(self._head_snapshot())

        def remove() -> None:
            with self._lock:
                if callback in self._change_callbacks:
                    self._change_callbacks.remove(callback)
        return remove

    def on_error(self, callback: Callable[[BaseException, Any], Any]) -> Callable[[], None]:
        """Call ``callback(error, message)`` when an action written to the
        stream side (:meth:`write`, :meth:`send`) fails."""
        self._error_callbacks.append(callback)
        return lambda: self._error_callbacks.remove(callback)

    def changes(self, maxsize: int = 1024) -> AsyncIterator[Snapshot]:
        """``async for change in machine.changes():`` - every transition from
        now on.  A consumer that falls more than ``maxsize`` behind loses the
        oldest changes (counted in the iterator's ``dropped``)."""
        sub = _Subscriber(asyncio.get_running_loop(), maxsize, self)
        with self._lock:
            self._subscribers.append(sub)
            if self.eager:
                sub.put(self._head_snapshot())
        return sub

    def _emit(self, snap: Snapshot) -> None:
        for callback in list(self._change_callbacks):
            try:
                callback(snap.copy())
            except Exception as e:
                self._report(e, snap)
        for sub in list(self._subscribers):
            sub.put(snap.copy())

    def _report(self, error: BaseException, message: Any) -> None:
        for callback in list(self._error_callbacks):
            try:
                callback(error, message)
            except Exception:
                pass

    def write(self, message: Mapping[str, Any]) -> Optional[Snapshot]:
        """The synchronous writable side: apply ``{"event": E, "value": V}``
        (or the JS shape ``{"action": E, "value": V}``).  A message that fails
        is reported to :meth:`on_error` callbacks and returns None; the
        machine keeps running."""
        try:
            event, value = parse_message(message)
            return self.action(event, value)
        except Exception as e:
            self._report(e, message)
            return None

    async def send(self, message: Mapping[str, Any], maxsize: int = 64) -> None:
        """The asyncio writable side: queue a message for the machine; waits
        while ``maxsize`` messages are pending (backpressure).  Failures are
        reported to :meth:`on_error` callbacks; :meth:`drain` waits for the
        queue to be processed."""
        if self._inbox is None or self._worker is None or self._worker.done():
            self._inbox = asyncio.Queue(maxsize)
            self._worker = asyncio.get_running_loop().create_task(self._work(self._inbox))
        await self._inbox.put(message)

    async def drain(self) -> None:
        """Wait until every message given to :meth:`send` has been applied."""
        if self._inbox is not None:
            await self._inbox.join()

    async def _work(self, inbox: "asyncio.Queue[Any]") -> None:
        while True:
            message = await inbox.get()
            try:
                event, value = parse_message(message)
                await self.action_async(event, value)
            except Exception as e:
                self._report(e, message)
            finally:
                inbox.task_done()

    def close(self) -> None:
        """Stop following the core and end every change iterator (the core
        stays open: it belongs to the caller)."""
        self._unsubscribe()
        if self._worker is not None:
            self._worker.cancel()
        for sub in list(self._subscribers):
            sub.end()

    def __repr__(self) -> str:
        return "Coremachine(state=%r, entries=%d%s)" % (self.state, self._head + 1,
                                                        "" if self.core.writable else ", replica")


def _no_awaitable(result: Any, what: str) -> None:
    """The synchronous action() cannot await: refuse (before anything is committed)
    rather than commit a transition whose coroutine never ran."""
    if inspect.isawaitable(result):
        getattr(result, "close", lambda: None)()
        raise ConcurrentActionError("%s returned an awaitable: use action_async" % what)


def parse_message(message: Mapping[str, Any]) -> Tuple[str, Any]:
    """``{"event"|"action": name, "value"?: v}`` -> ``(name, value or MISSING)``."""
    if not isinstance(message, Mapping):
        raise InvalidActionError(repr(message)[:60], "-", "a message is a dict "
                                 "{event, value}")
    event = message.get("event", message.get("action"))
    if not isinstance(event, str):
        raise InvalidActionError(event, "-", "the message has no 'event' (or 'action') string")
    return event, message.get("value", MISSING)


class _Subscriber:
    """An async iterator of changes, fed from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, maxsize: int,
                 machine: Coremachine) -> None:
        self.loop = loop
        self.queue: "asyncio.Queue[Optional[Snapshot]]" = asyncio.Queue()
        self.maxsize = maxsize
        self.dropped = 0
        self.machine = machine
        self.ended = False

    def put(self, snap: Optional[Snapshot]) -> None:
        def add() -> None:
            if self.queue.qsize() >= self.maxsize and snap is not None:
                self.queue.get_nowait()
                self.dropped += 1
            self.queue.put_nowait(snap)
        try:
            running: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            add()
        elif not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(add)
            except RuntimeError:
                pass  # the loop closed meanwhile

    def end(self) -> None:
        """Stop: the iterator yields what is queued, then finishes."""
        with self.machine._lock:
            if self in self.machine._subscribers:
                self.machine._subscribers.remove(self)
        if not self.ended:
            self.ended = True
            self.put(None)

    def __aiter__(self) -> "_Subscriber":
        return self

    async def __anext__(self) -> Snapshot:
        snap = await self.queue.get()
        if snap is None:
            raise StopAsyncIteration
        return snap

    async def aclose(self) -> None:
        self.end()


