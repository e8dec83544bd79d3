"""The links the gateway pulls over: opened through :func:`sync.open_link`,
shared by every device they can carry (one UDP socket for all ``udp://``
devices, one port per serial line), each with its own
:class:`~coremachine_embedded.sync.Endpoint` so that its counters are the
link's.  A link closes when its last device lets go of it."""
from __future__ import annotations

import logging
from typing import Any, Dict, Hashable, List, Tuple

from .. import sync

log = logging.getLogger("coremachine_embedded.gateway")


class PooledLink:
    """A started link, its endpoint, and how many devices use it."""

    def __init__(self, name: str, link: Any, endpoint: sync.Endpoint) -> None:
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
