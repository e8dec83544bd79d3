"""Sync through a real Mosquitto broker when things go wrong: the broker
restarts mid-transfer, loses and reorders messages (a proxy between clients
and broker), a reader's device sleeps (its persistent session keeps what
came meanwhile), a writer appends while its broker link is down and catches
everyone up when it returns.  Nothing is lost, and the replicas verify."""
from __future__ import annotations

import asyncio
import random
from typing import Any, Dict, List, Optional

import pytest

from coremachine_embedded import Core, sync
from coremachine_embedded.sync import Endpoint, open_link
from tests.mqtt_broker import Broker, MQTTProxy, counters_of, needs_mosquitto
from tests.fault.test_sync_mqtt import run, serving
from tests.fault.test_sync_replication import (PULL_TIMEOUT, Follower, act, assert_same_log,
                                               assert_same_machine, build_writer,
                                               wait_until)

pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                    "(pip install 'coremachine_embedded[mqtt]')")
pytestmark = needs_mosquitto


async def follow(core: Core, url: str) -> "tuple[Endpoint, asyncio.Future[None]]":
    client = Endpoint()
    link, addr = open_link(url, listen=False)
    await client.attach(link)
    return client, asyncio.ensure_future(client.pull(core, link, addr, live=True))


async def stop(client: Endpoint, task: "Optional[asyncio.Future[None]]" = None) -> None:
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    await client.close()


@pytest.mark.parametrize("persistence", [False, True])
def test_a_broker_restart_in_the_middle(tmp_path: Any, persistence: bool) -> None:
    """Mid-way through a 20,000-entry catch-up and while another reader
    follows live, the broker stops and starts again (without persistence it
    forgets every session, subscription and retained head)."""
    broker = Broker(persistence=persistence)
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 20_000, seed=7, durability="batch")
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    live = Core(str(tmp_path / "live"), key=wcore.key, durability="batch")
    follower = Follower(live)
    short: List[int] = []

    async def main() -> Dict[str, int]:
        server = await serving(wcore, broker.url())
        watcher, watching = await follow(live, broker.url())
        client = Endpoint()
        link, addr = open_link(broker.url(), listen=False)
        await client.attach(link)
        pulling = asyncio.ensure_future(client.pull(reader, link, addr))
        loop = asyncio.get_running_loop()
        try:
            await wait_until(lambda: reader.contiguous_length >= 1000, 120, "1,000 blocks")
            short.append(reader.contiguous_length)
            await loop.run_in_executor(None, broker.stop)
            short.append(reader.contiguous_length)
            act(wmachine, random.Random(8), 30)     # the writer goes on meanwhile
            await asyncio.sleep(0.5)
            await loop.run_in_executor(None, broker.start)
            await asyncio.wait_for(pulling, PULL_TIMEOUT)
            act(wmachine, random.Random(9), 10)      # and after
            await wait_until(lambda: live.contiguous_length == wcore.length, 60,
                             "the live reader after the restart")
            await wait_until(lambda: reader.length >= 20_000, 10, "the pull")
            return counters_of(client)
        finally:
            await stop(client, pulling)
            await stop(watcher, watching)
            await server.close()

    try:
        c = run(main())
    finally:
        broker.close()
    assert short[1] < 20_000, "the restart came too late to test anything"
    assert c["link.connects"] >= 2        # it reconnected
    assert reader.contiguous_length >= 20_000
    follower.check_against(wmachine, start=0)
    assert_same_log(live, wcore)
    assert_same_machine(live, wmachine)
    assert reader.verify() == reader.contiguous_length   # nothing unverified stored
    for core in (reader, live):
        core.close()
    follower.machine.close()
    wmachine.close()
    wcore.close()


