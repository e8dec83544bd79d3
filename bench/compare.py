"""``python3 -m bench.compare OLD_ROOT [--rounds N] [--sections log,machine,sync]
[--instructions]``: the same measures on an older checkout (built: ``python3
setup.py build_ext --inplace``) and on this one, in alternating rounds in one
session, so that "no benchmark got slower" is a ratio from one run rather than
a memory of an old one.  Prints the medians and this checkout's advantage
(> 1x: faster), and the median and range of the rounds' own ratios.

Each round runs ``bench/compare_probe.py`` once per checkout (a fresh process
with that checkout first on sys.path) and times a whole ``coremachine state
STORE`` process of each.

On a shared VM a sub-millisecond measure of the same code can swing 0.6x-1.6x
between rounds.  ``--instructions`` (needs valgrind) also counts the
user-space instructions of the CPU-bound measures, which do not depend on the
neighbours: a difference there is the code's.  System calls are not counted."""
from __future__ import annotations

import argparse
import json
import os
import re
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


# work name in compare_probe.counted -> (measure, times it is done)
COUNTED = {
    "open": ("instructions to open a 200k-block store", 200),
    "restore": ("instructions to reopen + restore a 50k-action log", 200),
    "dispatch": ("instructions per dispatched event (in memory)", 100000),
    "action": ("instructions per action (durability=none)", 20000),
    "pull": ("instructions per 20k-block pull over UDP loopback", 1),
}


def _instructions(command: List[str], env: Dict[str, str]) -> int:
    """User-space instructions a whole process executes (valgrind's count)."""
    out = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=no",
                          "--cachegrind-out-file=/dev/null"] + command,
                         env=dict(env, PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True, check=True)
    found = re.search(r"I\s+refs:\s+([\d,]+)", out.stderr)
    if found is None:
        raise SystemExit("valgrind printed no instruction count:\n" + out.stderr[-2000:])
    return int(found.group(1).replace(",", ""))


def count_instructions(roots: Dict[str, str], base: str,
                       stores: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    """Instructions per call of each counted work, and of a whole ``coremachine
    state`` process, per checkout (start-up subtracted by a run doing it 0 times)."""
    counts: Dict[str, Dict[str, float]] = {"old": {}, "new": {}}
    for name, root in roots.items():
        env = _env(root, base)
        work = os.path.join(base, "counted-" + name)
        os.mkdir(work)
        subprocess.run([sys.executable, PROBE, root, work, "prepare"], check=True, env=env)
        for work_name, (measure, times) in COUNTED.items():
            probe = [sys.executable, PROBE, root, work, "count", work_name]
            idle = _instructions(probe + ["0"], env)
            busy = _instructions(probe + [str(times)], env)
            counts[name][measure] = (busy - idle) / times
        counts[name]["instructions for a whole `coremachine state STORE` process"] = \
            _instructions([sys.executable, "-m", "coremachine_embedded", "state",
                           stores[name]], env)
        print("instructions of %s counted" % name, file=sys.stderr)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.compare")
    parser.add_argument("old", help="root of the older checkout (built in place)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sections", default="log,machine,sync")
    parser.add_argument("--instructions", action="store_true",
                        help="also count instructions under valgrind (about 2 minutes)")
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
        counts = count_instructions(roots, base, stores) if args.instructions else None
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print("%-66s %14s %14s %8s  %s" % ("median of %d rounds" % args.rounds, "old", "new",
                                       "new/old", "per round: median [lowest-highest]"))
    for measure in runs["new"]:
        olds, news = runs["old"][measure], runs["new"][measure]
        lower_better = "lower is better" in measure
        old, new = statistics.median(olds), statistics.median(news)
        # The rounds alternate which checkout goes first, so a round's own ratio
        # cancels the slow drifts of a shared VM that the two medians still carry.
        paired = sorted(o / n if lower_better else n / o for o, n in zip(olds, news))
        print("%-66s %14.4g %14.4g %7.2fx  %.2fx [%.2fx-%.2fx]" % (
            measure, old, new, old / new if lower_better else new / old,
            statistics.median(paired), paired[0], paired[-1]))
    if counts is not None:
        print("%-66s %14s %14s %8s" % ("user-space instructions", "old", "new", "new/old"))
        for measure, old in counts["old"].items():
            new = counts["new"][measure]
            print("%-66s %14.4g %14.4g %7.2fx" % (measure, old, new, old / new))


if __name__ == "__main__":
    main()
