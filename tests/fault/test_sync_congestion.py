"""Congestion control per link (sync/congestion.py) over real UDP sockets on
127.0.0.1: 100 cores pulled at once through one endpoint from one server share
one window, so the lossless loopback sees no spurious retry - no request sent
again, no answer arriving that nobody waits for.  The counters of both
endpoints say so; nothing here is timed."""
from __future__ import annotations

import asyncio
import os
from typing import Any, Dict, List, Tuple

from coremachine_embedded import Core, KeyPair
from coremachine_embedded.sync import Endpoint, UDPLink
from coremachine_embedded.sync.congestion import LinkWindow
from tests.fault.test_sync_replication import PULL_TIMEOUT, assert_same_log, run

CORES = 100
BLOCKS = 200   # per core: 64-block runs, so each pull has several in flight


def _writers(directory: str) -> List[Core]:
    writers = []
    for k in range(CORES):
        core = Core(os.path.join(directory, "w%d" % k),
                    key_pair=KeyPair.from_seed(k.to_bytes(32, "big")), durability="none")
        core.append([b'{"event":"INC","value":%d,"core":%d}' % (i, k) for i in range(BLOCKS)])
        core.flush()
        writers.append(core)
    return writers


def test_100_concurrent_pulls_share_one_window_without_spurious_retries(tmp_path: Any) -> None:
    writers = _writers(str(tmp_path))
    readers = [Core(str(tmp_path / ("r%d" % k)), key=w.key, durability="none")
               for k, w in enumerate(writers)]
    peak: Dict[str, float] = {"users": 0, "inflight": 0}

    async def watch(client: Endpoint) -> None:
        """How many pulls the link's window was shared by, and what it let out."""
        while True:
            for window in client.links:
                peak["users"] = max(peak["users"], len(window.users))
                peak["inflight"] = max(peak["inflight"], window.inflight)
            await asyncio.sleep(0.005)

    async def main() -> Tuple[Dict[str, int], Dict[str, int], List[LinkWindow]]:
        server, client = Endpoint(), Endpoint()
        server_link, client_link = UDPLink("127.0.0.1", 0), UDPLink("127.0.0.1", 0)
        await server.attach(server_link)
        await client.attach(client_link)
        for w in writers:
            server.serve(w)
        watcher = asyncio.ensure_future(watch(client))
        try:
            await asyncio.wait_for(asyncio.gather(
                *(client.pull(r, client_link, server_link.address) for r in readers)),
                PULL_TIMEOUT)
            return dict(client.counters), dict(server.counters), \
                list(client.links)
        finally:
            watcher.cancel()
            await client.close()
            await server.close()

    pulled, served, windows = run(main())
    assert pulled["blocks"] == CORES * BLOCKS
    # one link (one server endpoint): one window, shared by the pulls at once
    assert len(windows) == 1 and peak["users"] > CORES // 2, peak
    assert windows[0].users == {} and windows[0].inflight == 0   # all given back
    # no request was sent twice, none timed out, nothing arrived unasked or twice
    for counter in ("retries", "timeouts", "dropped_unsolicited", "duplicates"):
        assert pulled.get(counter, 0) == 0, (counter, pulled)
    assert not any(v for k, v in served.items() if k.startswith("dropped")), served
    for reader, writer in zip(readers, writers):
        assert_same_log(reader, writer)
        reader.close()
        writer.close()
