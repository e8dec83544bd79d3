"""Replication with the real npm hypercore@11, corestore@7 and coremachine@1.1.0
over real TCP sockets on loopback, in both directions and both initiator roles:
catch-up, live appends, a JS writer's truncation, several cores on one
connection, a sparse JS peer, and the JS Coremachine and ours following each
other's writer.  JS's own audit finds nothing wrong in what it got from us."""
from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any, AsyncIterator, Awaitable, Callable, List, Tuple

import pytest

import coremachine_embedded as cm
from coremachine_embedded import Coremachine, sync
from coremachine_embedded.sync.counters import Counters
from coremachine_embedded.sync.hyper import CoreReplicator
from tests.interop import jsenv
from tests.interop.jspeer import JSPeer, env
from tests.interop.test_js_coremachine import QUICK_START   # the README's machine, as in JS

TIMEOUT = 60.0


@pytest.fixture(scope="module")
def js_env() -> str:
    try:
        return env()
    except jsenv.NodeUnavailable as e:
        pytest.skip(str(e))


@pytest.fixture
def js(js_env):
    peers: List[JSPeer] = []

    def make() -> JSPeer:
        peers.append(JSPeer(js_env))
        return peers[-1]
    yield make
    for p in peers:
        p.close()


def blocks_of(n: int, start: int = 0) -> List[bytes]:
    """Varied blocks: empty, small, JSON-like, some of several KiB."""
    out = []
    for i in range(start, start + n):
        if i % 97 == 5:
            out.append(b"")
        elif i % 53 == 7:
            out.append(bytes([i % 251]) * (3000 + i))
        else:
            out.append(json.dumps({"i": i, "note": "x" * (i % 40)}).encode())
    return out


def hexes(blocks: List[bytes]) -> List[str]:
    return [b.hex() for b in blocks]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, TIMEOUT))


def writer(tmp_path, seed: int = 7) -> cm.Core:
    return cm.Core(tmp_path / ("w%d" % seed), key_pair=cm.KeyPair.from_seed(bytes([seed]) * 32),
                   durability="none")


@contextlib.asynccontextmanager
async def served(cores: Any) -> AsyncIterator[Any]:
    """Our Hypercore-protocol server for ``cores`` on a free loopback port."""
    server = await sync.serve(cores, "tcp://127.0.0.1:0")
    try:
        yield server
    finally:
        await server.close()


async def until(check: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.01)


def assert_same(core: cm.Core, blocks: List[bytes]) -> None:
    assert core.length == len(blocks) and core.contiguous_length == len(blocks)
    assert [core.get(i) for i in range(len(blocks))] == blocks
    assert core.verify() == len(blocks)


# --- JS writer -> our reader --------------------------------------------------------------

def js_writer(js, seed: int, blocks: List[bytes]) -> Tuple[JSPeer, bytes, int]:
    """A JS writer ``w`` holding ``blocks`` and listening on TCP: (peer, key, port)."""
    peer = js()
    key = bytes.fromhex(peer.call("core", name="w", seed="%02x" % seed * 32)["key"])
    if blocks:
        peer.call("append", name="w", blocks=hexes(blocks))
    return peer, key, peer.call("listen", cores=["w"])["port"]


def test_js_writer_to_our_reader_we_connect(js, tmp_path) -> None:
    blocks = blocks_of(300)
    _, key, port = js_writer(js, 0x11, blocks)
    replica = cm.Core(tmp_path / "r", key=key)
    counters = run(sync.pull(replica, "tcp://127.0.0.1:%d" % port))
    assert_same(replica, blocks)
    assert counters["blocks"] == 300 and counters.get("dropped_invalid_proof", 0) == 0


