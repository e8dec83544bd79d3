#!/usr/bin/env python3
"""Example firmware: a sensor node.

Feeds temperature readings into its thermostat machine (every transition a
signed, fsync'ed log entry) and serves the log to gateways over UDP and,
optionally, a serial line.  Readings come from the SoC's thermal zone, from a
file, or are simulated; a microcontroller on a UART can send actions too
(``--actions``, see micropython/action_source.py).

    python3 sensor_node.py --board rpi-zero-2w
    python3 sensor_node.py --store /tmp/node --udp udp://0.0.0.0:7000 --readings 50 --interval 0.1

The key to give the gateways is printed at start (and is in ``coremachine
info STORE``).  While it runs, ``coremachine act STORE EVENT VALUE`` fires
events on its machine and ``coremachine stop STORE`` stops it (its control
socket, coremachine_embedded.control).
"""
import argparse
import asyncio
import math
import os
import random
import sys
from typing import Callable, Optional

from coremachine_embedded import (MISSING, Core, Coremachine, KeyPair, StoreNotFoundError, boards,
                                  streams)
from coremachine_embedded.control import ControlServer
from coremachine_embedded.demo import THERMOSTAT
from coremachine_embedded.sync import Endpoint, open_link


def sensor(spec: str) -> Callable[[int], float]:
    """``thermal`` (the SoC), ``file:PATH`` (millidegrees or degrees), or
    ``simulated`` (a slow wave around 20 C)."""
    if spec == "thermal":
        spec = "file:/sys/class/thermal/thermal_zone0/temp"
    if spec.startswith("file:"):
        path = spec[5:]

        def read_file(_t: int) -> float:
            with open(path) as f:
                value = float(f.read().split()[0])
            return value / 1000 if value > 1000 else value
        return read_file
    rng = random.Random(7)
    return lambda t: round(19.5 + 2 * math.sin(t / 6.0) + rng.uniform(-0.3, 0.3), 2)


def open_store(path: str, durability: str, flush_interval: float) -> Core:
    try:
        return Core(path, durability=durability, flush_interval=flush_interval)
    except StoreNotFoundError:
        return Core(path, key_pair=KeyPair.generate(), durability=durability,
                    flush_interval=flush_interval)


async def run(args: argparse.Namespace) -> None:
    board = boards.load(args.board) if args.board else None
    store = args.store or (board.store.path if board else None)
    if not store:
        raise SystemExit("sensor_node: give --store or --board")
    core = open_store(store, args.durability or (board.store.durability if board else "sync"),
                      board.store.flush_interval if board else 1.0)
    machine = Coremachine(core, THERMOSTAT)
    machine.on_change(lambda s: print("node: %-7s <- %s %s" % (
        s.state, s.event, "" if s.value is MISSING else s.value), flush=True))
    machine.on_error(lambda e, m: print("node: rejected %r: %s" % (m, e), flush=True))
    print("node key %s (%s, %d entries, state %s)" % (core.key.hex(), core.durability,
                                                     core.length, machine.state), flush=True)
    endpoint = Endpoint()
    urls = [args.udp or (board.udp_url("0.0.0.0") if board else "udp://0.0.0.0:7000")]
    if args.serial:
        urls.append(args.serial)
    for url in urls:
        link, _ = open_link(url, listen=True)
        await endpoint.attach(link)
    endpoint.serve(core)
    actions: Optional["asyncio.Task[int]"] = None
    if args.actions:
        actions = asyncio.ensure_future(streams.pipe(streams.serial_messages(args.actions),
                                                     machine))
    read = sensor(args.sensor)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # `coremachine act STORE ...` fires on this machine; `coremachine stop STORE` ends the loop
    control = ControlServer(store, machine=machine,
                            on_stop=lambda: loop.call_soon_threadsafe(stop.set)).start()
    try:
        t = 0
        while (args.readings is None or t < args.readings) and not stop.is_set():
            if machine.is_final:
                break
            machine.action("READING", {"t": t, "celsius": read(t)})
            t += 1
            try:
                await asyncio.wait_for(stop.wait(), args.interval)
            except asyncio.TimeoutError:
                pass
        if args.shutdown and not machine.is_final:
            machine.action("SHUTDOWN")
        await asyncio.sleep(args.linger)
        print("node: done, %d entries, state %s" % (core.length, machine.state), flush=True)
    finally:
        if actions is not None:
            actions.cancel()
        await endpoint.close()
        core.close()
        control.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--board", help="a board profile (coremachine_embedded.boards.available())")
    p.add_argument("--store", help="the node's store directory")
    p.add_argument("--udp", help="serve on this UDP address (default from the board, :7000)")
    p.add_argument("--serial", help="also serve on this serial line, serial:///dev/...")
    p.add_argument("--actions", help="apply actions a microcontroller sends on this serial line")
    p.add_argument("--sensor", default="simulated", help="thermal, file:PATH or simulated")
    p.add_argument("--durability", choices=["sync", "batch", "none"])
    p.add_argument("--interval", type=float, default=5.0, help="seconds between readings")
    p.add_argument("--readings", type=int, help="stop after this many (default: run forever)")
    p.add_argument("--shutdown", action="store_true", help="fire SHUTDOWN at the end")
    p.add_argument("--linger", type=float, default=0.0,
                   help="keep serving this many seconds after the last reading")
    args = p.parse_args()
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
