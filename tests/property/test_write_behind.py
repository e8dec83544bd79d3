"""Store files keep their tree and data writes in memory until they are
synced (write-behind: csrc/cm_io_posix.c and its twin storage.OSFile): reads
must see them, both backends must leave the same bytes on disk while open and
after close, and a process that dies without closing must leave a store that
opens with every append it made (the wal holds them; the tree and data files
are rebuilt from it)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from typing import Any, Dict, List, Tuple

from hypothesis import given, settings
from hypothesis import strategies as st

from coremachine_embedded import _pure
from coremachine_embedded.caps import Durability
from coremachine_embedded.storage import WRITE_BEHIND
from tests.compiled import extension

_core = extension("_core")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = bytes(range(32)) + bytes(32)
FILES = ("header", "wal", "tree", "data")
WINDOW = WRITE_BEHIND

# Blocks around the window's size too: a larger write goes straight to the file.
block = st.one_of(st.binary(max_size=200), st.integers(WINDOW - 64, WINDOW + 64).map(
    lambda n: bytes([n % 251]) * n))
Op = Tuple[str, Any]
ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(block, min_size=1, max_size=5)),
    st.tuples(st.just("many"), st.integers(1, 400)),       # small appends: the window fills
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("checkpoint"), st.none()),
    st.tuples(st.just("reopen"), st.none()),
), min_size=1, max_size=12)


def _keypair(impl: Any) -> bytes:
    pk, sk = impl.keypair_from_seed(SECRET[:32])
    return bytes(sk)


def open_log(impl: Any, d: str, create: bool = False) -> Any:
    return impl.Log(d, create=create, secret_key=_keypair(impl), key=None, manifest=None,
                    compat=False, durability=Durability.NONE, checkpoint_bytes=64 << 10,
                    max_block_size=0)


def run_ops(impl: Any, d: str, script: List[Op], model: List[bytes]) -> Any:
    """Apply ``script``; after every step every block reads back as the model says."""
    log = open_log(impl, d, create=True)
    for kind, arg in script:
        if kind == "append":
            log.append(list(arg))
            model.extend(arg)
        elif kind == "many":
            values = [b"small %d" % (len(model) + i) for i in range(arg)]
            for value in values:
                log.append([value])
            model.extend(values)
        elif kind == "truncate":
            n = int(arg * len(model))
            log.truncate(n, log.fork + 1)
            del model[n:]
        elif kind == "checkpoint":
            log.checkpoint()
        else:
            log.close()
            log = open_log(impl, d)
        assert log.length == len(model)
        if model:
            assert log.get_range(0, len(model)) == model
            assert log.get(len(model) - 1) == model[-1]
    return log


def files(d: str) -> Dict[str, bytes]:
    out = {}
    for name in FILES:
        with open(os.path.join(d, name), "rb") as f:
            out[name] = f.read()
    return out


@settings(max_examples=20, deadline=None)
@given(script=ops)
def test_reads_see_pending_writes_and_both_backends_write_the_same(tmp_path_factory: Any,
                                                                     script: List[Op]) -> None:
    base = str(tmp_path_factory.mktemp("wb"))
    dirs, logs = [], []
    for impl in (_core, _pure):
        d = os.path.join(base, impl.__name__.rsplit(".", 1)[-1])
        model: List[bytes] = []
        logs.append(run_ops(impl, d, script, model))
        dirs.append(d)
    assert files(dirs[0]) == files(dirs[1])   # open: the same writes reached the disk
    for log in logs:
        log.close()
    assert files(dirs[0]) == files(dirs[1])


CHILD = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, sys.argv[1])
    from coremachine_embedded import _core
    from tests.property.test_write_behind import open_log, run_ops
    script = [tuple(op) for op in json.loads(sys.stdin.read())]
    for op in script:
        if op[0] == "append":
            op[1][:] = [bytes.fromhex(b) for b in op[1]]
    model = []
    log = run_ops(_core, sys.argv[2], script, model)
    print(json.dumps([b.hex() for b in model]), flush=True)
    os._exit(0)   # die with the tree and data writes still in memory
""")


@settings(max_examples=12, deadline=None)
@given(script=ops)
def test_a_process_that_dies_without_closing_loses_nothing(tmp_path_factory: Any,
                                                           script: List[Op]) -> None:
    d = os.path.join(str(tmp_path_factory.mktemp("wb-crash")), "store")
    wire = json.dumps([[k, [b.hex() for b in a] if k == "append" else a] for k, a in script])
    out = subprocess.run([sys.executable, "-c", CHILD, ROOT, d], input=wire, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    model = [bytes.fromhex(b) for b in json.loads(out)]
    log = open_log(_core, d)
    try:
        assert log.length == len(model)
        if model:
            assert log.get_range(0, len(model)) == model
        assert log.contiguous == len(model)
    finally:
        log.close()
