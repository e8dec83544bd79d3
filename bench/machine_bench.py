"""The machine: dispatch against `transitions` and `python-statemachine`,
durable and group-committed actions against the disk and the JS Coremachine,
batched appends to a core a machine follows against a bare core, a whole
`coremachine state` process against an empty Python, restore time, memory and
bytes per action."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from bench.common import ROOT, Report, interleaved, rate, workdir
from bench.counter_machine import DEFINITION, increment

import coremachine_embedded as cm
from coremachine_embedded import Coremachine, create_machine


def ensure_peers() -> None:
    missing = []
    for module, pkg in (("transitions", "transitions==0.9.3"),
                        ("statemachine", "python-statemachine==3.2.2")):
        try:
            __import__(module)
        except ImportError:
            missing.append(pkg)
    if missing:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q"] + missing, check=True)


def dispatch_rates(n: int) -> dict:
    """Events/s of one in-memory transition (lookup, action, state change)."""
    ensure_peers()
    from statemachine import State, StateMachine
    from transitions import Machine

    definition = create_machine(DEFINITION)
    running = definition.state_ids["running"]

    def ours() -> None:
        ctx = {"running": True, "counter": 0}
        sid = running
        candidates = definition.candidates
        for _ in range(n):
            t = candidates(sid, "INCREMENT")[0]
            t.action(ctx, None)
            sid = t.target_id

    class Model:
        counter = 0

        def on_inc(self) -> None:
            self.counter += 1

    model = Model()
    machine = Machine(model=model, states=["idle", "running"], initial="running")
    machine.add_transition("INCREMENT", "running", "running", after="on_inc")

    def with_transitions() -> None:
        for _ in range(n):
            model.INCREMENT()

    class Counter(StateMachine):
        idle = State(initial=True)
        running = State()
        start = idle.to(running)
        increment = running.to(running)

        def __init__(self) -> None:
            self.counter = 0
            super().__init__()

        def on_increment(self) -> None:
            self.counter += 1

    sm = Counter()
    sm.start()
    m = max(1, n // 20)

    def with_statemachine() -> None:
        for _ in range(m):
            sm.increment()

    table = {("running", "INCREMENT"): ("running", increment)}

    def plain_dict() -> None:
        ctx = {"counter": 0}
        state = "running"
        for _ in range(n):
            state, fn = table[(state, "INCREMENT")]
            fn(ctx, None)

    return {"ours": rate(n, ours), "transitions": rate(n, with_transitions),
            "python-statemachine": rate(m, with_statemachine), "dict": rate(n, plain_dict)}


def js(payload: dict) -> dict:
    from tests.interop import jsenv
    env = jsenv.ensure("coremachine")
    return jsenv.run(env, os.path.join(ROOT, "bench", "js", "coremachine_bench.mjs"), payload)


def attached_appends(base: str, batches: int) -> dict:
    """Blocks/s of ``append([1000 machine entries])`` to a bare core and to a
    core a Coremachine follows (nobody subscribed: it decodes the newest entry
    of each append, not all of them), in alternating rounds."""
    entries = [json.dumps({"state": "running", "context": {"running": True, "counter": i},
                           "event": "INCREMENT"}, separators=(",", ":")).encode()
               for i in range(1000)]
    cores = {}
    for name in ("bare", "machine"):
        cores[name] = cm.Core(os.path.join(base, "attached-" + name),
                              key_pair=cm.KeyPair.generate(), durability="batch")
    cube = Coremachine(cores["machine"], DEFINITION)

    def appender(core: cm.Core):
        def run() -> None:
            for _ in range(batches):
                core.append(entries)
            core.flush()
        return run
    r = interleaved(batches * len(entries), {n: appender(c) for n, c in cores.items()})
    assert cube.context["counter"] == 999 and cube.length == cores["machine"].length
    for core in cores.values():
        core.close()
    return r


def state_process(base: str, repeat: int) -> dict:
    """Median wall seconds of a whole `coremachine state STORE` process and of
    `python3 -c pass`, run alternately."""
    import statistics
    import time
    store = os.path.join(base, "state-store")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def cli(*args: str) -> list:
        return [sys.executable, "-m", "coremachine_embedded"] + list(args)
    for args in (("init", store, "--machine", "bench.counter_machine:DEFINITION",
                  "--durability", "batch"), ("act", store, "START", "3"),
                 ("act", store, "INCREMENT")):
        subprocess.run(cli(*args), check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    runs: dict = {"state": [], "pass": []}
    for _ in range(repeat):
        for name, args in (("pass", [sys.executable, "-c", "pass"]),
                           ("state", cli("state", store))):
            t0 = time.perf_counter()
            out = subprocess.run(args, check=True, env=env, cwd=ROOT, stdout=subprocess.PIPE)
            runs[name].append(time.perf_counter() - t0)
            assert name == "pass" or out.stdout.startswith(b"state    running"), out.stdout
    return {name: statistics.median(r) for name, r in runs.items()}


RESTORE_PROBE = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[2])
    from bench.common import rss_kib
    from bench.counter_machine import DEFINITION
    import coremachine_embedded as cm
    from coremachine_embedded import Coremachine   # imported before the clock, as JS's are
    t0 = time.perf_counter()
    core = cm.Core(sys.argv[1])
    cube = Coremachine(core, DEFINITION)
    ms = (time.perf_counter() - t0) * 1000
    print(json.dumps({"open_ms": ms, "rss_kib": rss_kib(), "counter": cube.context["counter"]}))
""")


