"""The UDP carrier: one envelope per datagram (at most ``mtu`` bytes)."""
from __future__ import annotations

import asyncio
import collections
import socket
from typing import Any, Callable, Deque, Dict, Optional, Tuple

DEFAULT_MTU = 1200
MAX_BUFFERED = 4 << 20   # bytes queued for a full socket before datagrams are dropped
SOCKET_BUFFER = 1 << 20  # asked of the kernel for each direction (capped by net.core.[rw]mem_max)
READ_BATCH = 8         # datagrams read per wake-up before the loop runs anything else


class UDPLink:
    """A UDP socket bound to ``host:port`` (port 0: any free port).

    It reads every datagram waiting (up to ``read_batch``) each time the socket
    is readable, so a burst of answers is handled before the timers that
    would take it for a loss, with one event-loop turn per burst."""

    #: line time of a full datagram: none worth waiting for (a serial link's is not)
    frame_seconds = 0.0

    def __init__(self, host: str = "0.0.0.0", port: int = 0, mtu: int = DEFAULT_MTU,
                 buffer: int = SOCKET_BUFFER, read_batch: int = READ_BATCH) -> None:
        if not 256 <= mtu <= 65000:
            raise ValueError("mtu must be between 256 and 65000")
        # One socket for many peers (a gateway's) needs more of both: a pause of
        # the loop must not overflow the buffer, nor a burst outlast the batches.
        self.buffer = buffer     # socket buffer asked for, each way
        self.read_batch = read_batch
        self.host = host
        self.port = port
        self.mtu = mtu
        self.counters: Dict[str, int] = {"datagrams_rx": 0, "datagrams_tx": 0, "tx_dropped": 0,
                                         "rx_oversize": 0}
        self._sock: Optional[socket.socket] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._on_receive: Optional[Callable[[bytes, Any], None]] = None
        self._pending: Deque[Tuple[bytes, Any]] = collections.deque()
        self._pending_bytes = 0

    @property
    def address(self) -> Tuple[str, int]:
        """The bound (host, port)."""
        assert self._sock is not None
        return self._sock.getsockname()[:2]  # type: ignore[no-any-return]

    async def start(self, on_receive: Callable[[bytes, Any], None]) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:  # a window of answers arriving at once must not overflow it
                    sock.setsockopt(socket.SOL_SOCKET, option, self.buffer)
                except OSError:
                    pass  # the kernel's default is still a working buffer
            sock.bind((self.host, self.port))
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._on_receive = on_receive
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._read_ready)

    def _read_ready(self) -> None:
        sock, deliver, mtu = self._sock, self._on_receive, self.mtu
        if sock is None or deliver is None:
            return
        for _ in range(self.read_batch):
            try:
                data, addr = sock.recvfrom(mtu + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # ICMP errors and friends: UDP is best effort
            if len(data) > mtu:
                self.counters["rx_oversize"] += 1
                continue
            self.counters["datagrams_rx"] += 1
            deliver(data, addr[:2])

    def send(self, envelope: bytes, addr: Any) -> None:
        """Send one datagram; never blocks (queued while the socket is full,
        dropped and counted past ``MAX_BUFFERED``)."""
        if self._sock is None:
            self.counters["tx_dropped"] += 1
            return
        if not self._pending:
            try:
                self._sock.sendto(envelope, addr)
                self.counters["datagrams_tx"] += 1
                return
            except (BlockingIOError, InterruptedError):
                assert self._loop is not None
                self._loop.add_writer(self._sock.fileno(), self._write_ready)
            except OSError:
                self.counters["tx_dropped"] += 1  # unreachable, no route: a loss
                return
        if self._pending_bytes + len(envelope) > MAX_BUFFERED:
            self.counters["tx_dropped"] += 1
            return
        self._pending.append((envelope, addr))
        self._pending_bytes += len(envelope)

    def _write_ready(self) -> None:
        sock = self._sock
        while sock is not None and self._pending:
            envelope, addr = self._pending[0]
            try:
                sock.sendto(envelope, addr)
                self.counters["datagrams_tx"] += 1
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.counters["tx_dropped"] += 1
            self._pending.popleft()
            self._pending_bytes -= len(envelope)
        if sock is not None and self._loop is not None:
            self._loop.remove_writer(sock.fileno())

    async def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(sock.fileno())
                self._loop.remove_writer(sock.fileno())
            sock.close()
        self._pending.clear()
        self._pending_bytes = 0
