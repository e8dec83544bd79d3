"""Simulated devices for the gateway tests: each a writer store running the
demo thermostat, served by its own Endpoint on a real UDP socket on
127.0.0.1 - the same code a sensor node runs."""
from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any, Callable, List, Optional

from coremachine_embedded import Core, Coremachine, KeyPair
from coremachine_embedded.demo import THERMOSTAT
from coremachine_embedded.sync import Endpoint, UDPLink

MACHINE_REF = "coremachine_embedded.demo:THERMOSTAT"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SimDevice:
    """A writer machine served on ``udp://127.0.0.1:port``; it can go away
    (its socket closed) and come back on the same port."""

    def __init__(self, base: str, name: str) -> None:
        self.name = name
        self.core = Core(os.path.join(base, "dev-" + name), key_pair=KeyPair.generate(),
                         durability="none")
        self.machine = Coremachine(self.core, THERMOSTAT)
        self.port = free_udp_port()
        self.endpoint: Optional[Endpoint] = None
        self.readings = 0

    @property
    def url(self) -> str:
        return "udp://127.0.0.1:%d" % self.port

    async def up(self) -> "SimDevice":
        self.endpoint = Endpoint()
        await self.endpoint.attach(UDPLink("127.0.0.1", self.port))
        self.endpoint.serve(self.core)
        return self

    async def down(self) -> None:
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None

    def reading(self, celsius: float = 17.0) -> None:
        self.machine.action("READING", {"t": self.readings, "celsius": celsius})
        self.readings += 1

    def toml(self, **extra: str) -> str:
        lines = ["[[device]]", 'name = "%s"' % self.name, 'key = "%s"' % self.core.key.hex(),
                 'url = "%s"' % self.url]
        lines += ['%s = %s' % kv for kv in extra.items()]
        return "\n".join(lines) + "\n"

    def close(self) -> None:
        self.machine.close()
        self.core.close()


def check_copy(replica: Core, writer: Core) -> None:
    """The replica holds all of the writer's log, verified."""
    assert (replica.length, replica.contiguous_length, replica.fork) == (
        writer.length, writer.length, writer.fork)
    assert replica.tree_hash() == writer.tree_hash()
    for i in range(writer.length):
        assert replica.get(i) == writer.get(i)


def holds(gw: Any, dev: SimDevice) -> bool:
    """The gateway ``gw`` holds all of ``dev``'s log."""
    member = gw.devices.get(dev.name)
    return bool(member and member.core and member.core.contiguous_length == dev.core.length)


async def wait_for(cond: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out waiting for %s" % (what or cond)
        await asyncio.sleep(0.01)


def gateway_toml(store_dir: str, devices: List[SimDevice], extra: str = "") -> str:
    return ('[gateway]\nname = "test"\nstore_dir = "%s"\nmachine = "%s"\nsilence = 2\n'
            'retry_min = 0.05\nretry_max = 0.2\n%s\n' % (store_dir, MACHINE_REF, extra)
            + "".join(d.toml() for d in devices))
