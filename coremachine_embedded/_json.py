"""JSON exactly as JavaScript writes it: ``dumps(v)`` is byte for byte
``Buffer.from(JSON.stringify(v))`` (Node 20) for every value it accepts, and
values JSON/JS cannot carry are rejected with :class:`JSONValueError` before
anything is written.  See docs/json.md.

* ``pure_dumps`` (in ``_json_ref.py``) is the reference: plain Python that
  also runs on MicroPython, as this module does.
* ``dumps`` is the fast shim.  A cheap walk (``_scan``) checks that the value
  holds nothing on which the fast library (orjson, else ujson, else the stdlib
  ``json``) could differ from JavaScript - no float outside the plain non-integral
  range, no array-index key (JS moves those first), no subclass, nothing
  invalid; the library's own errors (lone surrogates, orjson's recursion limit)
  also send the value to the reference encoder, which then does everything
  (with the stdlib's C string escaper when there is one).
* ``COREMACHINE_JSON=orjson|ujson|json|pure`` forces a library; an unknown or
  missing one is an ImportError (when the library is picked: at the first
  ``dumps`` or ``backend``, so that reading a state imports none).
  ``backend`` names the one in use.
"""
import sys

try:  # typing exists only on CPython; the encoder never uses it at run time
    from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple
except ImportError:  # pragma: no cover - MicroPython (a plain assignment upsets mypy)
    globals()["TYPE_CHECKING"] = False

from ._json_ref import (DIGITS, MAX_DEPTH, MAX_SAFE_INTEGER, ArgumentTypeError, DecodeError,
                        JSONValueError, RecursionLimitError, is_index, make_encoder, pure_dumps,
                        quote_pure, short_repr)

__all__ = ["dumps", "loads", "backend", "backends", "encoder", "JSONValueError",
           "MAX_DEPTH", "MAX_SAFE_INTEGER"]


class _Slow(Exception):
    """``_scan`` found something the fast library must not be trusted with."""


# --------------------------------------------------------------------------
# fast paths


def _scan(o: "Any", depth: int) -> None:
    """Raise _Slow unless ``o`` is valid and the fast libraries write it as JS
    does: exact JSON types only, ints within 2**53-1, floats non-integral with
    1e-4 <= |x| < 1e15 (there Python's repr, orjson and ujson all print the
    same plain shortest digits that JS prints), no array-index key."""
    t = type(o)
    if t is dict:
        if depth >= 200:
            raise _Slow
        for k, v in o.items():
            if type(k) is not str or (k[:1] in DIGITS and is_index(k)):
                raise _Slow
            t = type(v)
            if t is str or t is bool or v is None:
                continue
            if t is int:
                if -9007199254740991 <= v <= 9007199254740991:
                    continue
                raise _Slow
            if t is float:
                if (1e-4 <= v < 1e15 or -1e15 < v <= -1e-4) and not v.is_integer():
                    continue
                raise _Slow
            _scan(v, depth + 1)
    elif t is list or t is tuple:
        if depth >= 200:
            raise _Slow
        for v in o:
            t = type(v)
            if t is str or t is bool or v is None:
                continue
            if t is int:
                if -9007199254740991 <= v <= 9007199254740991:
                    continue
                raise _Slow
            if t is float:
                if (1e-4 <= v < 1e15 or -1e15 < v <= -1e-4) and not v.is_integer():
                    continue
                raise _Slow
            _scan(v, depth + 1)
    elif t is str or t is bool or o is None:
        pass
    elif t is int:
        if not -9007199254740991 <= o <= 9007199254740991:
            raise _Slow
    elif t is float:
        if not ((1e-4 <= o < 1e15 or -1e15 < o <= -1e-4) and not o.is_integer()):
            raise _Slow
    else:
        raise _Slow


def scan_ok(value: "Any") -> bool:
    """True if ``_scan`` lets ``value`` by (the reference for the C twin that
    ``_fast_ok`` is with the C backend)."""
    try:
        _scan(value, 0)
    except (_Slow, RecursionLimitError):
        return False
    return True


def _speedup() -> "Callable[[Any], bool]":
    try:
        from ._backend import speedups
    except Exception:  # pragma: no cover - this file alone, or MicroPython
        return scan_ok
    return scan_ok if speedups is None else speedups.json_safe


_fast_ok = _speedup()


def _c_quote() -> "Callable[[str], str]":
    try:
        from json.encoder import encode_basestring
        return encode_basestring
    except ImportError:  # pragma: no cover
        return quote_pure


def _fast_writer(name: str) -> "Callable[[Any], bytes]":
    """The library's own dumps, set up to match JS on the values _scan lets by."""
    if name == "orjson":
        import orjson
        return orjson.dumps
    if name == "ujson":
        import ujson
        udumps = ujson.dumps

        def write_ujson(v: "Any") -> bytes:
            return udumps(v, ensure_ascii=False, escape_forward_slashes=False,
                          encode_html_chars=False, allow_nan=False).encode("utf-8")
        return write_ujson
    if name == "json":
        import json
        if not hasattr(json, "JSONEncoder"):
            raise ImportError("this json module is not the standard library's")
        jenc = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                check_circular=False, allow_nan=False)
        make = getattr(json.encoder, "c_make_encoder", None)
        if make is not None:
            # JSONEncoder.encode builds this C encoder on every call: build it once
            try:
                iterencode = make(None, jenc.default, json.encoder.encode_basestring, None,
                                  ":", ",", False, False, False)
            except TypeError:  # another signature (a future Python): the public way
                make = None
        if make is not None:
            def write_json(v: "Any") -> bytes:
                if type(v) is str:
                    return jenc.encode(v).encode("utf-8")
                return "".join(iterencode(v, 0)).encode("utf-8")
        else:
            def write_json(v: "Any") -> bytes:
                return jenc.encode(v).encode("utf-8")
        return write_json
    raise ImportError("unknown JSON backend %r (use orjson, ujson, json or pure)" % name)


