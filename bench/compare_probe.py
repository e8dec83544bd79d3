"""One round of ``bench/compare.py``'s measures, run in the checkout whose root
is ``argv[1]`` (it comes first on sys.path): prints one JSON object, measure
name -> value.  Only the public API both an old and a new checkout have is
used, so the same probe measures either.

``probe ROOT WORK prepare`` writes the stores that ``probe ROOT WORK count
WORK_NAME TIMES`` opens: one kind of work done TIMES times, which
``bench.compare --instructions`` runs under valgrind to count instructions."""
from __future__ import annotations

import asyncio
import json
import os
import runpy
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict

sys.path.insert(0, sys.argv[1])
WORK = sys.argv[2]

import coremachine_embedded as cm  # noqa: E402
from coremachine_embedded import Coremachine  # noqa: E402
from coremachine_embedded.machine import create_machine  # noqa: E402

BLOCK = bytes(range(64))


# This checkout's bench machine, read by path: an old checkout's bench/ may lack it.
DEFINITION = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "counter_machine.py"))["DEFINITION"]


def per_second(count: int, fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def median_ms(fn: Callable[[], Any], times: int = 51) -> float:
    """Milliseconds of the median of ``times`` calls: a call of well under a
    millisecond timed once (or as a mean of a few) is mostly the noise of the
    machine and of the first call's cold caches."""
    samples = []
    for _ in range(times):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return sorted(samples)[times // 2] * 1000


def new_core(name: str, **kw: Any) -> cm.Core:
    return cm.Core(os.path.join(WORK, name), key_pair=cm.KeyPair.generate(), **kw)


def appends() -> Dict[str, float]:
    out = {}
    core = new_core("batch", durability="batch")
    out["appends/s, durability=batch, one call each"] = per_second(
        50000, lambda: ([core.append(BLOCK) for _ in range(50000)], core.flush()))
    core.close()
    core = new_core("batched")
    chunk = [BLOCK] * 1000
    out["blocks/s, append([1000 x 64 B]), durability=sync"] = per_second(
        200000, lambda: [core.append(chunk) for _ in range(200)])
    out["reads/s, core.get"] = per_second(
        100000, lambda: [core.get(i) for i in range(100000)])
    out["blocks/s verified, core.verify() of 200k"] = per_second(200000, core.verify)
    core.close()
    core = new_core("sync")
    out["durable appends/s (one fdatasync each)"] = per_second(
        300, lambda: [core.append(BLOCK) for _ in range(300)])
    core.close()
    path = os.path.join(WORK, "batched")
    out["ms to open a 200k-block store (lower is better)"] = median_ms(
        lambda: cm.Core(path).close())
    return out


def machine() -> Dict[str, float]:
    out = {}
    definition = create_machine(DEFINITION)
    running = definition.state_ids["running"]

    def dispatch() -> None:
        ctx, sid, candidates = {"running": True, "counter": 0}, running, definition.candidates
        for _ in range(100000):
            t = candidates(sid, "INCREMENT")[0]
            t.action(ctx, None)
            sid = t.target_id
    # the best of three: a pure-CPU loop is only ever slowed by the machine
    out["dispatch events/s (in memory)"] = max(per_second(100000, dispatch) for _ in range(3))

    core = new_core("group", durability="batch")
    cube = Coremachine(core, DEFINITION)
    cube.action("START", 0)
    out["group-committed actions/s"] = per_second(
        50000, lambda: ([cube.action("INCREMENT") for _ in range(50000)], core.flush()))
    core.close()
    path = os.path.join(WORK, "group")
    out["ms to reopen + restore a 50k-action log (lower is better)"] = median_ms(
        lambda: Coremachine(cm.Core(path), DEFINITION).core.close())

    core = new_core("durable")
    cube = Coremachine(core, DEFINITION)
    cube.action("START", 0)
    out["durable actions/s (one fdatasync each)"] = per_second(
        300, lambda: [cube.action("INCREMENT") for _ in range(300)])
    core.close()

    entries = [json.dumps({"state": "running", "context": {"running": True, "counter": i},
                           "event": "INCREMENT"}).encode() for i in range(1000)]
    core = new_core("followed", durability="batch")
    cube = Coremachine(core, DEFINITION)
    out["blocks/s, append([1000 entries]) to a followed core"] = per_second(
        20000, lambda: ([core.append(entries) for _ in range(20)], core.flush()))
    assert cube.context["counter"] == 999
    core.close()
    return out


async def _pull_once(writer: cm.Core) -> float:
    """Seconds a fresh replica takes to pull ``writer`` over UDP loopback."""
    from coremachine_embedded.sync import Endpoint, open_link
    server, client = Endpoint(), Endpoint()
    link, _ = open_link("udp://127.0.0.1:0", listen=True)
    await server.attach(link)
    server.serve(writer)
    peer_link, addr = open_link("udp://127.0.0.1:%d" % link.address[1], listen=False)
    await client.attach(peer_link)
    shutil.rmtree(os.path.join(WORK, "replica"), ignore_errors=True)
    replica = cm.Core(os.path.join(WORK, "replica"), key=writer.key, durability="none")
    t0 = time.perf_counter()
    await client.pull(replica, peer_link, addr)
    seconds = time.perf_counter() - t0
    assert replica.contiguous_length == writer.length
    await client.close()
    await server.close()
    replica.close()
    return seconds


def counter_log(name: str, actions: int, durability: str) -> cm.Core:
    """A new log in WORK holding START and ``actions - 1`` INCREMENTs (left open)."""
    core = new_core(name, durability=durability)
    cube = Coremachine(core, DEFINITION)
    cube.action("START", 0)
    for _ in range(actions - 1):
        cube.action("INCREMENT")
    return core


def sync() -> Dict[str, float]:
    writer = counter_log("served", 20000, "none")
    # the best of three: a fresh process on a shared VM is at times half as fast throughout
    return {"s to pull a 20k-entry log over UDP loopback (lower is better)":
            min(asyncio.run(_pull_once(writer)) for _ in range(3))}


def prepare() -> None:
    """The stores the counted work opens, written at native speed into WORK."""
    core = cm.Core(os.path.join(WORK, "blocks"), key_pair=cm.KeyPair.generate())
    for _ in range(200):
        core.append([BLOCK] * 1000)
    core.close()
    counter_log("actions", 50000, "batch").close()
    counter_log("served", 20000, "none").close()


def counted(work: str, times: int) -> None:
    """``work`` done ``times`` times, for an instruction count under valgrind
    (the count with ``times`` 0 is the start-up to subtract)."""
    if work == "open":
        for _ in range(times):
            cm.Core(os.path.join(WORK, "blocks")).close()
    elif work == "restore":
        for _ in range(times):
            Coremachine(cm.Core(os.path.join(WORK, "actions")), DEFINITION).core.close()
    elif work == "dispatch":
        definition = create_machine(DEFINITION)
        ctx, sid = {"running": True, "counter": 0}, definition.state_ids["running"]
        for _ in range(times):
            t = definition.candidates(sid, "INCREMENT")[0]
            t.action(ctx, None)
            sid = t.target_id
    elif work == "pull":   # one pull first in any case: lazy imports are not its cost
        writer = cm.Core(os.path.join(WORK, "served"), durability="none")
        for _ in range(times + 1):
            asyncio.run(_pull_once(writer))
        writer.close()
    elif work == "action":
        core = new_core("counted", durability="none")
        cube = Coremachine(core, DEFINITION)
        cube.action("START", 0)
        for _ in range(times):
            cube.action("INCREMENT")
        core.close()
        shutil.rmtree(os.path.join(WORK, "counted"))
    else:
        raise SystemExit("no counted work %r" % work)


if __name__ == "__main__":
    if sys.argv[3] == "prepare":
        prepare()
        raise SystemExit(0)
    if sys.argv[3] == "count":
        counted(sys.argv[4], int(sys.argv[5]))
        raise SystemExit(0)
    sections = {"log": appends, "machine": machine, "sync": sync}
    result: Dict[str, float] = {}
    for name in sys.argv[3].split(","):
        base = tempfile.mkdtemp(dir=WORK)
        WORK = base
        try:
            result.update(sections[name]())
        finally:
            WORK = os.path.dirname(base)
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(result))
