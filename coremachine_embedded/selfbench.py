"""``coremachine bench``: quick figures on this machine, from an installed
package (the repository's ``make bench`` adds the comparisons with the
JavaScript original and other libraries).

Measured: the cost of ``import coremachine_embedded`` (time and modules, in a
fresh interpreter, against ``import json, asyncio``), durable and grouped
appends, actions, and opening a store.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

_IMPORT_PROBE = """
import sys, time
before = set(sys.modules)
t0 = time.perf_counter()
import {what}
dt = time.perf_counter() - t0
new = sorted(set(sys.modules) - before)
print(repr((dt, new)))
"""


def import_cost(what: str, repeat: int = 7) -> Dict[str, Any]:
    """Median seconds to import ``what`` in a fresh interpreter, and the
    modules it loads."""
    times = []
    modules: List[str] = []
    env = dict(os.environ)
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE.format(what=what)],
                             capture_output=True, text=True, check=True, env=env,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        dt, modules = eval(out.stdout.strip().splitlines()[-1], {"__builtins__": {}})
        times.append(dt)
    return {"seconds": statistics.median(times), "modules": modules}


def _rate(n: int, fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def run(quick: bool = False, out: Any = None) -> Dict[str, Any]:
    """Measure and print; returns the figures."""
    from . import Core, Coremachine, KeyPair, backend
    out = out or sys.stdout
    def say(*parts: Any) -> None:
        print(*parts, file=out, flush=True)
    figures: Dict[str, Any] = {"backend": backend}
    ours = import_cost("coremachine_embedded", 3 if quick else 7)
    peer = import_cost("json, asyncio", 3 if quick else 7)
    figures["import"] = {"seconds": ours["seconds"], "modules": len(ours["modules"]),
                         "json_asyncio_seconds": peer["seconds"],
                         "json_asyncio_modules": len(peer["modules"]),
                         "heavy": [m for m in ours["modules"] if m.split(".")[0] in
                                   ("asyncio", "json", "ssl", "email", "http", "pysodium")]}
    say("import coremachine_embedded: %.1f ms, %d modules (import json, asyncio: %.1f ms, %d "
        "modules) -> %.2fx" % (ours["seconds"] * 1000, len(ours["modules"]),
                               peer["seconds"] * 1000, len(peer["modules"]),
                               ours["seconds"] / peer["seconds"]))
    base = tempfile.mkdtemp(prefix="coremachine-bench-")
    try:
        block = bytes(64)
        n = 200 if quick else 1000
        with Core(os.path.join(base, "sync"), key_pair=KeyPair.generate()) as core:
            figures["durable_appends_per_s"] = _rate(n, lambda: [core.append(block)
                                                                 for _ in range(n)])
        m = 20000 if quick else 100000
        with Core(os.path.join(base, "batch"), key_pair=KeyPair.generate(),
                  durability="batch") as core:
            figures["batch_appends_per_s"] = _rate(m, lambda: [core.append(block)
                                                               for _ in range(m)])
        with Core(os.path.join(base, "machine"), key_pair=KeyPair.generate(),
                  durability="batch") as core:
            machine = Coremachine(core, {"initial": "on", "context": {"n": 0}, "states": {
                "on": {"on": {"TICK": {"action": lambda ctx, v: ctx.update(n=ctx["n"] + 1)}}}}})
            k = m // 4
            figures["actions_per_s"] = _rate(k, lambda: [machine.action("TICK")
                                                         for _ in range(k)])
        t = []
        for _ in range(10):
            t0 = time.perf_counter()
            Core(os.path.join(base, "batch")).close()
            t.append(time.perf_counter() - t0)
        figures["open_ms"] = statistics.median(t) * 1000
    finally:
        shutil.rmtree(base, ignore_errors=True)
    say("durable appends (sync): %.0f/s; appends (batch): %.0f/s; actions (batch): %.0f/s; "
        "open: %.2f ms (backend %s)" % (figures["durable_appends_per_s"],
                                        figures["batch_appends_per_s"],
                                        figures["actions_per_s"], figures["open_ms"], backend))
    return figures


if __name__ == "__main__":
    json.dump(run("--quick" in sys.argv), sys.stdout, indent=1)
