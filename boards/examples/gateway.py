#!/usr/bin/env python3
"""Example firmware: a gateway that pulls a set of devices and prints their
live states.

Each device is ``NAME=KEY_HEX@URL`` (``udp://host:port`` or
``serial:///dev/ttyUSB0?baud=115200``); its replica lives in
``STORE_DIR/NAME``.  Every block is verified against the device's signature
before it is stored; each device's machine follows its writer live.

    python3 gateway.py --store-dir /var/lib/coremachine/gateway \\
        kitchen=9e56...c458@udp://10.0.0.21:7000 shed=1a5c...fcfd@serial:///dev/ttyUSB0
"""
import argparse
import asyncio
import os
import sys
from typing import List, Tuple

from coremachine_embedded import Core, Coremachine, Snapshot
from coremachine_embedded.demo import THERMOSTAT
from coremachine_embedded.sync import Endpoint, open_link


def parse_device(spec: str) -> Tuple[str, bytes, str]:
    try:
        name, rest = spec.split("=", 1)
        key, url = rest.split("@", 1)
        return name, bytes.fromhex(key), url
    except ValueError:
        raise SystemExit("gateway: a device is NAME=KEY_HEX@URL, not %r" % spec) from None


def printer(name: str):  # type: ignore[no-untyped-def]
    def show(snap: Snapshot) -> None:
        print("%-10s %-7s <- %-8s celsius=%s readings=%s" % (
            name, snap.state, snap.event or "(sync)", snap.context.get("celsius"),
            snap.context.get("readings")), flush=True)
    return show


async def run(args: argparse.Namespace) -> None:
    cores: List[Core] = []
    tasks = []
    endpoints = []
    for spec in args.devices:
        name, key, url = parse_device(spec)
        core = Core(os.path.join(args.store_dir, name), key=key, durability="batch")
        cores.append(core)
        machine = Coremachine(core, THERMOSTAT)
        machine.on_change(printer(name))
        print("%-10s following %s (have %d entries, state %s)" % (
            name, url, core.contiguous_length, machine.state), flush=True)
        endpoint = Endpoint()   # one per device: it may share a key with another gateway's
        link, addr = open_link(url, listen=False)
        await endpoint.attach(link)
        endpoints.append(endpoint)
        tasks.append(asyncio.ensure_future(endpoint.pull(core, link, addr, live=True)))
    try:
        if args.duration is None:
            await asyncio.gather(*tasks)
        else:
            await asyncio.sleep(args.duration)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for endpoint in endpoints:
            await endpoint.close()
        for core in cores:
            core.flush()
            print("%s: %d entries, verified %d" % (os.path.basename(core.directory or ""),
                                                    core.length, core.verify()), flush=True)
            core.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store-dir", required=True, help="replicas go in STORE_DIR/NAME")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.add_argument("devices", nargs="+", metavar="NAME=KEY_HEX@URL")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
