"""Bad input on Hypercore's protocol, over real TCP sockets: garbage and
oversized frames, a failed handshake, a wrong capability, unknown channels
and cores, forged proofs and signatures from a peer that completed the
handshake, request floods.  Each is refused - the connection closed or the
message dropped - and counted; nothing unverified is stored; the server
keeps serving honest peers meanwhile."""
from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from coremachine_embedded import Core, KeyPair, errors
from coremachine_embedded.encoding import DataMessage
from coremachine_embedded.sync import Counters, hyper, wire
from coremachine_embedded.sync.hyper import messages as m
from coremachine_embedded.sync.hyper import protomux
from coremachine_embedded.sync.hyper.peer import ChannelPeer

from .hostile import run, wait_until
from .hyper_hostile import RawPeer, message_of

N = 300


def make_writer(tmp_path, seed: int = 3) -> Core:
    core = Core(tmp_path / "writer", key_pair=KeyPair.from_seed(bytes([seed]) * 32),
                durability="none")
    core.append([b"block-%d" % i + bytes(i % 50) for i in range(N)])
    return core


async def honest_pull(core: Core, port: int, where) -> Core:
    replica = Core(where, key=core.key, durability="none")
    await hyper.pull(replica, "tcp://127.0.0.1:%d" % port)
    assert replica.contiguous_length == N and replica.verify() == N
    return replica


async def serve(core: Core, **options: Any) -> hyper.Server:
    return await hyper.serve(core, "tcp://127.0.0.1:0", **options)


