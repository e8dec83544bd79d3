"""A process of the sync benchmark: ``serve STORE PORTFILE`` or
``pull KEYHEX URL STORE...`` (one pull into each store in turn; a JSON line
with the time to catch up for each)."""
from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import coremachine_embedded as cm  # noqa: E402
from coremachine_embedded.sync import Endpoint, open_link  # noqa: E402


async def serve(store: str, url: str, port_file: str) -> None:
    core = cm.Core(store)
    ep = Endpoint()
    link, _ = open_link(url, listen=True)
    await ep.attach(link)
    ep.serve(core)
    with open(port_file + ".tmp", "w") as f:
        f.write(str(link.address[1]) if hasattr(link, "address") else "0")
    os.rename(port_file + ".tmp", port_file)
    await asyncio.Event().wait()


async def pull(store: str, key: str, url: str) -> None:
    core = cm.Core(store, key=bytes.fromhex(key), durability="batch")
    ep = Endpoint()
    link, addr = open_link(url, listen=False)
    await ep.attach(link)
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
        asyncio.run(serve(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:  # pull KEYHEX URL STORE...
        asyncio.run(pull_each(sys.argv[4:], sys.argv[2], sys.argv[3]))
