"""The Coremachine: a state machine whose every transition is a signed log entry.

DEV NOTES. The machine keeps the current state id and context in memory and the log on a
:class:`Core`. One action path serves ``action()`` and ``action_async()``
(:meth:`Coremachine._transition`, a generator that yields whatever a guard or action returns to
be awaited): on a copy of the context, guard(s) -> exit actions -> the transition's action ->
JSON encoding -> one ``core.append`` -> (now committed) swap in the new state and context ->
change events; then the target's entry actions (post-commit side effects, given a copy).
Anything that raises before the append leaves state, context and log exactly as they were. Calls
are serialised on the core's lock, so a machine and the sync engine that feeds its replica never
interleave, and change events go out in commit order (the core's ``in_order``). Each block is
``{"state", "context", "event", "value"}`` in that order, so the JavaScript Coremachine restores
our logs and the log is an audit trail. Opening restores the last block only (O(1)); a machine
follows what others append (a replica's sync, another machine on the core), decoding every new
entry only when someone subscribed to changes - otherwise only the newest.
"""
from __future__ import annotations

from typing import (TYPE_CHECKING, Any, Callable, Dict, Generator, List, Mapping, Optional,
                    Tuple, Union)

from . import _json
from .awaitables import close, is_awaitable, is_coroutine_function
from .core import Core, CoreChange
from .errors import CoreMachineError, CorruptionError, OutOfRangeError, ReadOnlyError
from .machine import (GuardRejectedError, InvalidActionError, MachineDefinition, Transition,
                      create_machine)
from .snapshot import MISSING, Snapshot, copy_json

__all__ = ["Coremachine", "Snapshot", "MISSING", "copy_json", "NotAtHeadError",
           "ConcurrentActionError", "RestoreError", "EntryActionError", "parse_message"]

if TYPE_CHECKING:
    import asyncio

    from .streams import ChangeIterator

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


