"""Floods against the sync layer: request and session floods are limited and
counted (a flooding session is rate-limited, stale-cookie senders get no
state), many addresses do not starve an honest puller, fragment sets that
never complete stay bounded per peer.

Each test checks what tests/fault/hostile.py says every hostile-input test
checks, with the tools there and in tests/fault/hostile_peers.py.
"""
from __future__ import annotations

import asyncio
import os
import resource
import time
from typing import Any, Dict, Tuple

from coremachine_embedded.sync import outbox, serving, sessions, wire
from tests.fault.hostile import (HeldPull, Net, deliver, delta, drops, hello, rss_bytes, run,
                                 settle, start_flood, stop_flood, wait_until)
from tests.fault.hostile_peers import Attacker, Relay


# --- 6. floods -----------------------------------------------------------------------

def _memory() -> Tuple[int, int]:
    return rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _structures(ep: Any) -> Dict[str, int]:
    """Sizes of everything an endpoint keeps per remote peer."""
    out = {"sessions": len(ep.sessions.windows), "peers": 0, "queued": 0, "fragment_sets": 0,
           "fragment_bytes": 0, "flushes": 0, "ahead": 0}
    for entry in ep._entries.values():
        out["peers"] += len(entry.peers)
        out["ahead"] += entry.download.held_bytes()
        for p in entry.peers.values():
            out["queued"] = max(out["queued"], p.outbox.bytes)
            out["flushes"] += p.outbox.scheduled
            out["fragment_sets"] += len(p.reassembly.sets)
            out["fragment_bytes"] += sum(len(c) for parts in p.reassembly.sets.values()
                                         for c in parts.values())
    return out


def test_request_flood_from_one_session(tmp_path: Any) -> None:
    """Tens of thousands of requests from one session, from another process as
    fast as it can seal them (all authentic, fresh and with the right cookie),
    while an honest pull is under way: the server keeps working, its state and
    memory stay bounded, and the honest pull completes (once the flood is over:
    during it the server's socket buffer overflows and the honest requests are
    lost with the rest - see test_a_flooding_session_is_limited_and_counted).
    Packed into one fragmented message, the requests overflow the peer's
    request limit: dropped_flood (the rate is set below what either backend
    can serve, so the limit, not the CPU, decides)."""
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=200, request_rate=1000.0).start()
        att, s = await net.greeted_session()
        c = net.server.counters
        hp = await HeldPull(net).start("all", window=4)
        mem0, struct0 = _memory(), _structures(net.server)
        before = dict(c)
        flood = start_flood(s, net.addr, seconds=30, blocks=200, minimum=20000)
        try:
            await asyncio.sleep(0.5)
            hp.relay.release()                   # the honest pull is under way
            # until the server has taken in and answered thousands (however
            # fast this machine is now), with ten times as many sent
            assert await wait_until(lambda: delta(c, before).get("requests_served", 0) >= 2000,
                                    25), delta(c, before)
            sent = await asyncio.to_thread(stop_flood, flood)
        finally:
            flood.kill()
        got = delta(c, before)
        assert sent >= 20000 and got["rx_envelopes"] >= 2000, (sent, got)
        await hp.finish(timeout=25)
        net.check_replica(hp.core)
        mem1, struct1 = _memory(), _structures(net.server)
        assert struct1["sessions"] <= struct0["sessions"] + 1
        assert struct1["peers"] <= struct0["peers"] + 1
        assert struct1["queued"] <= outbox.MAX_QUEUE_BYTES and struct1["fragment_bytes"] == 0
        assert mem1[0] - mem0[0] < 32 << 20 and mem1[1] - mem0[1] < 32 << 20, (mem0, mem1)

        # The same requests packed in one message of ~1 MB, sent in fragments
        # (once the flood left the server's socket buffer): the reassembled
        # message overflows the request limit.
        await settle(lambda: c.get("rx_envelopes", 0), quiet=0.3, timeout=30)
        body = wire.encode_messages([(wire.REQUEST, wire.Request(i, 0, block=(i % 200, 6)).encode())
                                     for i in range(100000)])
        chunk = net.server_link.mtu - wire.OVERHEAD - 25 - 16
        count = -(-len(body) // chunk)
        parts = [s.envelope([(wire.FRAGMENT, wire.Fragment(
            99, i, count, body[i * chunk:(i + 1) * chunk]).encode())]) for i in range(count)]
        before = dict(c)
        await deliver(att, parts, net.addr, lambda: c.get("rx_envelopes", 0), batch=16)
        assert await wait_until(lambda: delta(c, before).get("dropped_flood", 0) > 0, 10), \
            delta(c, before)
        assert _structures(net.server)["fragment_bytes"] == 0
        await net.honest_pull()
        assert _memory()[0] - mem0[0] < 64 << 20
        net.alive()
        att.close()
        hp.close()
        await net.close()
    run(main, timeout=120)


def test_a_flooding_session_is_limited_and_counted(tmp_path: Any) -> None:
    """One authenticated session sends requests as fast as another process can:
    the server answers at most its configured rate (plus the burst), drops the
    rest as dropped_flood, and an honest puller still completes. The rate is set
    below what either backend can serve so the limit, not the CPU, decides."""
    rate = 300.0

    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=200, request_rate=rate).start()
        att, s = await net.greeted_session()
        c = net.server.counters
        before = dict(c)
        t0 = time.monotonic()
        flood = start_flood(s, net.addr, seconds=30, blocks=200, minimum=5000)
        try:   # until the server took in more than the limit (however busy this machine is)
            assert await wait_until(lambda: delta(c, before).get("dropped_flood", 0) >= 1000, 25)
            sent = await asyncio.to_thread(stop_flood, flood)
        finally:
            flood.kill()
        await asyncio.sleep(0.2)                  # let the server drain its socket
        elapsed = time.monotonic() - t0
        got = delta(c, before)
        served, dropped = got.get("requests_served", 0), got.get("dropped_flood", 0)
        # the limit decided, not the CPU: a thousand refused, and no more
        # answered or refused than were sent
        assert dropped >= 1000 and served + dropped <= sent, (sent, got)
        assert served <= rate * elapsed + serving.REQUEST_BURST + 1, (served, elapsed)
        await net.honest_pull()
        net.alive()
        att.close()
        await net.close()
    run(main)


