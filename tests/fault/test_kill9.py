"""kill -9 of a writer process in the middle of appends, then reopen: the store
opens, verifies, and holds at least every append the writer reported."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap

import pytest

import coremachine_embedded as cm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WRITER = textwrap.dedent("""
    import sys
    import coremachine_embedded as cm
    core = cm.Core(sys.argv[1], key_pair=cm.KeyPair.from_seed(bytes(32)),
                   durability=sys.argv[2], checkpoint_bytes=8192)
    n = core.length
    while True:
        if n % 5 == 4:
            n = core.append([b"entry %d" % i for i in range(n, n + 3)])
        else:
            n = core.append(b"entry %d" % n)
        print(n, flush=True)
""")


def expected(i: int) -> bytes:
    return b"entry %d" % i


@pytest.mark.parametrize("durability", ["sync", "batch"])
def test_kill_writer_mid_append(tmp_path, durability: str) -> None:
    store = str(tmp_path / "store")
    rng = random.Random(9)
    reported = 0
    for round_ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, store, durability],
                                stdout=subprocess.PIPE, cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=ROOT))
        assert proc.stdout is not None
        stop_after = rng.randrange(20, 400)
        seen = 0
        for line in proc.stdout:
            reported = max(reported, int(line))
            seen += 1
            if seen >= stop_after:
                break
        proc.send_signal(signal.SIGKILL)
        rest = proc.stdout.read()
        for line in rest.split():
            reported = max(reported, int(line))
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        with cm.Core(store) as core:
            assert core.length >= reported, (round_, core.length, reported)
            assert core.verify() == core.length
            assert [core.get(i) for i in range(core.length)] == [
                expected(i) for i in range(core.length)]
            reported = core.length
