"""The reference encoder of JSON exactly as JavaScript writes it (docs/json.md):
``pure_dumps(v)`` is byte for byte ``Buffer.from(JSON.stringify(v))`` (Node
20) for every value it accepts, and values JSON/JS cannot carry are rejected
with :class:`JSONValueError` before anything is written.

Plain Python that also runs on MicroPython (no ``re``, no f-strings, only
simple str methods; typing is imported only where it exists and is never used
at run time).  ``_json.py`` puts the fast libraries in front of it.
"""
import sys

try:  # typing exists only on CPython; the encoder never uses it at run time
    from typing import Any, Callable, Dict, List, Tuple
except ImportError:  # pragma: no cover - MicroPython
    pass

try:
    from .errors import CoreMachineError, DecodeError, ArgumentTypeError
except Exception:  # pragma: no cover - MicroPython, or this file imported alone
    # MicroPython cannot derive from two built-in exceptions: ValueError it is.
    class CoreMachineError(ValueError):  # type: ignore[no-redef]
        code = "ERROR"

    class DecodeError(CoreMachineError):  # type: ignore[no-redef]
        code = "DECODE"

    class ArgumentTypeError(TypeError):  # type: ignore[no-redef]
        code = "BAD_TYPE"

__all__ = ["JSONValueError", "MAX_DEPTH", "MAX_SAFE_INTEGER", "DecodeError", "ArgumentTypeError"]

#: Number.MAX_SAFE_INTEGER: larger integers would be rounded by JavaScript.
MAX_SAFE_INTEGER = 9007199254740991
#: Containers nested deeper than this are rejected (the root container is level 1).
MAX_DEPTH = 256
_ARRAY_INDEX_END = 4294967295  # array indices are the integers 0 .. 2**32 - 2
DIGITS = "0123456789"


try:
    class JSONValueError(CoreMachineError, ValueError):
        """A value that JSON / JavaScript cannot carry exactly.  ``path`` locates it
        (``context.readings[3]``; ``(root)`` for the value itself), ``reason`` says why."""

        code = "JSON_VALUE"

        def __init__(self, path: str, reason: str) -> None:
            super().__init__(path + ": " + reason)
            self.path = path
            self.reason = reason
except TypeError:  # pragma: no cover - MicroPython: one built-in base only (ValueError)
    class JSONValueError(CoreMachineError):  # type: ignore[no-redef]
        code = "JSON_VALUE"

        def __init__(self, path: str, reason: str) -> None:
            super().__init__(path + ": " + reason)
            self.path = path
            self.reason = reason


# --------------------------------------------------------------------------
# internal signals


class _Reject(Exception):
    """An invalid value; containers add their key (``parts``, innermost first)
    and themselves (``chain``) while it unwinds."""

    def __init__(self, reason: str, depth: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.depth = depth
        self.parts = []  # type: List[object]
        self.chain = []  # type: List[object]


class _Reorder(Exception):
    """A dict has an array-index key: JS puts those first (see ``_js_items``)."""


try:
    RecursionLimitError = RecursionError  # type: type[BaseException]
except NameError:  # pragma: no cover - MicroPython raises RuntimeError
    RecursionLimitError = RuntimeError


# --------------------------------------------------------------------------
# the pieces of the reference encoder


def is_index(k: str) -> bool:
    """True when JS treats key ``k`` as an array index ("0", "7", "4294967294";
    not "01", "-1", "1.0", "4294967295")."""
    n = len(k)
    if n == 0 or n > 10:
        return False
    if k[0] == "0":
        return n == 1
    for c in k:
        if c < "0" or c > "9":
            return False
    return int(k) < _ARRAY_INDEX_END


def _js_items(o: "Dict[Any, Any]") -> "List[Tuple[Any, Any]]":
    """Items in JS's own-property order: array-index keys ascending, then the
    rest in insertion order."""
    idx = []
    rest = []
    for k, v in o.items():
        if isinstance(k, str) and is_index(k):
            idx.append((int(k), k, v))
        else:
            rest.append((k, v))
    idx.sort(key=_first)
    return [(k, v) for _, k, v in idx] + rest


def _first(t: "Tuple[int, str, Any]") -> int:
    return t[0]


_ESC = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
        "\t": "\\t"}
for _i in range(0x20):
    if chr(_i) not in _ESC:
        _ESC[chr(_i)] = "\\u%04x" % _i


