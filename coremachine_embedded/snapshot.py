"""A state of a machine (:class:`Snapshot`), and copying JSON values.

A snapshot made by an action holds the block it committed and decodes its
``context`` and ``value`` from it when they are first read: what the log
holds, for nothing when only ``state`` is looked at.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

from . import _backend, _json

MISSING: Any = type("MISSING", (), {"__repr__": lambda self: "MISSING", "__slots__": ()})()
_UNREAD: Any = type("UNREAD", (), {"__slots__": ()})()

_CONTAINERS = (dict, list, tuple)
_new = object.__new__


def copy_json_python(value: Any) -> Any:
    """A deep copy of a JSON value (dicts, lists, immutables); a tuple is
    stored as an array, so it is copied as a list.  (The reference for the
    C twin that :func:`copy_json` is with the C backend.)"""
    if isinstance(value, dict):
        return {k: (copy_json_python(v) if isinstance(v, _CONTAINERS) else v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [copy_json_python(v) if isinstance(v, _CONTAINERS) else v for v in value]
    return value


copy_json = copy_json_python if _backend.speedups is None else _backend.speedups.copy_json


class Snapshot:
    """A state of the machine.  ``context`` is a copy: changing it changes nothing.

    ``index`` is the log entry (None for the initial state of an empty log);
    ``event``/``value`` are what caused it (None for a restore or truncation;
    ``value`` is :data:`MISSING` when the action had none).
    """

    __slots__ = ("state", "index", "previous_state", "event", "fork", "_context", "_value",
                 "_block")

    def __init__(self, state: str, context: Dict[str, Any], index: Optional[int],
                 previous_state: Optional[str] = None, event: Optional[str] = None,
                 value: Any = MISSING, fork: int = 0) -> None:
        self.state = state
        self.index = index
        self.previous_state = previous_state
        self.event = event
        self.fork = fork
        self._context = context
        self._value = value
        self._block: Optional[bytes] = None

    @classmethod
    def committed(cls, state: str, block: bytes, index: int, previous_state: str, event: str,
                  fork: int) -> "Snapshot":
        """The snapshot of entry ``index``, just appended as ``block``: its
        context and value are decoded from the block when first read."""
        snap = _new(cls)   # one attribute a line: half the time of unpacking a tuple
        snap.state = state
        snap.index = index
        snap.previous_state = previous_state
        snap.event = event
        snap.fork = fork
        snap._context = _UNREAD
        snap._value = _UNREAD
        snap._block = block
        return snap

    def _read(self) -> None:
        if self._block is not None:
            entry = _json.loads(self._block)
            self._context = entry["context"]
            self._value = entry.get("value", MISSING)
            self._block = None

    @property
    def context(self) -> Dict[str, Any]:
        self._read()
        context: Dict[str, Any] = self._context
        return context

    @context.setter
    def context(self, context: Dict[str, Any]) -> None:
        self._read()
        self._context = context

    @property
    def value(self) -> Any:
        self._read()
        return self._value

    @value.setter
    def value(self, value: Any) -> None:
        self._read()
        self._value = value

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