Entry = Tuple[Callable[..., Any], ...]
# An action path yields (an awaitable, what returned it) and takes its result.
Path = Generator[Tuple[Any, str], Any, None]


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
        self._lock = core.lock   # one lock for the log and the machine: no ordering issues
        self._writable = core.writable   # fixed for the life of a core
        self._acting = False
        self._async_locks: Dict[Any, "asyncio.Lock"] = {}
        self._change_callbacks: List[Callable[[Snapshot], Any]] = []
        self._error_callbacks: List[Callable[[BaseException, Any], Any]] = []
        self._subscribers: List["ChangeIterator"] = []
        self._cursor: Optional[int] = None
        self._view: Optional[Snapshot] = None
        self._inbox: Optional["asyncio.Queue[Any]"] = None
        self._worker: Optional["asyncio.Task[None]"] = None
        self._follow = self._on_core_change   # one bound method: the core skips it for our calls
        # Log changes taken in other than its own appends (followed, reloaded):
        # an action compares it before and after its callables run.
        self._changes_seen = 0
        with self._lock:
            self._load_head()
            self._unsubscribe = core.on_change(self._follow)

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
        if t.guard is None or is_coroutine_function(t.guard):
            return True
        try:
            result = t.guard(copy_json(self._context), None)
        except Exception:
            return True
        if is_awaitable(result):
            close(result)
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
        self._fork = self.core.fork
        self._changes_seen += 1
        self._cursor = None
        self._view = None

    def _on_core_change(self, change: CoreChange) -> None:
        """Follow what others did to the log (a replica's sync, another
        machine or a direct append on the same core)."""
        self._changes_seen += 1
        previous = self.definition.states[self._sid]
        if (change.kind == "truncate" or change.fork != change.previous_fork
                or change.contiguous_length < change.previous_contiguous):
            self._load_head()
            self._emit(self._head_snapshot(previous))
            return
        start = change.previous_contiguous
        if not (self._change_callbacks or self._subscribers):
            start = max(start, change.contiguous_length - 1)  # nobody sees the steps between
        for index in range(start, change.contiguous_length):
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
        done: List[Any] = []
        with self._lock:
            _run(self._transition(event, value, done))
        snap: Snapshot = done[0]
        if done[1]:
            _run(self._enter(snap, done[1]))
        return snap

    async def action_async(self, event: str, value: Any = MISSING) -> Snapshot:
        """Like :meth:`action`, for coroutines; guards and actions may be async.
        Calls from concurrent tasks run one after the other."""
        import asyncio
        loop = asyncio.get_running_loop()
        alock = self._async_locks.get(loop)
        if alock is None:
            alock = self._async_locks[loop] = asyncio.Lock()
        async with alock:
            while not self._lock.acquire(blocking=False):
                await asyncio.sleep(0.0005)  # another thread is acting
            done: List[Any] = []
            try:
                await _run_async(self._transition(event, value, done))
            finally:
                self._lock.release()
        snap: Snapshot = done[0]
        if done[1]:
            await _run_async(self._enter(snap, done[1]))
        return snap

    def _transition(self, event: str, value: Any, out: List[Any]) -> Path:
        """The action path of :meth:`action` and :meth:`action_async` (run with
        the lock held): every awaitable a guard or an (exit) action returns
        is yielded with what returned it; the async caller sends back its
        result, the sync one throws :class:`ConcurrentActionError` in.  Puts
        the committed snapshot and the target's entry actions in ``out``
        (a generator that returns nothing ends without a StopIteration
        carrying it: a third of the cost of an action, measured)."""
        if self._acting:
            raise ConcurrentActionError("an action is already running in this thread")
        if not self._writable:
            raise ReadOnlyError("this machine follows a read-only replica: only its writer acts")
        if self._cursor is not None:
            raise NotAtHeadError("viewing history entry %d of %d: call head() before acting"
                                 % (self._cursor, self._head + 1))
        if not isinstance(event, str):
            raise InvalidActionError(event, self.state, "events are strings")
        definition = self.definition
        run = definition.candidates(self._sid, event)
        if run is None:
            raise InvalidActionError(event, self.state)
        self._acting = True
        try:
            at = self._changes_seen
            context = copy_json(self._context)   # atomicity: the action works on a copy
            arg = None if value is MISSING else value
            for t in run:
                if t.guard is None:
                    break
                ok = t.guard(context, arg)
                if ok is not True and ok is not False and is_awaitable(ok):
                    ok = yield ok, "a guard of %s" % event
                if ok:
                    break
            else:
                raise GuardRejectedError(event, self.state, "no guard passed")
            if t.target is not None:
                for fn in definition.exit[self._sid]:
                    done = fn(context, self.state)
                    if done is not None and is_awaitable(done):
                        yield done, "an exit action"
            if t.action is not None:
                done = t.action(context, arg)
                if done is not None and is_awaitable(done):
                    yield done, "the action of %s" % event
            snap = self._commit(event, value, t, context, at)
        finally:
            self._acting = False
        if self._change_callbacks or self._subscribers:
            self._emit(snap)
        out += (snap, () if t.target is None else definition.entry[t.target_id])

    def _commit(self, event: str, value: Any, t: Transition, context: Dict[str, Any],
                at: int) -> Snapshot:
        target_id = self._sid if t.target is None else t.target_id
        state = self.definition.states[target_id]
        entry: Dict[str, Any] = {"state": state, "context": context, "event": event}
        if value is not MISSING:
            entry["value"] = value
        block = _json.dumps(entry)  # JSONValueError: nothing was changed
        if at != self._changes_seen or self.core.length != self._head + 1:
            # The lock is re-entrant: a coroutine of the same thread (while an
            # async action awaited) or a callback truncated or appended.  The
            # plan was made on an older log: appending it would lose that.
            raise ConcurrentActionError("the log changed while %s was running: nothing was "
                                        "appended" % event)
        previous = self.definition.states[self._sid]
        length = self.core.append_locked(block, self._follow)   # the action holds the lock
        self._sid = target_id
        # The machine's own copy: the action may have put the caller's objects
        # (its value, a global) in the context; later changes to those must
        # not change the machine behind the log's back.
        self._context = copy_json(context)
        self._head = length - 1
        # The caller's snapshot reads context and value back from the block (a
        # copy of what the log holds) if it looks at them.
        return Snapshot.committed(state, block, length - 1, previous, event, self._fork)

    def _enter(self, snap: Snapshot, entry: Entry) -> Path:
        """The target's entry actions, after the commit; the first error is
        raised as :class:`EntryActionError` once they all ran."""
        error = None
        for fn in entry:
            try:
                done = fn(copy_json(snap.context), snap.state)
                if is_awaitable(done):
                    yield done, "an entry action"
            except Exception as e:
                error = error or e
        if error is not None:
            raise EntryActionError("entry action of %s failed after the transition was "
                                   "committed: %s" % (snap.state, error), snap) from error

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
            self.core.truncate(length, origin=self._follow)
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

    def changes(self, maxsize: int = 1024) -> "ChangeIterator":
        """``async for change in machine.changes():`` - every transition from
        now on.  A consumer that falls more than ``maxsize`` behind loses the
        oldest changes (counted in the iterator's ``dropped``)."""
        from .streams import ChangeIterator
        sub = ChangeIterator(maxsize, self._unsubscribe_iterator)
        with self._lock:
            self._subscribers.append(sub)
            if self.eager:
                sub.put(self._head_snapshot())
        return sub

    def _unsubscribe_iterator(self, sub: "ChangeIterator") -> None:
        with self._lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def _emit(self, snap: Snapshot) -> None:
        def deliver() -> None:   # in commit order (the core's), also when a callback acts
            for callback in list(self._change_callbacks):
                try:
                    callback(snap.copy())
                except Exception as e:
                    self._report(e, snap)
            for sub in list(self._subscribers):
                sub.put(snap.copy())
        self.core.in_order(deliver)

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
        import asyncio
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


def _run(steps: Path) -> None:
    """Run an action path without an event loop: an awaitable is refused
    (closed, and :class:`ConcurrentActionError` thrown in where it came from,
    before anything is committed)."""
    for awaitable, what in steps:
        while True:
            close(awaitable)
            try:
                awaitable, what = steps.throw(ConcurrentActionError(
                    "%s returned an awaitable: use action_async" % what))
            except StopIteration:
                return


async def _run_async(steps: Path) -> None:
    """Run an action path, awaiting what it yields and sending the result back
    (or throwing the exception in)."""
    try:
        awaitable, _ = next(steps)
        while True:
            try:
                result = await awaitable
            except BaseException as e:  # the path decides (cancellation included)
                awaitable, _ = steps.throw(e)
            else:
                awaitable, _ = steps.send(result)
    except StopIteration:
        pass


def parse_message(message: Mapping[str, Any]) -> Tuple[str, Any]:
    """``{"event"|"action": name, "value"?: v}`` -> ``(name, value or MISSING)``."""
    if not isinstance(message, Mapping):
        raise InvalidActionError(repr(message)[:60], "-", "a message is a dict "
                                 "{event, value}")
    event = message.get("event", message.get("action"))
    if not isinstance(event, str):
        raise InvalidActionError(event, "-", "the message has no 'event' (or 'action') string")
    return event, message.get("value", MISSING)