def quote_pure(s: str) -> str:
    """A JSON string literal as JSON.stringify writes it (reference, plain
    Python).  A Python str holds code points; JS holds UTF-16 code units, so a
    high surrogate followed by a low one is one astral character to JS, and any
    other surrogate is lone and written as a lowercase ``\\udxxx`` escape."""
    out = []
    plain = 0  # length of the run of characters copied as they are
    start = 0
    pend = -1  # a high surrogate waiting for its low half
    i = 0
    for ch in s:
        o = ord(ch)
        if pend >= 0:
            if 0xDC00 <= o <= 0xDFFF:
                out.append(chr(0x10000 + ((pend - 0xD800) << 10) + (o - 0xDC00)))
                pend = -1
                i += 1
                start = i
                continue
            out.append("\\u%04x" % pend)
            pend = -1
        if o < 0x20 or ch == '"' or ch == "\\":
            if plain:
                out.append(s[start:i])
            out.append(_ESC[ch])
        elif 0xD800 <= o <= 0xDFFF:
            if plain:
                out.append(s[start:i])
            if o <= 0xDBFF:
                pend = o
            else:
                out.append("\\u%04x" % o)
        else:
            plain += 1
            i += 1
            continue
        plain = 0
        i += 1
        start = i
    if pend >= 0:
        out.append("\\u%04x" % pend)
    elif plain:
        if start == 0:
            return '"' + s + '"'
        out.append(s[start:])
    return '"' + "".join(out) + '"'


def _fix_surrogates(text: str) -> bytes:
    """UTF-8 of ``text`` (made by an escaper that left surrogates alone) as
    JS would have it: surrogate pairs joined, lone surrogates as ``\\udxxx``."""
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    return joined.encode("utf-8", "backslashreplace")


def _layout(digits: str, n: int) -> str:
    """ECMAScript Number::toString for the value 0.<digits> * 10**n (digits
    without trailing zeros, the shortest that round-trip)."""
    k = len(digits)
    if k <= n <= 21:
        return digits + "0" * (n - k)
    if 0 < n <= 21:
        return digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return "0." + "0" * (-n) + digits
    e = n - 1
    sign = "+" if e >= 0 else "-"
    if k == 1:
        return digits + "e" + sign + str(abs(e))
    return digits[0] + "." + digits[1:] + "e" + sign + str(abs(e))


def _from_repr(r: str) -> str:
    """Number::toString from Python's shortest repr of a positive float
    written with an exponent ("1e+16", "1.5e-07")."""
    mant, ex = r.split("e")
    dot = mant.find(".")
    if dot < 0:
        intpart = mant
        frac = ""
    else:
        intpart = mant[:dot]
        frac = mant[dot + 1:]
    digits = (intpart + frac).rstrip("0")
    return _layout(digits, len(intpart) + int(ex))


def _shortest(x: float) -> "Tuple[str, int]":
    """(digits, n) with x == 0.<digits> * 10**n read back exactly, digits as few
    as possible and, among those, closest to x: what Python's repr and JS's
    Number::toString both pick.  Exact integer arithmetic, for interpreters
    whose repr is not the shortest (MicroPython).  x must be finite and > 0."""
    import struct
    bits = struct.unpack("<Q", struct.pack("<d", x))[0]
    be = (bits >> 52) & 0x7FF
    f = bits & 0xFFFFFFFFFFFFF
    if be == 0:
        m = f
        e = -1074
    else:
        m = f | (1 << 52)
        e = be - 1075
    asym = f == 0 and be > 1  # the float below is nearer than the one above
    # x = R / S; the round-trip interval is (R - Mdn, R + Mup) / S
    if e >= 0:
        R = m << (e + 2)
        S = 4
        Mup = 1 << (e + 1)
        Mdn = (1 << e) if asym else Mup
    else:
        R = m << 2
        S = 1 << (2 - e)
        Mup = 2
        Mdn = 1 if asym else 2
    inclusive = m % 2 == 0  # a decimal on the boundary reads back as x
    # n with 10**(n-1) <= x < 10**n
    n = len(str(m)) + int(e * 0.30102999566398120)  # within 1 or 2; fixed below
    while _cmp_pow10(R, S, n) >= 0:
        n += 1
    while _cmp_pow10(R, S, n - 1) < 0:
        n -= 1
    p = 1
    while True:
        q = n - p
        if q >= 0:
            Rr = R
            Sr = S * 10 ** q
            Mu = Mup
            Md = Mdn
        else:
            t = 10 ** (-q)
            Rr = R * t
            Sr = S
            Mu = Mup * t
            Md = Mdn * t
        d = Rr // Sr
        rem = Rr - d * Sr
        lo_ok = rem < Md or (inclusive and rem == Md)
        up = Sr - rem
        hi_ok = up < Mu or (inclusive and up == Mu)
        if lo_ok or hi_ok:
            if lo_ok and hi_ok:
                if 2 * rem > Sr or (2 * rem == Sr and d % 2 == 1):
                    d += 1
            elif hi_ok:
                d += 1
            s = str(d)
            return s.rstrip("0"), q + len(s)
        p += 1


