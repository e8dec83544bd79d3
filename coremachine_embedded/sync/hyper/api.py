"""Replicating with Hypercore peers: over any asyncio stream pair
(:func:`replicate`), as a TCP server (:func:`serve`) or client (:func:`pull`).

The stream layer knows nothing of TCP: :func:`replicate` takes a reader and a
writer, so a Unix socket, an SSH channel or a serial byte pipe work the same
way (and so would a UDX stream from HyperDHT, docs/protocol.md).
"""
from __future__ import annotations

import asyncio
from typing import Callable, Dict, Iterable, List, Optional, Set, Tuple, Union
from urllib.parse import urlsplit

from ...core import Core
from ...errors import InvalidArgumentError, ProtocolError
from ..counters import Counters
from .connection import Connection
from .noise import KeyPair
from .secretstream import MAX_FRAME
from .peer import WINDOW, ChannelPeer, CoreReplicator

MAX_CONNECTIONS = 256   # connections a server serves at once

Cores = Union[Core, CoreReplicator, Iterable[Union[Core, CoreReplicator]]]


def tcp_address(url: str) -> Tuple[str, int]:
    """``(host, port)`` of a ``tcp://host:port`` URL."""
    parts = urlsplit(url)
    if parts.scheme != "tcp" or not parts.hostname or parts.port is None:
        raise InvalidArgumentError("a TCP address looks like tcp://host:port, not %r" % url)
    return parts.hostname, parts.port


def _replicators(cores: Cores, counters: Counters, window: int
                 ) -> Tuple[Dict[bytes, CoreReplicator], List[CoreReplicator]]:
    """The replicators of ``cores`` by discovery key, and those made here (a
    CoreReplicator given is shared with other connections and stays open)."""
    items = [cores] if isinstance(cores, (Core, CoreReplicator)) else list(cores)
    out: Dict[bytes, CoreReplicator] = {}
    made: List[CoreReplicator] = []
    for item in items:
        if isinstance(item, CoreReplicator):
            rep = item
        else:
            rep = CoreReplicator(item, counters, window)
            made.append(rep)
        if rep.discovery_key in out:
            raise InvalidArgumentError("the same core is given twice")
        out[rep.discovery_key] = rep
    return out, made


class Server:
    """A TCP server speaking Hypercore's protocol (responder on every
    connection) for any number of cores.  Close it when done."""

    def __init__(self, replicators: Dict[bytes, CoreReplicator], counters: Counters,
                 key_pair: Optional[KeyPair], timeout: float, max_frame: int,
                 max_connections: int) -> None:
        self.replicators = replicators
        self.counters = counters
        self.key_pair = key_pair
        self.timeout = timeout
        self.max_frame = max_frame
        self.max_connections = max_connections
        self.connections: Set[Connection] = set()
        self._tasks: Set["asyncio.Task[None]"] = set()
        self._server: Optional[asyncio.base_events.Server] = None

    @property
    def address(self) -> Tuple[str, int]:
        """The bound ``(host, port)``."""
        assert self._server is not None
        name = self._server.sockets[0].getsockname()
        return name[0], name[1]

    async def listen(self, host: str, port: int) -> None:
        """Accept connections on ``host``:``port`` (0: any free port)."""
        self._server = await asyncio.start_server(self._on_connection, host, port)

    def lookup(self, discovery_key: bytes) -> Optional[ChannelPeer]:
        rep = self.replicators.get(discovery_key)
        return None if rep is None else rep.handler()

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        if len(self.connections) >= self.max_connections:
            self.counters.inc("dropped_connections")
            writer.close()
            return
        self.counters.inc("connections")
        conn = Connection(reader, writer, False, self.lookup, key_pair=self.key_pair,
                          counters=self.counters, timeout=self.timeout,
                          max_frame=self.max_frame)
        task = asyncio.current_task()
        assert task is not None
        self.connections.add(conn)
        self._tasks.add(task)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            self._tasks.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn.close()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
        for rep in self.replicators.values():
            rep.close()


