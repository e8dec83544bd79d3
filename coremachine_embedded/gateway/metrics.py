"""``--metrics HOST:PORT``: the gateway's state in the Prometheus text format
(version 0.0.4) at ``http://HOST:PORT/metrics``.  The list of metrics is in
docs/gateway.md; :func:`render` builds the page from the live objects."""
from __future__ import annotations

import asyncio
import logging
import os
import resource
import time
from typing import Any, Dict, List, Optional, Tuple

log = logging.getLogger("coremachine_embedded.gateway")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST = 8192
#: carrier counters that are drops, exported as reason="carrier_<name>"
CARRIER_DROPS = ("tx_dropped", "rx_oversize", "bad_crc", "bad_cobs", "oversize", "tx_lost",
                 "tx_oversize", "tx_collision_drops")

Sample = Tuple[Dict[str, str], float]


class Family:
    """One metric: name, type, help and its samples."""

    def __init__(self, name: str, kind: str, help_: str) -> None:
        self.name, self.kind, self.help = name, kind, help_
        self.samples: List[Sample] = []

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def text(self) -> str:
        lines = ["# HELP %s %s" % (self.name, self.help), "# TYPE %s %s" % (self.name, self.kind)]
        for labels, value in self.samples:
            lines.append("%s%s %s" % (self.name, _labels(labels), _number(value)))
        return "\n".join(lines) + "\n"


def _labels(labels: Dict[str, str]) -> str:
    if not labels:
        return ""
    return "{%s}" % ",".join('%s="%s"' % (k, v.replace("\\", "\\\\").replace("\n", "\\n")
                                          .replace('"', '\\"')) for k, v in labels.items())


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def render(gateway: Any) -> str:
    """The metrics page for ``gateway`` (and its MQTT bridge, if one runs)."""
    families: List[Family] = []

    def family(name: str, kind: str, help_: str) -> Family:
        f = Family(name, kind, help_)
        families.append(f)
        return f

    length = family("coremachine_device_length", "gauge",
                    "Entries of the device's log held, verified, from the first.")
    writer = family("coremachine_device_writer_length", "gauge",
                    "The writer's signed length, as the device last said (-1: not heard yet).")
    lag = family("coremachine_device_lag", "gauge",
                 "Entries the writer signed that the gateway does not hold yet.")
    fork = family("coremachine_device_fork", "gauge", "Fork of the held log.")
    contact = family("coremachine_device_last_contact_timestamp_seconds", "gauge",
                     "Unix time of the last valid envelope from the device (0: never).")
    up = family("coremachine_device_up", "gauge",
                "1 while the device answered within the silence limit.")
    reconnects = family("coremachine_device_reconnects_total", "counter",
                        "Times contact came back after a silence.")
    failures = family("coremachine_device_open_failures_total", "counter",
                      "Times one of the device's URLs could not be opened.")
    now = time.monotonic()
    for dev in gateway.devices.values():
        dev.read_status(now)
        core = dev.core
        labels = {"device": dev.name}
        length.add(core.contiguous_length if core else 0, **labels)
        writer.add(dev.remote_length, **labels)
        lag.add(dev.lag, **labels)
        fork.add(core.fork if core else 0, **labels)
        contact.add(round(dev.last_contact, 3), **labels)
        up.add(1 if dev.online else 0, **labels)
        reconnects.add(dev.reconnects, **labels)
        failures.add(dev.open_failures, **labels)
    local_length = family("coremachine_local_length", "gauge",
                          "Entries of a local machine's log (written by the gateway).")
    for local in gateway.locals.values():
        local_length.add(local.core.length if local.core else 0, machine=local.name)
    _link_families(family, [(p.name, p) for p in gateway.links.links() + gateway.listening])
    if gateway.bridge is not None:
        for name, kind, help_, samples in gateway.bridge.metrics():
            f = family(name, kind, help_)
            f.samples.extend(samples)
    _process_families(family, gateway)
    return "".join(f.text() for f in families)


def _link_families(family: Any, links: List[Tuple[str, Any]]) -> None:
    simple = [("rx_bytes", "coremachine_link_rx_bytes_total", "Bytes of envelopes received."),
              ("tx_bytes", "coremachine_link_tx_bytes_total", "Bytes of envelopes sent."),
              ("rx_envelopes", "coremachine_link_rx_envelopes_total", "Envelopes received."),
              ("tx_envelopes", "coremachine_link_tx_envelopes_total", "Envelopes sent."),
              ("blocks", "coremachine_link_blocks_total", "Blocks verified and stored."),
              ("pushes", "coremachine_link_pushes_total",
               "Live entries a device pushed unasked (verified and stored)."),
              ("retries", "coremachine_link_retries_total", "Requests sent again."),
              ("timeouts", "coremachine_link_timeouts_total",
               "Requests that timed out on a quiet link."),
              ("requests_served", "coremachine_link_requests_served_total",
               "Requests answered with data.")]
    fams = {key: family(name, "counter", help_) for key, name, help_ in simple}
    dropped = family("coremachine_link_dropped_total", "counter",
                     "Envelopes or messages dropped, by reason.")
    reconnects = family("coremachine_link_reconnects_total", "counter",
                        "Carrier reopens (serial) plus devices whose contact came back.")
    devices = family("coremachine_link_devices", "gauge", "Devices pulled over the link.")
    for label, pooled in links:
        counters = pooled.counters()
        for key, f in fams.items():
            f.add(counters.get(key, 0), link=label)
        for key, value in sorted(counters.items()):
            if key.startswith("dropped_"):
                dropped.add(value, link=label, reason=key[len("dropped_"):])
            elif key.startswith("link_") and key[5:] in CARRIER_DROPS:
                dropped.add(value, link=label, reason="carrier_" + key[5:])
        reconnects.add(counters.get("link_reconnects", 0) + pooled.contacts_regained, link=label)
        devices.add(pooled.users, link=label)


def _process_families(family: Any, gateway: Any) -> None:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    family("process_cpu_seconds_total", "counter", "CPU time used by the gateway.").add(
        round(usage.ru_utime + usage.ru_stime, 3))
    family("process_resident_memory_bytes", "gauge", "Resident memory.").add(_rss_bytes())
    family("process_open_fds", "gauge", "Open file descriptors.").add(_open_fds())
    family("process_start_time_seconds", "gauge", "Unix time the gateway started.").add(
        round(gateway.started, 3))


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0


class MetricsServer:
    """A minimal HTTP server for ``GET /metrics`` (one request per connection)."""

    def __init__(self, host: str, port: int, page: Any) -> None:
        self.host, self.port = host, port
        self.page = page               # () -> str
        self.scrapes = 0
        self._server: Optional[asyncio.base_events.Server] = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("metrics on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.split(" ", 1)[0].split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                status, body, ctype = "405 Method Not Allowed", "GET only\n", "text/plain"
            elif path == "/metrics":
                self.scrapes += 1
                status, body, ctype = "200 OK", self.page(), CONTENT_TYPE
            elif path == "/":
                status, body, ctype = "200 OK", "coremachine gateway: see /metrics\n", "text/plain"
            else:
                status, body, ctype = "404 Not Found", "not found: try /metrics\n", "text/plain"
            data = body.encode()
            writer.write(("HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                          "Connection: close\r\n\r\n" % (status, ctype, len(data))).encode())
            if method != "HEAD":
                writer.write(data)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, UnicodeDecodeError):
            pass  # a client that went away or sent no HTTP: nothing to answer
        finally:
            writer.close()

