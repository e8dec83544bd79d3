"""``python3 -m bench.compare OLD_ROOT [--rounds N] [--sections log,machine,sync]``:
the same measures on an older checkout (built: ``python3 setup.py build_ext
--inplace``) and on this one, in alternating rounds in one session, so that
"no benchmark got slower" is a ratio from one run rather than a memory of an
old one.  Prints the medians and this checkout's advantage (> 1x: faster).

Each round runs ``bench/compare_probe.py`` once per checkout (a fresh process
with that checkout first on sys.path) and times a whole ``coremachine state
STORE`` process of each."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Dict, List

from bench.common import ROOT, workdir

PROBE = os.path.join(ROOT, "bench", "compare_probe.py")
STATE_PROCESS = "ms for a whole `coremachine state STORE` process (lower is better)"


def _env(root: str, base: str) -> Dict[str, str]:
    # base holds a copy of the machine the state stores are made with (an old
    # checkout's bench/ may not have it)
    path = os.pathsep.join([root, base, os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, PYTHONPATH=path)


def _make_state_store(root: str, base: str, store: str) -> None:
    cli = [sys.executable, "-m", "coremachine_embedded"]
    for args in (["init", store, "--machine", "compare_machine:DEFINITION",
                  "--durability", "batch"], ["act", store, "START", "3"],
                 ["act", store, "INCREMENT"]):
        subprocess.run(cli + args, check=True, env=_env(root, base), cwd=root,
                       stdout=subprocess.DEVNULL)


def _state_ms(root: str, base: str, store: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "coremachine_embedded", "state", store],
                         check=True, env=_env(root, base), cwd=root, stdout=subprocess.PIPE)
    assert out.stdout.startswith(b"state    running"), out.stdout
    return (time.perf_counter() - t0) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.compare")
    parser.add_argument("old", help="root of the older checkout (built in place)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", default="log,machine,sync")
    args = parser.parse_args()
    roots = {"old": os.path.abspath(args.old), "new": ROOT}
    base = workdir("compare-")
    runs: Dict[str, Dict[str, List[float]]] = {"old": {}, "new": {}}
    try:
        shutil.copy(os.path.join(ROOT, "bench", "counter_machine.py"),
                    os.path.join(base, "compare_machine.py"))
        stores = {}
        for name, root in roots.items():
            stores[name] = os.path.join(base, "state-" + name)
            _make_state_store(root, base, stores[name])
        for round_no in range(args.rounds):
            order = list(roots) if round_no % 2 == 0 else list(roots)[::-1]
            for name in order:
                out = subprocess.run([sys.executable, PROBE, roots[name], base, args.sections],
                                     check=True, env=_env(roots[name], base), stdout=subprocess.PIPE)
                for measure, value in json.loads(out.stdout).items():
                    runs[name].setdefault(measure, []).append(value)
                for _ in range(5):
                    runs[name].setdefault(STATE_PROCESS, []).append(
                        _state_ms(roots[name], base, stores[name]))
            print("round %d of %d done" % (round_no + 1, args.rounds), file=sys.stderr)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("%-66s %14s %14s %8s" % ("median of %d rounds" % args.rounds, "old", "new",
                                   "new/old"))
    for measure in runs["new"]:
        old = statistics.median(runs["old"][measure])
        new = statistics.median(runs["new"][measure])
        advantage = old / new if "lower is better" in measure else new / old
        print("%-66s %14.4g %14.4g %7.2fx" % (measure, old, new, advantage))


if __name__ == "__main__":
    main()
