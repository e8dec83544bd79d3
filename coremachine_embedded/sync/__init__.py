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
from typing import Any, Callable, Dict, Hashable, Iterable, List, Optional, Tuple, Union
from urllib.parse import parse_qs, urlsplit

from ..core import Core
from ..errors import InvalidArgumentError
from .counters import Counters
from .endpoint import Endpoint
from .peers import Pulled, SourceStatus
from .udp import UDPLink

#: socket buffer of a UDP socket shared by many peers (capped by net.core.rmem_max),
#: and the datagrams it reads per wake-up
SHARED_SOCKET_BUFFER, SHARED_READ_BATCH = 8 << 20, 64

__all__ = ["Endpoint", "Pulled", "Counters", "SourceStatus", "UDPLink", "open_link", "check_url",
           "link_schemes", "serve", "pull", "replicate", "serve_forever", "pull_blocking",
           "shown_url"]


def _udp_parts(url: str) -> Tuple[str, int, Dict[str, List[str]]]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "udp" or not parts.hostname or port is None:
        raise InvalidArgumentError("a UDP address looks like udp://host:port, not %r" % url)
    return parts.hostname, port, parse_qs(parts.query)


def shown_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc="%s:***@%s" % (parts.username, host)).geturl()


def _udp_mtu(url: str, query: Dict[str, List[str]]) -> int:
    try:
        mtu = int(query.get("mtu", ["1200"])[0])
    except ValueError:
        mtu = 0
    if not 256 <= mtu <= 65000:
        raise InvalidArgumentError("mtu in %r must be a number of bytes from 256 to 65000" % url)
    return mtu


def _open_udp(url: str, listen: bool, shared: Optional[Dict[Hashable, Any]]) -> Tuple[Any, Any]:
    host, port, query = _udp_parts(url)
    mtu = _udp_mtu(url, query)
    if listen:
        return UDPLink(host, port, mtu=mtu), None
    # Resolve once: answers come from an address, and the peer is known by it.
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    except OSError as e:
        raise InvalidArgumentError("cannot resolve %s: %s" % (host, e)) from None
    addr = tuple(sockaddr[:2])
    share = ("udp", family, mtu)  # one socket talks to any number of peers
    if shared is not None and share in shared:
        return shared[share], addr
    if shared is None:
        return UDPLink("::" if family == socket.AF_INET6 else "0.0.0.0", 0, mtu=mtu), addr
    link = shared[share] = UDPLink("::" if family == socket.AF_INET6 else "0.0.0.0", 0, mtu=mtu,
                                   buffer=SHARED_SOCKET_BUFFER, read_batch=SHARED_READ_BATCH)
    return link, addr


def _check_udp(url: str) -> None:
    _udp_mtu(url, _udp_parts(url)[2])


def _open_serial(url: str, listen: bool,
                 shared: Optional[Dict[Hashable, Any]]) -> Tuple[Any, Any]:
    from .serial import SerialLink
    link = SerialLink.from_url(url)
    share = ("serial", link.path)  # a port opens once; every core on the line shares it
    if shared is not None:
        link = shared.setdefault(share, link)
    return link, None


def _check_serial(url: str) -> None:
    from .serial import SerialLink
    try:
        SerialLink.from_url(url)
    except ValueError as e:
        raise InvalidArgumentError("%s: %s" % (url, e)) from None


def _open_mqtt(url: str, listen: bool,
               shared: Optional[Dict[Hashable, Any]]) -> Tuple[Any, Any]:
    from .mqtt import SERVERS, MQTTLink
    peer = None if listen else SERVERS
    if shared is not None and ("mqtt", url) in shared:  # one broker connection per URL
        return shared[("mqtt", url)], peer
    link = MQTTLink.from_url(url)
    if shared is not None:
        shared[("mqtt", url)] = link
    return link, peer


def _check_mqtt(url: str) -> None:
    from .mqtt import MQTTLink
    MQTTLink.from_url(url)   # parses only: connects on attach


def _no_datagrams(url: str, listen: bool,
                  shared: Optional[Dict[Hashable, Any]]) -> Tuple[Any, Any]:
    raise InvalidArgumentError("%s is a Hypercore stream, not a datagram link: use "
                               "sync.serve/sync.pull (sync.hyper)" % shown_url(url))


def _check_tcp(url: str) -> None:
    from .hyper import tcp_address
    tcp_address(url)


#: scheme -> (open(url, listen, shared) -> (link, peer address), check(url));
#: tcp:// (Hypercore's protocol over a stream) is checked here but opened by hyper
_SCHEMES: Dict[str, Tuple[Callable[[str, bool, Optional[Dict[Hashable, Any]]], Tuple[Any, Any]],
                          Callable[[str], None]]] = {
    "udp": (_open_udp, _check_udp),
    "serial": (_open_serial, _check_serial),
    "mqtt": (_open_mqtt, _check_mqtt),
    "mqtts": (_open_mqtt, _check_mqtt),
    "tcp": (_no_datagrams, _check_tcp),
}


def link_schemes() -> Tuple[str, ...]:
    """The URL schemes :func:`open_link` opens."""
    return tuple(sorted(_SCHEMES))


def _scheme(url: str) -> Tuple[Callable[[str, bool, Optional[Dict[Hashable, Any]]],
                                        Tuple[Any, Any]], Callable[[str], None]]:
    scheme = _SCHEMES.get(urlsplit(url).scheme)
    if scheme is None:
        raise InvalidArgumentError("unknown link %r (use %s)" % (url, " or ".join(
            "%s://..." % name for name in link_schemes())))
    return scheme


def check_url(url: str) -> None:
    """Raise :class:`InvalidArgumentError` if ``url`` is not a link URL that
    :func:`open_link` could open (checks the syntax only; opens nothing)."""
    _scheme(url)[1](url)


def open_link(url: str, listen: bool = True,
              shared: Optional[Dict[Hashable, Any]] = None) -> Tuple[Any, Any]:
    """A link for ``url`` and the peer address on it.

    ``udp://host:port`` with ``listen``: bind there (peer None); without:
    bind any local port and talk to host:port.  ``serial://...``: the port
    (its single peer is None).  ``?mtu=N`` sets the UDP datagram size.

    ``mqtt://[user:pass@]broker[:port]/PREFIX`` or ``mqtts://``: a broker
    connection; the peer is whoever serves the core there (sync/mqtt.py).

    ``shared``: a dict the caller keeps, holding the links opened so far; a
    link that can carry this peer too is reused rather than opened again (one
    UDP socket per address family for every ``udp://`` peer, one link per
    serial port, one broker connection per MQTT URL).  The links are not started: attach new ones to an endpoint.
    """
    return _scheme(url)[0](url, listen, shared)


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
