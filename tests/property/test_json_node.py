"""Every JSON backend against Node's JSON.stringify, on values Hypothesis makes.

Hypothesis generates the values (and checks on each one that all backends
agree and that loads undoes dumps); they are then sent, losslessly tagged
(floats as repr, strings as UTF-16 code units), to ONE node process running
tests/interop/js/json_stringify.mjs, which prints the hex of
Buffer.from(JSON.stringify(value)) for each.  Every backend's bytes must equal
Node's."""
from __future__ import annotations

import json
import math
import os
import shutil
import struct
import subprocess
from typing import Any, Callable, Dict, List

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from coremachine_embedded import _json, _json_ref
from tests.unit.test_json import KNOWN

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "interop", "js", "json_stringify.mjs")
NODE = shutil.which("node")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not on PATH")

ENCODERS: Dict[str, Callable[[Any], bytes]] = {n: _json.encoder(n) for n in _json.backends()}
MAX_SAFE = 2**53 - 1
# how many values one node process checks per test (scaled by the profile)
BATCH = max(400, settings.default.max_examples * 6)

# --- strategies -------------------------------------------------------------

SPECIAL_CHARS = ['"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x01", "\x0b", "\x1f",
                 "\x7f", "\x80", "\u00e9", "\u2028", "\u2029", "\ufeff", "\uffff",
                 "\U0001f600", "\U0010ffff", "\ud800", "\udbff", "\udc00", "\udfff",
                 "\ud83d", "\ude00"]
chars = st.one_of(st.characters(exclude_categories=()), st.sampled_from(SPECIAL_CHARS))
# fragments make surrogate pairs split into two code points, and such
strings = st.lists(st.one_of(chars, st.sampled_from(["\ud83d\ude00", "\ud83d\ud83d",
                                                      "\ude00\ud83d", "ab", "</"])),
                   max_size=10).map("".join)

INDEX_LIKE = ["0", "1", "2", "9", "10", "01", "00", "-0", "-1", "+1", "1.5", "1e3", " 1", "1 ",
              "4294967294", "4294967295", "4294967296", "9007199254740993", "\u0661",
              "__proto__", "toJSON", "constructor", "length", ""]
keys = st.one_of(strings, st.sampled_from(INDEX_LIKE),
                 st.integers(0, 2**32 + 5).map(str))

EDGE_FLOATS = [0.0, -0.0, 1.0, -1.0, 0.1, 0.5, 1e-4, 1e-5, 1e-6, 1e-7, 1.5e-7, 1e15, 1e16, 1e20,
               1e21, 1e22, 2.0**53, 2.0**53 + 2, 2.0**63, 2.0**64, 5e-324, 1e-323,
               2.2250738585072014e-308, 2.225073858507201e-308, 1.7976931348623157e308,
               123e-20, 0.1 + 0.2, 1 / 3, 9.5e-5, 999999999999999900000.0]
EDGE_FLOATS += [math.nextafter(x, d) for x in EDGE_FLOATS if x for d in (0.0, math.inf)
                if math.isfinite(math.nextafter(x, d))]


def _from_bits(b: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", b))[0]


floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(EDGE_FLOATS).flatmap(lambda x: st.sampled_from([x, -x])),
    # every exponent equally likely: subnormal, tiny, huge
    st.integers(0, 2**64 - 1).map(_from_bits).filter(math.isfinite),
    # decimal-looking values around the plain/exponent borders
    st.builds(lambda m, e: m * 10.0**e, st.integers(-10**17, 10**17),
              st.integers(-30, 30)).filter(math.isfinite),
    st.integers(-2**60, 2**60).map(float),
)
ints = st.one_of(st.integers(-MAX_SAFE, MAX_SAFE),
                 st.sampled_from([0, 1, -1, MAX_SAFE, -MAX_SAFE, 2**31, 2**32, -2**31]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, strings)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=6),
        # several index-like keys in one object: JS reorders them
        st.dictionaries(st.one_of(st.sampled_from(INDEX_LIKE), st.sampled_from(["a", "b", "z"]),
                                  st.integers(0, 30).map(str)), inner, min_size=2, max_size=8),
    ),
    max_leaves=30,
)

# --- helpers ----------------------------------------------------------------


