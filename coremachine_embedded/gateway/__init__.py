"""The gateway: one process that follows a fleet of devices (``coremachine
gateway --config gateway.toml``), bridges their states to MQTT and Home
Assistant, and serves Prometheus metrics.  See docs/gateway.md.

::

    from coremachine_embedded.gateway import Gateway, load_config
    gateway = Gateway(load_config("gateway.toml"))
    await gateway.start()          # then reload(config) on SIGHUP, stop() at the end
"""
from __future__ import annotations

from .config import GatewayConfig, load as load_config
from .daemon import Gateway

__all__ = ["Gateway", "GatewayConfig", "load_config"]
