"""The store never undoes a committed truncate (issue 10, line 8).

A writer process appends, truncates (once to the same length: only the fork
changes), appends, truncates again, appends, asking for its signature after
every step (what it may have handed out), and dies without closing.  Then
every store file in turn is cut at every 8-byte offset.  Each cut store
either refuses to open with a CorruptionError naming the cut file, or opens
at a fork at least the committed one, verifies (or names the cut file), and
holds no state that contradicts a signature it handed out: on its fork, every
published length is at most its own (a writer that lost records moves to a
new fork).  Both backends; sync and batch durability.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Tuple

import pytest

import coremachine_embedded as cm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FILES = ("header", "wal", "tree", "data", "secret_key")
COMMITTED_FORK = 2

WRITER = textwrap.dedent("""
    import json, os, sys
    import coremachine_embedded as cm
    core = cm.Core(sys.argv[1], key_pair=cm.KeyPair.from_seed(bytes(32)),
                   durability=sys.argv[2])
    published = []
    def publish():
        published.append((core.fork, core.length, core.tree_hash().hex(),
                          core.signature.hex()))
    core.append([b"old %d" % i for i in range(16)]); publish()
    core.truncate(16); publish()                       # fork 1: the same blocks
    core.append(b"new 0"); publish()
    core.append([b"new 1", b"new 2"]); publish()
    core.truncate(12); publish()                       # fork 2: the committed fork
    core.append(b"newer 0"); publish()
    core.append([b"newer 1", b"newer 2"]); publish()
    print(json.dumps(published), flush=True)
    os._exit(0)                                        # dies without closing
""")

Published = List[Tuple[int, int, str, str]]


def make_store(path: str, durability: str) -> Published:
    out = subprocess.run([sys.executable, "-c", WRITER, path, durability], check=True,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                         capture_output=True, text=True, timeout=60).stdout
    return [tuple(p) for p in json.loads(out)]  # type: ignore[misc]


def outcome(path: str, cut_file: str, published: Published) -> str:
    """Open a cut store and check it; what happened, for the tally."""
    try:
        core = cm.Core(path)
    except cm.CorruptionError as e:
        assert os.path.basename(str(e.filename)) == cut_file, (cut_file, e)
        return "refused"
    with core:
        assert core.fork >= COMMITTED_FORK, "opened at fork %d: the truncate was undone" % (
            core.fork)
        try:
            core.verify()
        except cm.CorruptionError as e:
            assert os.path.basename(str(e.filename)) == cut_file, (cut_file, e)
            return "damaged blocks"
        for fork, length, tree_hash, _ in published:
            if fork == core.fork:
                assert length <= core.length, (
                    "it signed fork %d length %d, now holds fork %d length %d"
                    % (fork, length, core.fork, core.length))
                if length == core.length:
                    assert core.tree_hash().hex() == tree_hash
        core.append(b"after the cut")   # a state on a fork nobody saw longer
        return "re-forked" if core.recovery.get("forked") else "opened"


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_cutting_any_file_at_any_offset_never_undoes_the_truncate(tmp_path: Any,
                                                                  durability: str) -> None:
    pristine = str(tmp_path / "pristine")
    published = make_store(pristine, durability)
    assert [p[:2] for p in published] == [(0, 16), (1, 16), (1, 17), (1, 19), (2, 12),
                                          (2, 13), (2, 15)]
    tally: Dict[str, Dict[str, int]] = {}
    for name in FILES:
        size = os.path.getsize(os.path.join(pristine, name))
        for cut in range(0, size + 1, 8):
            work = str(tmp_path / "work")
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work)
            with open(os.path.join(work, name), "r+b") as f:
                f.truncate(cut)
            what = outcome(work, name, published)
            tally.setdefault(name, {}).setdefault(what, 0)
            tally[name][what] += 1
    # every file was cut; losing the wal's last records re-forks the writer
    assert set(tally) == set(FILES)
    assert tally["wal"].get("re-forked", 0) > 0, tally
    assert tally["header"].get("refused", 0) > 0 and tally["secret_key"].get("refused", 0) > 0