def test_garbage_before_and_during_the_handshake_closes_only_that_connection(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        port = server.address[1]
        bad = [await RawPeer.connect(port, handshake=False) for _ in range(3)]
        bad[0].raw(os.urandom(300))                              # not a handshake at all
        bad[1].raw(b"\xff\xff\xff" + os.urandom(100))           # a 16 MiB handshake frame
        bad[2].raw(bad[2].stream.take_output())                 # message 1, then a forged 3
        bad[2].raw(b"\x40\x00\x00" + os.urandom(64))
        replica = await honest_pull(core, port, tmp_path / "r1")   # meanwhile: served
        for peer in bad:
            assert await peer.wait_closed()
        replica.close()
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["dropped_stream"] == 3 and c["closed_handshake_failed"] >= 2


def test_oversized_and_tampered_frames_after_the_handshake(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core, max_frame=1 << 16)
        port = server.address[1]
        big = await RawPeer.connect(port)
        big.raw((1 << 20).to_bytes(3, "little") + b"x" * 100)   # announces 1 MiB: refused
        flipped = await RawPeer.connect(port)
        flipped.stream.send([b"\x00\x03\x01"])
        frame = bytearray(flipped.stream.take_output())
        frame[-1] ^= 1                                           # fails authentication
        flipped.raw(bytes(frame))
        short = await RawPeer.connect(port)
        short.raw(b"\x05\x00\x00" + b"abcde")                    # too short for its tag
        for peer in (big, flipped, short):
            assert await peer.wait_closed()
        await honest_pull(core, port, tmp_path / "r")
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["closed_too_large"] == 1 and c["closed_decrypt_failed"] == 1
    assert c["closed_decode"] == 1 and c["dropped_stream"] == 3


def test_a_wrong_capability_closes_the_connection(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        port = server.address[1]
        peer = await RawPeer.connect(port)
        # it knows the discovery key but not the core key: a capability it cannot make
        peer.open(1, os.urandom(32), core.discovery_key)
        assert await peer.wait_closed()
        # the capability of the other role (a replayed or reflected open) is wrong too
        peer2 = await RawPeer.connect(port)
        peer2.open(1, core.key, core.discovery_key,
                   m.capability(False, core.key, peer2.stream.handshake_hash))
        assert await peer2.wait_closed()
        await honest_pull(core, port, tmp_path / "r")
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["dropped_capability"] == 2 and c["closed_invalid_capability"] == 2


def test_a_channel_opened_under_the_hypercore_alias_is_served(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        peer = await RawPeer.connect(server.address[1])
        peer.open(1, core.key, core.discovery_key, protocol="hypercore")
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        peer.send_frames([peer.message(1, m.REQUEST, wire.Request(1, 0, block=(7, 0),
                                                                  upgrade=(0, N)).encode())])
        data = await peer.wait_for(lambda ev: message_of(ev, m.DATA))
        assert DataMessage.decode(data.body).block[0] == 7
        peer.close()
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["channels_opened"] == 1 and c["requests_served"] == 1
    assert c.get("dropped_unknown_protocol", 0) == 0


def test_unknown_cores_protocols_and_channels_are_refused_and_counted(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        peer = await RawPeer.connect(server.address[1])
        other = os.urandom(32)
        peer.open(1, other, os.urandom(32))                      # a core the server lacks
        await peer.wait_for(lambda ev: isinstance(ev, protomux.Reject) and ev.local_id == 1)
        peer.send_frames([protomux.encode_open(2, "other/protocol", core.discovery_key, b"")])
        await peer.wait_for(lambda ev: isinstance(ev, protomux.Reject) and ev.local_id == 2)
        # messages on channels that were never opened, and a close of one
        peer.send_frames([peer.message(7, m.SYNC, wire.Sync(0, 5).encode()),
                          peer.message(9, m.REQUEST, wire.Request(1, 0, block=(0, 0)).encode()),
                          protomux.encode_close(7)])
        # the connection still works: open the real core, get its sync, ask for a block
        peer.open(1, core.key, core.discovery_key)
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        peer.send_frames([peer.message(1, m.WANT, m.Want(0, 1 << 21).encode()),
                          peer.message(1, m.REQUEST,
                                       wire.Request(5, 0, block=(3, 0),
                                                    upgrade=(0, N)).encode())])
        data = await peer.wait_for(lambda ev: message_of(ev, m.DATA))
        assert DataMessage.decode(data.body).block[0] == 3
        # our writer answers want with what it holds
        rng = [m.decode(ev.type, ev.body) for ev in peer.events if message_of(ev, m.RANGE)]
        assert any(r.start == 0 and r.length == N for r in rng)
        # extensions are ignored politely, cancel and unwant change nothing
        peer.send_frames([peer.message(1, m.EXTENSION, m.Extension("ext/x", b"hi").encode()),
                          peer.message(1, m.EXTENSION, m.Extension("", b"again").encode()),
                          peer.message(1, m.CANCEL, m.Cancel(5).encode()),
                          peer.message(1, m.UNWANT, m.Unwant(0, 1 << 21).encode()),
                          peer.message(1, 42, b"a type from the future"),
                          peer.message(1, m.REQUEST, wire.Request(6, 0, block=(4, 0),
                                                                  upgrade=(0, N)).encode())])
        await peer.wait_for(lambda ev: message_of(ev, m.DATA)
                            and DataMessage.decode(ev.body).request == 6)
        peer.close()
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["dropped_unknown_core"] == 1 and c["dropped_unknown_protocol"] == 1
    assert c["dropped_unknown_channel"] == 2 and c["requests_served"] >= 2
    assert c["rx_extension"] == 2 and c["rx_cancel"] == 1 and c["rx_unknown"] == 1
    assert c.get("dropped_malformed", 0) == 0


def test_malformed_messages_on_an_open_channel_are_dropped_then_the_peer_is_cut_off(
        tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        peer = await RawPeer.connect(server.address[1])
        peer.open(1, core.key, core.discovery_key)
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        junk = [peer.message(1, kind, b"\xff") for kind in (m.SYNC, m.REQUEST, m.RANGE,
                                                             m.BITFIELD, m.WANT)]
        peer.send_frames(junk)
        await wait_until(lambda: server.counters.get("dropped_malformed", 0) >= 5)
        assert not peer.closed
        peer.send_frames(junk * 20)                             # past the limit: cut off
        assert await peer.wait_closed()
        await honest_pull(core, server.address[1], tmp_path / "r")
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["dropped_malformed"] > 64 and c["closed_protocol"] == 1


def test_a_request_flood_is_bounded_and_others_are_served(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core)
        port = server.address[1]
        peer = await RawPeer.connect(port)
        peer.open(1, core.key, core.discovery_key)
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        flood = [peer.message(1, m.REQUEST, wire.Request(i, 0, block=(i % N, 8),
                                                         upgrade=(0, N)).encode())
                 for i in range(1, 30001)]
        for k in range(0, len(flood), 1000):     # 30,000 requests, as fast as it can
            peer.send_frames(flood[k:k + 1000])
        # it never reads its answers: the server stops answering it, not serving others
        replica = await honest_pull(core, port, tmp_path / "r")
        replica.close()
        await wait_until(lambda: server.counters.get("dropped_flood", 0) > 0, timeout=20)
        peer.close()
        await server.close()
        return dict(server.counters)
    c = run(main, timeout=60)
    assert c["dropped_flood"] > 0
    assert c["requests_served"] < 30000 + N


# --- forged answers to our puller ------------------------------------------------------------

class Forger(ChannelPeer):
    """A server-side peer that holds the real core but alters its proofs."""

    forge: Any = None

    def _send(self, kind: int, body: bytes) -> None:
        if kind == m.DATA:
            body = type(self).forge(body)
        super()._send(kind, body)


def flip_value(body: bytes) -> bytes:
    msg = DataMessage.decode(body)
    if msg.block is not None:
        index, value, nodes = msg.block
        msg.block = (index, value + b"!", nodes)
    return msg.encode()


def flip_signature(body: bytes) -> bytes:
    msg = DataMessage.decode(body)
    if msg.upgrade is not None:
        start, length, nodes, extra, sig = msg.upgrade
        msg.upgrade = (start, length, nodes, extra, sig[:10] + bytes([sig[10] ^ 1]) + sig[11:])
    return msg.encode()


def flip_node(body: bytes) -> bytes:
    msg = DataMessage.decode(body)
    if msg.block is not None and msg.block[2]:
        index, value, nodes = msg.block
        i, size, h = nodes[0]
        msg.block = (index, value, [(i, size, bytes([h[0] ^ 1]) + h[1:])] + nodes[1:])
    return msg.encode()


def flip_later_values(body: bytes) -> bytes:
    """The upgrade (with the first block) is honest, the blocks after it not."""
    return body if DataMessage.decode(body).upgrade is not None else flip_value(body)


def other_fork(body: bytes) -> bytes:
    msg = DataMessage.decode(body)
    msg.fork += 1
    return msg.encode()


@pytest.mark.parametrize("forge", [flip_value, flip_signature, flip_node, other_fork,
                                   flip_later_values])
def test_forged_proofs_store_nothing_and_the_forger_is_cut_off(tmp_path, forge) -> None:
    core = make_writer(tmp_path)

    async def main() -> tuple:
        forger = await serve(core)
        honest = await serve(core)

        class ThisForger(Forger):
            pass
        ThisForger.forge = staticmethod(forge)

        def lookup(dk: bytes) -> Any:
            rep = forger.replicators.get(dk)
            return None if rep is None else ThisForger(rep)
        forger.lookup = lookup  # type: ignore[method-assign]
        replica = Core(tmp_path / "r", key=core.key, durability="none")
        pulled = Counters()
        with pytest.raises(errors.ProtocolError):
            await hyper.pull(replica, "tcp://127.0.0.1:%d" % forger.address[1], counters=pulled)
        stored = replica.contiguous_length
        if stored:   # only what verified: the blocks before the forgery started to matter
            assert replica.verify() == stored
        counters = await hyper.pull(replica, "tcp://127.0.0.1:%d" % honest.address[1])
        assert replica.contiguous_length == N and replica.verify() == N
        await forger.close()
        await honest.close()
        return stored, dict(pulled), dict(counters)
    stored, pulled, honest = run(main)
    assert stored == (1 if forge is flip_later_values else 0)
    assert pulled["dropped_invalid_proof"] > 16 and pulled["closed_protocol"] == 1
    assert honest.get("dropped_invalid_proof", 0) == 0


def test_a_peer_refusing_every_request_is_asked_again_only_after_a_pause(tmp_path) -> None:
    """Our replica pulls from a peer that claims a longer log but answers every
    request with noData: it asks about once a second, not in a loop."""
    core = make_writer(tmp_path)
    replica = Core(tmp_path / "r", key=core.key, durability="none")

    async def main() -> int:
        server = await serve(replica)              # a replica pulls from whoever connects
        peer = await RawPeer.connect(server.address[1])
        peer.open(1, core.key, core.discovery_key)
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        peer.send_frames([peer.message(1, m.SYNC, wire.Sync(0, N, 0).encode()),
                          peer.message(1, m.RANGE, wire.Range(0, N).encode())])
        answered = 0
        loop = asyncio.get_running_loop()
        until = loop.time() + 2.5
        while loop.time() < until:
            try:
                await peer._read_once(until - loop.time())
            except asyncio.TimeoutError:
                break
            for ev in peer.events:
                if message_of(ev, m.REQUEST):
                    req = m.decode(ev.type, ev.body)
                    peer.send_frames([peer.message(1, m.NO_DATA,
                                                   wire.NoData(req.id, m.NOT_AVAILABLE).encode())])
                    answered += 1
            peer.events.clear()
        peer.close()
        await server.close()
        return answered
    requests = run(main)
    assert 1 <= requests <= 4
    assert replica.length == 0


def test_our_replica_answers_want_with_what_it_holds(tmp_path) -> None:
    core = make_writer(tmp_path)
    replica = Core(tmp_path / "r", key=core.key, durability="none")

    async def main() -> list:
        upstream = await serve(core)
        await hyper.pull(replica, "tcp://127.0.0.1:%d" % upstream.address[1])
        await upstream.close()
        server = await serve(replica)
        peer = await RawPeer.connect(server.address[1])
        peer.open(1, core.key, core.discovery_key)
        await peer.wait_for(lambda ev: message_of(ev, m.SYNC))
        peer.events.clear()
        peer.send_frames([peer.message(1, m.WANT, m.Want(0, 1 << 21).encode())])
        ev = await peer.wait_for(lambda ev: message_of(ev, m.RANGE))
        peer.close()
        await server.close()
        return [m.decode(ev.type, ev.body)]
    (rng,) = run(main)
    assert (rng.start, rng.length, rng.drop) == (0, N, False)


def test_keepalives_keep_an_idle_connection_open_and_silence_closes_it() -> None:
    from coremachine_embedded.sync.hyper.connection import Connection

    async def main() -> tuple:
        conns = []

        async def accept(reader, writer) -> None:
            conn = Connection(reader, writer, False, keepalive=0.05, timeout=0.3)
            conns.append(conn)
            await conn.run()
        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        reader, writer = await asyncio.open_connection("127.0.0.1",
                                                       server.sockets[0].getsockname()[1])
        client = Connection(reader, writer, True, keepalive=0.05, timeout=0.3)
        task = asyncio.ensure_future(client.run())
        await asyncio.sleep(1.0)              # idle, but both send keepalives
        alive = not client.closed.is_set() and not conns[0].closed.is_set()
        keepalives = (client.stream.keepalives, conns[0].stream.keepalives)
        # a peer that falls silent (no keepalives) is closed after the timeout
        silent = await RawPeer.connect(server.sockets[0].getsockname()[1])
        closed = await silent.wait_closed(timeout=2.0)
        client.close()
        await task
        server.close()
        await server.wait_closed()
        return alive, keepalives, closed, conns[-1].error
    alive, keepalives, closed, error = run(main)
    assert alive and min(keepalives) >= 5
    assert closed and isinstance(error, errors.ProtocolError)


def test_connections_beyond_the_limit_are_closed_and_counted(tmp_path) -> None:
    core = make_writer(tmp_path)

    async def main() -> dict:
        server = await serve(core, max_connections=3)
        port = server.address[1]
        idle = [await RawPeer.connect(port, handshake=False) for _ in range(3)]
        await wait_until(lambda: server.counters.get("connections", 0) == 3)
        extra = await RawPeer.connect(port, handshake=False)
        assert await extra.wait_closed()
        for peer in idle:
            peer.close()
        await wait_until(lambda: not server.connections)
        await honest_pull(core, port, tmp_path / "r")    # room again
        await server.close()
        return dict(server.counters)
    c = run(main)
    assert c["dropped_connections"] == 1 and c["connections"] == 4
