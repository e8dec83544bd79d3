"""A hostile client on the broker: it subscribes to everything under the
prefix, then publishes garbage, replays of what it captured (also with the
response topic changed) and forged envelopes (sealed with a wrong key, and -
as a key holder - sealed with the right one around proofs that do not verify)
on every topic of the core, including a retained garbage head.  Everything is
dropped and counted, the writer restores its retained head, and a live
reader and a late reader still end with the writer's log, verified."""
from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import pytest

from coremachine_embedded import Core, KeyPair, sync
from coremachine_embedded.sync import wire
from coremachine_embedded.sync.broadcast import verify_head
from tests.mqtt_broker import Broker, counters_of, needs_mosquitto
from tests.fault.test_sync_mqtt import run, serving
from tests.fault.test_sync_mqtt_faults import follow, stop
from tests.fault.test_sync_replication import (PULL_TIMEOUT, Follower, act, assert_same_log,
                                               build_writer, wait_until)

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed "
                           "(pip install 'coremachine_embedded[mqtt]')")
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties  # noqa: E402
pytestmark = needs_mosquitto

PREFIX = "test"


class Hostile:
    """A plain paho client on the broker that records every message under the
    prefix and publishes whatever it is told to."""

    def __init__(self, port: int) -> None:
        self.captured: List[Tuple[str, bytes, Optional[str]]] = []
        self.lock = threading.Lock()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.client.on_message = self._message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(PREFIX + "/#", qos=1)
        self.client.loop_start()
        self.sent = 0
        self.pending: List[Any] = []

    def _message(self, client: Any, userdata: Any, msg: Any) -> None:
        reply = getattr(msg.properties, "ResponseTopic", None)
        with self.lock:
            self.captured.append((msg.topic, bytes(msg.payload), reply))

    def publish(self, topic: str, payload: bytes, reply: Optional[str] = None,
                retain: bool = False) -> None:
        props = None
        if reply is not None:   # with correlation data, as a puller's first contact has
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = reply
            props.CorrelationData = os.urandom(8)
        self.pending.append(self.client.publish(topic, payload, qos=1, retain=retain,
                                                properties=props))
        self.sent += 1

    def flush(self) -> None:
        """Wait until the broker has every message published so far."""
        for info in self.pending:
            info.wait_for_publish(30)
        self.pending = []

    def inboxes(self, dk: bytes) -> List[str]:
        head = "%s/%s/s/" % (PREFIX, dk.hex())
        with self.lock:
            return sorted({t for t, _, _ in self.captured if t.startswith(head)}
                          | {r for _, _, r in self.captured if r and r.startswith(head)})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def attack(h: Hostile, writer: Core, rng: random.Random, scratch: str) -> None:
    """One round of everything (see module docstring)."""
    dk = writer.discovery_key
    base = "%s/%s/" % (PREFIX, dk.hex())
    topics = [base + "head", base + "live", base + "req"] + h.inboxes(dk)
    replies = h.inboxes(dk) + [base + "s/attacker", "elsewhere/topic", None]
    good_key = wire.wire_key(writer.key)
    # a key holder's forgeries: the writer's blocks and five more, signed by another key pair
    impostor = Core(os.path.join(scratch, str(rng.random())), key_pair=KeyPair.generate(),
                    durability="none")
    impostor.append([writer.get(i) for i in range(writer.length)] + [b"forged"] * 5)
    forged_proofs = [impostor.proof(upgrade=(0, impostor.length), manifest=True),
                     impostor.proof(block=writer.length, upgrade=(writer.length, 5))]
    impostor.close()
    with h.lock:
        captured = list(h.captured)
    for topic in topics:
        for reply in replies:
            h.publish(topic, os.urandom(rng.randrange(0, 600)), reply)            # garbage
            h.publish(topic, bytes((1,)) + dk + os.urandom(120), reply)            # looks right
            h.publish(topic, wire.seal(os.urandom(32), dk, os.urandom(80)), reply)  # wrong key
            for proof in forged_proofs:                                            # key holder
                payload = wire.encode_payload(os.urandom(8), rng.randrange(1, 1 << 20),
                                              bytes(8), [(wire.DATA, proof)])
                h.publish(topic, wire.seal(good_key, dk, payload), reply)
        h.publish(topic, os.urandom(70_000))                                       # oversize
    for topic, payload, reply in rng.sample(captured, min(len(captured), 300)):    # replays
        h.publish(topic, payload, reply)
        h.publish(topic, payload, rng.choice(replies))
    heads = [p for t, p, _ in captured if t == base + "head"]
    if heads:
        h.publish(base + "head", heads[0], retain=True)       # an old head, retained
    h.publish(base + "head", os.urandom(300), retain=True)    # garbage, retained
    h.publish("%s/%s/head" % (PREFIX, os.urandom(32).hex()), os.urandom(90))   # other cores
    h.publish("%s/nonsense/req" % PREFIX, os.urandom(90), base + "s/x")