def _cmp_pow10(R: int, S: int, n: int) -> int:
    """Sign of R/S - 10**n."""
    if n >= 0:
        a = R
        b = S * 10 ** n
    else:
        a = R * 10 ** (-n)
        b = S
    if a > b:
        return 1
    return -1 if a < b else 0


def _bad_float(x: float) -> str:
    if x != x:
        return "NaN is not JSON"
    return ("Infinity" if x > 0 else "-Infinity") + " is not JSON"


_SHORT_REPR = getattr(sys, "float_repr_style", "") == "short"


def _float_str_repr(x: float) -> str:
    """Number::toString(x) via Python's repr, which is the shortest round-trip
    digits (x is exactly a float)."""
    r = repr(x)
    if r[-2:] == ".0":  # integral, and repr is plain below 1e16: so is JS
        return r[:-2] if x else "0"  # -0.0 is "0" too
    if "e" in r:
        if x < 0:
            return "-" + _from_repr(r[1:])
        return _from_repr(r)
    if r[-1] == "n" or r[-1] == "f":  # nan, inf, -inf
        raise _Reject(_bad_float(x))
    return r  # plain non-integral: 1e-4 <= |x| < 1e16, the same in JS


def _float_str_exact(x: float) -> str:
    """Number::toString(x) without trusting repr."""
    if x - x != 0.0:
        raise _Reject(_bad_float(x))
    if x == 0.0:
        return "0"
    if x < 0:
        digits, n = _shortest(-x)
        return "-" + _layout(digits, n)
    digits, n = _shortest(x)
    return _layout(digits, n)


_float_str = _float_str_repr if _SHORT_REPR else _float_str_exact


def _big_int(v: int) -> str:
    return "%d is beyond 2**53-1: JavaScript would round it" % v


def _other(v: object) -> _Reject:
    name = type(v).__name__
    if isinstance(v, (bytes, bytearray, memoryview)):
        return _Reject("%s is not JSON (decode or base64-encode it first)" % name)
    if isinstance(v, (set, frozenset)):
        return _Reject("%s is not JSON (use a list)" % name)
    return _Reject("%s object is not JSON" % name)