async def serve(cores: Cores, url: str, *, key_pair: Optional[KeyPair] = None,
                counters: Optional[Counters] = None, timeout: float = 30.0,
                window: int = WINDOW, max_frame: int = MAX_FRAME,
                max_connections: int = MAX_CONNECTIONS) -> Server:
    """Serve ``cores`` to Hypercore peers connecting to ``tcp://host:port``
    (port 0: any free port, see :attr:`Server.address`).  Replicas among them
    also pull from every peer that has more.

    :param timeout: close a connection silent this long (JS peers send a
        keepalive every 5 s); 0: never.
    :param max_frame: close a connection announcing a larger frame (at most
        just under 16 MiB, the protocol's own limit).
    :param max_connections: connections served at once; more are closed at
        once and counted (``dropped_connections``).
    """
    host, port = tcp_address(url)
    counters = counters if counters is not None else Counters()
    server = Server(_replicators(cores, counters, window)[0], counters, key_pair, timeout,
                    max_frame, max_connections)
    for rep in server.replicators.values():
        if not rep.core.writable:
            rep.pull()
    await server.listen(host, port)
    return server


async def replicate(cores: Cores, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    *, initiator: bool, live: bool = True, key_pair: Optional[KeyPair] = None,
                    counters: Optional[Counters] = None, window: int = WINDOW,
                    timeout: float = 30.0,
                    progress: Optional[Callable[[int, int], None]] = None) -> Counters:
    """Replicate ``cores`` with the Hypercore peer at the other end of one
    stream pair (``initiator``: we started the connection).  Writers serve,
    replicas pull what the peer has and serve what they hold.  With ``live``
    it runs until the stream ends; without, it ends once every replica holds
    the peer's signed length.

    :raises ProtocolError: the peer broke the protocol, refused a core, or the
        stream ended before the replicas caught up (without ``live``).
    """
    counters = counters if counters is not None else Counters()
    reps, made = _replicators(cores, counters, window)
    handlers: Dict[bytes, ChannelPeer] = {}

    def lookup(discovery_key: bytes) -> Optional[ChannelPeer]:
        rep = reps.get(discovery_key)
        if rep is None or discovery_key in handlers:
            return None
        handlers[discovery_key] = rep.handler()
        return handlers[discovery_key]

    conn = Connection(reader, writer, initiator, lookup, key_pair=key_pair, counters=counters,
                      timeout=timeout)
    for dk, rep in reps.items():
        if not rep.core.writable:
            rep.pull()
        handler = lookup(dk)
        assert handler is not None
        conn.open_channel(handler, dk)
    task = asyncio.get_running_loop().create_task(conn.run())
    try:
        if not live:
            await _until_caught_up(conn, list(reps.values()), handlers, progress)
            conn.close()
        await task
    finally:
        if not task.done():
            conn.close()
            await task
        for rep in made:
            rep.close()
    if isinstance(conn.error, ProtocolError):
        raise conn.error
    return counters


async def _until_caught_up(conn: Connection, reps: List[CoreReplicator],
                           handlers: Dict[bytes, ChannelPeer],
                           progress: Optional[Callable[[int, int], None]]) -> None:
    pulling = [rep for rep in reps if not rep.core.writable]
    while not all(rep.caught_up() for rep in pulling):
        if conn.closed.is_set():
            raise conn.error if isinstance(conn.error, ProtocolError) else ProtocolError(
                "the peer closed the connection before we caught up")
        for rep in pulling:
            handler = handlers.get(rep.discovery_key)
            if handler is not None and handler.closed:
                raise ProtocolError("the peer does not serve core %s"
                                    % rep.discovery_key.hex()[:16])
        if progress is not None and len(pulling) == 1:
            best = pulling[0].best()
            progress(pulling[0].core.contiguous_length, best.length if best else 0)
        waits = [asyncio.ensure_future(rep.progress.wait()) for rep in pulling]
        waits.append(asyncio.ensure_future(conn.closed.wait()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


async def pull(core: Core, url: str, *, live: bool = False, key_pair: Optional[KeyPair] = None,
               counters: Optional[Counters] = None, window: int = WINDOW,
               progress: Optional[Callable[[int, int], None]] = None) -> Counters:
    """Connect to the Hypercore peer at ``tcp://host:port`` and pull ``core``
    (a replica) until it holds the peer's signed length; with ``live``, keep
    following until cancelled or the peer goes away."""
    host, port = tcp_address(url)
    reader, writer = await asyncio.open_connection(host, port)
    return await replicate(core, reader, writer, initiator=True, live=live, key_pair=key_pair,
                           counters=counters, window=window, progress=progress)
