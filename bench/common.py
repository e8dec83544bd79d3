"""Helpers shared by the benchmarks: timing, RSS, result table, JS runner."""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
WORK = os.environ.get("COREMACHINE_BENCH_DIR", os.path.join(ROOT, ".cache", "bench"))

sys.path.insert(0, ROOT)


def workdir(prefix: str) -> str:
    os.makedirs(WORK, exist_ok=True)
    return tempfile.mkdtemp(prefix=prefix, dir=WORK)


def rate(count: int, fn: Callable[[], Any]) -> float:
    """Operations per second of fn, which performs ``count`` operations."""
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def interleaved(count: int, fns: Dict[str, Callable[[], Any]], rounds: int = 5) -> Dict[str, float]:
    """Median ops/s of each fn (each performing ``count`` operations), run in
    alternating rounds so that a slow patch of the shared disk or CPU hits
    every contender alike."""
    runs: Dict[str, List[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            runs[name].append(rate(count, fn))
    return {name: statistics.median(r) for name, r in runs.items()}


def median_time(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Report:
    """Collects rows ``(name, value, unit, peer, ratio, target, ok)`` and prints them."""

    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []

    def add(self, section: str, name: str, value: float, unit: str,
            peer: Optional[str] = None, peer_value: Optional[float] = None,
            target: Optional[str] = None, ok: Optional[bool] = None,
            lower_is_better: bool = False) -> None:
        row = {"section": section, "name": name, "value": value, "unit": unit,
               "peer": peer, "peer_value": peer_value, "target": target, "ok": ok,
               "lower_is_better": lower_is_better}
        if peer_value:
            row["ratio"] = value / peer_value
            # how many times better we are, whichever direction "better" is
            row["advantage"] = peer_value / value if lower_is_better else value / peer_value
        self.rows.append(row)
        line = "  %-52s %14s %-10s" % (name, _fmt(value), unit)
        if peer_value:
            line += "  %6.2fx %s (%s)%s" % (value / peer_value, peer, _fmt(peer_value),
                                           ", lower is better" if lower_is_better else "")
        if target:
            line += "  target %s: %s" % (target, "ok" if ok else "MISSED")
        print(line, flush=True)

    def save(self, name: str) -> str:
        os.makedirs(RESULTS, exist_ok=True)
        path = os.path.join(RESULTS, name)
        with open(path, "w") as f:
            json.dump({"rows": self.rows, "python": sys.version.split()[0],
                       "time": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)
        return path


def _fmt(v: float) -> str:
    if v >= 100:
        return "{:,.0f}".format(v)
    return "{:.3g}".format(v)
