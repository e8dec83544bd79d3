"""Forged proofs against the sync layer, sealed with the right key, to a
replica that is pulling; and the weaknesses they found in the replicator (all
fixed since): forged upgrades and proofs waiting ahead cannot cancel or stall
requests, forged run values store nothing.

Each test checks what tests/fault/hostile.py says every hostile-input test
checks, with the tools there and in tests/fault/hostile_peers.py.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, List, Tuple

from coremachine_embedded import Core, KeyPair
from coremachine_embedded.encoding import DataMessage, encode_uint
from coremachine_embedded.sync import wire
from tests.fault.hostile import Counts, HeldPull, Net, delta, drops, flip, run, settle, wait_until
from tests.fault.hostile_peers import Attacker, resealing


# --- 3. forged proofs, sealed with the right key, to a replica that is pulling -------

def _mutate(proof: bytes, change: Callable[[DataMessage], None]) -> bytes:
    m = DataMessage.decode(proof)
    change(m)
    out = m.encode()
    assert out != proof, "the forgery changed nothing"
    return out


def _x(b: bytes) -> bytes:
    return flip(b, 0, 0x01)


def _block(m: DataMessage, **kw: Any) -> None:
    index, value, nodes = m.block  # type: ignore[misc]
    m.block = (kw.get("index", index), kw.get("value", value), kw.get("nodes", nodes))


def _upgrade(m: DataMessage, **kw: Any) -> None:
    start, length, nodes, extra, sig = m.upgrade  # type: ignore[misc]
    m.upgrade = (kw.get("start", start), kw.get("length", length), kw.get("nodes", nodes),
                 kw.get("extra", extra), kw.get("sig", sig))


def _altered_nodes(nodes: List[Any]) -> List[Any]:
    return [(i, s, _x(h)) for i, s, h in nodes]


async def _send_forgeries(c: Counts, send: Callable[[bytes], None], forgeries: List[bytes],
                          expect: Counts) -> None:
    """Send each forged DATA body in its own envelope(s); the receiver's drop
    counters must go up by exactly ``expect``."""
    before = dict(c)
    for body in forgeries:
        send(body)
        await asyncio.sleep(0.002)
    total = sum(expect.values())
    assert await wait_until(lambda: sum(drops(c, before).values()) >= total, 5), drops(c, before)
    await asyncio.sleep(0.05)
    assert drops(c, before) == expect


def test_forged_proofs_to_a_pulling_replica(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=60).start()
        w = net.writer
        n = w.length
        evil = Core(os.path.join(str(tmp_path), "evil"), key_pair=KeyPair.generate())
        evil.append([b"evil %d" % i for i in range(n)])
        net.cores.append(evil)

        # The honest client pulls through a relay that, for now, holds back all
        # of the server's DATA: the client waits for its upgrade proof.  The
        # relay is a man in the middle with the key: its forgeries reach the
        # replica as the server's answers would.  The same from another
        # session (a key holder elsewhere) are not even looked at.
        hp = await HeldPull(net).start("all")
        r, download, addr = hp.core, hp.download, hp.link.address
        assert download.upgrade is not None
        att = Attacker()
        s = net.session(att)
        await s.handshake(addr)
        await s.collect(0.1)
        c = hp.ep.counters
        mitm = lambda body: hp.relay.inject(wire.DATA, body)  # noqa: E731
        elsewhere = lambda body: s.send_message(addr, wire.DATA, body)  # noqa: E731

        # Phase 1: the replica trusts nothing yet.  Forged first proofs (block 0
        # with the upgrade to the writer's length and the manifest).
        g = w.proof(block=0, upgrade=(0, n), manifest=True)
        g_extra = w.proof(block=0, upgrade=(0, 20), manifest=True)   # has additional nodes
        first = [
            _mutate(g, lambda m: _block(m, value=_x(m.block[1]))),                 # block bytes
            _mutate(g, lambda m: _block(m, value=m.block[1] + b"!")),
            _mutate(g, lambda m: _block(m, nodes=_altered_nodes(m.block[2]))),      # node hashes
            _mutate(g, lambda m: _block(m, nodes=[(i, s + 1, h) for i, s, h in m.block[2]])),
            _mutate(g, lambda m: _upgrade(m, nodes=_altered_nodes(m.upgrade[2]))),
            _mutate(g_extra, lambda m: _upgrade(m, extra=_altered_nodes(m.upgrade[3]))),
            _mutate(g, lambda m: _upgrade(m, sig=flip(m.upgrade[4], len(m.upgrade[4]) - 1, 1))),
            _mutate(g, lambda m: _upgrade(m, sig=m.upgrade[4][:-1])),               # signature
            _mutate(g, lambda m: _upgrade(m, sig=b"")),
            _mutate(g, lambda m: setattr(m, "fork", 1)),                            # wrong fork
            _mutate(g, lambda m: setattr(m, "fork", 2**64 - 1)),
            _mutate(g, lambda m: _upgrade(m, length=2**60)),                        # absurd length
            _mutate(g, lambda m: _upgrade(m, length=2**64 - 1)),
            _mutate(g, lambda m: _upgrade(m, start=5)),
            _mutate(g, lambda m: _block(m, index=2**60)),                           # far index
            _mutate(g, lambda m: _block(m, index=2**64 - 1)),
            _mutate(g, lambda m: _upgrade(m, nodes=(m.upgrade[2] * 65)[:65])),      # over the limit
            _mutate(g, lambda m: _block(m, nodes=(m.block[2] * 13)[:65])),
            encode_uint(9) + b"\x00\x00\x00" + b"\x00" + encode_uint(0) + encode_uint(10**6),
            _mutate(g, lambda m: setattr(m, "manifest", evil.manifest)),            # other manifest
            evil.proof(block=0, upgrade=(0, n), manifest=True),                     # other writer
            _mutate(evil.proof(block=0, upgrade=(0, n)), lambda m: setattr(m, "manifest", w.manifest)),
            w.proof(block=0, upgrade=(0, n)),                                       # no manifest
            g[:len(g) // 2], g[:-40],                                               # cut
        ]
        await _send_forgeries(c, elsewhere, first, {"dropped_unsolicited": len(first)})
        await _send_forgeries(c, mitm, first, {"dropped_invalid_proof": len(first)})
        # block proofs without an upgrade, at indexes it did not ask for, garbage
        unasked = [_mutate(w.proof(block=5), lambda m: _block(m, index=i))
                   for i in (2**60, 2**62, 2**64 - 1)] + [w.proof(block=5), w.proof(block=59)]
        await _send_forgeries(c, mitm, unasked, {"dropped_unsolicited": len(unasked)})
        await _send_forgeries(c, mitm, [b"", b"\x01", b"\x01\x00", b"\xff\x00"],
                              {"dropped_malformed": 4})
        assert (r.length, r.contiguous_length) == (0, 0) and not download.ahead

        # Phase 2: let the upgrade through (block 0 rides with it); block proofs
        # stay held, so blocks 1.. are in flight.
        await hp.let_upgrade_through()
        assert r.contiguous_length == 1
        net.check_replica(r, complete=False)
        # (late answers to the upgrade requests it retried arrive now: see
        # test_duplicate_upgrade_answer_is_not_an_invalid_proof)
        await settle(lambda: dict(c))
        g1 = w.proof(block=1, nodes=5)
        g0u = w.proof(block=0, upgrade=(0, n), manifest=True)
        second = [
            _mutate(g1, lambda m: _block(m, value=_x(m.block[1]))),
            _mutate(g1, lambda m: _block(m, value=b"")),
            _mutate(g1, lambda m: _block(m, nodes=_altered_nodes(m.block[2]))),
            _mutate(g1, lambda m: _block(m, nodes=_altered_nodes(m.block[2][:1]) + m.block[2][1:])),
            _mutate(g1, lambda m: _block(m, nodes=[(i + 2, s, h) for i, s, h in m.block[2]])),
            _mutate(g1, lambda m: _block(m, nodes=(m.block[2] * 13)[:65])),
            _mutate(g1, lambda m: setattr(m, "fork", 1)),
        ]
        await _send_forgeries(c, mitm, second, {"dropped_invalid_proof": len(second)})
        # upgrades it did not ask for (it has the signed length): dropped unverified
        # as duplicates, or rejected by verification - never applied
        upgrades = [
            _mutate(g0u, lambda m: _upgrade(m, sig=flip(m.upgrade[4], 10, 1))),
            _mutate(g0u, lambda m: _upgrade(m, length=2**62)),
            _mutate(w.proof(block=1, upgrade=(n - 1, 1)), lambda m: _upgrade(m, start=n, length=2**60)),
        ]
        before = dict(c)
        for body in upgrades:
            mitm(body)
        seen = lambda: sum(delta(c, before).get(k, 0)  # noqa: E731
                           for k in ("dropped_invalid_proof", "duplicates"))
        assert await wait_until(lambda: seen() >= len(upgrades), 5)
        await asyncio.sleep(0.05)
        assert seen() == len(upgrades) and r.length == n
        await _send_forgeries(c, mitm, [_mutate(g1, lambda m: _block(m, index=2**60))],
                              {"dropped_unsolicited": 1})
        assert r.contiguous_length == 1
        net.check_replica(r, complete=False)

        # Forged proofs (with their full paths) for blocks in flight further
        # ahead: they can only wait, unverified and not stored, until the
        # replica gets there - then they fail and the block is asked again.
        ahead = list(range(3, 12))
        for i in ahead:
            mitm(_mutate(w.proof(block=i, nodes=r.missing_nodes(i)),
                         lambda m: _block(m, value=b"forged block %d" % i)))
        assert await wait_until(lambda: set(ahead) <= set(download.ahead), 5)
        assert r.contiguous_length == 1

        # Phase 3: the server's answers go through; the pull completes.
        before = dict(c)
        await hp.finish()
        net.check_replica(r)
        assert drops(c, before).get("dropped_invalid_proof", 0) >= len(ahead)
        assert not download.inflight and download.upgrade is None and not download.ahead
        net.alive()
        att.close()
        hp.close()
        await net.close()
    run(main)


# --- 8. what the tests above ran into (the flood, the relay, the forged proofs) --------

def test_lost_sync_after_the_handshake_does_not_stall_the_pull(tmp_path: Any) -> None:
    """Found by the request flood: the puller has the server's cookie but no
    SYNC got through (here a man in the middle strips SYNC and RANGE from the
    server's first envelopes); it must ask for the server's state again."""
    from tests.fault.udp_proxy import UDPProxy

    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        stripped: List[int] = []

        def strip(messages: List[Tuple[int, bytes]]) -> List[Tuple[int, bytes]]:
            kept = [(k, b) for k, b in messages if len(stripped) >= 2
                    or k not in (wire.SYNC, wire.RANGE)]
            if len(kept) < len(messages):
                stripped.append(len(messages) - len(kept))
            return kept
        proxy = UDPProxy(net.addr)
        proxy.rewrite = resealing(net, strip)
        await proxy.start()
        r = net.replica()
        ep, link = await net.endpoint()
        pull = asyncio.ensure_future(ep.pull(r, link, proxy.address))
        done, _ = await asyncio.wait([pull], timeout=5)
        assert len(stripped) == 2, "the man in the middle stripped nothing"
        assert done, "stalled: the source peer is ready, its length unknown, and nothing is sent"
        net.check_replica(r)
        await proxy.close()
        await net.close()
    run(main)


def test_duplicate_upgrade_answer_is_not_an_invalid_proof(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path)).start()
        hp = await HeldPull(net).start("all")
        # hold the answers until the client asked again for its upgrade
        assert await wait_until(lambda: len(hp.relay.held) >= 2, 5)
        await hp.finish()
        net.check_replica(hp.core)
        assert hp.ep.counters.get("dropped_invalid_proof", 0) == 0, dict(hp.ep.counters)
        hp.close()
        await net.close()
    run(main)


def _upgrade_requests(hp: HeldPull) -> int:
    return sum(1 for k, b in hp.messages(hp.relay.c2s)
               if k == wire.REQUEST and wire.Request.decode(b).upgrade is not None)


def test_forged_upgrade_does_not_cancel_the_pending_request(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=60).start()
        w = net.writer
        hp = await HeldPull(net).start("all")
        asked, retried = _upgrade_requests(hp), hp.ep.counters.get("retries", 0)
        g = w.proof(block=0, upgrade=(0, w.length), manifest=True)
        forged = [_mutate(g, lambda m: _block(m, value=b"forged %d" % i)) for i in range(20)]
        await _send_forgeries(hp.ep.counters, lambda body: hp.relay.inject(wire.DATA, body),
                              forged, {"dropped_invalid_proof": len(forged)})
        await asyncio.sleep(0.1)
        # every upgrade request since is a retry on the timer (the relay holds
        # the answers), none a new one because a forgery cancelled the first
        extra = _upgrade_requests(hp) - asked
        assert extra == hp.ep.counters.get("retries", 0) - retried, \
            "%d forged proofs made the puller send %d upgrade requests" % (len(forged), extra)
        await hp.finish()
        hp.close()
        await net.close()
    run(main)


def test_forged_proofs_waiting_ahead_are_dropped_once_passed(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=60).start()
        w = net.writer
        hp = await HeldPull(net).start("blocks")
        ahead = list(range(3, 12))
        for i in ahead:    # no path: checkable only against a leaf the replica lacks yet
            hp.relay.inject(wire.DATA, _mutate(
                w.proof(block=i), lambda m: _block(m, value=b"forged block %d" % i)))
        assert await wait_until(lambda: set(ahead) <= set(hp.download.ahead), 5)
        await hp.finish()
        net.check_replica(hp.core)
        stale = sorted(i for i in hp.download.ahead if i < hp.core.contiguous_length)
        assert not stale, "forged proofs for blocks %s are still kept" % stale
        hp.close()
        await net.close()
    run(main)


def test_forged_proof_waiting_ahead_does_not_block_the_pull(tmp_path: Any) -> None:
    """Data waiting for a proof never pushes out a verified answer: forged
    proofs wait for blocks in flight, then the genuine answers arrive (the one
    with block 1 last) and wait next to them; the first that verifies is
    stored, with no request asked again."""
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=60).start()
        w = net.writer
        hp = await HeldPull(net).start("blocks")
        ahead = list(range(3, 30))
        for i in ahead:
            hp.relay.inject(wire.DATA, _mutate(
                w.proof(block=i), lambda m: _block(m, value=b"forged block %d" % i)))
        assert await wait_until(lambda: set(ahead) <= set(hp.download.ahead), 5)
        hp.relay.hold = None
        first, rest = hp.relay.held[0], hp.relay.held[1:]
        hp.relay.held = []
        genuine = {DataMessage.peek(b).block_index for k, b in hp.messages(rest)
                   if k == wire.DATA} & set(ahead)
        assert genuine
        for env in rest:
            hp.relay.forward_to_client(env)
        waiting = hp.download.ahead
        assert await wait_until(lambda: all(len(waiting.get(i, ())) == 2 for i in genuine), 5), \
            "genuine answers were dropped: %s" % {i: len(waiting.get(i, ())) for i in genuine}
        retries = hp.ep.counters.get("retries", 0)
        hp.relay.forward_to_client(first)
        assert await wait_until(lambda: hp.core.contiguous_length > max(genuine), 5), \
            "the pull stalled at block %d of %d" % (hp.core.contiguous_length, w.length)
        assert hp.ep.counters.get("retries", 0) == retries
        await asyncio.wait_for(hp.task, 20)
        net.check_replica(hp.core)
        hp.close()
        await net.close()
    run(main)



def test_forged_run_values_store_nothing(tmp_path: Any) -> None:
    """Batched runs: a man in the middle who knows the key alters the values
    of runs in flight (re-sealing them).  The replica stores none of them (the
    run's tree does not match the node it holds), counts each, fetches the
    run again, and ends equal to the writer once the tampering stops."""
    from tests.fault.udp_proxy import UDPProxy

    async def main() -> None:
        net = await Net(str(tmp_path), 256, 60).start()
        key, dk = net.writer.key, net.writer.discovery_key
        wkey = wire.wire_key(key)
        altered = [0]

        def rewrite(direction: str, seq: int, data: bytes) -> bytes:
            if direction != "down" or altered[0] >= 6:
                return data
            plain = wire.unseal(wkey, data)
            if plain is None:
                return data
            p = wire.decode_payload(plain)
            messages = []
            for kind, body in p.messages:
                if kind == wire.VALUES:
                    v = wire.Values.decode(body)
                    values = list(v.values)
                    values[-1] = values[-1][:-1] + bytes([values[-1][-1] ^ 1])
                    body = wire.Values(v.request, v.first, values).encode()
                    altered[0] += 1
                messages.append((kind, body))
            return wire.seal(wkey, dk, wire.encode_payload(p.session, p.counter, p.echo,
                                                           messages))
        proxy = UDPProxy(net.addr)
        proxy.rewrite = rewrite
        await proxy.start()
        core = net.replica()
        ep, link = await net.endpoint(max_run=16)
        await asyncio.wait_for(ep.pull(core, link, proxy.address), 30)
        await proxy.close()
        assert altered[0] == 6
        assert ep.counters.get("dropped_invalid_proof", 0) >= 1
        net.check_replica(core)
    run(main)


def test_run_values_from_another_session_are_not_taken(tmp_path: Any) -> None:
    """VALUES are accepted only from the peer the run was asked of: another
    key holder cannot keep poisoning a replica's runs."""
    async def main() -> None:
        net = await Net(str(tmp_path), 128, 60).start()
        hp = await HeldPull(net).start("blocks", max_run=16)
        assert any(r.run is not None for r in hp.download.inflight.values())
        s = net.session(Attacker())
        target = hp.link.address
        await s.handshake(target)
        before = hp.ep.counters.get("dropped_unsolicited", 0)
        for first in range(1, 128, 8):
            s.send(target, [(wire.VALUES, wire.Values(1, first, [b"forged"] * 7).encode())])
        assert await wait_until(
            lambda: hp.ep.counters.get("dropped_unsolicited", 0) - before >= 16, 10)
        await hp.finish(30)
        net.check_replica(hp.core)
    run(main)
