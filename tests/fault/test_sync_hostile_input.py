"""Hostile input against the sync layer: envelopes that are not envelopes,
other cores and wrong keys, replays of captured traffic, absurd requests.

Each test checks what tests/fault/hostile.py says every hostile-input test
checks, with the tools there and in tests/fault/hostile_peers.py.
"""
from __future__ import annotations

import asyncio
import os
import random
from typing import Any, Callable, List, Tuple

from coremachine_embedded import Core, KeyPair
from coremachine_embedded.encoding import DataMessage, encode_uint
from coremachine_embedded.sync import wire
from tests.fault.hostile import Net, deliver, delta, drops, flip, hello, run, settle, wait_until
from tests.fault.hostile_peers import Attacker, Relay, Session


# --- 1. envelopes that are not envelopes ---------------------------------------------

def test_malformed_truncated_and_oversized_envelopes(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        att = Attacker()
        s = net.session(att)
        c = net.server.counters
        rx = lambda: c.get("rx_envelopes", 0)  # noqa: E731
        real = s.envelope([hello(), (wire.SYNC, wire.Sync(0, 0).encode())])
        assert wire.unseal(s.key, real) is not None
        rng = random.Random(7)

        junk = [b"", b"\x01", bytes(wire.OVERHEAD - 1)]
        junk += [rng.randbytes(rng.randrange(0, 1200)) for _ in range(150)]
        junk += [b"\x01" + rng.randbytes(rng.randrange(32, 1199)) for _ in range(50)]
        junk += [bytes((1,)) + net.writer.discovery_key + bytes(n) for n in range(0, wire.NONCE + wire.TAG)]
        junk += [bytes((v,)) + real[1:] for v in (0, 2, 3, 0x7F, 0x80, 0xFF)]   # wrong version
        junk += [real[:n] for n in range(len(real))]                             # every cut
        junk += [flip(real, i) for i in range(len(real))]                       # every byte
        junk += [real + b"\x00", real + rng.randbytes(100)]                      # trailing bytes
        expect = {"dropped_malformed": 0, "dropped_unknown_core": 0, "dropped_auth": 0}
        for d in junk:
            dk = wire.peek(d)
            expect["dropped_malformed" if dk is None else
                   "dropped_unknown_core" if dk != net.writer.discovery_key else
                   "dropped_auth"] += 1

        # Sealed under the right key, but the plaintext is not a payload.
        good_payload = wire.encode_payload(s.session, 5, bytes(8), [hello()])
        bad_payloads = [b"", b"\x00" * 7, os.urandom(8) + b"\xff\x01", os.urandom(8) + b"\xfd"]
        bad_payloads += [good_payload[:n] for n in range(len(good_payload))]
        bad_payloads += [good_payload + encode_uint(wire.SYNC) + encode_uint(50) + b"xx"]
        bad_payloads = [p for p in bad_payloads if not _decodes(p)]
        assert len(bad_payloads) > 20
        junk += [wire.seal(s.key, s.dk, p) for p in bad_payloads]
        expect["dropped_malformed"] += len(bad_payloads)

        before = dict(c)
        await deliver(att, junk, net.addr, rx)
        assert drops(c, before) == expect
        assert await att.drain(0.2) == [], "the server answered unauthenticated junk"

        # Oversized datagrams never reach the endpoint (the link drops them).
        oversize = [os.urandom(n) for n in (net.server_link.mtu + 1, 1500, 9000, 65000)]
        oversize.append(s.envelope([hello(), (wire.RANGE, os.urandom(2000))]))
        before, rx_before = dict(c), rx()
        for d in oversize:
            att.send(d, net.addr)
        assert await wait_until(
            lambda: net.server_link.counters["rx_oversize"] >= len(oversize), 5)
        assert rx() == rx_before and drops(c, before) == {}

        # Malformed message bodies inside a valid, fresh envelope: each dropped.
        await s.handshake(net.addr)
        await s.collect(0.1)
        bodies = [
            (wire.SYNC, b""), (wire.SYNC, b"\x01\x00"), (wire.SYNC, b"\xff\x00"),
            (wire.REQUEST, b""), (wire.REQUEST, b"\x01\x05"), (wire.REQUEST, b"\x01\x05\x00"),
            (wire.REQUEST, b"\x08\x05\x00\x03"), (wire.REQUEST, b"\x20\x01\x00"),
            (wire.NO_DATA, b""), (wire.NO_DATA, b"\x01\x01"), (wire.RANGE, b""), (wire.RANGE, b"\x00"),
            (wire.HELLO, b"\x01" + b"\x00" * 7), (wire.HELLO, b""),
            (wire.FRAGMENT, b""), (wire.FRAGMENT, b"\x01\x03\x03xx"), (wire.FRAGMENT, b"\x01\x00\x00xx"),
            (wire.FRAGMENT, encode_uint(1) + encode_uint(0) + encode_uint(wire.MAX_MESSAGE // 64 + 1)),
            (wire.FRAGMENT, encode_uint(1) + encode_uint(0) + encode_uint(2**64 - 1)),
        ]
        before = dict(c)
        await deliver(att, [s.envelope([m]) for m in bodies], net.addr, rx)
        # DATA to a writer is unsolicited whatever it holds
        await deliver(att, [s.envelope([(wire.DATA, b)]) for b in (b"", b"\x01", os.urandom(300))],
                      net.addr, rx)
        assert drops(c, before) == {"dropped_malformed": len(bodies), "dropped_unsolicited": 3}

        replica = await net.honest_pull()
        assert replica.length == 64
        net.alive()
        att.close()
        await net.close()
    run(main)


def _decodes(payload: bytes) -> bool:
    try:
        wire.decode_payload(payload)
        return True
    except Exception:
        return False


# --- 2. other cores, wrong keys -------------------------------------------------------

def test_unknown_discovery_keys(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        other = Core(os.path.join(str(tmp_path), "other"), key_pair=KeyPair.generate())
        net.cores.append(other)
        att = Attacker()
        c = net.server.counters
        # well-formed envelopes for a core this server does not serve (with its right key) ...
        s_other = Session(att, other.key, other.discovery_key)
        envelopes = [s_other.envelope([hello()]) for _ in range(40)]
        envelopes += [s_other.envelope([(wire.REQUEST, wire.Request(i, 0, block=(0, 0)).encode())])
                      for i in range(40)]
        # ... and for random discovery keys under random keys
        for _ in range(80):
            dk = os.urandom(32)
            envelopes.append(wire.seal(os.urandom(32), dk, wire.encode_payload(
                os.urandom(8), 1, bytes(8), [hello()])))
        before = dict(c)
        await deliver(att, envelopes, net.addr, lambda: c.get("rx_envelopes", 0))
        assert drops(c, before) == {"dropped_unknown_core": len(envelopes)}
        assert await att.drain(0.2) == []
        assert not other.length and net.server._entries.keys() == {net.writer.discovery_key}
        await net.honest_pull()
        net.alive()
        att.close()
        await net.close()
    run(main)


def test_wrong_key_and_discovery_key_only(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        w = net.writer
        other = KeyPair.generate()
        att = Attacker()
        c = net.server.counters
        dk = w.discovery_key
        payload = wire.encode_payload(os.urandom(8), 1, bytes(8), [hello()])
        request = wire.encode_payload(os.urandom(8), 2, bytes(8),
                                      [(wire.REQUEST, wire.Request(1, 0, block=(0, 0)).encode())])
        # sealed with the wire key of another core, naming this core's discovery key
        envelopes = [wire.seal(wire.wire_key(other.public_key), dk, p) for p in (payload, request)]
        # a host that knows the discovery key only: every key it could try
        guesses = [dk, wire.wire_key(dk), bytes(32), b"\xff" * 32, w.discovery_key[::-1],
                   w.key, w.public_key]  # (the core key itself is not the wire key either)
        guesses += [os.urandom(32) for _ in range(40)]
        envelopes += [wire.seal(k, dk, p) for k in guesses for p in (payload, request)]
        # splicing: a genuine header and nonce with made-up ciphertext
        att_session = net.session(att)
        genuine = att_session.envelope([hello()])
        envelopes += [genuine[:wire.HEADER + wire.NONCE] + os.urandom(n) for n in (16, 17, 64, 400)]
        envelopes += [genuine[:wire.HEADER] + os.urandom(wire.NONCE) + genuine[wire.HEADER + wire.NONCE:]]
        before = dict(c)
        await deliver(att, envelopes, net.addr, lambda: c.get("rx_envelopes", 0))
        assert drops(c, before) == {"dropped_auth": len(envelopes)}
        assert await att.drain(0.2) == [], "the server answered a host without the key"
        assert net.server.sessions.windows == {} or all(s != att_session.session
                                                for _, s in net.server.sessions.windows)
        assert w.length == 64
        await net.honest_pull()
        net.alive()
        att.close()
        await net.close()
    run(main)


# --- 4. replays ----------------------------------------------------------------------

def _has_hello(key: bytes, envelope: bytes) -> bool:
    plain = wire.unseal(key, envelope)
    assert plain is not None
    return any(k == wire.HELLO for k, _ in wire.decode_payload(plain).messages)


def _echoes_a_cookie(key: bytes, envelope: bytes) -> bool:
    plain = wire.unseal(key, envelope)
    assert plain is not None
    return wire.decode_payload(plain).echo != bytes(8)


def test_replayed_envelopes_do_nothing(tmp_path: Any) -> None:
    """Replayed envelopes change nothing and get no answer, from wherever
    they come: the sessions they belong to have replay windows, and a window
    starts at its session's first envelope from a validated address, so what
    the session sent before (its first HELLO) counts as seen too.  (An
    envelope of a session never validated gets a stateless HELLO at most, no
    larger than 3x: test_session_flood_stays_bounded.)"""
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        w = net.writer
        wkey = wire.wire_key(w.key)
        relay = await Relay(net.addr).start()
        r = await net.honest_pull(via=relay.address)
        client = net.endpoints[-1]
        await settle(lambda: (len(relay.c2s), len(relay.s2c)), quiet=0.2)
        c2s, s2c = list(relay.c2s), list(relay.s2c)
        assert len(c2s) >= 3 and len(s2c) >= 3
        relay.forward = False
        sc, cc = net.server.counters, client.counters
        state = lambda: (w.length, w.tree_hash(), r.length, r.contiguous_length, r.tree_hash())  # noqa: E731
        before_state = state()

        # The same envelopes again, from the addresses the peers know each other by.
        first_hellos = [e for e in c2s if not _echoes_a_cookie(wkey, e)]
        assert len(first_hellos) == 1 and all(_echoes_a_cookie(wkey, e) for e in s2c)
        before_s, before_c = dict(sc), dict(cc)
        await deliver_via(relay.to_server, c2s, lambda: sc.get("rx_envelopes", 0))
        await deliver_via(relay.to_client, s2c, lambda: cc.get("rx_envelopes", 0))
        assert drops(sc, before_s) == {"dropped_replay": len(c2s)}
        assert drops(cc, before_c) == {"dropped_replay": len(s2c)}
        # nothing applied, nothing answered
        assert sc.get("tx_envelopes") == before_s.get("tx_envelopes")
        assert cc.get("tx_envelopes") == before_c.get("tx_envelopes")
        assert cc.get("blocks") == before_c.get("blocks")

        # ... from another address (to which the cookies are not bound)
        att = Attacker()
        before_s, before_c = dict(sc), dict(cc)
        await deliver(att, c2s, net.addr, lambda: sc.get("rx_envelopes", 0))
        await deliver(att, s2c, client._links[0].address, lambda: cc.get("rx_envelopes", 0))
        assert drops(sc, before_s) == {"dropped_replay": len(c2s)}
        assert drops(cc, before_c) == {"dropped_replay": len(s2c)}
        assert await att.drain(0.2) == []
        # ... and reflected back to their own sender
        before_s, before_c = dict(sc), dict(cc)
        await deliver(att, s2c, net.addr, lambda: sc.get("rx_envelopes", 0))
        await deliver(att, c2s, client._links[0].address, lambda: cc.get("rx_envelopes", 0))
        assert drops(sc, before_s) == {"dropped_own": len(s2c)}
        assert drops(cc, before_c) == {"dropped_own": len(c2s)}
        assert await att.drain(0.1) == []
        assert state() == before_state

        # The server restarted (new endpoint, new cookie secrets): the replayed
        # client envelopes carry a stale cookie - only a replayed HELLO is
        # answered (with a HELLO), no request is served.
        srv2, link2 = await net.endpoint()
        srv2.serve(w)
        c2 = srv2.counters
        await deliver_via(lambda d: relay.to_server(d, link2.address), c2s,
                          lambda: c2.get("rx_envelopes", 0))
        hellos = sum(_has_hello(wkey, e) for e in c2s)
        assert drops(c2, {}) == {"dropped_stale_cookie": len(c2s) - hellos}
        assert not c2.get("requests_served")
        await deliver_via(lambda d: relay.to_server(d, link2.address), c2s,
                          lambda: c2.get("rx_envelopes", 0))
        assert drops(c2, {}) == {"dropped_stale_cookie": 2 * (len(c2s) - hellos)}
        assert not c2.get("requests_served") and not srv2.sessions.windows

        # The client restarted, with an empty replica it pulls from the same
        # address: the replayed server envelopes (proofs included) are stale.
        r2 = net.replica()
        cli2, clink2 = await net.endpoint()
        pull = asyncio.ensure_future(cli2.pull(r2, clink2, relay.address))
        await asyncio.sleep(0.05)
        cc2 = cli2.counters
        relay.client = clink2.address
        await deliver_via(relay.to_client, s2c, lambda: cc2.get("rx_envelopes", 0))
        hellos = sum(_has_hello(wkey, e) for e in s2c)
        assert drops(cc2, {}) == {"dropped_stale_cookie": len(s2c) - hellos}
        assert (r2.length, r2.contiguous_length, cc2.get("blocks", 0)) == (0, 0, 0)
        pull.cancel()
        assert state() == before_state
        net.check_replica(r)
        await net.honest_pull()
        net.alive()
        att.close()
        relay.close()
        await net.close()
    run(main)


async def deliver_via(send: Callable[[bytes], None], datagrams: List[bytes],
                      received: Callable[[], int], batch: int = 32) -> None:
    for i in range(0, len(datagrams), batch):
        chunk = datagrams[i:i + batch]
        target = received() + len(chunk)
        for d in chunk:
            send(d)
        assert await wait_until(lambda: received() >= target, 5)


# --- 5. absurd requests from a peer that did the handshake ---------------------------

def _absurd_requests(length: int) -> List[Tuple[wire.Request, int]]:
    """(request, NO_DATA reason expected)."""
    big = (2**60, 2**62, 2**63, 2**64 - 1, 10**6, length, length + 1)
    out = []
    rid = 1000
    for v in big:
        out += [(wire.Request(rid, 0, block=(v, 0)), 1),
                (wire.Request(rid + 1, 0, block=(3, v)), 1),
                (wire.Request(rid + 2, 0, upgrade=(v, 1)), 1),
                (wire.Request(rid + 3, 0, upgrade=(0, v)), 1),
                (wire.Request(rid + 4, 0, upgrade=(v, v)), 1),
                (wire.Request(rid + 5, 0, block=(v, v), upgrade=(0, length)), 1),
                (wire.Request(rid + 6, 0, hash=(v, v)), 2),
                (wire.Request(rid + 7, 0, seek=(v, v)), 2),
                (wire.Request(rid + 8, v, block=(0, 0)), 2)]           # another fork
        rid += 10
    out += [(wire.Request(2**64 - 1, 0, block=(2**62, 0)), 1),
            (wire.Request(7, 0, block=(3, 65)), 1),
            (wire.Request(8, 0, upgrade=(5, 0)), 1),
            (wire.Request(9, 0, block=(2**62, 0), manifest=True, priority=2**64 - 1), 1)]
    return [(q, reason) for q, reason in out if q.upgrade != (0, length)]  # (that one is fine)


def test_absurd_requests_are_refused(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        w = net.writer
        replica = await net.honest_pull()
        replica_ep = net.endpoints[-1]
        for target, ep in ((net.addr, net.server), (replica_ep._links[0].address, replica_ep)):
            att = Attacker()
            s = net.session(att)
            await s.handshake(target)
            await s.collect(0.1)
            c = ep.counters
            before = dict(c)
            requests = _absurd_requests(w.length)
            for q, _ in requests:
                s.send(target, [(wire.REQUEST, q.encode())])
                await asyncio.sleep(0.001)
            # a sane request in the same stream is still served
            s.send(target, [(wire.REQUEST, wire.Request(5, 0, block=(3, 0)).encode())])
            got = await s.collect(0.3)
            no_data = {m.request: m.reason for k, m in got if k == wire.NO_DATA}
            data = [DataMessage.decode(m) for k, m in got if k == wire.DATA]
            assert no_data == {q.id: reason for q, reason in requests}
            assert [(d.request, d.block[0], d.block[1]) for d in data] == [(5, 3, w.get(3))]
            assert drops(c, before) == {}
            assert delta(c, before).get("requests_refused") == sum(
                1 for _, reason in requests if reason == 1)
            att.close()
        await net.honest_pull()
        net.check_replica(replica)
        net.alive()
        await net.close()
    run(main)