def test_session_flood_stays_bounded(tmp_path: Any) -> None:
    """Tens of thousands of sessions from one address, and HELLOs of 900
    sessions from 300 addresses, none echoing a cookie: no replay window and
    no peer is created (each HELLO gets a stateless answer); afterwards an
    honest pull completes."""
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        c = net.server.counters
        entry = net.server._entries[net.writer.discovery_key]
        att = Attacker()
        mem0 = _memory()
        before = dict(c)
        envelopes = [net.session(att).envelope([(wire.SYNC, wire.Sync(0, 0).encode())])
                     for _ in range(sessions.MAX_SESSIONS + 4000)]
        await deliver(att, envelopes, net.addr, lambda: c.get("rx_envelopes", 0), batch=64)
        assert drops(c, before) == {"dropped_stale_cookie": len(envelopes)}
        assert len(net.server.sessions.windows) == 0 and len(entry.peers) == 0
        many = [Attacker() for _ in range(300)]
        for a in many:
            a.sessions = [net.session(a) for _ in range(3)]  # type: ignore[attr-defined]
        greetings = [(a, a.sessions[i].envelope([hello()]))  # type: ignore[attr-defined]
                     for i in range(3) for a in many]
        for i in range(0, len(greetings), 50):
            target = c.get("rx_envelopes", 0) + 50
            for a, env in greetings[i:i + 50]:
                a.send(env, net.addr)
            assert await wait_until(lambda: c.get("rx_envelopes", 0) >= target, 5)
        assert len(entry.peers) == 0 and len(net.server.sessions.windows) == 0
        assert delta(c, before)["hellos"] == len(greetings)
        mem1 = _memory()
        assert mem1[0] - mem0[0] < 32 << 20, (mem0, mem1)
        for a in many:
            a.close()
        await net.honest_pull()
        net.alive()
        att.close()
        await net.close()
    run(main)