def test_a_hostile_client_on_the_broker_changes_nothing(tmp_path: Any, broker: Broker) -> None:
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 3000, seed=21, durability="batch")
    live = Core(str(tmp_path / "live"), key=wcore.key, durability="batch")
    late = Core(str(tmp_path / "late"), key=wcore.key, durability="batch")
    follower = Follower(live)
    hostile = Hostile(broker.port)
    rng = random.Random(22)
    url = broker.url(PREFIX)

    async def main() -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
        server = await serving(wcore, url)
        watcher, watching = await follow(live, url)
        try:
            await wait_until(lambda: live.contiguous_length == 3000, 60, "the first 3000")
            loop = asyncio.get_running_loop()
            pulling = asyncio.ensure_future(sync.pull(late, url))
            for _ in range(5):    # attacks while the writer acts and a late reader pulls
                await loop.run_in_executor(None, attack, hostile, wcore, rng,
                                           str(tmp_path / "scratch"))
                act(wmachine, rng, rng.choice((1, 1, 10)))
                await asyncio.sleep(0.2)
            await loop.run_in_executor(None, hostile.flush)   # the last garbage is in
            client = await asyncio.wait_for(pulling, PULL_TIMEOUT)
            late_counters = counters_of(client)
            honest = set(client._links[0]._tags.values())
            await client.close()
            act(wmachine, rng, 3)
            await wait_until(lambda: live.contiguous_length == wcore.length, 60,
                             "the live reader")
            # the last word on the retained head is garbage: the writer restores its own
            hostile.publish("%s/%s/head" % (PREFIX, wcore.discovery_key.hex()),
                            os.urandom(300), retain=True)
            await loop.run_in_executor(None, hostile.flush)
            await asyncio.sleep(GUARD_WAIT)
            # the writer echoes only correlation data that came with authentic envelopes
            honest |= set(watcher._links[0]._tags.values())
            assert set(server._links[0]._reply_tags.values()) <= honest
            return counters_of(watcher), late_counters, counters_of(server)
        finally:
            await stop(watcher, watching)
            await server.close()

    try:
        c_live, c_late, c_writer = run(main())
        retained = fresh_retained_head(broker, wcore.discovery_key)
    finally:
        hostile.close()
    assert hostile.sent > 1000
    total = {k: c_live.get(k, 0) + c_late.get(k, 0) + c_writer.get(k, 0)
             for k in set(c_live) | set(c_late) | set(c_writer)}
    for reason in ("dropped_auth", "dropped_invalid_proof", "link.rx_bad_topic",
                   "link.rx_oversize"):
        assert total.get(reason, 0) > 0, (reason, sorted(total.items()))
    assert total.get("dropped_replay", 0) + total.get("duplicates", 0) > 0
    assert c_writer["link.heads_clobbered"] > 0 and c_writer["link.heads_restored"] > 0
    # the retained head is the writer's again, and verifies
    assert retained is not None
    plain = wire.unseal(wire.wire_key(wcore.key), retained)
    assert plain is not None
    (kind, body), = wire.decode_payload(plain).messages
    assert kind == wire.DATA and verify_head(late, body) == (wcore.fork, wcore.length)
    follower.check_against(wmachine)
    assert_same_log(live, wcore)
    assert late.verify() == late.contiguous_length and late.length >= 3000
    for core in (live, late):
        core.close()
    follower.machine.close()
    wmachine.close()
    wcore.close()


GUARD_WAIT = 1.5


def fresh_retained_head(broker: Broker, dk: bytes) -> Optional[bytes]:
    """What a new subscriber to the head topic gets first."""
    got: List[bytes] = []
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.on_message = lambda c, u, m: got.append(bytes(m.payload))
    client.connect("127.0.0.1", broker.port)
    client.subscribe("%s/%s/head" % (PREFIX, dk.hex()), qos=1)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not got and time.monotonic() < deadline:
        time.sleep(0.02)
    client.disconnect()
    client.loop_stop()
    return got[0] if got else None
