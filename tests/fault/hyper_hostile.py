"""A hostile Hypercore peer for tests: our own stack (secret-stream,
protomux, hypercore messages) driven by hand over a real TCP socket, so a test
can send what an honest peer never would."""
from __future__ import annotations

import asyncio
from typing import Any, Callable, List, Optional

from coremachine_embedded.sync.hyper import messages, protomux
from coremachine_embedded.sync.hyper.secretstream import SecretStream


class RawPeer:
    """An initiator that completes the handshake and then sends anything."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.stream = SecretStream(True)
        self.events: List[protomux.Event] = []
        self.closed = False

    @classmethod
    async def connect(cls, port: int, handshake: bool = True) -> "RawPeer":
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        peer = cls(reader, writer)
        if handshake:
            await peer.handshake()
        return peer

    async def handshake(self) -> None:
        self.writer.write(self.stream.take_output())
        while not self.stream.ready:
            await self._read_once(5.0)
            self.writer.write(self.stream.take_output())

    async def _read_once(self, timeout: float) -> None:
        data = await asyncio.wait_for(self.reader.read(1 << 16), timeout)
        if not data:
            self.closed = True
            raise ConnectionError("the server closed the connection")
        for frame in self.stream.feed(data):
            self.events += protomux.decode(frame)

    def raw(self, data: bytes) -> None:
        self.writer.write(data)

    def send_frames(self, frames: List[bytes]) -> None:
        self.stream.send(frames)
        self.writer.write(self.stream.take_output())

    def open(self, local_id: int, key: bytes, discovery_key: bytes,
             capability: Optional[bytes] = None, protocol: str = messages.PROTOCOL) -> None:
        cap = capability if capability is not None else messages.capability(
            True, key, self.stream.handshake_hash)
        self.send_frames([protomux.encode_open(local_id, protocol, discovery_key,
                                               messages.Handshake(cap).encode())])

    def message(self, local_id: int, kind: int, body: bytes) -> bytes:
        return protomux.encode_message(local_id, kind, body)

    async def wait_for(self, check: Callable[[protomux.Event], bool],
                       timeout: float = 5.0) -> protomux.Event:
        """The first event (received so far or next) that passes ``check``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for ev in self.events:
                if check(ev):
                    return ev
            await self._read_once(max(0.01, deadline - loop.time()))

    async def wait_closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection."""
        try:
            while not self.closed:
                await self._read_once(timeout)
        except (ConnectionError, OSError):
            return True
        except asyncio.TimeoutError:
            return False
        except Exception:  # noqa: BLE001 - our side may fail to parse a dying stream
            return True
        return True

    def close(self) -> None:
        self.writer.close()


def message_of(ev: Any, kind: int) -> bool:
    return isinstance(ev, protomux.Message) and ev.type == kind