def test_many_addresses_do_not_starve_an_honest_puller(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=200).start()
        relay = await Relay(net.addr).start()
        relay.delay = 0.05                            # a 100 ms round trip
        r = net.replica()
        ep, link = await net.endpoint(window=1)       # one request per round trip
        pull = asyncio.ensure_future(ep.pull(r, link, relay.address))
        assert await wait_until(lambda: r.contiguous_length >= 5, 10)
        atts = [Attacker() for _ in range(300)]
        sessions = [net.session(a) for a in atts]     # cookie-less envelopes: no handshake
        stop = asyncio.Event()

        async def flood() -> None:                    # ~4000 datagrams/s, round robin
            i = 0
            while not stop.is_set():
                for _ in range(40):
                    sessions[i % len(sessions)].send(net.addr, [(wire.SYNC, wire.Sync(0, 0).encode())])
                    i += 1
                await asyncio.sleep(0.01)
        task = asyncio.ensure_future(flood())
        start = r.contiguous_length
        try:
            await asyncio.wait([pull], timeout=5)
        finally:
            stop.set()
            await task
            for a in atts:
                a.close()
        stale = ep.counters.get("dropped_stale_cookie", 0)
        progress = r.contiguous_length - start
        assert stale == 0 and progress >= 25, (
            "%d answers to the honest puller came without its cookie; %d blocks in 5 s"
            % (stale, progress))
        pull.cancel()
        relay.close()
        await net.close()
    run(main)


# --- 7. fragments --------------------------------------------------------------------

def test_fragments_never_completing_stay_bounded(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        att, s = await net.greeted_session()
        c = net.server.counters
        rx = lambda: c.get("rx_envelopes", 0)  # noqa: E731
        mem0 = _memory()
        # thousands of sets that never complete (the last part never comes)
        before = dict(c)
        sets = 3000
        envelopes = [s.envelope([(wire.FRAGMENT, wire.Fragment(i, 0, 2, os.urandom(1000)).encode())])
                     for i in range(sets)]
        await deliver(att, envelopes, net.addr, rx, batch=64)
        assert drops(c, before) == {"dropped_fragments": sets - outbox.MAX_REASSEMBLY}
        st = _structures(net.server)
        assert st["fragment_sets"] == outbox.MAX_REASSEMBLY
        assert st["fragment_bytes"] == outbox.MAX_REASSEMBLY * 1000
        # the largest fragment count allowed, a few parts of each
        before = dict(c)
        top = wire.MAX_MESSAGE // 64
        envelopes = [s.envelope([(wire.FRAGMENT, wire.Fragment(10**6 + i, part, top, os.urandom(1000))
                                  .encode())]) for i in range(40) for part in (0, top - 1, top // 2)]
        # fragment counts over the limit, and parts beyond the count
        bad = [wire.Fragment(5, 0, top + 1, b"x"), wire.Fragment(5, top, top, b"x"),
               wire.Fragment(5, 2**64 - 2, 2**64 - 1, b"x"), wire.Fragment(5, 0, 0, b"x")]
        envelopes += [s.envelope([(wire.FRAGMENT, f.encode())]) for f in bad]
        await deliver(att, envelopes, net.addr, rx, batch=64)
        assert drops(c, before) == {"dropped_fragments": 40, "dropped_malformed": len(bad)}
        st = _structures(net.server)
        assert st["fragment_sets"] == outbox.MAX_REASSEMBLY
        assert st["fragment_bytes"] <= outbox.MAX_REASSEMBLY * 3 * 1000
        # a set whose parts are all the same index never completes either
        before = dict(c)
        envelopes = [s.envelope([(wire.FRAGMENT, wire.Fragment(77, 0, 3, os.urandom(1000)).encode())])
                     for _ in range(500)]
        await deliver(att, envelopes, net.addr, rx, batch=64)
        st = _structures(net.server)
        assert st["fragment_bytes"] <= outbox.MAX_REASSEMBLY * 3 * 1000
        assert _memory()[0] - mem0[0] < 32 << 20
        await net.honest_pull()
        net.alive()
        att.close()
        await net.close()
    run(main)


def test_fragment_memory_per_peer_is_bounded_by_one_message(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        att, s = await net.greeted_session()
        c = net.server.counters
        chunk = os.urandom(net.server_link.mtu - wire.OVERHEAD - 60)
        per_set = wire.MAX_MESSAGE // len(chunk) // (outbox.MAX_REASSEMBLY - 1) + 1
        envelopes = [s.envelope([(wire.FRAGMENT, wire.Fragment(i, part, per_set + 1, chunk).encode())])
                     for i in range(outbox.MAX_REASSEMBLY) for part in range(per_set)]
        await deliver(att, envelopes, net.addr, lambda: c.get("rx_envelopes", 0), batch=64)
        held = _structures(net.server)["fragment_bytes"]
        assert held <= wire.MAX_MESSAGE, "one peer holds %.1f MiB of fragments" % (held / 2**20)
        att.close()
        await net.close()
    run(main, timeout=50)