def test_js_writer_to_our_reader_js_connects_and_appends_live(js, tmp_path) -> None:
    peer = js()
    blocks = blocks_of(50)
    key = bytes.fromhex(peer.call("core", name="w", seed="12" * 32)["key"])
    peer.call("append", name="w", blocks=hexes(blocks[:20]))
    replica = cm.Core(tmp_path / "r", key=key)

    async def main() -> dict:
        async with served(replica) as server:   # a replica: it pulls too
            await peer.acall("connect", port=server.address[1], cores=["w"])
            await until(lambda: replica.contiguous_length == 20, "the first 20 blocks")
            requests = server.counters.get("tx_request", 0)
            for i in range(20, 50):   # one by one: each reaches us
                await peer.acall("append", name="w", blocks=hexes(blocks[i:i + 1]))
                await until(lambda: replica.contiguous_length == i + 1, "block %d" % i)
            # live: the upgrade and the new block in one request, one round trip
            assert server.counters["tx_request"] - requests == 30
            return dict(server.counters)
    counters = run(main())
    assert_same(replica, blocks)
    assert counters.get("dropped_invalid_proof", 0) == 0


def test_a_js_writer_that_wants_nothing_keeps_serving_while_we_download(js, tmp_path) -> None:
    """A JS core closes a channel where neither side downloads; our sync says
    we download while we pull, so a JS writer that wants nothing serves us."""
    blocks = blocks_of(60)
    peer, key, port = js_writer(js, 0x14, blocks)
    assert peer.call("idle", name="w")["downloading"] is False
    replica = cm.Core(tmp_path / "r", key=key, durability="none")
    counters = run(sync.pull(replica, "tcp://127.0.0.1:%d" % port))
    assert_same(replica, blocks)
    assert counters.get("channels_opened", 0) == 1


def test_a_js_writers_truncation_is_followed(js, tmp_path) -> None:
    """Our replica and a JS replica both follow the JS writer live through its
    truncation and end the same: same fork, same blocks."""
    blocks = blocks_of(40)
    peer, key, port = js_writer(js, 0x13, blocks)
    replica = cm.Core(tmp_path / "r", key=key)
    new = [b"new-%d" % i for i in range(25, 45)]
    other = js()
    other.call("core", name="r", key=key.hex())

    async def main() -> None:
        task = asyncio.ensure_future(sync.pull(replica, "tcp://127.0.0.1:%d" % port, live=True))
        try:
            await other.acall("connect", port=port, cores=["r"])
            await until(lambda: replica.contiguous_length == 40, "the first 40 blocks")
            await other.acall("wait", name="r", length=40)
            await peer.acall("truncate", name="w", length=25)
            await peer.acall("append", name="w", blocks=hexes(new))
            await until(lambda: replica.fork == 1 and replica.contiguous_length == 45,
                        "the new fork")
            await other.acall("wait", name="r", length=45, fork=1)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(main())
    assert replica.fork == 1
    assert_same(replica, blocks[:25] + new)
    theirs = other.call("info", name="r")
    assert (theirs["fork"], theirs["length"]) == (replica.fork, replica.length)
    assert js_blocks(other, "r", 45) == blocks[:25] + new


# --- our writer -> JS reader ----------------------------------------------------------------

def js_audit(peer: JSPeer, name: str, length: int) -> None:
    audit = peer.call("audit", name=name)["audit"]
    assert audit["corrupt"] is False
    assert audit["droppedTreeNodes"] == audit["droppedBlocks"] == audit["droppedBits"] == 0
    assert audit["blocks"] == length


def js_blocks(peer: JSPeer, name: str, n: int) -> List[bytes]:
    return [bytes.fromhex(peer.call("get", name=name, index=i)["value"]) for i in range(n)]


def test_our_writer_to_js_reader_js_connects_live(js, tmp_path) -> None:
    core = writer(tmp_path)
    blocks = blocks_of(200)
    core.append(blocks[:150])
    peer = js()
    peer.call("core", name="r", key=core.key.hex())

    async def main() -> dict:
        async with served(core) as server:
            await peer.acall("connect", port=server.address[1], cores=["r"])
            await peer.acall("wait", name="r", length=150)
            for i in range(150, 200, 10):   # live appends reach the JS reader
                core.append(blocks[i:i + 10])
                await peer.acall("wait", name="r", length=i + 10)
            return dict(server.counters)
    counters = run(main())
    assert js_blocks(peer, "r", 200) == blocks
    js_audit(peer, "r", 200)
    assert counters["requests_served"] >= 200


