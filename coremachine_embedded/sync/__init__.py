"""Verified log replication over UDP, serial lines and MQTT brokers, and with
Hypercore peers (JavaScript ``core.replicate()``, Corestores) over TCP or any stream.

asyncio::

    from coremachine_embedded import sync
    endpoint = await sync.serve(core, "udp://0.0.0.0:7000")          # writer or replica
    await sync.pull(replica, "udp://10.0.0.5:7000")                   # until it holds the signed length
    await sync.pull(replica, "serial:///dev/ttyAMA0?baud=115200", live=True)   # follow forever
    await sync.pull(replica, "mqtts://user:pw@broker.example/fleet", live=True)  # through a broker
    server = await sync.serve([core_a, core_b], "tcp://0.0.0.0:7001")  # Hypercore's protocol
    await sync.pull(replica, "tcp://10.0.0.5:7001", live=True)
    await sync.replicate(core, reader, writer, initiator=True)        # any asyncio stream pair

plain scripts::

    sync.serve_forever(core, "udp://0.0.0.0:7000")
    sync.pull_blocking(replica, "udp://10.0.0.5:7000", timeout=60)

One :class:`Endpoint` serves and pulls any number of cores over any number of
links; the protocols are in docs/protocol.md (Hypercore's: sync/hyper/).
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from ..core import Core
from ..errors import InvalidArgumentError
from .counters import Counters
from .endpoint import Endpoint
from .peers import Pulled
from .udp import UDPLink

__all__ = ["Endpoint", "Pulled", "Counters", "UDPLink", "open_link", "serve", "pull", "replicate",
           "serve_forever", "pull_blocking", "shown_url"]


def _udp_parts(url: str) -> Tuple[str, int, Dict[str, List[str]]]:
    parts = urlsplit(url)
    if parts.scheme != "udp" or not parts.hostname or parts.port is None:
        raise InvalidArgumentError("a UDP address looks like udp://host:port, not %r" % url)
    return parts.hostname, parts.port, parse_qs(parts.query)


def shown_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc="%s:***@%s" % (parts.username, host)).geturl()


def open_link(url: str, listen: bool = True) -> Tuple[Any, Any]:
    """A link for ``url`` and the peer address on it.

    ``udp://host:port`` with ``listen``: bind there (peer None); without:
    bind any local port and talk to host:port.  ``serial://...``: the port
    (its single peer is None).  ``?mtu=N`` sets the UDP datagram size.
    ``mqtt://[user:pass@]broker[:port]/PREFIX`` or ``mqtts://``: a broker
    connection; the peer is whoever serves the core there (sync/mqtt.py).
    """
    scheme = urlsplit(url).scheme
    if scheme == "udp":
        host, port, query = _udp_parts(url)
        mtu = int(query.get("mtu", ["1200"])[0])
        if listen:
            return UDPLink(host, port, mtu=mtu), None
        # Resolve once: answers come from an address, and the peer is known by it.
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except OSError as e:
            raise InvalidArgumentError("cannot resolve %s: %s" % (host, e)) from None
        local = "::" if family == socket.AF_INET6 else "0.0.0.0"
        return UDPLink(local, 0, mtu=mtu), tuple(sockaddr[:2])
    if scheme == "serial":
        from .serial import SerialLink
        return SerialLink.from_url(url), None
    if scheme in ("mqtt", "mqtts"):
        from .mqtt import SERVERS, MQTTLink
        return MQTTLink.from_url(url), None if listen else SERVERS
    raise InvalidArgumentError("unknown link %r (use udp://host:port, serial:///dev/tty... or "
                               "mqtt://broker/PREFIX)" % url)


async def serve(cores: Union[Core, Iterable[Core]], url: str,
                endpoint: Optional[Endpoint] = None) -> Any:
    """Serve ``cores`` on ``url``; returns the running endpoint (close it when
    done).  ``tcp://host:port`` speaks Hypercore's protocol (a
    :class:`~coremachine_embedded.sync.hyper.Server`; replicas among the
    cores also pull from the peers that connect)."""
    if urlsplit(url).scheme == "tcp":
        from . import hyper
        return await hyper.serve(cores, url)
    ep = endpoint or Endpoint()
    link, _ = open_link(url, listen=True)
    await ep.attach(link)
    for core in [cores] if isinstance(cores, Core) else cores:
        ep.serve(core)
    return ep


async def pull(core: Core, url: str, *, live: bool = False, window: int = 128,
               progress: Optional[Callable[[int, int], None]] = None,
               endpoint: Optional[Endpoint] = None) -> Any:
    """Pull ``core`` (a replica) from the peer at ``url`` until it holds the
    peer's signed length, or forever with ``live``.  The replica also serves
    what it holds over the same link.  ``tcp://host:port``: a Hypercore peer
    (returns the connection's counters)."""
    if urlsplit(url).scheme == "tcp":
        from . import hyper
        return await hyper.pull(core, url, live=live, progress=progress)
    ep = endpoint or Endpoint(window=window)
    link, addr = open_link(url, listen=False)
    await ep.attach(link)
    try:
        await ep.pull(core, link, addr, live=live, progress=progress)
    except BaseException:  # cancelled or timed out: the caller never gets the endpoint
        if endpoint is None:
            await ep.close()
        raise
    return ep


async def replicate(cores: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                    initiator: bool, live: bool = True, **options: Any) -> Counters:
    """Replicate ``cores`` with a Hypercore peer over any asyncio stream pair
    (a TCP or Unix socket, an SSH channel, a serial byte pipe): see
    :func:`coremachine_embedded.sync.hyper.replicate`."""
    from . import hyper
    return await hyper.replicate(cores, reader, writer, initiator=initiator, live=live,
                                 **options)


def serve_forever(cores: Union[Core, Iterable[Core]], url: str) -> None:
    """Blocking :func:`serve` for plain scripts (stop with Ctrl-C)."""
    async def main() -> None:
        ep = await serve(cores, url)
        try:
            await asyncio.Event().wait()
        finally:
            await ep.close()
    asyncio.run(main())


def pull_blocking(core: Core, url: str, *, timeout: Optional[float] = None,
                  progress: Optional[Callable[[int, int], None]] = None) -> Counters:
    """Blocking :func:`pull` for plain scripts; returns the endpoint's counters.

    :raises TimeoutError: not caught up within ``timeout`` seconds.
    """
    async def main() -> Counters:
        ep = Endpoint()
        link, addr = open_link(url, listen=False)
        await ep.attach(link)
        try:
            await asyncio.wait_for(ep.pull(core, link, addr, progress=progress), timeout)
        finally:
            await ep.close()
        return ep.counters
    return asyncio.run(main())
