"""Peers for hostile-input tests of the sync layer over real UDP sockets on
127.0.0.1: an attacker that speaks the wire format by hand on a raw socket
(sessions, a spoofer, a victim) and a recording relay between two honest
endpoints.  Nothing of the sync layer is mocked; tests/fault/hostile.py
builds the rest of the harness on these."""
from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from typing import TYPE_CHECKING, Any, Callable, List, Optional, Tuple

from coremachine_embedded.sync import wire

if TYPE_CHECKING:
    from tests.fault.hostile import Net

Addr = Tuple[str, int]
LOCAL = "127.0.0.1"


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
