"""``coremachine gateway --config FILE``: the daemon's process - logging,
signals (SIGHUP reloads, SIGTERM/SIGINT stop), the metrics server and the
MQTT bridge around a :class:`~coremachine_embedded.gateway.daemon.Gateway`."""
from __future__ import annotations

import asyncio
import logging
import resource
import signal
from typing import Any, Callable, Optional

from .. import logs
from ..errors import ConfigError
from . import config as configuration
from .daemon import Gateway
from .metrics import MetricsServer, render

log = logging.getLogger("coremachine_embedded.gateway")


def run(path: str, metrics: Optional[str] = None, log_level: Optional[str] = None,
        log_format: Optional[str] = None, check: bool = False,
        on_start: Optional[Callable[[Gateway], None]] = None) -> int:
    """Run the gateway until SIGTERM or SIGINT; returns the exit code.
    ``on_start(gateway)`` is called once it runs (the benchmark's probe uses it).

    :raises ConfigError: the configuration file is unreadable or invalid.
    """
    cfg = configuration.load(path)
    if check:
        print("%s: %d devices, %d local machines%s" % (
            path, len(cfg.devices), len(cfg.locals), ", MQTT %s" % cfg.mqtt.url if cfg.mqtt
            else ""))
        return 0
    logs.setup(log_level or cfg.log_level, log_format or cfg.log_format)
    raise_fd_limit()
    address = metrics or cfg.metrics
    asyncio.run(_main(cfg, configuration.parse_host_port(address) if address else None,
                      on_start))
    return 0


async def _main(cfg: configuration.GatewayConfig, metrics_at: Optional[Any],
                on_start: Optional[Callable[[Gateway], None]]) -> None:
    loop = asyncio.get_running_loop()
    gateway = Gateway(cfg)
    stop = asyncio.Event()
    reloads: "asyncio.Queue[None]" = asyncio.Queue()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    gateway.bridge = _bridge(cfg, gateway)
    server = None
    await gateway.start()
    try:
        if gateway.bridge is not None:
            gateway.bridge.start()
        if metrics_at is not None:
            server = MetricsServer(metrics_at[0], metrics_at[1], lambda: render(gateway))
            await server.start()
        if on_start is not None:
            on_start(gateway)
        waiter = loop.create_task(stop.wait())
        while True:
            reload = loop.create_task(reloads.get())
            await asyncio.wait([waiter, reload], return_when=asyncio.FIRST_COMPLETED)
            if not reload.done():
                reload.cancel()
                break
            await _reload(gateway)
        log.info("stopping (signal)")
    finally:
        if server is not None:
            await server.close()
        if gateway.bridge is not None:
            await gateway.bridge.stop()
        await gateway.stop()


async def _reload(gateway: Gateway) -> None:
    """SIGHUP: read the file again; keep running as before if it is invalid."""
    path = gateway.config.path
    try:
        new = configuration.load(path)
    except ConfigError as e:
        log.error("reload refused, still running the previous configuration: %s", e.message)
        return
    log.info("reloading %s", path)
    if new.mqtt != gateway.config.mqtt and gateway.bridge is not None:
        await gateway.bridge.stop()
        gateway.bridge = None
    await gateway.reload(new)
    if gateway.bridge is None:
        gateway.bridge = _bridge(new, gateway)
        if gateway.bridge is not None:
            gateway.bridge.start()


def _bridge(cfg: configuration.GatewayConfig, gateway: Gateway) -> Any:
    if cfg.mqtt is None:
        return None
    from .mqtt_bridge import MqttBridge
    return MqttBridge(cfg.mqtt, gateway)


def raise_fd_limit() -> None:
    """Every store holds a few files open: take the hard limit on open files
    (systemd's default soft limit, 1024, is a few hundred devices)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 16 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            log.debug("could not raise the open file limit from %d", soft)
