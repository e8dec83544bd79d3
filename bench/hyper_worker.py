"""A process of the Hypercore-protocol benchmark: ``serve STORE`` (prints
``{port}``; each line on stdin prints its CPU seconds and max RSS so far) or
``pull KEYHEX PORT STORE`` (a JSON line: time to catch up, CPU, max RSS)."""
from __future__ import annotations

import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coremachine_embedded as cm  # noqa: E402
from coremachine_embedded.sync import hyper  # noqa: E402


def usage() -> dict:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": r.ru_utime + r.ru_stime, "max_rss_kib": r.ru_maxrss}


async def serve(store: str) -> None:
    core = cm.Core(store)
    server = await hyper.serve(core, "tcp://127.0.0.1:0")
    print(json.dumps({"port": server.address[1]}), flush=True)
    loop = asyncio.get_running_loop()
    while await loop.run_in_executor(None, sys.stdin.readline):
        print(json.dumps(dict(usage(), counters=dict(server.counters))), flush=True)
    await server.close()
    core.close()


async def pull(key: str, port: str, store: str) -> None:
    core = cm.Core(store, key=bytes.fromhex(key), durability="batch")
    t0, cpu0 = time.perf_counter(), time.process_time()
    counters = await hyper.pull(core, "tcp://127.0.0.1:%s" % port)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = core.verify() == core.length == core.contiguous_length
    print(json.dumps({"seconds": seconds, "cpu_seconds": cpu,
                      "max_rss_kib": usage()["max_rss_kib"], "blocks": core.contiguous_length,
                      "tree_hash": core.tree_hash().hex(), "ok": ok,
                      "counters": dict(counters)}), flush=True)
    core.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(sys.argv[2]))
    else:  # pull KEYHEX PORT STORE
        asyncio.run(pull(sys.argv[2], sys.argv[3], sys.argv[4]))