def _units(s: str) -> List[int]:
    b = s.encode("utf-16-le", "surrogatepass")
    return list(struct.unpack("<%dH" % (len(b) // 2), b))


def tag(v: Any) -> Any:
    """The value, tagged for json_stringify.mjs without losing anything."""
    if v is None:
        return ["z"]
    if v is True or v is False:
        return ["b", v]
    if isinstance(v, int):
        return ["i", str(int(v))]
    if isinstance(v, float):
        return ["f", repr(float(v))]
    if isinstance(v, str):
        return ["s", _units(v)]
    if isinstance(v, (list, tuple)):
        return ["a", [tag(x) for x in v]]
    if isinstance(v, dict):
        return ["o", [[_units(k), tag(x)] for k, x in v.items()]]
    raise TypeError(type(v))


def node_stringify(values: List[Any]) -> List[bytes]:
    """Buffer.from(JSON.stringify(v)) for each value, from one node process."""
    assert NODE is not None
    proc = subprocess.run([NODE, SCRIPT], input=json.dumps([tag(v) for v in values]),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    assert len(out) == len(values)
    return [bytes.fromhex(h) for h in out]


def _norm(v: Any) -> Any:
    """What loads(dumps(v)) gives back: arrays as lists, strings as JS sees
    them (a surrogate pair is one character); numbers compare by value."""
    if isinstance(v, str):
        return v.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "surrogatepass")
    if isinstance(v, (list, tuple)):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {_norm(k): _norm(x) for k, x in v.items()}
    return v


def check_one(v: Any) -> bytes:
    """All backends agree on v, and loads undoes dumps; returns the bytes."""
    outs = {name: enc(v) for name, enc in ENCODERS.items()}
    assert len(set(outs.values())) == 1, outs
    data = outs["pure"]
    assert _json.dumps(v) == data
    back = _json.loads(data)
    assert back == _norm(v)
    assert _json.dumps(back) == data
    return data


def collect(strategy: st.SearchStrategy[Any], n: int) -> List[Any]:
    """n values from ``strategy``, each checked by check_one (a failure there
    is shrunk by Hypothesis as usual)."""
    found: List[Any] = []

    @settings(max_examples=n, database=None, deadline=None,
              phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def gather(v: Any) -> None:
        check_one(v)
        found.append(v)

    gather()
    return found


def compare_with_node(values: List[Any], extra: Dict[str, Callable[[Any], bytes]]) -> None:
    expected = node_stringify(values)
    encoders = dict(ENCODERS, default=_json.dumps, **extra)
    bad = []
    for v, want in zip(values, expected):
        for name, enc in encoders.items():
            got = enc(v)
            if got != want:
                bad.append("%s: %r\n  node %r\n  ours %r" % (name, v, want, got))
    assert not bad, "%d mismatches, first ones:\n%s" % (len(bad), "\n".join(bad[:8]))


# --- tests ------------------------------------------------------------------


@needs_node
def test_known_answers_are_what_node_writes() -> None:
    values = [v for v, _ in KNOWN]
    assert node_stringify(values) == [e for _, e in KNOWN]


@needs_node
def test_generated_values_match_node() -> None:
    values = collect(json_values, BATCH)
    assert len(values) >= BATCH // 2
    # nested containers, surrogates and index keys really were generated
    text = repr(values)
    assert "\\ud8" in text or "\\udc" in text or "\\udd" in text or "\\ude" in text
    assert any(isinstance(v, dict) and any(_json_ref.is_index(k) for k in v) for v in values)
    compare_with_node(values, {})


@needs_node
def test_generated_floats_match_node() -> None:
    values = [x for x in EDGE_FLOATS + [-x for x in EDGE_FLOATS]]
    values += collect(floats, BATCH * 2)
    values.append(values[-40:])  # and inside an array
    # the exact (MicroPython) digit search too, not only repr
    exact: Callable[[Any], bytes] = lambda v: (  # noqa: E731
        _json_ref._float_str_exact(v).encode() if isinstance(v, float)
        else b"[" + b",".join(_json_ref._float_str_exact(x).encode() for x in v) + b"]")
    compare_with_node(values, {"exact-digits": exact})


BAD_LEAVES = [float("nan"), float("inf"), -float("inf"), 2**53, -(2**53), 10**20, b"raw",
              bytearray(b"x"), {1, 2}, frozenset(), object(), 1j]


def _expected_path(steps: List[Any]) -> str:
    s = ""
    for p in steps:
        if isinstance(p, int):
            s += "[%d]" % p
        elif p and not p[0].isdigit() and all(c.isascii() and (c.isalnum() or c in "_$") for c in p):
            s += ("." if s else "") + p
        else:
            s += "[" + _json.dumps(p).decode("utf-8") + "]"
    return s or "(root)"


@given(st.data())
@settings(deadline=None, suppress_health_check=list(HealthCheck))
def test_unsupported_values_are_rejected_with_their_path(data: st.DataObject) -> None:
    root = data.draw(json_values, label="valid value")
    bad = data.draw(st.sampled_from(BAD_LEAVES), label="bad leaf")
    # walk down to a random container and put the bad leaf in it
    steps: List[Any] = []
    if not isinstance(root, (dict, list)):
        root = [root]
    node = root
    while True:
        kids = [(k, x) for k, x in (node.items() if isinstance(node, dict) else enumerate(node))
                if isinstance(x, (dict, list))]
        if not kids or data.draw(st.booleans(), label="stop here"):
            break
        k, node = data.draw(st.sampled_from(kids), label="go into")
        steps.append(k)
    if isinstance(node, dict):
        k = data.draw(keys.filter(lambda k: k not in node), label="new key")
        node[k] = bad
    else:
        k = data.draw(st.integers(0, len(node)), label="position")
        node.insert(k, bad)
    steps.append(k)
    want = _expected_path(steps)
    for name, enc in list(ENCODERS.items()) + [("default", _json.dumps)]:
        with pytest.raises(_json.JSONValueError) as info:
            enc(root)
        assert info.value.path == want, name
        assert isinstance(info.value, ValueError)
