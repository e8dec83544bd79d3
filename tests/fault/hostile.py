"""Tools for hostile-input tests of the sync layer over real UDP sockets on
127.0.0.1: a harness with a writer, a server endpoint and honest pullers, the
drop counters' checks, and a flooding process.  The attacker on a raw socket
and the recording relay are in tests/fault/hostile_peers.py.  Nothing of the
sync layer is mocked.

The tests built on them (tests/fault/test_sync_hostile_*.py) send hostile
traffic next to an honest client pulling from a server endpoint.  Every test
checks that the hostile traffic was dropped and counted (the specific
counter), that the honest pull still completes with a replica identical to
the writer, and that no replica ever holds a block the writer did not sign."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

from coremachine_embedded import Core, KeyPair
from coremachine_embedded.encoding import DataMessage, encode_uint
from coremachine_embedded.sync import Endpoint, UDPLink, wire
from tests.fault.hostile_peers import Addr, Attacker, LOCAL, Relay, Session

T = TypeVar("T")


# --- running -------------------------------------------------------------------------

def run(make: Callable[[], Awaitable[T]], timeout: float = 40.0) -> T:
    """Run ``make()`` in a fresh event loop; fail if any callback raised (an
    exception escaping ``datagram_received`` lands in the loop's handler)."""
    problems: List[Dict[str, Any]] = []

    async def main() -> T:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: problems.append(ctx))
        return await asyncio.wait_for(make(), timeout)

    out = asyncio.run(main())
    assert not problems, "exceptions in event-loop callbacks: %r" % problems
    return out


