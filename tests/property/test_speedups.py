"""The C twins in _speedups.pyx agree with their pure-Python references:
``copy_json`` copies to equal values of the same types, sharing no container
with the original; ``json_safe`` says what ``_json._scan`` says."""
from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremachine_embedded import _json
from coremachine_embedded.snapshot import copy_json_python
from tests.compiled import extension

_speedups = extension("_speedups")


class Key(str):
    pass


class Number(int):
    pass


class Mapping(dict):  # type: ignore[type-arg]
    def items(self) -> Any:  # a subclass that orders its items its own way
        return reversed(list(super().items()))


edge_ints = st.sampled_from([0, 1, -1, 2**53 - 1, -(2**53 - 1), 2**53, -(2**53), 2**63,
                             -(2**63) - 1, 2**100, True, False])
edge_floats = st.sampled_from([0.0, -0.0, 1.0, 1e-4, -1e-4, 9.99e-5, 1e15, -1e15, 1e15 - 1,
                               123.5, 1e14 + 0.5, float("inf"), float("nan"), 0.1, 2.5e-3])
keys = st.one_of(st.text(max_size=6), st.sampled_from(
    ["0", "7", "01", "-1", "1.0", "4294967294", "4294967295", "12345678901", "", "٣"]),
    st.integers(0, 5000).map(str), st.builds(Key, st.text(max_size=3)))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**60, 2**60), edge_ints,
                    st.floats(allow_nan=True, allow_infinity=True), edge_floats,
                    st.text(max_size=8), st.builds(Number, st.integers(0, 9)),
                    st.just(b"bytes"), st.just(object))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(keys, inner, max_size=5),
    st.dictionaries(st.text(max_size=3), inner, max_size=3).map(Mapping)), max_leaves=40)


def same_shape(a: Any, b: Any) -> None:
    assert type(a) is type(b), (a, b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            same_shape(a[k], b[k])
    elif isinstance(a, list):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            same_shape(x, y)
    else:
        assert a is b or a == b or (a != a and b != b)


def containers(v: Any) -> set:
    out = set()
    if isinstance(v, (dict, list, tuple)):
        out.add(id(v))
        for x in (v.values() if isinstance(v, dict) else v):
            out |= containers(x)
    return out


@settings(max_examples=400)
@given(values)
def test_copies_agree(value: Any) -> None:
    c = _speedups.copy_json(value)
    same_shape(c, copy_json_python(value))
    assert not containers(c) & containers(value)


@settings(max_examples=400)
@given(values)
def test_fast_path_verdicts_agree(value: Any) -> None:
    assert _speedups.json_safe(value) == _json.scan_ok(value)


def test_deep_values() -> None:
    deep: Any = 1
    for _ in range(250):
        deep = [deep]
    assert _speedups.json_safe(deep) is _json.scan_ok(deep) is False
    assert _speedups.json_safe(deep[0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]
                               [0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0][0]
                               [0][0][0][0][0][0][0][0][0][0][0]) is True
    same_shape(_speedups.copy_json(deep), copy_json_python(deep))
    for _ in range(2000):
        deep = {"a": deep}
    with pytest.raises(RecursionError):
        _speedups.copy_json(deep)