def test_our_writer_to_js_reader_we_connect(js, tmp_path) -> None:
    core = writer(tmp_path, 8)
    blocks = blocks_of(120)
    core.append(blocks)
    peer = js()
    peer.call("core", name="r", key=core.key.hex())
    port = peer.call("listen", cores=["r"])["port"]

    async def main() -> None:
        reader, writer_ = await asyncio.open_connection("127.0.0.1", port)
        task = asyncio.ensure_future(sync.replicate(core, reader, writer_, initiator=True))
        try:
            await peer.acall("wait", name="r", length=120)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(main())
    assert js_blocks(peer, "r", 120) == blocks
    js_audit(peer, "r", 120)


def test_any_stream_pair_carries_it_both_ways_over_a_unix_socket(js, tmp_path) -> None:
    """sync.replicate over a transport that is not TCP: one Unix-socket stream
    carries our writer's core to a JS reader and a JS writer's core to us."""
    ours = writer(tmp_path, 12)
    our_blocks, their_blocks = blocks_of(90), blocks_of(70, 500)
    ours.append(our_blocks)
    peer, their_key, _ = js_writer(js, 13, their_blocks)
    peer.call("core", name="r", key=ours.key.hex())
    path = str(tmp_path / "hyper.sock")
    peer.call("listen", cores=["w", "r"], path=path)
    replica = cm.Core(tmp_path / "replica", key=their_key, durability="none")

    async def main() -> None:
        reader, writer_ = await asyncio.open_unix_connection(path)
        task = asyncio.ensure_future(sync.replicate([ours, replica], reader, writer_,
                                                    initiator=True))
        try:
            await peer.acall("wait", name="r", length=90)
            await until(lambda: replica.contiguous_length == 70, "the JS writer's blocks")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(main())
    assert js_blocks(peer, "r", 90) == our_blocks
    js_audit(peer, "r", 90)
    assert_same(replica, their_blocks)


def test_our_writers_truncation_reaches_a_js_reader(js, tmp_path) -> None:
    """A JS reader follows our fork: it finds where the histories diverge
    with hash requests, which we answer from the blocks' proofs."""
    core = writer(tmp_path, 9)
    blocks = blocks_of(64)
    core.append(blocks)
    peer = js()
    peer.call("core", name="r", key=core.key.hex())

    async def main() -> None:
        async with served(core) as server:
            await peer.acall("connect", port=server.address[1], cores=["r"])
            await peer.acall("wait", name="r", length=64)
            core.truncate(30)
            core.append([b"after-%d" % i for i in range(10)])
            await peer.acall("wait", name="r", length=40, fork=1)
    run(main())
    assert js_blocks(peer, "r", 40) == blocks[:30] + [b"after-%d" % i for i in range(10)]
    js_audit(peer, "r", 40)


# --- several cores on one connection ------------------------------------------------------

def test_a_js_corestore_replicates_several_cores_from_our_server(js, tmp_path) -> None:
    cores = [writer(tmp_path, 20 + k) for k in range(3)]
    for k, core in enumerate(cores):
        core.append(blocks_of(30 + 10 * k, 1000 * k))
    peer = js()
    for k, core in enumerate(cores):
        peer.call("core", name="r%d" % k, key=core.key.hex(), store="s")

    async def main() -> None:
        async with served(cores) as server:   # several cores, one port
            await peer.acall("connect", port=server.address[1], cores=["r0", "r1", "r2"])
            for k in range(3):
                await peer.acall("wait", name="r%d" % k, length=30 + 10 * k)
            assert server.counters["connections"] == 1
            assert server.counters["channels_opened"] == 3
    run(main())
    for k in range(3):
        assert js_blocks(peer, "r%d" % k, 30 + 10 * k) == blocks_of(30 + 10 * k, 1000 * k)