async def wait_until(cond: Callable[[], bool], timeout: float = 10.0,
                     step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(step)
    return True


async def settle(value: Callable[[], Any], quiet: float = 0.3, timeout: float = 10.0) -> None:
    """Wait until ``value()`` stopped changing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = value(), time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.02)
        now = value()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def rss_bytes() -> int:
    """Current resident set size of this process."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- writer, server, honest pullers --------------------------------------------------

def blocks(n: int, size: int = 150) -> List[bytes]:
    return [(b"block %05d|" % i).ljust(size, bytes([65 + i % 26])) for i in range(n)]


class Net:
    """A writer served by one endpoint on a UDP socket, and honest replicas."""

    def __init__(self, base: str, n_blocks: int = 64, block_size: int = 150, mtu: int = 1200,
                 **server_options: Any) -> None:
        self.base = base
        self.writer = Core(os.path.join(base, "writer"), key_pair=KeyPair.generate(),
                           durability="none")
        data = blocks(n_blocks, block_size)
        for i in range(0, n_blocks, 16):          # several signed states
            self.writer.append(data[i:i + 16])
        self.server = Endpoint(**server_options)
        self.mtu = mtu                            # the honest endpoints' too
        self.server_link = UDPLink(LOCAL, 0, mtu=mtu)
        self.endpoints: List[Endpoint] = [self.server]
        self.cores: List[Core] = [self.writer]
        self._n = 0

    async def start(self) -> "Net":
        await self.server.attach(self.server_link)
        self.server.serve(self.writer)
        return self

    @property
    def addr(self) -> Addr:
        return self.server_link.address

    def session(self, attacker: Attacker) -> Session:
        return Session(attacker, self.writer.key, self.writer.discovery_key)

    async def greeted_session(self) -> Tuple[Attacker, Session]:
        """An attacker's socket and a session that did the HELLO exchange with
        the server (its answers read): envelopes from it now pass every check."""
        att = Attacker()
        s = self.session(att)
        await s.handshake(self.addr)
        await s.collect(0.1)
        return att, s

    def replica(self) -> Core:
        self._n += 1
        core = Core(os.path.join(self.base, "replica%d" % self._n), key=self.writer.key,
                    durability="none")
        self.cores.append(core)
        return core

    async def endpoint(self, **kw: Any) -> Tuple[Endpoint, UDPLink]:
        ep = Endpoint(**kw)
        link = UDPLink(LOCAL, 0, mtu=self.mtu)
        await ep.attach(link)
        self.endpoints.append(ep)
        return ep, link

    async def honest_pull(self, via: Optional[Addr] = None, timeout: float = 20.0) -> Core:
        """A fresh replica pulled to the writer's length; checked against it."""
        core = self.replica()
        ep, link = await self.endpoint()
        await asyncio.wait_for(ep.pull(core, link, via or self.addr), timeout)
        self.check_replica(core)
        return core

    def check_replica(self, core: Core, complete: bool = True) -> None:
        """Everything ``core`` holds is the writer's (and complete: all of it)."""
        w = self.writer
        for i in range(core.contiguous_length):
            assert core.get(i) == w.get(i), "replica block %d differs from the writer" % i
        if complete:
            assert (core.length, core.contiguous_length, core.fork) == (w.length, w.length, w.fork)
            assert core.tree_hash() == w.tree_hash()
            assert core.signature == w.signature
            assert core.verify() == w.length
        elif core.length:
            assert core.length <= w.length and core.fork == w.fork
            core.verify()

    def alive(self) -> None:
        for ep in self.endpoints:
            assert ep._timer is not None and not ep._timer.done(), "an endpoint's timer died"

    async def close(self) -> None:
        for ep in self.endpoints:
            await ep.close()
        for core in self.cores:
            core.close()


class HeldPull:
    """An honest client pulling from ``net``'s server through a :class:`Relay`
    that holds the server's DATA back: all of it (``mode="all"``: the client
    waits for its upgrade proof) or only block proofs (``"blocks"``: it knows
    the signed length and has block requests in flight).  The relay is a man
    in the middle with the key: ``self.relay.inject(wire.DATA, body)`` reaches
    the client as the server's answer would."""

    def __init__(self, net: Net) -> None:
        self.net = net
        self.wire_key = wire.wire_key(net.writer.key)
        self.mode = "all"

    def _holds(self, envelope: bytes) -> bool:
        plain = wire.unseal(self.wire_key, envelope)
        assert plain is not None
        bodies = [b for k, b in wire.decode_payload(plain).messages if k == wire.DATA]
        return any(self.mode == "all" or not DataMessage.peek(b).upgrade for b in bodies)

    def messages(self, envelopes: List[bytes]) -> List[Tuple[int, bytes]]:
        out: List[Tuple[int, bytes]] = []
        for env in envelopes:
            plain = wire.unseal(self.wire_key, env)
            if plain is not None:
                out += wire.decode_payload(plain).messages
        return out

    async def start(self, mode: str = "all", **endpoint: Any) -> "HeldPull":
        self.mode = mode
        self.relay = await Relay(self.net.addr).start()
        self.relay.impersonate(self.net.writer.key, self.net.writer.discovery_key)
        self.relay.hold = self._holds
        self.core = self.net.replica()
        # one block per request (no batched runs): the tests hold and forge single proofs
        endpoint.setdefault("max_run", 1)
        self.ep, self.link = await self.net.endpoint(**endpoint)
        self.task = asyncio.ensure_future(self.ep.pull(self.core, self.link,
                                                       self.relay.address))
        await asyncio.sleep(0)
        download = self.ep.download(self.core)
        assert download is not None
        self.download = download
        assert await wait_until(lambda: bool(self.relay.held), 5)
        if mode == "blocks":
            await self.let_upgrade_through()
        return self

    async def let_upgrade_through(self) -> None:
        self.mode = "blocks"
        held, self.relay.held = self.relay.held, []
        for env in held:
            if self._holds(env):
                self.relay.held.append(env)
            else:
                self.relay.forward_to_client(env)
        n = self.net.writer.length
        assert await wait_until(lambda: self.core.length == n and self.download.flight >= 10
                                and bool(self.relay.held), 10)

    async def finish(self, timeout: float = 20.0) -> None:
        self.relay.release()
        await asyncio.wait_for(self.task, timeout)

    def close(self) -> None:
        self.task.cancel()
        self.relay.close()


# --- counting drops, sending by hand ------------------------------------------------

Counts = Dict[str, int]
DROPS = ("dropped_malformed", "dropped_unknown_core", "dropped_auth", "dropped_replay",
         "dropped_stale_cookie", "dropped_invalid_proof", "dropped_flood",
         "dropped_unsolicited", "dropped_own", "dropped_fragments", "dropped_oversize")


def delta(after: Counts, before: Counts) -> Counts:
    """Counters that changed, and by how much."""
    return {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)
            if after.get(k, 0) != before.get(k, 0)}


def drops(counters: Counts, before: Counts) -> Counts:
    return {k: v for k, v in delta(counters, before).items() if k in DROPS}


async def deliver(att: Attacker, datagrams: List[bytes], addr: Tuple[str, int],
                  received: Callable[[], int], batch: int = 32) -> None:
    """Send ``datagrams`` in small batches, each time waiting until the receiver
    counted them (``received()``), so that none is lost in a socket buffer."""
    for i in range(0, len(datagrams), batch):
        chunk = datagrams[i:i + batch]
        target = received() + len(chunk)
        for d in chunk:
            att.send(d, addr)
        assert await wait_until(lambda: received() >= target, 5), \
            "the receiver saw %d of %d datagrams" % (received() - target + len(chunk), len(chunk))


