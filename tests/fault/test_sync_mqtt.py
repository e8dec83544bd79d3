"""Sync through a real Mosquitto broker (started by the tests on 127.0.0.1):
a 20,000-entry machine log caught up, three readers following a writer live,
many cores on one broker connection, TLS with a password, the CLI, and the
signed head (retained) that a late subscriber verifies.  Faults (a broker
restart, a lossy broker, sleeping devices, hostile clients) are in
test_sync_mqtt_faults.py.  Nothing is mocked: real broker, real TCP, paho."""
from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import socket
import subprocess
import sys
from typing import Any, Awaitable, Dict, List, TypeVar

import pytest

from coremachine_embedded import Core, Coremachine, KeyPair, sync
from coremachine_embedded.errors import InvalidArgumentError, InvalidProofError
from coremachine_embedded.sync import Endpoint, open_link, wire
from coremachine_embedded.sync.broadcast import verify_head
from tests.mqtt_broker import Broker, counters_of, needs_mosquitto
from tests.fault.test_sync_replication import (COUNTER, PULL_TIMEOUT, Follower, act,
                                               assert_same_log, assert_same_machine,
                                               build_writer, wait_until)

mqtt = pytest.importorskip("coremachine_embedded.sync.mqtt")
pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                    "(pip install 'coremachine_embedded[mqtt]')")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = PULL_TIMEOUT + 60) -> T:
    """Run a test coroutine with an outer bound; fail if any callback raised
    in the event loop (a link must never let an exception escape)."""
    problems: List[Dict[str, Any]] = []

    async def main() -> T:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        return await asyncio.wait_for(coro, timeout)
    out = asyncio.run(main())
    assert not problems, "exceptions in event-loop callbacks: %r" % problems
    return out


async def connected(*endpoints: Endpoint, timeout: float = 20) -> None:
    await wait_until(lambda: all(link.connected for ep in endpoints for link in ep._links),
                     timeout, "the broker connections")


async def serving(core: Core, url: str) -> Endpoint:
    ep = await sync.serve(core, url)
    await connected(ep)
    return ep


def assert_no_delay(ep: Endpoint) -> None:
    """The link's TCP connection (plain or TLS) sends small envelopes at once."""
    sock = ep._links[0]._client.socket()
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_20000_entry_machine_log_is_caught_up_through_the_broker(tmp_path: Any,
                                                                    broker: Broker) -> None:
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 20_000, seed=3)
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    follower = Follower(reader)

    async def main() -> Dict[str, int]:
        server = await serving(wcore, broker.url())
        try:
            client = await asyncio.wait_for(sync.pull(reader, broker.url()), PULL_TIMEOUT)
            counters = counters_of(client)
            await client.close()
            return counters
        finally:
            await server.close()

    c = run(main())
    assert c["blocks"] >= 20_000
    assert c["link.pins"] == 1                      # one server answered, and was kept
    assert c.get("link.rx_bad_topic", 0) == 0 and c.get("dropped_auth", 0) == 0
    # the broker carried about one envelope per 100 blocks each way, not one per block
    assert c["link.received"] + c["link.published"] < 20_000 / 20
    follower.check_against(wmachine)
    follower.machine.close()
    reader.close()
    with Core(str(tmp_path / "reader")) as again:
        assert_same_log(again, wcore)
        assert_same_machine(again, wmachine)
    wmachine.close()
    wcore.close()


def test_three_readers_follow_a_writer_live(tmp_path: Any, broker: Broker) -> None:
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 200, seed=11, durability="batch")
    readers = [Core(str(tmp_path / ("reader%d" % i)), key=wcore.key, durability="batch")
               for i in range(3)]
    followers = [Follower(r) for r in readers]
    rng = random.Random(12)

    async def main() -> List[Dict[str, int]]:
        server = await serving(wcore, broker.url())
        clients = [Endpoint() for _ in readers]
        tasks = []
        for client, reader in zip(clients, readers):
            link, addr = open_link(broker.url(), listen=False)
            await client.attach(link)
            tasks.append(asyncio.ensure_future(client.pull(reader, link, addr, live=True)))
        try:
            await wait_until(lambda: all(r.contiguous_length == 200 for r in readers), 60,
                             "the first 200 entries")
            for _ in range(25):   # single actions, bursts and pauses while they follow
                act(wmachine, rng, rng.choice((1, 1, 1, 3, 30)))
                await asyncio.sleep(rng.choice((0.0, 0.02, 0.1)))
            await wait_until(lambda: all(r.contiguous_length == wcore.length for r in readers),
                             60, "the readers to catch up live (%d)" % wcore.length)
            assert not any(t.done() for t in tasks), "a live pull does not end"
            await asyncio.sleep(2.5)   # a quiet spell longer than the keepalive, then more
            act(wmachine, rng, 5)
            await wait_until(lambda: all(r.contiguous_length == wcore.length for r in readers),
                             60, "the readers to catch up after a pause")
            return [counters_of(c) for c in clients]
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for c in clients:
                await c.close()
            await server.close()

    counters = run(main())
    assert wcore.length > 230
    for c, follower, reader in zip(counters, followers, readers):
        # single appends arrived as live blocks, applied without asking
        assert c.get("broadcasts_applied", 0) > 0, c
        follower.check_against(wmachine)
        assert_same_log(reader, wcore)
        follower.machine.close()
        reader.close()
    wmachine.close()
    wcore.close()


