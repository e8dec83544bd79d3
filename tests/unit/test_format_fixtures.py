"""Stores written by every released on-disk format stay readable, and the
current format does not change without a version bump (docs/format.md,
"Changing the format").

``tests/fixtures/format-vN/`` holds what the code of format N wrote (made by
``tests/fixtures/make_fixtures.py``): a writer with records in its wal, a compat
writer, a truncated store, a store whose last append died half-written and a
sparse replica, plus operation sequences with the outcomes and file hashes they
produced.  The suite runs once per backend, so both read every fixture.

While a store is open, its tree and data files may lag behind its wal: their
writes wait in memory until a sync (write-behind, storage.OSFile and
csrc/cm_io_posix.c), and the wal rebuilds them after a crash.  So an open
store's format is its header, wal and key file, compared byte for byte; its
tree and data files are compared once the store is closed (after opening a
copy taken while open, which replays the wal, for the stores captured open).
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Tuple

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
    recipes.copy_fixture(version, name, copy)
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


LAGGING = ("tree", "data")   # may lag behind the wal while a store is open


def _same_files(got: str, committed: str, name: str, skip: Tuple[str, ...] = ()) -> None:
    assert sorted(os.listdir(got)) == sorted(os.listdir(committed)), BUMP
    for file in os.listdir(got):
        if file in skip:
            continue
        with open(os.path.join(got, file), "rb") as a, \
                open(os.path.join(committed, file), "rb") as b:
            assert a.read() == b.read(), "%s/%s: %s" % (name, file, BUMP)


def _closed_copy(src: str, dst: str) -> str:
    shutil.copytree(src, dst)
    recipes.private_key(dst)   # (a committed fixture's key has the mode git gave it)
    cm.Core(dst).close()
    return dst


@pytest.mark.parametrize("name", recipes.STORES)
def test_current_format_writes_its_fixtures_byte_for_byte(tmp_path, name: str) -> None:
    dst = str(tmp_path / "store")
    recipes.build_store(name, recipes.fresh(str(tmp_path / "work")), dst)
    committed = os.path.join(FIXTURES, "format-v%d" % caps.FORMAT_VERSION, name)
    if name not in recipes.OPEN_STORES:
        _same_files(dst, committed, name)
        return
    _same_files(dst, committed, name, skip=LAGGING)
    _same_files(_closed_copy(dst, str(tmp_path / "got-closed")),
                _closed_copy(committed, str(tmp_path / "committed-closed")), name)


def _without_lagging(hashes: Dict[str, Dict[str, str]]) -> Dict[str, Dict[str, str]]:
    return {core: {f: h for f, h in files.items() if f not in LAGGING}
            for core, files in hashes.items()}


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
        assert _without_lagging(got["open"]) == _without_lagging(scenario["open"]), \
            "scenario %d: %s" % (i, BUMP)
        assert got["closed"] == scenario["closed"], "scenario %d: %s" % (i, BUMP)
