"""Stores written by every released on-disk format stay readable, and the
current format does not change without a version bump (docs/format.md,
"Changing the format").

``tests/fixtures/format-vN/`` holds what the code of format N wrote (made by
``tests/fixtures/make_fixtures.py``): a writer with records in its wal, a compat
writer, a truncated store, a store whose last append died half-written and a
sparse replica, plus operation sequences with the outcomes and file hashes they
produced.  The suite runs once per backend, so both read every fixture.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List

import pytest

import coremachine_embedded as cm
from coremachine_embedded import caps
from tests.fixtures import recipes

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "fixtures")
VERSIONS = sorted(int(d[len("format-v"):]) for d in os.listdir(FIXTURES)
                  if d.startswith("format-v"))
BUMP = ("the on-disk format changed but FORMAT_VERSION is still %d: bump CM_FORMAT_VERSION "
        "(csrc/cm.h) and caps.FORMAT_VERSION, add the migration and run "
        "tests/fixtures/make_fixtures.py (docs/format.md, 'Changing the format')"
        % caps.FORMAT_VERSION)


def _load(version: int, name: str) -> Any:
    with open(os.path.join(FIXTURES, "format-v%d" % version, name)) as f:
        return json.load(f)


def _stores() -> List[Any]:
    return [(v, name) for v in VERSIONS for name in sorted(_load(v, "stores.json"))]


def test_every_format_up_to_the_current_one_has_fixtures() -> None:
    assert VERSIONS == list(range(1, caps.FORMAT_VERSION + 1))


@pytest.mark.parametrize("version,name", _stores())
def test_fixture_store_opens_reads_and_verifies(tmp_path, version: int, name: str) -> None:
    expected: Dict[str, Any] = _load(version, "stores.json")[name]
    copy = str(tmp_path / name)
    shutil.copytree(os.path.join(FIXTURES, "format-v%d" % version, name), copy)
    got = recipes.describe(copy)
    if version == caps.FORMAT_VERSION:
        assert got == expected
    else:  # a migrated store: the same log, whatever the migration wrote
        for field in ("key", "length", "fork", "contiguous_length", "byte_length",
                      "tree_hash", "writable", "compat", "signature", "blocks"):
            assert got[field] == expected[field], field
    with cm.Core(copy) as core:
        assert core.verify() == expected["contiguous_length"]
        if core.writable:
            length = core.append(b"written by format %d" % caps.FORMAT_VERSION)
            assert core.get(length - 1) == b"written by format %d" % caps.FORMAT_VERSION
    with cm.Core(copy) as core:
        assert core.verify() == core.contiguous_length


@pytest.mark.parametrize("name", recipes.STORES)
def test_current_format_writes_its_fixtures_byte_for_byte(tmp_path, name: str) -> None:
    dst = str(tmp_path / "store")
    recipes.build_store(name, recipes.fresh(str(tmp_path / "work")), dst)
    committed = os.path.join(FIXTURES, "format-v%d" % caps.FORMAT_VERSION, name)
    assert sorted(os.listdir(dst)) == sorted(os.listdir(committed)), BUMP
    for file in os.listdir(dst):
        with open(os.path.join(dst, file), "rb") as a, \
                open(os.path.join(committed, file), "rb") as b:
            assert a.read() == b.read(), "%s/%s: %s" % (name, file, BUMP)


def _scenario_chunks(size: int = 25) -> List[range]:
    count = len(_load(caps.FORMAT_VERSION, "scenarios.json")["scenarios"])
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


@pytest.mark.parametrize("chunk", _scenario_chunks(), ids=lambda r: "%d-%d" % (r[0], r[-1]))
def test_scenarios_give_the_same_outcomes_and_files(tmp_path, chunk: range) -> None:
    """Writers and replicas driven through recorded operations (appends,
    truncations, flushes, checkpoints, reopens, proofs, runs) return what they
    returned and write the same bytes as the code that recorded them."""
    data = _load(caps.FORMAT_VERSION, "scenarios.json")
    assert data["format_version"] == caps.FORMAT_VERSION
    for i in chunk:
        scenario = data["scenarios"][i]
        got = recipes.replay(recipes.fresh(str(tmp_path / str(i))), scenario)
        assert got["outcomes"] == scenario["outcomes"], "scenario %d" % i
        assert (got["open"], got["closed"]) == (scenario["open"], scenario["closed"]), \
            "scenario %d: %s" % (i, BUMP)