def test_many_cores_share_one_broker_connection(tmp_path: Any, broker: Broker) -> None:
    writers = []
    for i in range(12):
        core = Core(str(tmp_path / ("w%d" % i)), key_pair=KeyPair.generate(), durability="none")
        core.append([b"core %d entry %d" % (i, j) for j in range(50 + 40 * i)])
        writers.append(core)
    replicas = [Core(str(tmp_path / ("r%d" % i)), key=w.key, durability="none")
                for i, w in enumerate(writers)]

    async def main() -> Dict[str, int]:
        server = await serving(writers, broker.url())   # one link, twelve cores
        client = Endpoint()
        link, addr = open_link(broker.url(), listen=False)
        await client.attach(link)
        try:
            await asyncio.wait_for(asyncio.gather(
                *(client.pull(r, link, addr) for r in replicas)), PULL_TIMEOUT)
            for w in writers:   # and live on the same connection
                w.append(b"one more")
            tasks = [asyncio.ensure_future(client.pull(r, link, addr, live=True))
                     for r in replicas]
            await wait_until(lambda: all(r.length == w.length
                                         for r, w in zip(replicas, writers)), 30, "live")
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            return {"server.connects": server._links[0].counters["connects"],
                    **counters_of(client)}
        finally:
            await client.close()
            await server.close()

    c = run(main())
    assert c["server.connects"] == 1 and c["link.connects"] == 1
    assert c["link.pins"] == len(writers)
    for w, r in zip(writers, replicas):
        assert_same_log(r, w, every_block=True)
        r.close()
        w.close()


def test_a_late_subscriber_gets_the_signed_head_at_once(tmp_path: Any, broker: Broker) -> None:
    """The retained head reaches a replica with nobody answering requests
    (the writer's endpoint is gone): an empty replica applies it (the signed
    length, verified), one that holds blocks verifies it and knows how far
    behind it is."""
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate(), durability="none")
    writer.append([b"block %d" % i for i in range(100)])
    partial = Core(str(tmp_path / "partial"), key=writer.key, durability="none")
    partial.apply_proof(writer.proof(upgrade=(0, 100), manifest=True))
    writer.append([b"block %d" % i for i in range(100, 300)])
    empty = Core(str(tmp_path / "empty"), key=writer.key, durability="none")

    async def main() -> List[Dict[str, int]]:
        server = await serving(writer, broker.url())
        assert_no_delay(server)
        await asyncio.sleep(0.3)   # the head is published and retained
        await server.close()       # nobody serves any more
        out = []
        for replica in (empty, partial):
            client = Endpoint()
            link, addr = open_link(broker.url(), listen=False)
            await client.attach(link)
            task = asyncio.ensure_future(client.pull(replica, link, addr))
            await wait_until(lambda: client.counters.get("rx_broadcasts", 0) > 0, 20, "the head")
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            out.append(dict(client.counters))
            if replica is partial:
                assert client._fanout.head_of(client._entries[replica.discovery_key]) == (0, 300)
            await client.close()
        return out

    on_empty, on_partial = run(main())
    assert (empty.length, empty.contiguous_length) == (300, 0)   # verified, no blocks yet
    assert empty.signature == writer.signature
    assert on_empty["broadcasts_applied"] == 1
    assert on_partial["heads_verified"] == 1 and partial.length == 100   # known, not stored
    for c in (writer, partial, empty):
        c.close()


