"""Live pushes, over real UDP on 127.0.0.1: a caught-up live puller gets
each append in one envelope (the upgrade with the block, then the SYNC) and
asks nothing; a lost push costs one ordinary pull; a push from anyone but the
source, or a forged one, is never applied."""
from __future__ import annotations

import asyncio
from typing import Any, Dict

from coremachine_embedded.encoding import DataMessage
from coremachine_embedded.sync import wire

from tests.fault.hostile import Attacker, Net, Relay, run, wait_until


def delta(c: Dict[str, int], before: Dict[str, int]) -> Dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in c.items() if v != before.get(k, 0)}


async def live_puller(net: Net, via: Any = None) -> Any:
    replica = net.replica()
    ep, link = await net.endpoint()
    task = asyncio.ensure_future(ep.pull(replica, link, via or net.addr, live=True))
    assert await wait_until(lambda: replica.contiguous_length == net.writer.length, 20)
    return replica, ep, task


def test_a_caught_up_live_puller_gets_appends_pushed_and_asks_nothing(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=40).start()
        replica, ep, task = await live_puller(net)
        await asyncio.sleep(0.2)                       # its "I hold all" SYNC has arrived
        server, puller = dict(net.server.counters), dict(ep.counters)
        for i in range(20):
            net.writer.append(b"live %d" % i)
            assert await wait_until(lambda: replica.contiguous_length == net.writer.length, 10)
        s, p = delta(net.server.counters, server), delta(ep.counters, puller)
        assert s.get("pushed") == 20 and "requests_served" not in s, s
        assert p.get("tx_envelopes", 0) == 0 and p["rx_envelopes"] == 20, p
        assert p["blocks"] == 20 and "retries" not in p
        net.check_replica(replica)
        task.cancel()
        await net.close()
    run(main)


def test_a_lost_push_costs_one_ordinary_pull(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=8).start()
        relay = await Relay(net.addr).start()
        replica, ep, task = await live_puller(net, relay.address)
        await asyncio.sleep(0.2)
        lose = {"next": True}

        def drop(direction: str, envelope: bytes) -> bool:
            if direction == "s2c" and lose["next"]:
                lose["next"] = False
                return True
            return False
        relay.drop = drop
        before = dict(net.server.counters)
        net.writer.append(b"lost push")              # its envelope is dropped
        await asyncio.sleep(0.1)
        net.writer.append(b"next push")              # does not fit: it asks for both
        assert await wait_until(lambda: replica.contiguous_length == net.writer.length, 20)
        got = delta(net.server.counters, before)
        assert relay.dropped == 1 and got.get("requests_served", 0) >= 1, got
        await asyncio.sleep(0.3)                     # its "I hold all" SYNC arrives
        for i in range(3):                           # and pushes resume
            before = dict(net.server.counters)
            net.writer.append(b"after %d" % i)
            assert await wait_until(lambda: replica.contiguous_length == net.writer.length, 10)
            got = delta(net.server.counters, before)
            assert got.get("pushed") == 1 and "requests_served" not in got, got
        net.check_replica(replica)
        task.cancel()
        relay.close()
        await net.close()
    run(main)


def test_pushes_from_others_or_forged_are_never_applied(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=8).start()
        relay = await Relay(net.addr).start()
        replica, ep, task = await live_puller(net, relay.address)
        await asyncio.sleep(0.2)
        w = net.writer
        n = w.length
        w.append(b"the next block")
        relay.forward = False        # the honest push does not get through
        push = w.proof(block=n, upgrade=(n, 1), request=wire.PUSHED)
        # from another session (a key holder elsewhere, greeted by the puller):
        # not the source, dropped unverified (answers are taken only from it)
        att = Attacker()
        s = net.session(att)
        await s.handshake(ep_address(ep))
        await s.collect(0.1)
        before = dict(ep.counters)
        s.send_message(ep_address(ep), wire.DATA, push)
        assert await wait_until(
            lambda: delta(ep.counters, before).get("dropped_unsolicited", 0) == 1, 5)
        assert replica.length == n
        # as if from the source, but forged: verified, rejected, nothing stored
        m = DataMessage.decode(push)
        start, length, nodes, extra, sig = m.upgrade  # type: ignore[misc]
        m.upgrade = (start, length, nodes, extra, bytes([sig[0] ^ 1]) + sig[1:])
        m.block = (m.block[0], b"forged value", m.block[2])  # type: ignore[index]
        envelope = forged_from_source(relay, w, m.encode())
        before = dict(ep.counters)
        relay.to_client(envelope)
        assert await wait_until(lambda: delta(ep.counters, before).get(
            "dropped_invalid_proof", 0) == 1, 5)
        assert replica.length == n and replica.contiguous_length == n
        relay.forward = True         # and the honest pull goes on
        w.append(b"one more")
        assert await wait_until(lambda: replica.contiguous_length == w.length, 20), (
            replica.length, replica.contiguous_length, w.length, dict(ep.counters),
            dict(net.server.counters))
        net.check_replica(replica)
        task.cancel()
        att.close()
        relay.close()
        await net.close()
    run(main)


def ep_address(ep: Any) -> Any:
    return ep._links[0].address


def forged_from_source(relay: Relay, writer: Any, body: bytes) -> bytes:
    """What an on-path key holder can make: the server's last envelope to the
    client - held back, so the client never saw its counter - opened with the
    wire key and re-sealed with ``body`` as its only message."""
    key = wire.wire_key(writer.key)
    last = wire.decode_payload(wire.unseal(key, relay.s2c[-1]))  # type: ignore[arg-type]
    payload = wire.encode_payload(last.session, last.counter, last.echo, [(wire.DATA, body)])
    return wire.seal(key, writer.discovery_key, payload)