def test_we_pull_several_cores_from_a_js_corestore_on_one_connection(js, tmp_path) -> None:
    peer = js()
    keys = []
    for k in range(3):
        keys.append(peer.call("core", name="w%d" % k, seed="%02x" % (30 + k) * 32, store="s")["key"])
        peer.call("append", name="w%d" % k, blocks=hexes(blocks_of(20 + k, 77 * k)))
    port = peer.call("listen", cores=["w0", "w1", "w2"])["port"]
    replicas = [cm.Core(tmp_path / ("r%d" % k), key=bytes.fromhex(keys[k])) for k in range(3)]

    async def main() -> dict:
        reader, writer_ = await asyncio.open_connection("127.0.0.1", port)
        return dict(await sync.replicate(replicas, reader, writer_, initiator=True, live=False))
    counters = run(main())
    for k in range(3):
        assert_same(replicas[k], blocks_of(20 + k, 77 * k))
    assert counters["channels_opened"] == 3


# --- sparse peers --------------------------------------------------------------------------

def test_a_sparse_js_peer_serves_what_it_holds_and_others_the_rest(js, tmp_path) -> None:
    full, sparse = js(), js()
    blocks = blocks_of(100)
    key = full.call("core", name="w", seed="40" * 32)["key"]
    full.call("append", name="w", blocks=hexes(blocks))
    full_port = full.call("listen", cores=["w"])["port"]
    sparse.call("core", name="s", key=key)
    sparse.call("connect", port=full_port, cores=["s"])
    sparse.call("download", name="s", start=40, end=70)    # it holds only blocks 40-69
    sparse.call("disconnect")
    sparse_port = sparse.call("listen", cores=["s"])["port"]
    replica = cm.Core(tmp_path / "r", key=bytes.fromhex(key))

    async def main() -> tuple:
        rep = CoreReplicator(replica)
        from_sparse = Counters()
        reader, writer_ = await asyncio.open_connection("127.0.0.1", sparse_port)
        first = asyncio.ensure_future(sync.replicate(rep, reader, writer_, initiator=True,
                                                     counters=from_sparse))
        try:
            # the sparse peer has the signed tree and blocks 40-69: we take those
            await until(lambda: from_sparse.get("rx_data", 0) >= 30, "the sparse peer's blocks")
            assert replica.contiguous_length == 0 and replica.length == 100
            reader2, writer2 = await asyncio.open_connection("127.0.0.1", full_port)
            await sync.replicate(rep, reader2, writer2, initiator=True, live=False)
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            rep.close()
        return dict(from_sparse)
    counters = run(main())
    assert_same(replica, blocks)
    assert counters["rx_bitfield"] >= 1 and counters["rx_data"] >= 30


def test_a_js_reader_pulls_from_our_replica(js, tmp_path) -> None:
    """Our replicas serve what they hold (announced with range)."""
    core = writer(tmp_path, 41)
    blocks = blocks_of(80)
    core.append(blocks)
    replica = cm.Core(tmp_path / "r", key=core.key)
    peer = js()
    peer.call("core", name="r", key=core.key.hex())

    async def main() -> dict:
        async with served(core) as upstream:
            await sync.pull(replica, "tcp://127.0.0.1:%d" % upstream.address[1])
        async with served(replica) as server:
            await peer.acall("connect", port=server.address[1], cores=["r"])
            await peer.acall("wait", name="r", length=80)
            return dict(server.counters)
    counters = run(main())
    assert js_blocks(peer, "r", 80) == blocks
    assert counters["tx_range"] >= 1 and counters["requests_served"] >= 80
    js_audit(peer, "r", 80)


# --- Coremachine ----------------------------------------------------------------------------

EVENTS = [("START", 5), ("INCREMENT", None), ("INCREMENT", None), ("STOP", 40),
          ("START", 1), ("INCREMENT", None)]


def test_the_js_coremachine_follows_our_machine_live(js, tmp_path) -> None:
    core = writer(tmp_path, 50)
    machine = Coremachine(core, QUICK_START)
    peer = js()
    peer.call("core", name="r", key=core.key.hex())

    async def main() -> None:
        async with served(core) as server:
            await peer.acall("connect", port=server.address[1], cores=["r"])
            for n, (event, value) in enumerate(EVENTS, 1):
                snap = machine.action(event, value) if value is not None else machine.action(event)
                await peer.acall("wait", name="r", length=n)
                theirs = await peer.acall("machine", name="r")
                assert (theirs["state"], theirs["context"]) == (snap.state, snap.context)
    run(main())