def test_a_live_block_that_comes_after_its_head_still_applies(tmp_path: Any,
                                                              broker: Broker) -> None:
    """Another broker may deliver the head before the live block (different
    topics): the replica verifies the head, and still applies the block when
    it comes - here with nobody serving, so the broadcasts are all it gets."""
    paho = pytest.importorskip("paho.mqtt.client")
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate(), durability="none")
    writer.append([b"block %d" % i for i in range(20)])
    replica = Core(str(tmp_path / "replica"), key=writer.key, durability="none")
    replica.apply_proof(writer.proof(upgrade=(0, 20), manifest=True))
    for i in range(20):
        replica.apply_proof(writer.proof(block=i, nodes=replica.missing_nodes(i)))
    writer.append(b"block 20")

    def seal(proof: bytes) -> bytes:
        payload = wire.encode_payload(os.urandom(8), 1, bytes(8), [(wire.DATA, proof)])
        return wire.seal(wire.wire_key(writer.key), writer.discovery_key, payload)
    topic = "test/%s/" % writer.discovery_key.hex()

    async def main() -> Dict[str, int]:
        client = Endpoint()
        link, addr = open_link(broker.url(), listen=False)
        await client.attach(link)
        task = asyncio.ensure_future(client.pull(replica, link, addr, live=True))
        await connected(client)
        await asyncio.sleep(0.2)   # subscribed
        publisher = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        publisher.connect("127.0.0.1", broker.port)
        publisher.loop_start()
        publisher.publish(topic + "head", seal(writer.proof(upgrade=(0, 21), manifest=True)),
                          qos=1).wait_for_publish(10)
        publisher.publish(topic + "live", seal(writer.proof(block=20, upgrade=(20, 1))),
                          qos=1).wait_for_publish(10)
        try:
            await wait_until(lambda: replica.contiguous_length == 21, 20, "the live block")
            return dict(client.counters)
        finally:
            publisher.disconnect()
            publisher.loop_stop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()

    c = run(main())
    assert c["heads_verified"] == 1 and c["broadcasts_applied"] == 1
    assert_same_log(replica, writer, every_block=True)
    replica.close()
    writer.close()


def test_verify_head_checks_the_writers_signature(tmp_path: Any) -> None:
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate(), durability="none")
    writer.append([b"a", b"b", b"c"])
    other = Core(str(tmp_path / "other"), key_pair=KeyPair.generate(), durability="none")
    other.append([b"a", b"b", b"c"])
    replica = Core(str(tmp_path / "replica"), key=writer.key, durability="none")
    assert verify_head(replica, writer.proof(upgrade=(0, 3), manifest=True)) == (0, 3)
    with pytest.raises(InvalidProofError):
        verify_head(replica, other.proof(upgrade=(0, 3), manifest=True))
    forged = bytearray(writer.proof(upgrade=(0, 3), manifest=True))
    forged[-100] ^= 1
    with pytest.raises(InvalidProofError):
        verify_head(replica, bytes(forged))
    assert replica.length == 0   # it only checks
    for c in (writer, other, replica):
        c.close()


@needs_mosquitto
def test_tls_with_a_password(tmp_path: Any) -> None:
    broker = Broker(users={"device": "s3cret"}, tls=True)
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate(), durability="none")
    writer.append([b"over TLS %d" % i for i in range(500)])
    replica = Core(str(tmp_path / "replica"), key=writer.key, durability="none")
    good = broker.url(scheme="mqtts", auth="device:s3cret", query="ca=%s" % broker.ca)
    wrong = broker.url(scheme="mqtts", auth="device:wrong", query="ca=%s" % broker.ca)
    no_ca = broker.url(scheme="mqtts", auth="device:s3cret")
    records: List[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("coremachine_embedded.sync.mqtt").addHandler(handler)

    async def refused(url: str) -> Dict[str, int]:
        client = Endpoint()
        link, addr = open_link(url, listen=False)
        await client.attach(link)
        try:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.pull(replica, link, addr), 1.5)
            return dict(link.counters)
        finally:
            await client.close()

    async def main() -> None:
        server = await serving(writer, good)
        assert_no_delay(server)
        try:
            assert (await refused(wrong))["connect_failures"] >= 1     # the broker said no
            assert (await refused(no_ca))["connect_failures"] >= 1     # we did not trust it
            assert replica.length == 0
            client = await asyncio.wait_for(sync.pull(replica, good), PULL_TIMEOUT)
            await client.close()
        finally:
            await server.close()

    try:
        run(main())
    finally:
        logging.getLogger("coremachine_embedded.sync.mqtt").removeHandler(handler)
        broker.close()
    assert_same_log(replica, writer, every_block=True)
    assert any("password" in r.getMessage().lower() or "authori" in r.getMessage().lower()
               for r in records), [r.getMessage() for r in records]
    replica.close()
    writer.close()