def flip(b: bytes, pos: int, bit: int = 0x80) -> bytes:
    return b[:pos] + bytes([b[pos] ^ bit]) + b[pos + 1:]


def hello(flags: int = wire.HELLO_PULL, cookie: bytes = b"\x01" * 8) -> Tuple[int, bytes]:
    return wire.HELLO, wire.Hello(flags, cookie).encode()


# --- a flooding process --------------------------------------------------------------

def start_flood(session: Session, addr: Addr, seconds: float, per_envelope: int = 1,
                blocks: int = 64, minimum: int = 0) -> "subprocess.Popen[str]":
    """Another process that sends REQUEST envelopes of ``session`` (each with a
    fresh counter and the session's echo cookie: all pass authentication, the
    replay window and the cookie check) to ``addr`` as fast as it can for
    ``seconds`` and at least ``minimum`` envelopes, from the session's socket
    (the address its cookie is bound to); it prints how many it sent."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fd = session.attacker.sock.fileno()
    args = [sys.executable, "-m", "tests.fault.hostile", "flood", str(fd), addr[0], str(addr[1]),
            session.key.hex(), session.dk.hex(), session.session.hex(), session.echo.hex(),
            str(seconds), str(per_envelope), str(blocks), str(session.counter + 1), str(minimum)]
    session.counter += 1 << 40
    return subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True, pass_fds=(fd,))


def start_hello_flood(net: "Net", addresses: int, rate: float) -> "subprocess.Popen[str]":
    """Another process that sends HELLOs without a cookie (what anyone with
    the key can send from any address) to ``net``'s server from ``addresses``
    source ports, ``rate`` a second in all, until :func:`stop_flood`."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, "-m", "tests.fault.hostile", "hello-flood", net.addr[0],
            str(net.addr[1]), wire.wire_key(net.writer.key).hex(),
            net.writer.discovery_key.hex(), str(addresses), str(rate)]
    return subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True)


def _hello_flood_main(argv: List[str]) -> None:
    host, port, key, dk, addresses, rate = argv
    k, d = bytes.fromhex(key), bytes.fromhex(dk)
    socks = []
    for _ in range(int(addresses)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind((LOCAL, 0))
        sock.setblocking(False)
        socks.append(sock)
    # Sealed once and sent again and again: a receiver keeps nothing of a
    # HELLO without its cookie, so it cannot tell a repeat from a new one
    # (and this process leaves the CPU to the one it floods).
    hellos = [wire.seal(k, d, wire.encode_payload(os.urandom(8), 1, bytes(8), [
        (wire.HELLO, wire.Hello(wire.HELLO_PULL, os.urandom(8)).encode())])) for _ in range(4096)]
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    sent, start = 0, time.monotonic()
    while not stop[0]:
        due = int((time.monotonic() - start) * float(rate))
        while sent < due:
            try:
                socks[sent % len(socks)].sendto(hellos[sent % len(hellos)], (host, int(port)))
            except OSError:
                pass
            sent += 1
        time.sleep(0.005)
    print(sent, flush=True)


def stop_flood(flood: "subprocess.Popen[str]") -> int:
    """Stop a flood early (once it has sent ``minimum``); how many envelopes it sent."""
    flood.terminate()
    out, _ = flood.communicate()
    return int(out)


def _flood_main(argv: List[str]) -> None:
    fd, host, port, key, dk, session, echo, seconds, per, nblocks, first, minimum = argv
    k, d, sess, ech = (bytes.fromhex(x) for x in (key, dk, session, echo))
    addr = (host, int(port))
    sock = socket.socket(fileno=int(fd))   # non-blocking: a full buffer loses datagrams
    header = bytes((wire.VERSION,)) + d
    impl = wire._impl
    counter, sent = int(first), 0
    deadline = [time.monotonic() + float(seconds)]
    signal.signal(signal.SIGTERM, lambda *_: deadline.__setitem__(0, 0.0))  # stop_flood
    bodies = [wire.encode_messages([(wire.REQUEST, wire.Request(
        i * int(per) + j, 0, block=((i * int(per) + j) % int(nblocks), 6)).encode())
        for j in range(int(per))]) for i in range(1024)]
    while time.monotonic() < deadline[0] or sent < int(minimum):
        for _ in range(256):
            payload = sess + encode_uint(counter) + ech + bodies[counter & 1023]
            nonce = os.urandom(wire.NONCE)
            try:
                sock.sendto(header + nonce + impl.aead_seal(k, nonce, header, payload), addr)
                sent += 1
            except OSError:
                pass
            counter += 1
    print(sent, flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "flood":
        _flood_main(sys.argv[2:])
    elif sys.argv[1] == "hello-flood":
        _hello_flood_main(sys.argv[2:])
