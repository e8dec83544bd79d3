"""A process of the sync benchmark: ``serve STORE URL PORTFILE``, ``pull
KEYHEX URL STORE...`` (one pull into each store in turn; a JSON line with the
time to catch up for each), and for the live delay ``live-serve STORE URL
PORTFILE COUNT INTERVAL`` (appends COUNT entries once ``PORTFILE.go`` exists,
then writes the append times to ``PORTFILE.times``) and ``live-pull KEYHEX URL
STORE COUNT READYFILE OUTFILE`` (follows until it holds COUNT more blocks;
the time each was verified)."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coremachine_embedded as cm  # noqa: E402
from coremachine_embedded.sync import Endpoint, open_link  # noqa: E402


def write_file(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


async def connected(link: Any) -> None:
    """A broker link has connected (a UDP socket always is)."""
    while not getattr(link, "connected", True):
        await asyncio.sleep(0.005)


async def serve(store: str, url: str, port_file: str) -> cm.Core:
    core = cm.Core(store, durability="none")
    ep = Endpoint()
    link, _ = open_link(url, listen=True)
    await ep.attach(link)
    ep.serve(core)
    await connected(link)
    write_file(port_file, str(link.address[1]) if hasattr(link, "address") else "0")
    return core


async def serve_forever(store: str, url: str, port_file: str) -> None:
    await serve(store, url, port_file)
    await asyncio.Event().wait()


async def live_serve(store: str, url: str, port_file: str, count: int, interval: float) -> None:
    core = await serve(store, url, port_file)
    while not os.path.exists(port_file + ".go"):
        await asyncio.sleep(0.01)
    times = []
    for i in range(count):
        await asyncio.sleep(interval)
        times.append(time.monotonic())   # system-wide on Linux: comparable across processes
        core.append(b'{"event":"TICK","value":%d,"context":{"n":%d,"note":""}}' % (i, i))
    write_file(port_file + ".times", json.dumps(times))
    await asyncio.Event().wait()


async def live_pull(key: str, url: str, store: str, count: int, ready_file: str,
                    out_file: str) -> None:
    core = cm.Core(store, key=bytes.fromhex(key), durability="none")
    ep = Endpoint()
    link, addr = open_link(url, listen=False)
    await ep.attach(link)
    await connected(link)
    await ep.pull(core, link, addr)
    start = core.contiguous_length
    verified: List[float] = []
    done = asyncio.Event()

    def changed(change: Any) -> None:
        now = time.monotonic()
        while start + len(verified) < core.contiguous_length:
            verified.append(now)
        if len(verified) >= count:
            done.set()
    core.on_change(changed)
    task = asyncio.ensure_future(ep.pull(core, link, addr, live=True))
    write_file(ready_file, str(start))
    await done.wait()
    write_file(out_file, json.dumps({"verified": verified[:count], "counters": dict(ep.counters),
                                     "link": dict(link.counters)}))
    task.cancel()
    await ep.close()


async def pull(store: str, key: str, url: str) -> None:
    core = cm.Core(store, key=bytes.fromhex(key), durability="batch")
    ep = Endpoint()
    link, addr = open_link(url, listen=False)
    await ep.attach(link)
    await connected(link)
    t0, cpu0 = time.perf_counter(), time.process_time()
    await ep.pull(core, link, addr)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    same = core.verify() == core.length
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu, "blocks": core.contiguous_length,
                      "bytes": core.byte_length, "verified": same,
                      "tree_hash": core.tree_hash().hex(), "counters": dict(ep.counters),
                      "link": dict(link.counters)}), flush=True)
    await ep.close()
    core.close()


async def pull_each(stores: List[str], key: str, url: str) -> None:
    """One pull into each store, one after the other in this process (as the
    JS side replicates three replicas in one process)."""
    for store in stores:
        await pull(store, key, url)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve_forever(sys.argv[2], sys.argv[3], sys.argv[4]))
    elif sys.argv[1] == "live-serve":
        asyncio.run(live_serve(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
                               float(sys.argv[6])))
    elif sys.argv[1] == "live-pull":
        asyncio.run(live_pull(sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5]),
                              sys.argv[6], sys.argv[7]))
    else:  # pull KEYHEX URL STORE...
        asyncio.run(pull_each(sys.argv[4:], sys.argv[2], sys.argv[3]))
