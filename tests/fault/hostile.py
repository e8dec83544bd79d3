"""Tools for hostile-input tests of the sync layer over real UDP sockets on
127.0.0.1: an attacker that speaks the wire format by hand on a raw socket, a
recording relay between two honest endpoints, and a harness with a writer, a
server endpoint and honest pullers.  Nothing of the sync layer is mocked."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
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
        """HELLO as a real endpoint does: the remote answers with its cookie
        for our address (keeping nothing); we greet it again echoing that
        cookie, so it keeps a peer for us and answers echoing ours.  Returns
        (and from now on echoes) the remote's cookie."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            greeted_with = self.echo
            self.send(addr, [(wire.HELLO, wire.Hello(flags, self.cookie).encode())])
            for data in await self.attacker.drain(0.1, 1.0):
                payload = self.open(data)
                if payload is None or payload.echo != self.cookie:
                    continue
                self.received.append(payload)
                if greeted_with != bytes(8):
                    return self.echo   # it answered a HELLO that echoed its cookie
                for kind, body in payload.messages:
                    if kind == wire.HELLO:
                        self.echo = wire.Hello.decode(body).cookie
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


class Spoofer:
    """Sends UDP datagrams with any source address (a raw IPv4 socket: needs
    root or CAP_NET_RAW; :meth:`available` says whether this process may)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.sent = 0

    @staticmethod
    def available() -> Optional[str]:
        """None, or why a raw socket cannot be opened here."""
        try:
            socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW).close()
            return None
        except OSError as e:
            return "no raw IPv4 socket (root or CAP_NET_RAW needed): %s" % e

    def send(self, data: bytes, src: Addr, dst: Addr) -> None:
        """One datagram from ``src`` to ``dst`` (the kernel fills in the IP
        checksum; a UDP checksum of 0 means none)."""
        udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(data), 0) + data
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP,
                         0, socket.inet_aton(src[0]), socket.inet_aton(dst[0]))
        self.sock.sendto(ip + udp, (dst[0], 0))
        self.sent += len(data)

    def close(self) -> None:
        self.sock.close()


class Victim:
    """A UDP socket that only counts what arrives (the address an attacker
    spoofs, on 127.0.0.x)."""

    def __init__(self, host: str = "127.0.0.5") -> None:
        self.datagrams = 0
        self.bytes = 0
        self._transport: Any = None
        self.host = host

    async def start(self) -> "Victim":
        victim = self

        class Count(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                victim.datagrams += 1
                victim.bytes += len(data)
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(Count, local_addr=(self.host, 0))
        return self

    @property
    def address(self) -> Addr:
        return self._transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def close(self) -> None:
        self._transport.close()


# --- a recording relay ---------------------------------------------------------------

class Relay:
    """client <-> front | relay | back <-> server, recording both directions.

    ``hold(envelope)`` (if set) keeps a server->client envelope back until
    :meth:`release`; ``forward = False`` stops relaying (recording goes on).
    After :meth:`impersonate` it is a man in the middle that knows the key:
    it seals what it forwards to the client again, under the server's
    session and cookie with its own counters, so it can also :meth:`inject`
    messages of its own that pass every check the client makes."""

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
        self._key: Optional[Tuple[bytes, bytes]] = None   # (wire key, discovery key)
        self._as: Optional[Tuple[bytes, bytes]] = None    # the server's (session, echo)
        self._counter = 1 << 50

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
                    relay._later(relay._front, data, relay.client, reseal=True)

        self._front, _ = await loop.create_datagram_endpoint(Front, local_addr=(LOCAL, 0))
        self._back, _ = await loop.create_datagram_endpoint(Back, local_addr=(LOCAL, 0))
        return self

    def _later(self, transport: Any, data: bytes, addr: Any, reseal: bool = False) -> None:
        def send() -> None:
            out = self._reseal(data) if reseal else data
            if out is not None and not transport.is_closing():
                transport.sendto(out, addr)
        if not self.delay:
            send()
        else:
            asyncio.get_running_loop().call_later(self.delay, send)

    def impersonate(self, core_key: bytes, discovery_key: bytes) -> None:
        self._key = (wire.wire_key(core_key), discovery_key)

    def _reseal(self, data: bytes) -> Optional[bytes]:
        if self._key is None:
            return data
        plain = wire.unseal(self._key[0], data)
        if plain is None:
            return None
        p = wire.decode_payload(plain)
        self._as = (p.session, p.echo)
        return self._seal(p.messages)

    def _seal(self, messages: List[Tuple[int, bytes]]) -> bytes:
        assert self._key is not None and self._as is not None, "nothing to impersonate yet"
        self._counter += 1
        return wire.seal(self._key[0], self._key[1], wire.encode_payload(
            self._as[0], self._counter, self._as[1], messages))

    def inject(self, kind: int, body: bytes, mtu: int = 1200) -> None:
        """A message to the client as the server's (fragmented if large)."""
        room = mtu - wire.OVERHEAD - 8 - 9 - 8
        if wire.message_size(body) <= room:
            envelopes = [self._seal([(kind, body)])]
        else:
            inner = wire.encode_messages([(kind, body)])
            chunk = room - 16
            count = (len(inner) + chunk - 1) // chunk
            fid = int.from_bytes(os.urandom(4), "little")
            envelopes = [self._seal([(wire.FRAGMENT, wire.Fragment(
                fid, i, count, inner[i * chunk:(i + 1) * chunk]).encode())]) for i in range(count)]
        for env in envelopes:
            self._front.sendto(env, self.client)

    @property
    def address(self) -> Addr:
        return self._front.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    def release(self) -> None:
        self.hold = None
        held, self.held = self.held, []
        for data in held:
            self.forward_to_client(data)

    def forward_to_client(self, data: bytes) -> None:
        """A server envelope on to the client (sealed again when impersonating)."""
        out = self._reseal(data)
        if out is not None:
            self._front.sendto(out, self.client)

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


Message = Tuple[int, bytes]


def resealing(net: "Net", change: Callable[[List[Message]], List[Message]]
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
