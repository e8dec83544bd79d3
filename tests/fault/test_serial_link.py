"""SerialLink over real pseudo-terminals (socat): a plain line, a noisy line, a
half-duplex medium, unplugging and replugging, and pacing to the baud rate.
No serial I/O is mocked; the fixtures are in tests/fault/serial_line.py."""
from __future__ import annotations

import asyncio
import os
import pathlib
import random
import time
from typing import Any, Awaitable, Callable, List, TypeVar

import pytest

from coremachine_embedded.sync.framing import encode_frame
from coremachine_embedded.sync.serial import SerialLink, TokenBucket
from tests.fault.hostile import settle, wait_until
from tests.fault.serial_line import NoisyLine, PtyPair, noisy_line, pty_pair  # noqa: F401

T = TypeVar("T")


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(_bounded(coro))


async def _bounded(coro: Awaitable[T]) -> T:
    return await asyncio.wait_for(coro, 45)


class Endpoint:
    """A started SerialLink that records what it receives."""

    def __init__(self, path: str, **kw: Any) -> None:
        self.link = SerialLink(path, **kw)
        self.got: List[bytes] = []

    async def start(self) -> "Endpoint":
        await self.link.start(lambda env, addr: self.got.append(env))
        return self


def payloads(seed: int, n: int, lo: int, hi: int, tag: bytes) -> List[bytes]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.randint(lo, hi)
        head = tag + b"%d|" % i
        body = bytes(rng.choice((0, 0, 0xFF, rng.randrange(256))) for _ in range(max(0, size - len(head))))
        out.append((head + body)[:max(size, len(head))])
    return out


# --- pure parts ----------------------------------------------------------------------

def test_token_bucket_with_a_fake_clock() -> None:
    now = [64.0]                                         # binary fractions: exact sums
    b = TokenBucket(rate=1024.0, burst=64, clock=lambda: now[0])
    assert b.available() == 64 and b.delay(64) == 0
    b.consume(64)
    assert b.available() == 0
    assert b.delay(16) == 1 / 64
    assert b.delay(500) == 1 / 16                        # never more than a burst
    now[0] += 1 / 64
    assert b.available() == 16
    now[0] += 10.0
    assert b.available() == 64                           # capped at the burst
    # over a long run the bucket never gives more than rate * t + burst
    spent, t0 = 0, now[0]
    for _ in range(1000):
        now[0] += 0.0007
        k = b.available()
        b.consume(k)
        spent += k
    assert spent <= 1024.0 * (now[0] - t0) + 64
    assert spent >= 1024.0 * (now[0] - t0) - 1


def test_from_url() -> None:
    link = SerialLink.from_url("serial:///dev/ttyUSB0?baud=57600&half_duplex=1&mtu=512&guard_ms=5")
    assert (link.path, link.baud, link.half_duplex, link.mtu) == ("/dev/ttyUSB0", 57600, True, 512)
    assert link.guard_time == pytest.approx(0.005)
    link = SerialLink.from_url("serial:///dev/pts/5")
    assert (link.path, link.baud, link.half_duplex, link.mtu) == ("/dev/pts/5", 115200, False, 4096)
    assert link.guard_time == pytest.approx(4 * 10 / 115200 + 0.002)
    assert "fec_tx" in link.counters                                  # coding is on by default
    assert "fec_tx" not in SerialLink.from_url("serial:///dev/pts/5?fec=0").counters
    with pytest.raises(ValueError):
        SerialLink.from_url("serial:///dev/pts/5?fec=maybe")
    with pytest.raises(ValueError):
        SerialLink.from_url("udp://1.2.3.4:5")
    with pytest.raises(ValueError):
        SerialLink.from_url("serial:///dev/ttyS0?speed=9600")


def test_send_never_blocks_and_bounds_its_queue() -> None:
    link = SerialLink("/nonexistent/tty", 9600)         # never started: nothing is written
    t = time.monotonic()
    for _ in range(1000):
        link.send(b"x" * 1000)
    assert time.monotonic() - t < 1.0
    assert link.queued_bytes <= 256 * 1024
    assert link.counters["tx_dropped"] == 1000 - link.queued_bytes // len(encode_frame(b"x" * 1000))
    link.send(b"y" * (link.mtu + 1))
    link.send(b"")
    assert link.counters["tx_oversize"] == 2


