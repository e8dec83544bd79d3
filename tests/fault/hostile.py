"""Tools for hostile-input tests of the sync layer over real UDP sockets on
127.0.0.1: an attacker that speaks the wire format by hand on a raw socket, a
recording relay between two honest endpoints, and a harness with a writer, a
server endpoint and honest pullers.  Nothing of the sync layer is mocked."""
from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

from coremachine_embedded import Core, KeyPair
from coremachine_embedded.encoding import DataMessage, encode_uint
from coremachine_embedded.sync import Endpoint, UDPLink, wire

T = TypeVar("T")
Addr = Tuple[str, int]
LOCAL = "127.0.0.1"


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


# --- the attacker --------------------------------------------------------------------

class Attacker:
    """A raw, non-blocking UDP socket on 127.0.0.1."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
        self.sock.bind((LOCAL, 0))
        self.sock.setblocking(False)
        self.sent = 0

    @property
    def address(self) -> Addr:
        return self.sock.getsockname()[:2]  # type: ignore[no-any-return]

    def send(self, data: bytes, addr: Addr) -> None:
        try:
            self.sock.sendto(data, addr)
            self.sent += 1
        except BlockingIOError:
            pass  # the local send buffer is full: a flood loses datagrams, as it would

    async def recv(self, timeout: float) -> Optional[bytes]:
        loop = asyncio.get_running_loop()
        try:
            data, _ = await asyncio.wait_for(loop.sock_recvfrom(self.sock, 1 << 16), timeout)
        except asyncio.TimeoutError:
            return None
        return data  # type: ignore[no-any-return]

    async def drain(self, quiet: float = 0.15, limit: float = 5.0) -> List[bytes]:
        """Everything that arrives until ``quiet`` seconds pass without a datagram."""
        out: List[bytes] = []
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            data = await self.recv(quiet)
            if data is None:
                break
            out.append(data)
        return out

    def close(self) -> None:
        self.sock.close()


class Session:
    """An attacker's sync session for one core: it knows the core key (a
    reader), so it can seal valid envelopes, and counts like a real endpoint."""

    def __init__(self, attacker: Attacker, core_key: bytes, discovery_key: bytes,
                 session: Optional[bytes] = None) -> None:
        self.attacker = attacker
        self.key = wire.wire_key(core_key)
        self.dk = discovery_key
        self.session = session or os.urandom(8)
        self.counter = 0
        self.echo = bytes(8)           # the cookie the remote gave us
        self.cookie = os.urandom(8)    # the cookie we give the remote
        self.received: List[wire.Payload] = []

    def envelope(self, messages: List[Tuple[int, bytes]], counter: Optional[int] = None,
                 echo: Optional[bytes] = None) -> bytes:
        if counter is None:
            self.counter += 1
            counter = self.counter
        return wire.seal(self.key, self.dk, wire.encode_payload(
            self.session, counter, self.echo if echo is None else echo, messages))

    def send(self, addr: Addr, messages: List[Tuple[int, bytes]]) -> None:
        self.attacker.send(self.envelope(messages), addr)

    def fragments(self, kind: int, body: bytes, mtu: int = 1200,
                  fid: Optional[int] = None) -> List[bytes]:
        """Envelopes carrying one message as the real endpoint does: whole if
        it fits ``mtu``, else as FRAGMENT messages."""
        budget = mtu - wire.OVERHEAD - 8 - 9 - 8
        if wire.message_size(body) <= budget:
            return [self.envelope([(kind, body)])]
        inner = wire.encode_messages([(kind, body)])
        chunk = budget - 16
        count = (len(inner) + chunk - 1) // chunk
        fid = int.from_bytes(os.urandom(4), "little") if fid is None else fid
        return [self.envelope([(wire.FRAGMENT, wire.Fragment(
            fid, i, count, inner[i * chunk:(i + 1) * chunk]).encode())]) for i in range(count)]

    def send_message(self, addr: Addr, kind: int, body: bytes) -> None:
        for env in self.fragments(kind, body):
            self.attacker.send(env, addr)

    def open(self, envelope: bytes) -> Optional[wire.Payload]:
        plain = wire.unseal(self.key, envelope)
        return None if plain is None else wire.decode_payload(plain)

    async def handshake(self, addr: Addr, flags: int = wire.HELLO_PULL,
                        timeout: float = 3.0) -> bytes:
        """HELLO as a real endpoint does; returns (and from now on echoes) the
        remote's cookie."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.send(addr, [(wire.HELLO, wire.Hello(flags, self.cookie).encode())])
            for data in await self.attacker.drain(0.1, 1.0):
                payload = self.open(data)
                if payload is None:
                    continue
                self.received.append(payload)
                for kind, body in payload.messages:
                    if kind == wire.HELLO:
                        self.echo = wire.Hello.decode(body).cookie
            if self.echo != bytes(8):
                return self.echo
        raise AssertionError("no HELLO answer from %r" % (addr,))

    async def collect(self, quiet: float = 0.2, limit: float = 5.0) -> List[Tuple[int, Any]]:
        """Decoded messages that arrive until it is quiet."""
        out: List[Tuple[int, Any]] = []
        for data in await self.attacker.drain(quiet, limit):
            payload = self.open(data)
            if payload is None:
                continue
            self.received.append(payload)
            out += [(kind, wire.decode_message(kind, body)) for kind, body in payload.messages]
        return out


# --- a recording relay ---------------------------------------------------------------