@needs_mosquitto
def test_envelopes_fit_the_brokers_packet_limit(tmp_path: Any) -> None:
    """A broker that takes packets of at most 4 KiB says so when a client
    connects (MQTT 5 Maximum Packet Size): the links send smaller envelopes
    (and take any size), and 1 KiB entries still sync."""
    broker = Broker(extra=("max_packet_size 4096",))
    writer = Core(str(tmp_path / "writer"), key_pair=KeyPair.generate(), durability="none")
    writer.append([bytes([i % 256]) * 1000 for i in range(300)])
    replica = Core(str(tmp_path / "replica"), key=writer.key, durability="none")

    async def main() -> List[int]:
        server = await serving(writer, broker.url())
        try:
            client = await asyncio.wait_for(sync.pull(replica, broker.url()), PULL_TIMEOUT)
            mtus = [server._links[0].mtu, client._links[0].mtu]
            await client.close()
            return mtus
        finally:
            await server.close()

    try:
        assert run(main()) == [4096 - mqtt.HEADROOM] * 2
    finally:
        broker.close()
    assert_same_log(replica, writer, every_block=True)
    replica.close()
    writer.close()


def test_urls(tmp_path: Any) -> None:
    link = mqtt.MQTTLink.from_url("mqtts://u%40x:p%3Aw@broker.example/fleet/site-1"
                                  "?client_id=gw-1&session_expiry=60&mtu=4096")
    assert (link.host, link.port, link.prefix, link.link_id, link.mtu) == \
        ("broker.example", 8883, "fleet/site-1", "gw-1", 4096)
    assert link._settings["username"] == "u@x" and link._settings["password"] == "p:w"
    assert link._settings["tls"] and link._settings["session_expiry"] == 60
    link = mqtt.MQTTLink.from_url("mqtt://10.0.0.2")
    assert (link.port, link.prefix, link.persistent_id) == (1883, mqtt.DEFAULT_PREFIX, False)
    assert open_link("mqtt://h/p", listen=False)[1] == mqtt.SERVERS
    assert sync.shown_url("mqtts://gw:pw@h:8883/p?ca=x") == "mqtts://gw:***@h:8883/p?ca=x"
    for bad in ("mqtt:///p", "mqtt://h/a/+/b", "mqtt://h/a//b", "mqtt://h/p?mtu=10",
                "mqtt://h/p?client_id=a/b", "mqtt://h/p?colour=red", "mqtt://h:99999/p",
                "mqtt://h/p?keepalive=x"):
        with pytest.raises(InvalidArgumentError):
            mqtt.MQTTLink.from_url(bad)


def test_a_missing_paho_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "paho.mqtt.client", None)   # as if not installed
    with pytest.raises(InvalidArgumentError, match=r"pip install 'coremachine_embedded\[mqtt\]'"):
        mqtt._paho()


def cm(*args: str) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-m", "coremachine_embedded", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))


def test_cli_serve_and_pull_through_the_broker(tmp_path: Any, broker: Broker) -> None:
    store, replica, live = (str(tmp_path / n) for n in ("writer", "replica", "live"))
    wcore, wmachine = build_writer(store, 1000, seed=5)
    key = wcore.key.hex()
    wmachine.close()
    wcore.close()
    server = cm("serve", store, broker.url("cli"))
    try:
        assert "serving %s" % key in (server.stdout.readline() if server.stdout else "")
        pull = cm("pull", replica, key, broker.url("cli"), "--timeout", "60")
        out, err = pull.communicate(timeout=90)
        assert pull.returncode == 0, err
        assert "pulled %s: signed length 1000, fork 0, verified" % key in out
    finally:
        server.send_signal(signal.SIGINT)
        server.communicate(timeout=30)
    with Core(store) as w, Core(replica) as r:
        assert_same_log(r, w)

    # `pull --live` follows a writer (served here) that goes on acting
    wcore = Core(store, durability="batch")
    wmachine = Coremachine(wcore, COUNTER)

    async def main() -> None:
        server = await serving(wcore, broker.url("cli"))
        entry = server._entries[wcore.discovery_key]

        def puller_has(n: int) -> bool:   # what the live puller tells the server it holds
            return any(p.contiguous == n for p in entry.peers.values())
        follow = cm("pull", live, key, broker.url("cli"), "--live")
        try:
            await wait_until(lambda: puller_has(1000), 60, "the live pull to catch up")
            act(wmachine, random.Random(6), 20)
            await wait_until(lambda: puller_has(1020), 60, "the live pull to follow")
            assert follow.poll() is None, "a live pull does not end"
        finally:
            follow.send_signal(signal.SIGINT)
            await asyncio.get_running_loop().run_in_executor(None, follow.communicate)
            await server.close()

    run(main())
    with Core(live) as f:
        assert_same_log(f, wcore)
    wmachine.close()
    wcore.close()