_FAST_ORDER = ("orjson", "ujson", "json")
# MicroPython's json/ujson are not the libraries above: only the reference there.
_CPYTHONISH = sys.implementation.name in ("cpython", "pypy")


def encoder(name: str) -> "Callable[[Any], bytes]":
    """The dumps of backend ``name`` ("orjson", "ujson", "json" or "pure").
    ImportError when it is unknown or not installed."""
    if name == "pure":
        return pure_dumps
    if not _CPYTHONISH:
        raise ImportError("JSON backend %r is not available on %s" % (name, sys.implementation.name))
    write = _fast_writer(name)
    slow = make_encoder(_c_quote())

    def dumps(value: "Any") -> bytes:
        """``Buffer.from(JSON.stringify(value))``; JSONValueError if JS/JSON
        cannot carry ``value``."""
        if not _fast_ok(value):
            return slow(value)
        try:
            return write(value)
        except Exception:  # lone surrogates, orjson's recursion limit: do it slowly
            return slow(value)

    dumps.__name__ = "dumps_" + name
    return dumps


def backends() -> "List[str]":
    """The backends usable here, the preferred first; "pure" is always last."""
    names = []
    for name in _FAST_ORDER:
        try:
            encoder(name)
        except ImportError:
            continue
        names.append(name)
    names.append("pure")
    return names


def _choose() -> "Tuple[str, Callable[[Any], bytes]]":
    forced = None  # type: Optional[str]
    try:
        import os
        forced = os.getenv("COREMACHINE_JSON") or None
    except ImportError:  # pragma: no cover
        pass
    if forced is not None:
        return forced, encoder(forced)
    for name in _FAST_ORDER:
        try:
            return name, encoder(name)
        except ImportError:
            continue
    return "pure", pure_dumps


# ``backend``, the library ``dumps`` uses ("orjson", "ujson", "json" or
# "pure"), is picked and imported when first needed (``__getattr__`` below,
# or the first dumps): reading a state needs no encoder.
if TYPE_CHECKING:
    backend = ""  # at run time: __getattr__ until picked
_chosen = None  # type: Optional[Callable[[Any], bytes]]


def _pick() -> "Callable[[Any], bytes]":
    global backend, _chosen, dumps
    backend, _chosen = _choose()
    dumps = _chosen
    return _chosen


def _first_dumps(value: "Any") -> bytes:
    """``Buffer.from(JSON.stringify(value))`` with the fastest library here
    (``backend``); JSONValueError if JS/JSON cannot carry ``value``.  The
    first call picks the library and puts its dumps in this one's place."""
    return (_chosen or _pick())(value)


dumps = _first_dumps  # type: Callable[[Any], bytes]


def __getattr__(name: str) -> "Any":
    if name == "backend":
        _pick()
        return backend
    raise AttributeError("module %r has no attribute %r" % (__name__, name))


if not _CPYTHONISH:  # pragma: no cover - MicroPython: nothing to save, pick now
    _pick()

# --------------------------------------------------------------------------
# loads


def _parse_int(s: str) -> "Any":
    v = int(s)
    if -MAX_SAFE_INTEGER <= v <= MAX_SAFE_INTEGER:
        return v
    # JS reads it as a Number (JSON.stringify writes 1e20 as 100000000000000000000)
    return _parse_float(s)


def _parse_float(s: str) -> float:
    v = float(s)
    if v - v != 0.0:
        raise ValueError("number %s is out of range" % short_repr(s))
    return v


def _parse_constant(s: str) -> "Any":
    raise ValueError("%s is not JSON" % s)


def _make_loads() -> "Callable[[str], Any]":
    import json
    if hasattr(json, "JSONDecoder"):
        return json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float,
                                parse_constant=_parse_constant).decode
    return json.loads  # pragma: no cover - MicroPython


_decode = _make_loads()


def loads(data: "Any") -> "Any":
    """The value in JSON ``data`` (bytes in UTF-8, or str): dicts, lists, str,
    int (integer tokens within 2**53-1), float, bool, None.  Rejects NaN and
    Infinity and numbers that overflow; duplicate keys: the last wins, as in JS.
    DecodeError when ``data`` is not JSON."""
    if isinstance(data, str):
        text = data
    elif isinstance(data, (bytes, bytearray, memoryview)):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeError:
            raise DecodeError("JSON is not valid UTF-8")
    else:
        raise ArgumentTypeError("loads wants bytes or str, not %s" % type(data).__name__)
    try:
        return _decode(text)
    except RecursionLimitError:
        raise DecodeError("JSON nested too deeply")
    except ValueError as e:
        raise DecodeError("not JSON: %s" % e)