# --- plain line ----------------------------------------------------------------------

def test_many_frames_both_ways_intact_and_in_order(pty_pair: PtyPair) -> None:
    a_out = payloads(1, 500, 1, 300, b"A") + [b"\x00" * 1024, b"\xff" * 1024, bytes(1)]
    b_out = payloads(2, 500, 1, 300, b"B") + [bytes(range(256)) * 4]

    async def main() -> None:
        a = await Endpoint(pty_pair.a, baud=921600).start()
        b = await Endpoint(pty_pair.b, baud=921600).start()
        try:
            for i in range(max(len(a_out), len(b_out))):
                if i < len(a_out):
                    a.link.send(a_out[i])
                if i < len(b_out):
                    b.link.send(b_out[i])
            assert await wait_until(lambda: len(a.got) >= len(b_out) and len(b.got) >= len(a_out),
                                    20)
            assert b.got == a_out and a.got == b_out
            for x, y in ((a.link, b.link), (b.link, a.link)):
                assert x.counters["frames_tx"] == y.counters["frames_rx"]
                assert x.counters["bytes_tx"] == y.counters["bytes_rx"]
                assert y.counters["bad_crc"] == y.counters["bad_cobs"] == 0
                assert x.counters["tx_dropped"] == x.counters["tx_lost"] == 0
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def test_hostile_bytes_and_a_failing_callback(pty_pair: PtyPair) -> None:
    async def main() -> None:
        got: List[bytes] = []

        def on_receive(env: bytes, addr: Any) -> None:
            if env == b"boom":
                raise RuntimeError("replicator bug")
            got.append(env)

        link = SerialLink(pty_pair.b, 921600, mtu=64)
        await link.start(on_receive)
        fd = os.open(pty_pair.a, os.O_RDWR | os.O_NOCTTY)
        try:
            rng = random.Random(5)
            junk = bytes(rng.randrange(256) for _ in range(20000)) + b"\x01" * 5000
            # written from another thread: a blocking write of 25 KB from the event
            # loop's thread waits for the link to read, which that thread runs
            await asyncio.get_running_loop().run_in_executor(None, _write_all, fd, junk + (
                b"\x00" + encode_frame(b"boom") + encode_frame(b"x" * 65)
                + encode_frame(b"still alive")))
            assert await wait_until(lambda: got == [b"still alive"], 5), got
            c = link.counters
            assert c["rx_callback_errors"] == 1 and c["oversize"] >= 2
            assert c["bad_crc"] + c["bad_cobs"] > 0
        finally:
            os.close(fd)
            await link.close()

    run(main())


def test_pacing_never_exceeds_the_baud_rate(pty_pair: PtyPair) -> None:
    baud = 115200
    rate = baud / 10

    async def main() -> None:
        a = await Endpoint(pty_pair.a, baud=baud).start()
        b = await Endpoint(pty_pair.b, baud=baud).start()
        try:
            frames = [bytes([i % 255 + 1]) * 400 for i in range(40)]   # ~16 KB on the wire
            t0 = time.monotonic()
            for f in frames:
                a.link.send(f)
            assert await wait_until(lambda: len(b.got) == len(frames), 20, step=0.001)
            elapsed = time.monotonic() - t0
            wire = a.link.counters["bytes_tx"]
            burst = a.link.bucket.burst
            # only the upper bound: a slow machine may be slower than the line
            assert wire / elapsed <= rate * 1.03 + burst / elapsed, (wire, elapsed)
            assert elapsed >= (wire - burst) / rate * 0.97
            assert b.got == frames
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


# --- noisy line ----------------------------------------------------------------------

