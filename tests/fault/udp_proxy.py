"""A lossy UDP proxy for tests: an asyncio relay on 127.0.0.1 between UDP
clients and one server that loses, duplicates, reorders, corrupts and delays
datagrams, each decision drawn from a seeded RNG.

::

    proxy = UDPProxy(server_address, loss=0.2, duplicate=0.05, reorder=0.1,
                     corrupt=0.01, seed=7)
    await proxy.start()
    ... clients send to proxy.address instead of server_address ...
    proxy.counters["down.dropped"]     # what was injected
    await proxy.close()

Each client address gets its own upstream socket (bound to an ephemeral port
on 127.0.0.1), so the server sees one address per client, as through a NAT.
The two directions are ``up`` (client -> server) and ``down`` (server ->
client); each has its own random generator (seeded from ``seed``), so the
decisions for one direction depend only on the order of its own datagrams,
and its own impairment settings (:meth:`set_impairment` with ``direction``).

Per datagram, in this order: *loss* (dropped), *corruption* (1 to
``corrupt_bytes`` bytes, at distinct random positions anywhere in the
datagram, are XORed with a random non-zero value), *duplication* (a second copy is
sent right after the first; the copy goes through the rest independently),
*reordering* (held back and released after 1 to ``reorder_depth`` later
datagrams of the same direction have gone out, or after ``reorder_timeout``
seconds, whichever comes first), *delay* (``delay`` + uniform(0, ``jitter``)
seconds; jitter reorders too).

Before all that, ``filter(direction, seq, data)`` (optional, settable at any
time) sees each datagram with its number in its direction (0, 1, ...) and
drops it by returning False: scripted losses ("the second answer is lost").

Counters (``counters``; totals and per direction with prefixes ``up.`` /
``down.``): ``datagrams`` received, ``forwarded`` (sent on, copies
included), ``filtered`` (dropped by ``filter``), ``dropped``, ``duplicated``,
``reordered``, ``corrupted``, ``corrupted_bytes``, ``delayed``,
``send_errors`` (the socket refused).

The pytest fixture ``udp_proxy`` at the end is a factory whose proxies are
closed after the test.
"""
from __future__ import annotations

import asyncio
import random
import socket
from typing import Any, Awaitable, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

Address = Tuple[str, int]
DIRECTIONS = ("up", "down")
_KEYS = ("datagrams", "forwarded", "filtered", "dropped", "duplicated", "reordered", "corrupted",
         "corrupted_bytes", "delayed", "send_errors")


class Impairment:
    """What happens to the datagrams of one direction."""

    def __init__(self, loss: float = 0.0, duplicate: float = 0.0, reorder: float = 0.0,
                 corrupt: float = 0.0, delay: float = 0.0, jitter: float = 0.0,
                 corrupt_bytes: int = 3, reorder_depth: int = 8,
                 reorder_timeout: float = 0.05) -> None:
        for name, p in (("loss", loss), ("duplicate", duplicate), ("reorder", reorder),
                        ("corrupt", corrupt)):
            if not 0.0 <= p <= 1.0:
                raise ValueError("%s must be a probability, not %r" % (name, p))
        if delay < 0 or jitter < 0 or corrupt_bytes < 1 or reorder_depth < 1 \
                or reorder_timeout <= 0:
            raise ValueError("delay, jitter >= 0; corrupt_bytes, reorder_depth >= 1; "
                             "reorder_timeout > 0")
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.corrupt = corrupt
        self.delay = delay
        self.jitter = jitter
        self.corrupt_bytes = corrupt_bytes
        self.reorder_depth = reorder_depth
        self.reorder_timeout = reorder_timeout


class _Held:
    __slots__ = ("left", "data", "send", "timer")

    def __init__(self, left: int, data: bytes, send: Callable[[bytes], None]) -> None:
        self.left = left
        self.data = data
        self.send = send
        self.timer: Optional[asyncio.TimerHandle] = None


class _Direction:
    """The impairment pipeline of one direction."""

    def __init__(self, proxy: "UDPProxy", name: str, rng: random.Random) -> None:
        self.proxy = proxy
        self.name = name
        self.rng = rng
        self.imp = Impairment()
        self.held: List[_Held] = []
        self.seq = 0

    def count(self, key: str, n: int = 1) -> None:
        c = self.proxy.counters
        c[key] += n
        c[self.name + "." + key] += n

    def handle(self, data: bytes, send: Callable[[bytes], None]) -> None:
        """One datagram received: decide its fate."""
        self.count("datagrams")
        seq, self.seq = self.seq, self.seq + 1
        keep = self.proxy.filter
        if keep is not None and not keep(self.name, seq, data):
            self.count("filtered")
            return
        if self.proxy.rewrite is not None:  # an attacker in the middle that knows the key
            data = self.proxy.rewrite(self.name, seq, data)
        imp, rng = self.imp, self.rng
        if imp.loss and rng.random() < imp.loss:
            self.count("dropped")
            return
        copies = 1
        if imp.duplicate and rng.random() < imp.duplicate:
            self.count("duplicated")
            copies = 2
        for _ in range(copies):
            self._pass(data, send)

    def _pass(self, data: bytes, send: Callable[[bytes], None]) -> None:
        imp, rng = self.imp, self.rng
        if imp.corrupt and data and rng.random() < imp.corrupt:
            buf = bytearray(data)
            flips = min(rng.randint(1, imp.corrupt_bytes), len(buf))
            for pos in rng.sample(range(len(buf)), flips):
                buf[pos] ^= rng.randrange(1, 256)
            data = bytes(buf)
            self.count("corrupted")
            self.count("corrupted_bytes", flips)
        if imp.reorder and rng.random() < imp.reorder:
            self.count("reordered")
            held = _Held(rng.randint(1, imp.reorder_depth), data, send)
            loop = self.proxy.loop
            held.timer = loop.call_later(imp.reorder_timeout, self._release, held)
            self.held.append(held)
            return
        self._out(data, send)

    def _out(self, data: bytes, send: Callable[[bytes], None]) -> None:
        imp = self.imp
        if imp.delay or imp.jitter:
            self.count("delayed")
            wait = imp.delay + (self.rng.uniform(0, imp.jitter) if imp.jitter else 0.0)
            self.proxy.loop.call_later(wait, self._emit, data, send)
        else:
            self._emit(data, send)

    def _emit(self, data: bytes, send: Callable[[bytes], None]) -> None:
        if self.proxy.closed:
            return
        send(data)
        self.count("forwarded")
        # a datagram went out: the held ones are one datagram further behind
        due = []
        for held in self.held:
            held.left -= 1
            if held.left <= 0:
                due.append(held)
        for held in due:
            self._release(held)

    def _release(self, held: _Held) -> None:
        if held not in self.held:
            return
        self.held.remove(held)
        if held.timer is not None:
            held.timer.cancel()
        self._out(held.data, held.send)

    def drop_held(self) -> None:
        for held in self.held:
            if held.timer is not None:
                held.timer.cancel()
        self.held.clear()