def test_our_coremachine_follows_a_js_coremachine_live(js, tmp_path) -> None:
    peer, key, port = js_writer(js, 0x51, [])
    replica = cm.Core(tmp_path / "r", key=key)
    machine = Coremachine(replica, QUICK_START)

    async def main() -> None:
        task = asyncio.ensure_future(sync.pull(replica, "tcp://127.0.0.1:%d" % port, live=True))
        try:
            for n, (event, value) in enumerate(EVENTS, 1):
                args = {"value": value} if value is not None else {}
                theirs = await peer.acall("machine", name="w", action=event, **args)
                await until(lambda: machine.length == n, "action %d" % n)
                assert (machine.state, machine.context) == (theirs["state"], theirs["context"])
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    run(main())


# --- the command line -------------------------------------------------------------------------

def test_the_cli_serves_and_pulls_with_hypercore_peers(js, tmp_path) -> None:
    """``coremachine serve STORE tcp://`` answers a JS reader;
    ``coremachine pull REPLICA KEY tcp://`` exits 0 once it holds a JS writer's
    signed length."""
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    core = writer(tmp_path, 60)
    blocks = blocks_of(70)
    core.append(blocks)
    core.close()
    server = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "serve",
                               str(tmp_path / "w60"), "tcp://127.0.0.1:0"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = server.stdout.readline()
        assert "serving" in line, server.stderr.read()
        port = int(line.rsplit(":", 1)[1])
        peer = js()
        peer.call("core", name="r", key=line.split()[1])
        peer.call("connect", port=port, cores=["r"])
        peer.call("wait", name="r", length=70)
        assert js_blocks(peer, "r", 70) == blocks
    finally:
        server.terminate()
        _, err = server.communicate(timeout=20)
    assert server.returncode == 0 and "requests_served=" in err

    _, key, port = js_writer(js, 0x61, blocks)
    r = subprocess.run([sys.executable, "-m", "coremachine_embedded", "pull",
                        str(tmp_path / "replica"), key.hex(), "tcp://127.0.0.1:%d" % port,
                        "--timeout", "60"], capture_output=True, text=True, env=env, timeout=90)
    assert r.returncode == 0, r.stderr
    assert "length 70" in r.stdout and "blocks=70" in r.stderr
    replica = cm.Core(tmp_path / "replica", key=key)
    assert_same(replica, blocks)
    replica.close()


def test_the_cli_pulls_live_from_a_js_writer(js, tmp_path) -> None:
    """``coremachine pull REPLICA KEY tcp:// --live`` reports the catch-up,
    then holds what the JS writer appends while it runs."""
    import signal
    import subprocess
    import sys
    import time
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    blocks = blocks_of(60)
    peer, key, port = js_writer(js, 0x62, blocks[:40])
    store = str(tmp_path / "live")
    puller = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "pull", store,
                               key.hex(), "tcp://127.0.0.1:%d" % port, "--live"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert puller.stdout is not None
        assert puller.stdout.readline().startswith("caught up at length 40; following live")
        peer.call("append", name="w", blocks=hexes(blocks[40:]))
        deadline = time.monotonic() + TIMEOUT
        while "contiguous_length  60" not in subprocess.run(
                [sys.executable, "-m", "coremachine_embedded", "info", store],
                capture_output=True, text=True, env=env).stdout:   # a read-only snapshot
            assert time.monotonic() < deadline, "the live pull never got the appends"
            time.sleep(0.1)
    finally:
        puller.send_signal(signal.SIGTERM)
        out, err = puller.communicate(timeout=30)
    assert puller.returncode == 0, err
    assert "have 60 of 60, verified" in out
    replica = cm.Core(store, key=key)
    assert_same(replica, blocks)
