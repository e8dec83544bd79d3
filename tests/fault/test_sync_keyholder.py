"""What a key holder can do to the sync layer (issue 10), over real UDP
sockets on 127.0.0.x: the key is the read capability, handed to every
reader, so these attackers seal valid envelopes.  Each test measures the
attack against an honest pull next to it; the tools are in
tests/fault/hostile.py.

- A pull ends only with signed state: a forged unsigned SYNC ("length 0")
  from a man in the middle cannot end it, in the API or the CLI.
"""
from __future__ import annotations

import asyncio
import os
import sys
from typing import Any, Callable, List, Tuple

from coremachine_embedded.sync import Pulled, wire
from tests.fault.hostile import Net, run
from tests.fault.udp_proxy import UDPProxy

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

Message = Tuple[int, bytes]


def resealing(net: Net, change: Callable[[List[Message]], List[Message]]
              ) -> Callable[[str, int, bytes], bytes]:
    """A man in the middle with the key: each server->client envelope is
    opened, its messages changed by ``change`` and sealed again under the
    server's session, counter and cookie (so it passes every check)."""
    wkey, dk = wire.wire_key(net.writer.key), net.writer.discovery_key

    def rewrite(direction: str, seq: int, data: bytes) -> bytes:
        plain = wire.unseal(wkey, data) if direction == "down" else None
        if plain is None:
            return data
        p = wire.decode_payload(plain)
        return wire.seal(wkey, dk, wire.encode_payload(p.session, p.counter, p.echo,
                                                       change(p.messages)))
    return rewrite


def claim_nothing(messages: List[Message]) -> List[Message]:
    """SYNC says length 0, RANGE nothing, and no proof or value gets through."""
    out: List[Message] = []
    for kind, body in messages:
        if kind == wire.SYNC:
            body = wire.Sync.decode(body)._replace(length=0).encode()
        elif kind == wire.RANGE:
            body = wire.Range(0, 0).encode()
        elif kind in (wire.DATA, wire.VALUES, wire.FRAGMENT):
            continue
        out.append((kind, body))
    return out


def no_proofs(messages: List[Message]) -> List[Message]:
    """The true SYNC, but no proof or value gets through."""
    return [(k, b) for k, b in messages if k not in (wire.DATA, wire.VALUES, wire.FRAGMENT)]


# --- a pull ends only with signed state ------------------------------------------------

def test_a_forged_unsigned_sync_cannot_end_a_pull(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=64).start()
        n = net.writer.length
        proxy = UDPProxy(net.addr)
        await proxy.start()
        for attack in (claim_nothing, no_proofs):
            proxy.rewrite = resealing(net, attack)
            # an empty replica and, after the first round, one that holds it all
            core = net.cores[-1] if attack is no_proofs else net.replica()
            ep, link = await net.endpoint()
            task = asyncio.ensure_future(ep.pull(core, link, proxy.address))
            done, _ = await asyncio.wait([task], timeout=1.5)
            assert not done, "%s: the pull ended on a claim nobody signed (length %d)" % (
                attack.__name__, core.length)
            proxy.rewrite = None   # the man in the middle goes away
            pulled = await asyncio.wait_for(task, 20)
            assert pulled == Pulled(proxy.address, 0, n, n)
            net.check_replica(core)
        await proxy.close()
        await net.close()
    run(main)


def test_the_pull_command_exits_0_only_from_signed_state(tmp_path: Any) -> None:
    async def main() -> None:
        net = await Net(str(tmp_path), n_blocks=64).start()
        key = net.writer.key.hex()
        proxy = UDPProxy(net.addr)
        await proxy.start()
        url = "udp://127.0.0.1:%d" % proxy.address[1]

        async def pull(store: str) -> Tuple[int, str, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "coremachine_embedded", "pull", store, key, url,
                "--timeout", "2", cwd=ROOT, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, out.decode(), err.decode()

        store = os.path.join(str(tmp_path), "cli-replica")
        proxy.rewrite = resealing(net, claim_nothing)
        code, out, err = await pull(store)
        assert code == 3 and "pulled" not in out and "timed out" in err, (code, out, err)
        proxy.rewrite = None
        code, out, err = await pull(store)
        assert code == 0, (code, out, err)
        assert ("signed length 64, fork 0, verified; the peer at %s proved signed length 64"
                % url) in out
        proxy.rewrite = resealing(net, no_proofs)   # it holds it all: the peer must prove it
        code, out, err = await pull(store)
        assert code == 3 and "pulled" not in out, (code, out, err)
        await proxy.close()
        await net.close()
    run(main)
