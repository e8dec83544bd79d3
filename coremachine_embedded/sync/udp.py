"""The UDP carrier: one envelope per datagram (at most ``mtu`` bytes)."""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Dict, Optional, Tuple

DEFAULT_MTU = 1200
MAX_BUFFERED = 4 << 20   # bytes queued in the socket transport before datagrams are dropped
SOCKET_BUFFER = 1 << 20  # asked of the kernel for each direction (capped by net.core.[rw]mem_max)


class UDPLink:
    """A UDP socket bound to ``host:port`` (port 0: any free port)."""

    def __init__(self, host: str = "0.0.0.0", port: int = 0, mtu: int = DEFAULT_MTU) -> None:
        if not 256 <= mtu <= 65000:
            raise ValueError("mtu must be between 256 and 65000")
        self.host = host
        self.port = port
        self.mtu = mtu
        self.counters: Dict[str, int] = {"datagrams_rx": 0, "datagrams_tx": 0, "tx_dropped": 0,
                                         "rx_oversize": 0}
        self._transport: Optional[Any] = None  # asyncio's datagram transport

    @property
    def address(self) -> Tuple[str, int]:
        """The bound (host, port)."""
        assert self._transport is not None
        return self._transport.get_extra_info("sockname")[:2]  # type: ignore[no-any-return]

    async def start(self, on_receive: Callable[[bytes, Any], None]) -> None:
        link = self

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                if len(data) > link.mtu:
                    link.counters["rx_oversize"] += 1
                    return
                link.counters["datagrams_rx"] += 1
                on_receive(data, addr[:2])

            def error_received(self, exc: Exception) -> None:
                pass  # ICMP unreachable and friends: UDP is best effort

        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            Protocol, local_addr=(self.host, self.port))
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:  # a window of answers arriving at once must not overflow it
            for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                try:
                    sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
                except OSError:
                    pass  # the kernel's default is still a working buffer

    def send(self, envelope: bytes, addr: Any) -> None:
        t = self._transport
        if t is None or t.is_closing() or t.get_write_buffer_size() > MAX_BUFFERED:
            self.counters["tx_dropped"] += 1
            return
        self.counters["datagrams_tx"] += 1
        t.sendto(envelope, addr)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