def test_noisy_line_delivers_only_what_was_sent(noisy_line: Callable[..., NoisyLine]) -> None:
    line = noisy_line(flip=0.01, drop=0.005, insert=0.005, seed=7)
    n = 600
    a_out = payloads(3, n, 4, 12, b"a")       # ~15 bytes a frame: ~74% survive 2% noise
    b_out = payloads(4, n, 4, 12, b"b")

    async def main() -> None:
        # the framing alone: no erasure coding (test_fec_* below has it)
        a = await Endpoint(line.a, baud=921600, fec=False).start()
        b = await Endpoint(line.b, baud=921600, fec=False).start()
        try:
            for x, y in zip(a_out, b_out):
                a.link.send(x)
                b.link.send(y)
            await settle(lambda: len(a.got) + len(b.got) + a.link.counters["bytes_rx"]
                         + b.link.counters["bytes_rx"], timeout=20)
            line.check()
            c = line.counters
            for rx, sent, d in ((b, a_out, "a>b."), (a, b_out, "b>a.")):
                got = rx.got
                # only frames that were sent, each at most once, in order
                assert all(g in sent for g in got)
                idx = [sent.index(g) for g in got]
                assert idx == sorted(set(idx))
                events = c[d + "flips"] + c[d + "drops"] + c[d + "inserts"]
                lost = len(sent) - len(got)
                assert 0 < events and lost <= 2 * events
                print(d, len(got), "of", len(sent), "delivered;", events, "noise events")
                assert len(got) >= 0.55 * len(sent), (len(got), events)
                lc = rx.link.counters
                bad = lc["bad_crc"] + lc["bad_cobs"] + lc["oversize"]
                assert (bad > 0) == (lost > 0) and bad <= 2 * events
                # every byte that left the relay reached the link, and only those
                assert lc["bytes_rx"] == c[d + "bytes"] - c[d + "drops"] + c[d + "inserts"]
                assert lc["frames_rx"] == len(got)
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


def test_fec_delivers_through_heavy_noise(noisy_line: Callable[..., NoisyLine]) -> None:
    """The same line and payloads with erasure coding on (the default), and a
    64-byte mtu: once each receiver has reported the noise, payloads go as a
    data segment and parity segments, and nearly all arrive - each once, in
    order."""
    line = noisy_line(flip=0.01, drop=0.005, insert=0.005, seed=7)
    n = 600
    a_out = payloads(3, n, 4, 12, b"a")
    b_out = payloads(4, n, 4, 12, b"b") + [b"b" * 64]         # a full-mtu one: 2 chunks

    async def main() -> None:
        a = await Endpoint(line.a, baud=921600, mtu=64).start()
        b = await Endpoint(line.b, baud=921600, mtu=64).start()
        try:
            # sent whole until the first reports come back (a receiver reports
            # as frames arrive: a lost report is followed by the next)
            warm = 0
            while not (a.link.counters["reports_rx"] and b.link.counters["reports_rx"]):
                assert warm < 300, (a.link.counters, b.link.counters)
                a.link.send(a_out[warm])
                b.link.send(b_out[warm])
                warm += 1
                await asyncio.sleep(0.01)
            for x, y in zip(a_out[warm:], b_out[warm:]):
                a.link.send(x)
                b.link.send(y)
            b.link.send(b_out[-1])
            await settle(lambda: len(a.got) + len(b.got) + a.link.counters["bytes_rx"]
                         + b.link.counters["bytes_rx"], timeout=30)
            line.check()
            for rx, tx, sent in ((b, a, a_out), (a, b, b_out)):
                got = rx.got
                assert all(g in sent for g in got)
                idx = [sent.index(g) for g in got]
                assert idx == sorted(set(idx))
                rc, tc = rx.link.counters, tx.link.counters
                print(len(got), "of", len(sent), "delivered;", rc)
                assert rc["reports_tx"] > 0 and tc["reports_rx"] > 0
                # everything after the warm-up went coded; nearly all of it
                # arrived, much of it repaired from parity
                assert tc["fec_tx"] >= len(sent) - warm
                assert rc["fec_rx"] >= 0.97 * tc["fec_tx"] and rc["fec_recovered"] > 0
                assert len([i for i in idx if i >= warm]) >= 0.97 * (len(sent) - warm)
                assert rc["fec_malformed"] == 0
            assert b"b" * 64 in a.got
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


# --- half duplex ---------------------------------------------------------------------