def make_encoder(quote: "Callable[[str], str]") -> "Callable[[Any], bytes]":
    """The reference encoder, with ``quote`` as its string escaper."""
    M = MAX_SAFE_INTEGER
    kcache = {}  # type: Dict[str, str]

    def enc_list(o: "Any", out: "List[str]", depth: int) -> None:
        if depth > MAX_DEPTH:
            raise _Reject("nested deeper than %d levels" % MAX_DEPTH, True)
        app = out.append
        sep = "["
        v = None
        # The value switch below is written out here and in enc_dict on purpose:
        # a shared helper costs a Python call per value on the action path.
        try:
            for v in o:
                app(sep)
                sep = ","
                t = type(v)
                if t is str:
                    app(quote(v))
                elif t is int:
                    if -M <= v <= M:
                        app(str(v))
                    else:
                        raise _Reject(_big_int(v))
                elif t is float:
                    app(_float_str(v))
                elif v is None:
                    app("null")
                elif t is bool:
                    app("true" if v else "false")
                elif t is dict:
                    enc_dict(v, out, depth + 1, False)
                elif t is list or t is tuple:
                    enc_list(v, out, depth + 1)
                else:
                    enc_other(v, out, depth + 1)
        except _Reject as e:
            i = 0
            for w in o:  # the first occurrence failed: same object, same result
                if w is v:
                    break
                i += 1
            e.parts.append(i)
            e.chain.append(o)
            raise
        app("]" if sep == "," else "[]")

    def enc_dict(o: "Any", out: "List[str]", depth: int, ordered: bool) -> None:
        if depth > MAX_DEPTH:
            raise _Reject("nested deeper than %d levels" % MAX_DEPTH, True)
        start = len(out)
        app = out.append
        sep = "{"
        k = None
        try:
            for k, v in (_js_items(o) if ordered else o.items()):
                if type(k) is str:
                    kq = kcache.get(k)
                    if kq is None:
                        if not ordered and k[:1] in DIGITS and is_index(k):
                            raise _Reorder()
                        kq = quote(k) + ":"
                        if len(kcache) < 512 and k[:1] not in DIGITS:
                            kcache[k] = kq
                elif isinstance(k, str):
                    if not ordered and k[:1] in DIGITS and is_index(k):
                        raise _Reorder()
                    kq = quote(k) + ":"
                else:
                    raise _Reject("key %s (%s) is not a str" % (short_repr(k), type(k).__name__))
                app(sep)
                sep = ","
                app(kq)
                t = type(v)
                if t is str:
                    app(quote(v))
                elif t is int:
                    if -M <= v <= M:
                        app(str(v))
                    else:
                        raise _Reject(_big_int(v))
                elif t is float:
                    app(_float_str(v))
                elif v is None:
                    app("null")
                elif t is bool:
                    app("true" if v else "false")
                elif t is dict:
                    enc_dict(v, out, depth + 1, False)
                elif t is list or t is tuple:
                    enc_list(v, out, depth + 1)
                else:
                    enc_other(v, out, depth + 1)
        except _Reorder:
            del out[start:]
            enc_dict(o, out, depth, True)
            return
        except _Reject as e:
            if not (e.parts or e.chain) and not isinstance(k, str):
                # the key itself is bad: the path is the dict's
                e.chain.append(o)
                e.parts.append(None)
            else:
                e.parts.append(k)
                e.chain.append(o)
            raise
        app("}" if sep == "," else "{}")

    def enc_other(v: "Any", out: "List[str]", depth: int) -> None:
        """The root value, and anything that is not exactly a JSON type."""
        if v is None:
            out.append("null")
        elif v is True:
            out.append("true")
        elif v is False:
            out.append("false")
        elif isinstance(v, str):
            out.append(quote(v))
        elif isinstance(v, int):
            n = int(v)
            if -M <= n <= M:
                out.append(str(n))
            else:
                raise _Reject(_big_int(n))
        elif isinstance(v, float):
            out.append(_float_str(float(v)))
        elif isinstance(v, dict):
            enc_dict(v, out, depth, False)
        elif isinstance(v, (list, tuple)):
            enc_list(v, out, depth)
        else:
            raise _other(v)

    def encode(value: "Any") -> bytes:
        out = []  # type: List[str]
        try:
            enc_other(value, out, 1)
        except _Reject as e:
            raise _error(e, value)
        except RecursionLimitError:  # only MicroPython's stack is shallower than MAX_DEPTH
            raise JSONValueError("(root)", "nested too deeply for this interpreter")
        text = "".join(out)
        try:
            return text.encode("utf-8")
        except UnicodeError:  # a surrogate the escaper left alone
            return _fix_surrogates(text)

    return encode


def short_repr(v: object) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:37] + "..."


def _is_ident(k: str) -> bool:
    if not k or ("0" <= k[0] <= "9"):
        return False
    for c in k:
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or c == "_" or c == "$"):
            return False
    return True


def _path(parts: "List[object]") -> str:
    """``context.readings[3]`` from the keys/indices, root first."""
    s = ""
    for p in parts:
        if isinstance(p, int):
            s += "[%d]" % p
        elif isinstance(p, str) and _is_ident(p):
            s += ("." + p) if s else p
        else:
            s += "[" + quote_pure(str(p)) + "]"
    return s or "(root)"


def _error(e: _Reject, value: object) -> JSONValueError:
    parts = e.parts[::-1]
    if parts and parts[-1] is None:  # a bad key: the path is its dict's
        parts = parts[:-1]
    if e.depth:
        chain = e.chain[::-1]  # root first; chain[i] is reached by parts[:i]
        seen = {}  # type: Dict[int, int]
        for j in range(len(chain)):
            i = seen.get(id(chain[j]))
            if i is not None:
                return JSONValueError(_path(parts[:j]), "cyclic structure: refers back to "
                                      + _path(parts[:i]))
            seen[id(chain[j])] = j
        if len(parts) > 12:
            return JSONValueError(_path(parts[:6]) + "..." + _path(parts[-3:]), e.reason)
    return JSONValueError(_path(parts), e.reason)


#: The reference: plain Python everywhere (the escaper too).
pure_dumps = make_encoder(quote_pure)