def run(report: Report, quick: bool) -> None:
    section = "machine"
    print("\n== the machine (backend: %s) ==" % cm.backend, flush=True)
    base = workdir("machine-")
    try:
        n = 200000 if quick else 1000000
        d = dispatch_rates(n)
        report.add(section, "dispatch events/s (compiled table, in memory)", d["ours"], "/s",
                   "transitions 0.9.3", d["transitions"], ">= 10x", d["ours"] >= 10 * d["transitions"])
        report.add(section, "  vs python-statemachine 3.2.2", d["ours"], "/s",
                   "python-statemachine", d["python-statemachine"])
        report.add(section, "  vs a plain dict dispatch", d["ours"], "/s", "dict", d["dict"])

        from bench.log_bench import raw_fdatasync
        n_sync = 200 if quick else 1000
        core = cm.Core(os.path.join(base, "sync"), key_pair=cm.KeyPair.generate())
        cube = Coremachine(core, DEFINITION)
        cube.action("START", 0)
        r = interleaved(n_sync, {
            "raw": lambda: raw_fdatasync(base, n_sync),
            "ours": lambda: [cube.action("INCREMENT") for _ in range(n_sync)]})
        raw, durable = r["raw"], r["ours"]
        core.close()
        report.add(section, "durable actions/s (sync: one fdatasync each)", durable, "/s",
                   "raw write+fdatasync loop", raw, ">= 0.8x", durable >= 0.8 * raw)

        n_batch = 20000 if quick else 100000
        path = os.path.join(base, "batch")
        core = cm.Core(path, key_pair=cm.KeyPair.generate(), durability="batch")
        cube = Coremachine(core, DEFINITION)
        cube.action("START", 0)

        def group() -> None:
            for _ in range(n_batch):
                cube.action("INCREMENT")
            core.flush()
        grouped = interleaved(n_batch, {"group": group}, rounds=3)["group"]
        report.add(section, "actions/s with group commit (durability=batch)", grouped, "/s",
                   target="> 100k", ok=grouped > 100000)
        core.close()

        a = attached_appends(base, 5 if quick else 20)
        report.add(section, "blocks/s, append([1000 entries]) to a followed core", a["machine"],
                   "/s", "the same appends to a bare core", a["bare"], ">= 0.5x",
                   a["machine"] >= 0.5 * a["bare"])
        p = state_process(base, 7 if quick else 21)
        report.add(section, "a whole `coremachine state STORE` process", p["state"] * 1000, "ms",
                   "python3 -c pass", p["pass"] * 1000, "<= 3x", p["state"] <= 3 * p["pass"],
                   lower_is_better=True)
        n_log = 20000
        js_dir = os.path.join(base, "js")
        os.makedirs(js_dir)
        try:
            jw = js({"count": n_log, "dir": js_dir, "phase": "write"})
            jr = js({"count": n_log, "dir": js_dir, "phase": "restore"})
        except Exception as e:  # no node: say so, measure the rest
            print("  (JS Coremachine not measured: %s)" % e)
            jw = jr = {}
        if jw:
            report.add(section, "  group commit vs JS sequential await action()", grouped, "/s",
                       "JS Coremachine 1.1.0", jw["actions_per_s"])
            report.add(section, "  durable (fsync each) vs JS (no fsync)", durable, "/s",
                       "JS Coremachine 1.1.0", jw["actions_per_s"])

        # A 20,000-action log: reopen + restore, memory, bytes on disk.
        path20 = os.path.join(base, "log20k")
        core = cm.Core(path20, key_pair=cm.KeyPair.generate(), durability="none")
        cube = Coremachine(core, DEFINITION)
        cube.action("START", 0)
        for _ in range(n_log - 1):
            cube.action("INCREMENT")
        core.close()
        out = subprocess.run([sys.executable, "-c", RESTORE_PROBE, path20, ROOT], check=True,
                             capture_output=True, text=True).stdout
        probe = json.loads(out)
        assert probe["counter"] == n_log - 1
        report.add(section, "reopen + restore a 20,000-action log", probe["open_ms"], "ms",
                   "JS Coremachine", jr.get("open_ms"), lower_is_better=True)
        report.add(section, "RSS after restore (whole process)", probe["rss_kib"] / 1024, "MiB",
                   "JS Coremachine", jr["rss"] / 2**20 if jr else None, lower_is_better=True)
        ours_bytes = sum(os.path.getsize(os.path.join(path20, f)) for f in os.listdir(path20))
        report.add(section, "bytes on disk per action (20,000 actions)", ours_bytes / n_log, "B",
                   "JS Coremachine", jw["bytes"] / n_log if jw else None, lower_is_better=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)
