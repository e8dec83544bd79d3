"""The compiled dispatch of a machine, as csrc/cm_dispatch.c does it."""
from __future__ import annotations

from typing import List, Optional, Tuple

from ..caps import MAX_TABLE_CELLS
from ..errors import InvalidArgumentError, OutOfRangeError, TooLargeError


class Table:
    """(state id, event id) -> the tuple of candidate transitions, or None."""

    __slots__ = ("n_states", "n_events", "_cells")

    def __init__(self, n_states: int, n_events: int) -> None:
        if n_states <= 0 or n_events <= 0:
            raise InvalidArgumentError("a table needs states and events")
        if n_states * n_events > MAX_TABLE_CELLS:
            raise TooLargeError("%d x %d transition cells" % (n_states, n_events))
        self.n_states = n_states
        self.n_events = n_events
        self._cells: List[Optional[Tuple[object, ...]]] = [None] * (n_states * n_events)

    def set(self, state: int, event: int, candidates: Tuple[object, ...]) -> None:
        if not candidates:
            raise InvalidArgumentError("a cell needs at least one transition")
        self._cells[self._cell(state, event)] = candidates

    def lookup(self, state: int, event: int) -> Optional[Tuple[object, ...]]:
        return self._cells[self._cell(state, event)]

    def _cell(self, state: int, event: int) -> int:
        if not (0 <= state < self.n_states and 0 <= event < self.n_events):
            raise OutOfRangeError("transition table: no cell (%d, %d)" % (state, event))
        return state * self.n_events + event
