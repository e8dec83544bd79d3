"""A helper process of the gateway benchmark: simulates COUNT devices, each a
writer machine served on its own UDP socket on 127.0.0.1 and appending one
entry a second (the devices' phases spread evenly over the second).

    python bench/fleet_worker.py DIR FIRST COUNT TOTAL

writes DIR/ready-FIRST.json (name, key, port of each device) once serving,
appends from the next whole second on, and on SIGTERM writes
DIR/appends-FIRST.json: for each device, the Unix time of each append.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from typing import Any, Dict, List

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from coremachine_embedded import Core, Coremachine, KeyPair  # noqa: E402
from coremachine_embedded.sync import Endpoint, UDPLink  # noqa: E402


def _tick(ctx: Dict[str, Any], value: Any) -> None:
    ctx["n"] += 1
    ctx["celsius"] = value


#: each entry is about what a sensor node writes (~70 bytes of JSON)
MACHINE = {"initial": "on", "context": {"n": 0, "celsius": 0.0},
           "states": {"on": {"on": {"READING": {"action": _tick}}}}}


class Device:
    def __init__(self, base: str, name: str) -> None:
        self.name = name
        self.core = Core(os.path.join(base, name), key_pair=KeyPair.generate(),
                         durability="none")
        self.machine = Coremachine(self.core, MACHINE)
        self.link = UDPLink("127.0.0.1", 0)
        self.appends: List[float] = []

    def append(self) -> None:
        self.appends.append(time.time())
        self.machine.action("READING", 20.0 + len(self.appends) % 10 / 10)


async def main(base: str, first: int, count: int, total: int) -> None:
    loop = asyncio.get_running_loop()
    devices = [Device(os.path.join(base, "devices"), "dev%04d" % (first + i))
               for i in range(count)]
    endpoint = Endpoint()     # one endpoint, one socket per device (each is its own peer)
    for dev in devices:
        await endpoint.attach(dev.link)
        endpoint.serve(dev.core)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    ready = os.path.join(base, "ready-%d.json" % first)
    with open(ready + ".tmp", "w") as f:
        json.dump([{"name": d.name, "key": d.core.key.hex(), "port": d.link.address[1]}
                   for d in devices], f)
    os.replace(ready + ".tmp", ready)
    start = loop.time() + 1.0

    def tick(dev: Device, at: float) -> None:
        if stop.is_set():
            return
        dev.append()
        loop.call_at(at + 1.0, tick, dev, at + 1.0)

    for i, dev in enumerate(devices):
        at = start + (first + i) / total          # phases spread over the second
        loop.call_at(at, tick, dev, at)
    await stop.wait()
    link_totals: Dict[str, int] = {}
    for dev in devices:
        for key, value in dev.link.counters.items():
            link_totals[key] = link_totals.get(key, 0) + value
    with open(os.path.join(base, "appends-%d.json" % first), "w") as f:
        json.dump({"appends": {d.name: d.appends for d in devices},
                   "counters": dict(endpoint.counters), "links": link_totals}, f)
    await endpoint.close()
    for dev in devices:
        dev.core.close()


if __name__ == "__main__":
    # The devices stand in for other machines: they yield the CPU to the
    # gateway being measured (this machine has two cores for all of it).
    os.nice(10)
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
