"""The links the gateway pulls over: opened through :func:`sync.open_link`,
shared by every device they can carry (one UDP socket for all ``udp://``
devices, one port per serial line, one broker connection per ``mqtt://``
URL), each with its own :class:`~coremachine_embedded.sync.Endpoint` so that
its counters are the link's.  A link closes when its last device lets go of
it.  A ``tcp://`` device (Hypercore's protocol) is one connection of its own:
:class:`StreamPull`."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Dict, Hashable, List, Optional, Tuple

from .. import sync

log = logging.getLogger("coremachine_embedded.gateway")


class PooledLink:
    """A started link, its endpoint, and how many devices use it."""

    def __init__(self, name: str, link: Any, endpoint: Any) -> None:
        self.name = name          # the label in logs and metrics
        self.link = link
        self.endpoint = endpoint
        self.users = 0
        self.contacts_regained = 0  # devices back in contact after a silence

    def counters(self) -> Dict[str, int]:
        """The endpoint's counters (envelopes, bytes, drops by reason, retries)
        and the carrier's own (``link_``-prefixed: reconnects, datagrams ...)."""
        out = dict(self.endpoint.counters)
        for key, value in getattr(self.link, "counters", {}).items():
            out["link_" + key] = value
        return out


class StreamPull:
    """A device pulled over ``tcp://`` with Hypercore's protocol: the
    endpoint of its own :class:`PooledLink` (the metrics read ``counters``,
    the supervisor ``source_status``).  The peer counts as heard while the
    connection is open (the protocol keeps it alive); the writer's signed
    length is what the replica verified."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counters = sync.Counters()
        self.connected_at: Optional[float] = None

    async def pull(self, core: Any) -> None:
        """Follow ``core`` until the connection ends (raises what ended it)."""
        from ..sync.hyper import tcp_address
        host, port = tcp_address(self.url)
        reader, writer = await asyncio.open_connection(host, port)
        self.connected_at = time.monotonic()
        try:
            await sync.replicate(core, reader, writer, initiator=True, live=True,
                                 counters=self.counters)
        finally:
            self.connected_at = None

    def source_status(self, core: Any) -> Optional[sync.SourceStatus]:
        if self.connected_at is None:
            return sync.SourceStatus(-1, -1, None, False)
        return sync.SourceStatus(core.length, core.fork, time.monotonic(),
                                 core.contiguous_length == core.length)

    def ping(self, core: Any) -> bool:
        return False   # the connection's keepalives do it

    def remove(self, core: Any) -> None:
        pass           # the pull's task is cancelled by its caller

    async def close(self) -> None:
        pass


class LinkPool:
    """Opens, shares and closes the pulling links (see the module docstring)."""

    def __init__(self, window: int = 256) -> None:
        self.window = window
        self._shared: Dict[Hashable, Any] = {}
        self._pooled: Dict[int, PooledLink] = {}   # by id(link)

    async def acquire(self, url: str) -> Tuple[PooledLink, Any]:
        """The pooled link that reaches ``url`` and the peer address on it.

        :raises InvalidArgumentError, OSError: the URL cannot be opened now
            (a name that does not resolve, a port that cannot be bound ...).
        """
        if url.startswith("tcp://"):   # one connection per device: not shared
            sync.check_url(url)
            stream = StreamPull(url)
            own = self._pooled[id(stream)] = PooledLink(url, stream, stream)
            own.users = 1
            return own, None
        link, addr = sync.open_link(url, listen=False, shared=self._shared)
        pooled = self._pooled.get(id(link))
        if pooled is None:
            endpoint = sync.Endpoint(window=self.window)
            try:
                await endpoint.attach(link)
            except BaseException:
                self._forget(link)
                await endpoint.close()
                raise
            pooled = self._pooled[id(link)] = PooledLink(_label(url, link), link, endpoint)
            log.info("link %s open", pooled.name)
        pooled.users += 1
        return pooled, addr

    async def release(self, pooled: PooledLink) -> None:
        """One device stops using ``pooled``; the last one closes it."""
        pooled.users -= 1
        if pooled.users > 0:
            return
        self._pooled.pop(id(pooled.link), None)
        self._forget(pooled.link)
        await pooled.endpoint.close()
        log.info("link %s closed", pooled.name)

    def links(self) -> List[PooledLink]:
        """The open links."""
        return list(self._pooled.values())

    async def close(self) -> None:
        for pooled in list(self._pooled.values()):
            pooled.users = 1
            await self.release(pooled)

    def _forget(self, link: Any) -> None:
        for key, value in list(self._shared.items()):
            if value is link:
                del self._shared[key]


def _label(url: str, link: Any) -> str:
    """``udp`` (or ``udp6``) for the shared UDP socket, otherwise the URL
    without its query (``serial:///dev/ttyUSB0``)."""
    if isinstance(link, sync.UDPLink):
        return "udp6" if ":" in link.host else "udp"
    return url.split("?", 1)[0]