def test_a_broker_that_drops_and_reorders(tmp_path: Any, broker: Broker) -> None:
    """Every client talks to the broker through a proxy that loses 10% of the
    messages each way (acknowledging them, as a broker that drops a message
    does) and reorders another 10%: a 5,000-entry catch-up and a live reader
    still get every block, verified."""
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 5000, seed=13, durability="batch")
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    live = Core(str(tmp_path / "live"), key=wcore.key, durability="batch")
    follower = Follower(live)
    proxy = MQTTProxy(broker.port, loss=0.10, reorder=0.10, seed=14)

    async def main() -> Dict[str, int]:
        await proxy.start()
        url = broker.url(port=proxy.port)
        server = await serving(wcore, url)
        watcher, watching = await follow(live, url)
        try:
            client = await asyncio.wait_for(sync.pull(reader, url), PULL_TIMEOUT)
            counters = counters_of(client)
            await client.close()
            assert_same_log(reader, wcore, every_block=True)
            rng = random.Random(15)
            for _ in range(30):
                act(wmachine, rng, rng.choice((1, 1, 4, 25)))
                await asyncio.sleep(rng.choice((0.0, 0.02, 0.05)))
            await wait_until(lambda: live.contiguous_length == wcore.length, 90,
                             "the live reader through the lossy broker")
            return counters
        finally:
            await stop(watcher, watching)
            await server.close()
            await proxy.close()

    c = run(main())
    assert proxy.counters["dropped"] > 10 and proxy.counters["reordered"] > 10, proxy.counters
    assert c["retries"] > 0                 # losses were found and asked again
    follower.check_against(wmachine)
    assert_same_log(live, wcore)
    for core in (reader, live):
        core.close()
    follower.machine.close()
    wmachine.close()
    wcore.close()


def test_a_sleeping_reader_finds_what_came_meanwhile(tmp_path: Any, broker: Broker) -> None:
    """A live reader's network sleeps (its TCP connection is cut and new ones
    refused) while the writer acts 30 times; its session is persistent, so
    the broker queues the live blocks for it, and when it wakes it applies
    them (each one verified) and is current."""
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 200, seed=17, durability="batch")
    live = Core(str(tmp_path / "live"), key=wcore.key, durability="batch")
    follower = Follower(live)
    proxy = MQTTProxy(broker.port)

    async def main() -> Dict[str, int]:
        await proxy.start()
        server = await serving(wcore, broker.url())
        watcher, watching = await follow(live, broker.url(port=proxy.port))
        link = watcher._links[0]
        try:
            await wait_until(lambda: live.contiguous_length == 200, 60, "the first 200")
            proxy.cut()                  # asleep
            await wait_until(lambda: not link.connected, 10, "the reader to notice")
            before = dict(watcher.counters)
            rng = random.Random(18)
            for _ in range(30):
                act(wmachine, rng, 1)
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)
            assert live.length == 200
            proxy.restore()              # awake
            await wait_until(lambda: live.contiguous_length == wcore.length, 60,
                             "the reader after its sleep")
            after = counters_of(watcher)
            after["queued_broadcasts"] = after["rx_broadcasts"] - before["rx_broadcasts"]
            return after
        finally:
            await stop(watcher, watching)
            await server.close()
            await proxy.close()

    c = run(main())
    assert c["link.sessions_resumed"] >= 1
    assert c["queued_broadcasts"] >= 30          # the broker kept them while it slept
    assert c["broadcasts_applied"] >= 30
    follower.check_against(wmachine)
    assert_same_log(live, wcore)
    follower.machine.close()
    live.close()
    wmachine.close()
    wcore.close()


def test_a_writer_back_from_an_outage_catches_everyone_up(tmp_path: Any, broker: Broker) -> None:
    """The writer's broker link is down while it appends 150 entries; two
    live readers cannot see them; when the link returns the writer publishes
    its head and tells its readers, and they (and a reader that comes later)
    catch up."""
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 300, seed=19, durability="batch")
    readers = [Core(str(tmp_path / ("reader%d" % i)), key=wcore.key, durability="batch")
               for i in range(2)]
    late = Core(str(tmp_path / "late"), key=wcore.key, durability="batch")
    proxy = MQTTProxy(broker.port)

    async def main() -> None:
        await proxy.start()
        server = await serving(wcore, broker.url(port=proxy.port))
        watchers = [await follow(r, broker.url()) for r in readers]
        try:
            await wait_until(lambda: all(r.contiguous_length == 300 for r in readers), 60,
                             "the first 300")
            proxy.cut()
            await wait_until(lambda: not server._links[0].connected, 10, "the outage")
            rng = random.Random(20)
            act(wmachine, rng, 100)
            for _ in range(50):
                act(wmachine, rng, 1)
            await asyncio.sleep(0.5)
            assert all(r.length == 300 for r in readers)   # nobody could know
            proxy.restore()
            await wait_until(lambda: all(r.contiguous_length == wcore.length for r in readers),
                             60, "the readers after the outage")
            client = await asyncio.wait_for(sync.pull(late, broker.url()), PULL_TIMEOUT)
            await client.close()
        finally:
            for client, task in watchers:
                await stop(client, task)
            await server.close()
            await proxy.close()

    run(main())
    assert wcore.length == 450
    for r in readers + [late]:
        assert_same_log(r, wcore)
        r.close()
    wmachine.close()
    wcore.close()
