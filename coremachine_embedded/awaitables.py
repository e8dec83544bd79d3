"""Is it awaitable, is it a coroutine function: what :mod:`inspect` answers,
without importing ``inspect`` (a dozen modules) on the way to a state, and
fast for the ``None``/``True``/``False`` that guards and actions return."""
from __future__ import annotations

from functools import partial
from types import FunctionType, GeneratorType
from typing import Any

_CO_COROUTINE = 0x80             # inspect.CO_COROUTINE
_CO_ITERABLE_COROUTINE = 0x100   # inspect.CO_ITERABLE_COROUTINE


def is_awaitable(value: Any) -> bool:
    """``inspect.isawaitable(value)``: a coroutine, a ``@types.coroutine``
    generator, or an object with ``__await__``."""
    if value is None or value is True or value is False:
        return False
    kind = type(value)
    if kind is GeneratorType:
        return bool(value.gi_code.co_flags & _CO_ITERABLE_COROUTINE)
    return hasattr(kind, "__await__")


def close(awaitable: Any) -> None:
    """Close an awaitable that will not be awaited (no "never awaited" warning)."""
    getattr(awaitable, "close", lambda: None)()


def is_coroutine_function(fn: Any) -> bool:
    """``inspect.iscoroutinefunction(fn)``, also for bound methods and partials."""
    if type(fn) is FunctionType:  # the common case, first
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    while True:
        if isinstance(fn, partial):
            fn = fn.func
        elif hasattr(fn, "__func__"):
            fn = fn.__func__
        else:
            break
    code = getattr(fn, "__code__", None)
    return code is not None and bool(getattr(code, "co_flags", 0) & _CO_COROUTINE)