class Relay:
    """client <-> front | relay | back <-> server, recording both directions.

    ``hold(envelope)`` (if set) keeps a server->client envelope back until
    :meth:`release`; ``forward = False`` stops relaying (recording goes on)."""

    def __init__(self, server: Addr) -> None:
        self.server = server
        self.client: Optional[Addr] = None
        self.c2s: List[bytes] = []
        self.s2c: List[bytes] = []
        self.held: List[bytes] = []
        self.hold: Optional[Callable[[bytes], bool]] = None
        self.forward = True
        self.delay = 0.0                   # seconds added each way
        self.drop: Optional[Callable[[str, bytes], bool]] = None   # ("c2s"|"s2c", envelope)
        self.dropped = 0
        self._front: Any = None
        self._back: Any = None

    async def start(self) -> "Relay":
        relay = self
        loop = asyncio.get_running_loop()

        class Front(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.client = addr[:2]
                relay.c2s.append(data)
                if relay.drop is not None and relay.drop("c2s", data):
                    relay.dropped += 1
                elif relay.forward:
                    relay._later(relay._back, data, relay.server)

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                relay.s2c.append(data)
                if not relay.forward or relay.client is None:
                    return
                if relay.drop is not None and relay.drop("s2c", data):
                    relay.dropped += 1
                elif relay.hold is not None and relay.hold(data):
                    relay.held.append(data)
                else:
                    relay._later(relay._front, data, relay.client)

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=(LOCAL, 0))
        self._back, _ = await loop.create_datagram_endpoint(Back, local_addr=(LOCAL, 0))
        return self

    def _later(self, transport: Any, data: bytes, addr: Any) -> None:
        if not self.delay:
            transport.sendto(data, addr)
        else:
            asyncio.get_running_loop().call_later(
                self.delay, lambda: None if transport.is_closing() else transport.sendto(data, addr))

    @property
    def address(self) -> Addr:
        return self._front.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def release(self) -> None:
        self.hold = None
        held, self.held = self.held, []
        for data in held:
            self._front.sendto(data, self.client)

    def to_server(self, data: bytes, addr: Optional[Addr] = None) -> None:
        """From the relay's server-facing socket: the address the server knows
        the honest client by."""
        self._back.sendto(data, addr or self.server)

    def to_client(self, data: bytes, addr: Optional[Addr] = None) -> None:
        """From the relay's client-facing socket: the address the client knows
        the honest server by."""
        self._front.sendto(data, addr or self.client)

    def close(self) -> None:
        for t in (self._front, self._back):
            if t is not None:
                t.close()


# --- writer, server, honest pullers --------------------------------------------------

def blocks(n: int, size: int = 150) -> List[bytes]:
    return [(b"block %05d|" % i).ljust(size, bytes([65 + i % 26])) for i in range(n)]


class Net:
    """A writer served by one endpoint on a UDP socket, and honest replicas."""

    def __init__(self, base: str, n_blocks: int = 64, block_size: int = 150,
                 **server_options: Any) -> None:
        self.base = base
        self.writer = Core(os.path.join(base, "writer"), key_pair=KeyPair.generate(),
                           durability="none")
        data = blocks(n_blocks, block_size)
        for i in range(0, n_blocks, 16):          # several signed states
            self.writer.append(data[i:i + 16])
        self.server = Endpoint(**server_options)
        self.server_link = UDPLink(LOCAL, 0)
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
        link = UDPLink(LOCAL, 0)
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
    the signed length and has block requests in flight)."""

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
                self.relay.to_client(env)
        n = self.net.writer.length
        assert await wait_until(lambda: self.core.length == n and self.download.flight >= 10
                                and bool(self.relay.held), 10)

    async def finish(self, timeout: float = 20.0) -> None:
        self.relay.release()
        await asyncio.wait_for(self.task, timeout)

    def close(self) -> None:
        self.task.cancel()
        self.relay.close()


# --- a flooding process --------------------------------------------------------------

def start_flood(session: Session, addr: Addr, seconds: float, per_envelope: int = 1,
                blocks: int = 64) -> "subprocess.Popen[str]":
    """Another process that sends REQUEST envelopes of ``session`` (each with a
    fresh counter and the session's echo cookie: all pass authentication, the
    replay window and the cookie check) to ``addr`` as fast as it can for
    ``seconds``; it prints how many it sent."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    args = [sys.executable, "-m", "tests.fault.hostile", "flood", addr[0], str(addr[1]),
            session.key.hex(), session.dk.hex(), session.session.hex(), session.echo.hex(),
            str(seconds), str(per_envelope), str(blocks), str(session.counter + 1)]
    session.counter += 1 << 40
    return subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, text=True)


def _flood_main(argv: List[str]) -> None:
    host, port, key, dk, session, echo, seconds, per, nblocks, first = argv
    k, d, sess, ech = (bytes.fromhex(x) for x in (key, dk, session, echo))
    addr = (host, int(port))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOCAL, 0))
    header = bytes((wire.VERSION,)) + d
    impl = wire._impl
    counter, sent = int(first), 0
    deadline = time.monotonic() + float(seconds)
    bodies = [wire.encode_messages([(wire.REQUEST, wire.Request(
        i * int(per) + j, 0, block=((i * int(per) + j) % int(nblocks), 6)).encode())
        for j in range(int(per))]) for i in range(1024)]
    while time.monotonic() < deadline:
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
