"""Replication through bad carriers: a UDP proxy that loses, duplicates,
reorders and corrupts datagrams (tests/fault/udp_proxy.py), and a noisy
serial line that flips, drops and inserts bytes (tests/fault/serial_line.py),
full and half duplex.  The replica must end equal to the writer, block for
block; a corrupted envelope is dropped (its AEAD tag fails) and never reaches
the store, and lost requests are retried."""
from __future__ import annotations

import asyncio
import random
import socket
from typing import Any, Awaitable, Callable, Dict, List, Tuple

import pytest

from coremachine_embedded import Core, sync
from coremachine_embedded.sync import Endpoint, UDPLink
from coremachine_embedded.sync.serial import SerialLink
from tests.fault.serial_line import NoisyLine, noisy_line  # noqa: F401
from tests.fault.test_sync_replication import (BAUD, PULL_TIMEOUT, Follower, act,
                                               assert_same_log, assert_same_machine,
                                               build_writer, run, wait_until)
from tests.fault.udp_proxy import UDPProxy, udp_proxy  # noqa: F401

# --- the proxy itself ----------------------------------------------------------------


class _Sink:
    """A UDP socket that collects what reaches it."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.got: List[bytes] = []

    @property
    def address(self) -> Tuple[str, int]:
        host, port = self.sock.getsockname()[:2]
        return host, port

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._read)

    def _read(self) -> None:
        while True:
            try:
                self.got.append(self.sock.recv(65536))
            except BlockingIOError:
                return

    def close(self) -> None:
        asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.sock.close()


async def _through(n: int, **impairment: Any) -> Tuple[List[bytes], List[bytes], Dict[str, int]]:
    """Send ``n`` numbered datagrams client -> proxy -> sink; what was sent, what arrived."""
    sink = _Sink()
    sink.start()
    proxy = await UDPProxy(sink.address, seed=5, **impairment).start()
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    sent = [b"datagram %05d " % i + bytes(range(64)) for i in range(n)]
    try:
        for i, d in enumerate(sent):
            client.sendto(d, proxy.address)
            if i % 50 == 49:
                await asyncio.sleep(0.005)   # the loopback buffers stay small
        for _ in range(200):
            await asyncio.sleep(0.01)
            if proxy.counters["up.datagrams"] == n and not any(
                    d.held for d in proxy._dirs.values()):
                break
        await asyncio.sleep(0.1)
        return sent, sink.got, dict(proxy.counters)
    finally:
        client.close()
        await proxy.close()
        sink.close()


def test_proxy_passes_clean_datagrams_unchanged_and_in_order() -> None:
    sent, got, c = run(_through(500), timeout=30)
    assert got == sent
    assert c["up.forwarded"] == 500 and c["dropped"] == c["corrupted"] == 0


def test_proxy_impairments_do_what_they_say() -> None:
    sent, got, c = run(_through(400, loss=1.0), timeout=30)
    assert got == [] and c["up.dropped"] == 400

    sent, got, c = run(_through(400, duplicate=1.0), timeout=30)
    assert sorted(got) == sorted(sent + sent) and c["up.duplicated"] == 400

    sent, got, c = run(_through(400, corrupt=1.0, corrupt_bytes=3), timeout=30)
    assert len(got) == 400 and c["up.corrupted"] == 400
    for before, after in zip(sent, got):
        assert len(before) == len(after)
        assert 1 <= sum(x != y for x, y in zip(before, after)) <= 3

    sent, got, c = run(_through(400, reorder=0.3, reorder_depth=5), timeout=30)
    assert sorted(got) == sorted(sent) and got != sent and c["up.reordered"] > 0

    sent, got, c = run(_through(100, delay=0.02, jitter=0.02), timeout=30)
    assert sorted(got) == sorted(sent) and c["up.delayed"] == 100

    # mixed, seeded: the same decisions for the same sequence of datagrams
    first = run(_through(600, loss=0.2, duplicate=0.05, corrupt=0.05), timeout=30)
    second = run(_through(600, loss=0.2, duplicate=0.05, corrupt=0.05), timeout=30)
    assert first[1] == second[1] and first[2] == second[2]
    assert 0 < first[2]["up.dropped"] < 600


# --- replication through the proxy ---------------------------------------------------

N_UDP = 20_000


def test_udp_through_a_lossy_duplicating_reordering_corrupting_proxy(
        tmp_path: Any, udp_proxy: Callable[..., Awaitable[UDPProxy]]) -> None:
    wcore, wmachine = build_writer(str(tmp_path / "writer"), N_UDP, seed=21)
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    follower = Follower(reader)

    async def main() -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
        server = Endpoint()
        link = UDPLink("127.0.0.1", 0)
        await server.attach(link)
        server.serve(wcore)
        proxy = await udp_proxy(link.address, loss=0.20, duplicate=0.05, reorder=0.10,
                                corrupt=0.01, seed=22)
        try:
            host, port = proxy.address
            client = await asyncio.wait_for(sync.pull(reader, "udp://%s:%d" % (host, port)),
                                            PULL_TIMEOUT)
            await client.close()
            return dict(client.counters), dict(server.counters), dict(proxy.counters)
        finally:
            await proxy.close()
            await server.close()

    client, server, proxy = run(main())
    # the proxy did its worst in both directions ...
    for d in ("up", "down"):
        assert proxy[d + ".dropped"] > 0 and proxy[d + ".reordered"] > 0, proxy
    assert proxy["down.duplicated"] > 0 and proxy["down.corrupted"] > 0, proxy
    # ... the client saw it: corrupted envelopes fail authentication, duplicates
    # are replays, lost requests and answers are asked again
    assert client["dropped_auth"] > 0, client
    assert client["dropped_replay"] > 0, client
    assert client["retries"] > 0, client
    assert client["blocks"] >= N_UDP
    # ... and nothing corrupt was stored
    assert_same_log(reader, wcore, every_block=True)
    follower.check_against(wmachine)
    assert_same_machine(reader, wmachine)
    follower.machine.close()
    reader.close()
    wmachine.close()
    wcore.close()


# --- scripted losses: the messages that have no request to retry them --------------

def _udp_pair_with_proxy(wcore: Core, **kw: Any) -> Any:
    async def start() -> Tuple[Endpoint, UDPProxy, Endpoint, UDPLink]:
        server = Endpoint()
        link = UDPLink("127.0.0.1", 0)
        await server.attach(link)
        server.serve(wcore)
        proxy = await UDPProxy(link.address, **kw).start()
        client = Endpoint()
        clink = UDPLink("127.0.0.1", 0)
        await client.attach(clink)
        return server, proxy, client, clink
    return start()


def test_a_lost_sync_answering_the_hello_is_asked_for_again(tmp_path: Any) -> None:
    """The handshake is HELLO -> HELLO+SYNC (the server keeps nothing) ->
    HELLO+SYNC (echoing the server's cookie) -> SYNC+HELLO.  Losing that
    last answer must not leave the puller waiting."""
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 200, seed=81)
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")

    async def main() -> Dict[str, int]:
        server, proxy, client, clink = await _udp_pair_with_proxy(
            wcore, filter=lambda direction, seq, data: (direction, seq) != ("down", 1))
        try:
            await asyncio.wait_for(client.pull(reader, clink, proxy.address), 30)
            return dict(proxy.counters)
        finally:
            await client.close()
            await proxy.close()
            await server.close()

    proxy = run(main(), timeout=60)
    assert proxy["down.filtered"] == 1
    assert_same_log(reader, wcore, every_block=True)
    assert_same_machine(reader, wmachine)
    reader.close()
    wmachine.close()
    wcore.close()


def test_a_lost_announcement_reaches_a_live_reader_by_its_keepalive(tmp_path: Any) -> None:
    """A live reader whose announcement of new entries was lost learns of them
    from the answer to its next keepalive SYNC (which tells the writer a
    length it no longer has), without waiting for another append."""
    wcore, wmachine = build_writer(str(tmp_path / "writer"), 100, seed=91, durability="batch")
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    follower = Follower(reader)

    async def main() -> Dict[str, int]:
        server, proxy, client, clink = await _udp_pair_with_proxy(wcore)
        task = asyncio.ensure_future(client.pull(reader, clink, proxy.address, live=True))
        try:
            await wait_until(lambda: reader.contiguous_length == 100, 30, "the first 100")
            await asyncio.sleep(0.1)
            proxy.filter = lambda direction, seq, data: direction != "down"
            act(wmachine, random.Random(92), 30)            # announced: lost
            await wait_until(lambda: proxy.counters["down.filtered"] > 0, 10, "an announcement")
            await asyncio.sleep(0.2)
            proxy.filter = None
            await wait_until(lambda: reader.contiguous_length == 130, 30,
                             "the reader to learn of the new entries")
            return dict(proxy.counters)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await client.close()
            await proxy.close()
            await server.close()

    run(main(), timeout=90)
    follower.check_against(wmachine)
    assert_same_log(reader, wcore)
    follower.machine.close()
    reader.close()
    wmachine.close()
    wcore.close()


# --- replication over a noisy serial line -------------------------------------------

N_SERIAL = 3_000       # full duplex
N_HALF_DUPLEX = 1_500  # half duplex is slower: collisions on top of the noise
# Per-byte noise.  A frame survives only if none of its bytes is hit: at these
# rates (0.09% of bytes) a 512-byte frame gets through ~63% of the time; at
# 0.9% (0.5/0.2/0.2%) it would be ~1%, and the 1 KB fragments of an upgrade
# proof essentially never - no protocol can pull through that.
NOISE = {"flip": 0.0005, "drop": 0.0002, "insert": 0.0002}
MTU = 512


def _pull_over(line: NoisyLine, wcore: Core, reader: Core,
               half_duplex: bool) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
    async def main() -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
        server = Endpoint()
        slink = SerialLink(line.a, BAUD, mtu=MTU, half_duplex=half_duplex)
        await server.attach(slink)
        server.serve(wcore)
        try:
            url = "serial://%s?baud=%d&mtu=%d&half_duplex=%d" % (line.b, BAUD, MTU, half_duplex)
            client = await asyncio.wait_for(sync.pull(reader, url), PULL_TIMEOUT)
            clink = client._links[0]
            await client.close()
            return dict(client.counters), dict(slink.counters), dict(clink.counters)
        finally:
            await server.close()
    return run(main())


@pytest.mark.parametrize("half_duplex", [False, True], ids=["full-duplex", "half-duplex"])
def test_noisy_serial_line(tmp_path: Any, noisy_line: Any,  # noqa: F811
                           half_duplex: bool) -> None:
    n = N_HALF_DUPLEX if half_duplex else N_SERIAL
    wcore, wmachine = build_writer(str(tmp_path / "writer"), n, seed=31)
    line: NoisyLine = noisy_line(half_duplex=half_duplex, baud=BAUD, seed=32, **NOISE)
    reader = Core(str(tmp_path / "reader"), key=wcore.key, durability="batch")
    client, slink, clink = _pull_over(line, wcore, reader, half_duplex)
    line.check()
    lc = line.counters
    assert lc["flips"] > 0 and lc["drops"] > 0 and lc["inserts"] > 0, lc
    # damaged frames were thrown away by the framing (CRC/COBS) on both ends ...
    assert clink["bad_crc"] + clink["bad_cobs"] > 0, clink
    assert slink["bad_crc"] + slink["bad_cobs"] + slink["collisions"] > 0, slink
    if half_duplex:
        assert lc["collisions"] > 0 or slink["collisions"] + clink["collisions"] > 0, lc
    # ... so the replicator had to ask again
    assert client["retries"] > 0, client
    assert_same_log(reader, wcore, every_block=True)
    assert_same_machine(reader, wmachine)
    reader.close()
    wmachine.close()
    wcore.close()


def test_a_retried_run_is_answered_with_only_what_is_missing(tmp_path: Any) -> None:
    """A server asked again for a run with a bitmap sends exactly the values
    named, and the first block's proof only when bit 0 is set: after a loss only
    the lost part travels again."""
    from coremachine_embedded.sync import wire
    from tests.fault.hostile import Net, run

    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=64).start()
        att, s = await net.greeted_session()
        bits = bytearray(4)
        for k in (3, 4, 5, 20, 31):
            bits[k >> 3] |= 1 << (k & 7)
        s.send_message(net.addr, wire.RUN, wire.Run(5, 0, 32, 32, 6, bytes(bits)).encode())
        got = await s.collect(0.2)
        values = {m.first + k: v for kind, m in got if kind == wire.VALUES
                  for k, v in enumerate(m.values)}
        assert values == {i: net.writer.get(i) for i in (35, 36, 37, 52, 63)}
        assert not any(kind == wire.DATA for kind, _ in got)

        bits[0] |= 1                                # now the first block's proof too
        s.send_message(net.addr, wire.RUN, wire.Run(6, 0, 32, 32, 6, bytes(bits)).encode())
        got = await s.collect(0.2)
        assert [kind for kind, _ in got].count(wire.DATA) == 1
        att.close()
        await net.close()
    run(main)


def test_a_request_sent_twice_is_answered_once(tmp_path: Any) -> None:
    """Retries go out in two envelopes (so one loss does not cost another
    round trip); the server answers a request id once and counts the copy."""
    from coremachine_embedded.sync import wire
    from tests.fault.hostile import Net, run

    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=64).start()
        att, s = await net.greeted_session()
        before = dict(net.server.counters)
        body = wire.Run(9, 0, 0, 16, 4).encode()
        s.send_message(net.addr, wire.RUN, body)
        s.send_message(net.addr, wire.RUN, body)      # the same id, another envelope
        got = await s.collect(0.2)
        assert [kind for kind, _ in got].count(wire.DATA) == 1
        values = [v for kind, m in got if kind == wire.VALUES for v in m.values]
        assert values == [net.writer.get(i) for i in range(1, 16)]
        c = net.server.counters
        assert c.get("duplicates", 0) - before.get("duplicates", 0) == 1
        assert c["requests_served"] - before.get("requests_served", 0) == 1
        att.close()
        await net.close()
    run(main)