def test_half_duplex_request_response(noisy_line: Callable[..., NoisyLine]) -> None:
    baud = 115200
    line = noisy_line(half_duplex=True, baud=baud, seed=11)

    async def main() -> None:
        client = await Endpoint(line.a, baud=baud, half_duplex=True).start()
        server_link = SerialLink(line.b, baud, half_duplex=True)
        served: List[bytes] = []

        def serve(env: bytes, addr: Any) -> None:
            served.append(env)
            server_link.send(b"re:" + env + b"." * 60)

        await server_link.start(serve)
        try:
            # 1. strict request/response: one outstanding request, resent after a timeout
            answered = 0
            for i in range(40):
                req = b"req %d " % i + b"q" * 80
                for _ in range(5):
                    client.link.send(req)
                    if await wait_until(lambda: any(g.startswith(b"re:" + req) for g in client.got),
                                        0.5, step=0.001):
                        answered += 1
                        break
            assert answered == 40
            # 2. both sides start talking at once: collisions, back-off, retries
            client.got.clear()
            pushes = [b"push %d " % i + b"p" * 60 for i in range(30)]
            for i, p in enumerate(pushes):
                client.link.send(b"req x%d" % i)
                server_link.send(p)
            await settle(lambda: len(client.got) + len(served), quiet=0.5, timeout=20)
            line.check()
            got_pushes = [g for g in client.got if g.startswith(b"push")]
            assert all(g in pushes for g in got_pushes)
            assert len(got_pushes) >= 0.8 * len(pushes), (len(got_pushes), line.counters,
                                                           server_link.counters)
        finally:
            await client.link.close()
            await server_link.close()
        return None

    run(main())


# --- unplugging ----------------------------------------------------------------------

async def _exchange(a: Endpoint, b: Endpoint, tag: bytes, n: int = 20,
                    timeout: float = 5) -> bool:
    want_b = [tag + b"a%d" % i for i in range(n)]
    want_a = [tag + b"b%d" % i for i in range(n)]
    for x, y in zip(want_b, want_a):
        a.link.send(x)
        b.link.send(y)
    return await wait_until(lambda: all(w in b.got for w in want_b)
                            and all(w in a.got for w in want_a), timeout)


def test_unplug_and_replug_the_adapter(noisy_line: Callable[..., NoisyLine]) -> None:
    line = noisy_line(seed=3)

    async def main() -> None:
        a = await Endpoint(line.a, baud=921600).start()
        b = await Endpoint(line.b, baud=921600).start()
        try:
            assert await _exchange(a, b, b"before")
            for round_ in range(2):
                line.unplug(side="both" if round_ == 0 else "a")
                assert await wait_until(lambda: not a.link.connected, 2)
                a.link.send(b"into the void")                 # lost, counted, no error
                assert a.link.counters["tx_lost"] >= 1
                await asyncio.sleep(0.6)                       # at least one failed reopen
                line.replug()
                assert await wait_until(lambda: a.link.connected and b.link.connected, 3)
                assert a.link.counters["reconnects"] == round_ + 1
                assert await _exchange(a, b, b"after%d" % round_)
            assert b.link.counters["reconnects"] == 1          # b was only unplugged once
            assert b"into the void" not in b.got
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


def test_pulled_cable_loses_bytes_but_not_the_port(noisy_line: Callable[..., NoisyLine]) -> None:
    line = noisy_line(seed=4)

    async def main() -> None:
        a = await Endpoint(line.a, baud=921600).start()
        b = await Endpoint(line.b, baud=921600).start()
        try:
            line.unplug(mode="cable")
            a.link.send(b"while unplugged " * 10)
            assert await wait_until(lambda: line.counters["discarded"] > 0, 2)
            line.replug()
            assert await _exchange(a, b, b"again")
            assert b"while unplugged " * 10 not in b.got
            assert a.link.counters["reconnects"] == b.link.counters["reconnects"] == 0
        finally:
            await a.link.close()
            await b.link.close()

    run(main())


def test_plain_line_restart_and_late_device(tmp_path: pathlib.Path) -> None:
    pair = PtyPair(tmp_path / "x", tmp_path / "y")

    async def main() -> None:
        # the device is not there yet: start() returns and keeps trying
        a = await Endpoint(pair.a, baud=921600, reconnect_interval=0.1).start()
        assert not a.link.connected
        pair.start()
        b = await Endpoint(pair.b, baud=921600).start()
        try:
            assert await wait_until(lambda: a.link.connected, 2)
            assert await _exchange(a, b, b"late")
            pair.restart()                                    # socat killed and started again
            assert await wait_until(lambda: a.link.counters["reconnects"] == 1
                                    and b.link.counters["reconnects"] == 1, 3)
            assert await _exchange(a, b, b"restarted")
        finally:
            await a.link.close()
            await b.link.close()
            pair.stop()

    run(main())