def _udp_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 21)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 21)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class UDPProxy:
    """Relays datagrams between clients (sending to :attr:`address`) and the
    server at ``upstream``, impaired as configured (see the module docstring).
    Use it from one event loop."""

    def __init__(self, upstream: Address, *, host: str = "127.0.0.1", port: int = 0,
                 seed: Optional[int] = 0,
                 filter: Optional[Callable[[str, int, bytes], bool]] = None,
                 **impairment: Any) -> None:
        self.upstream = upstream
        self.filter = filter
        #: ``rewrite(direction, seq, data) -> data``: alter datagrams in flight
        self.rewrite: Optional[Callable[[str, int, bytes], bytes]] = None
        self.host = host
        self.port = port
        self.counters: Dict[str, int] = dict.fromkeys(_KEYS, 0)
        for d in DIRECTIONS:
            for k in _KEYS:
                self.counters[d + "." + k] = 0
        master = random.Random(seed)
        self._dirs = {d: _Direction(self, d, random.Random(master.random())) for d in DIRECTIONS}
        self.set_impairment(**impairment)
        self._listen: Optional[socket.socket] = None
        self._clients: Dict[Address, socket.socket] = {}
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "start() the proxy first"
        return self._loop

    @property
    def address(self) -> Address:
        """Where clients send (host, port)."""
        assert self._listen is not None, "start() the proxy first"
        host, port = self._listen.getsockname()[:2]
        return host, port

    def set_impairment(self, direction: Optional[str] = None, **kw: Any) -> None:
        """Replace the impairment of ``direction`` ("up", "down"; default both)
        with ``Impairment(**kw)``."""
        for d in ([direction] if direction else DIRECTIONS):
            self._dirs[d].imp = Impairment(**kw)

    async def start(self) -> "UDPProxy":
        self._loop = asyncio.get_running_loop()
        self._listen = _udp_socket(self.host, self.port)
        self._loop.add_reader(self._listen.fileno(), self._on_client_readable)
        return self

    async def close(self) -> None:
        self.closed = True
        for d in self._dirs.values():
            d.drop_held()
        socks = list(self._clients.values()) + ([self._listen] if self._listen else [])
        for sock in socks:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._clients.clear()
        self._listen = None

    async def __aenter__(self) -> "UDPProxy":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- relaying ---------------------------------------------------------------------

    def _send(self, sock: socket.socket, addr: Address, direction: str) -> Callable[[bytes], None]:
        def send(data: bytes) -> None:
            if self.closed:
                return
            try:
                sock.sendto(data, addr)
            except OSError:
                self._dirs[direction].count("send_errors")
        return send

    def _on_client_readable(self) -> None:
        listen = self._listen
        if listen is None:
            return
        for _ in range(256):
            try:
                data, addr = listen.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return  # e.g. ICMP port unreachable reported on the socket
            client = (addr[0], addr[1])
            up = self._clients.get(client)
            if up is None:
                up = self._clients[client] = _udp_socket(self.host, 0)
                self.loop.add_reader(up.fileno(), self._on_server_readable, up, client)
            self._dirs["up"].handle(data, self._send(up, self.upstream, "up"))

    def _on_server_readable(self, up: socket.socket, client: Address) -> None:
        listen = self._listen
        if listen is None:
            return
        for _ in range(256):
            try:
                data, addr = up.recvfrom(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if (addr[0], addr[1]) != tuple(self.upstream):
                continue  # only the server talks to an upstream socket
            self._dirs["down"].handle(data, self._send(listen, client, "down"))


@pytest.fixture
def udp_proxy() -> Iterator[Callable[..., Awaitable[UDPProxy]]]:
    """A factory: ``await udp_proxy(upstream, loss=..., seed=...)`` returns a
    started :class:`UDPProxy` in the running loop; the sockets of all of them
    are closed after the test (the test's loop is gone by then)."""
    proxies: List[UDPProxy] = []

    async def make(upstream: Address, **kw: Any) -> UDPProxy:
        proxy = UDPProxy(upstream, **kw)
        proxies.append(proxy)
        return await proxy.start()

    yield make
    for proxy in proxies:
        if not proxy.closed:
            proxy.closed = True
            for d in proxy._dirs.values():
                d.drop_held()
            for sock in list(proxy._clients.values()) + (
                    [proxy._listen] if proxy._listen else []):
                sock.close()
