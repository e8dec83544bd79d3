"""The demo behind ``make demo``, on the embedded defaults.

A writer node runs a thermostat machine on a signed log (durability ``sync``:
every transition is on disk before ``action`` returns).  Two readers follow
it live and print each transition as their own machine replays it: one over
UDP on 127.0.0.1, one over a serial line (two PTYs joined like a null-modem
cable, paced at 115200 baud).  At the end every log is verified.
"""
from __future__ import annotations

import asyncio
import os
import pty
import select
import shutil
import tempfile
import threading
import time
import tty
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import Core, KeyPair, backend
from .coremachine import Coremachine, Snapshot
from .machine import create_machine
from .sync import Endpoint
from .sync.serial import SerialLink
from .sync.udp import UDPLink


def _record(ctx: Dict[str, Any], reading: Any) -> None:
    ctx["celsius"] = reading["celsius"]
    ctx["readings"] += 1


def _start_heating(ctx: Dict[str, Any], reading: Any) -> None:
    _record(ctx, reading)
    ctx["heating_since"] = reading["t"]


def _stop_heating(ctx: Dict[str, Any], reading: Any) -> None:
    _record(ctx, reading)
    ctx["heating_since"] = None


def too_cold(ctx: Dict[str, Any], reading: Any) -> bool:
    return bool(reading["celsius"] < ctx["target"] - 1)


def warm_enough(ctx: Dict[str, Any], reading: Any) -> bool:
    return bool(reading["celsius"] >= ctx["target"] + 0.5)


#: A thermostat fed with temperature readings (``READING {"t": .., "celsius": ..}``),
#: stopped by ``SHUTDOWN`` from any state.  The example firmware in
#: boards/examples/ runs it too.
THERMOSTAT = {
    "initial": "idle",
    "context": {"celsius": None, "readings": 0, "heating_since": None, "target": 20.0},
    "states": {
        "idle": {"on": {"READING": [
            {"target": "heating", "guard": too_cold, "action": _start_heating},
            {"action": _record},
        ]}},
        "heating": {"on": {"READING": [
            {"target": "idle", "guard": warm_enough, "action": _stop_heating},
            {"action": _record},
        ]}},
        "off": {"final": True},
    },
    "all": {"SHUTDOWN": {"target": "off"}},
}


class NullModem:
    """Two pseudo-terminals joined back to back, like a null-modem cable:
    what one side writes, the other reads."""

    def __init__(self) -> None:
        self._fds: List[int] = []
        self.paths: List[str] = []
        for _ in range(2):
            master, slave = pty.openpty()
            tty.setraw(slave)
            self._fds += [master, slave]
            self.paths.append(os.ttyname(slave))
        self._stop = False
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        a, b = self._fds[0], self._fds[2]
        while not self._stop:
            ready, _, _ = select.select([a, b], [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(b if fd == a else a, data)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        for fd in self._fds:
            os.close(fd)


async def _demo(base: str, say: Callable[..., None]) -> None:
    definition = create_machine(THERMOSTAT)
    writer = Core(os.path.join(base, "node"), key_pair=KeyPair.generate())
    node = Coremachine(writer, definition)
    say("writer node: %s (backend %s)" % (writer.key.hex()[:16] + "...", backend))

    readers: List[Tuple[str, Core, Coremachine]] = []
    for name in ("udp", "serial"):
        core = Core(os.path.join(base, "reader-" + name), key=writer.key, durability="batch")
        machine = Coremachine(core, definition)
        machine.on_change(_printer(name, say))
        readers.append((name, core, machine))

    server = Endpoint()
    udp_server = UDPLink("127.0.0.1", 0)
    await server.attach(udp_server)
    modem = NullModem()
    serial_server = SerialLink(modem.paths[0], 115200)
    await server.attach(serial_server)
    server.serve(writer)

    # Each reader is its own node (an endpoint holds one core per key).
    udp_node, serial_node = Endpoint(), Endpoint()
    udp_client = UDPLink("127.0.0.1", 0)
    await udp_node.attach(udp_client)
    serial_client = SerialLink(modem.paths[1], 115200)
    await serial_node.attach(serial_client)
    follow = [asyncio.ensure_future(udp_node.pull(readers[0][1], udp_client,
                                                  udp_server.address, live=True)),
              asyncio.ensure_future(serial_node.pull(readers[1][1], serial_client, None,
                                                     live=True))]
    say("readers follow over udp://%s:%d and serial %s <-> %s at 115200 baud"
        % (udp_server.address + (modem.paths[0], modem.paths[1])))
    try:
        temps = [21.0, 19.4, 18.6, 18.9, 19.8, 20.3, 20.6, 19.9, 18.7, 18.2, 19.5, 20.7]
        for i, celsius in enumerate(temps):
            snap = node.action("READING", {"t": i, "celsius": celsius})
            say("writer: %-7s <- READING  %.1f C (entry %s, fsync'ed)"
                % (snap.state, celsius, snap.index))
            await asyncio.sleep(0.15)
        node.action("SHUTDOWN")
        say("writer: off     <- SHUTDOWN")
        deadline = time.monotonic() + 20
        while any(core.contiguous_length < writer.length for _, core, _ in readers):
            if time.monotonic() > deadline:
                raise RuntimeError("the readers did not catch up in 20 s")
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)
    finally:
        for task in follow:
            task.cancel()
        await asyncio.gather(*follow, return_exceptions=True)
        await udp_node.close()
        await serial_node.close()
        await server.close()
        modem.close()
    say("verification:")
    for name, core, machine in readers:
        core.flush()
        checked = core.verify()
        same = (core.tree_hash() == writer.tree_hash() and core.signature == writer.signature)
        say("  %-6s replica: %d entries re-hashed, signature valid, identical to the writer: %s;"
            " machine in state %r" % (name, checked, "yes" if same else "NO", machine.state))
        if not same or machine.state != node.state:
            raise RuntimeError("%s replica differs from the writer" % name)
        core.close()
    say("  writer: %d entries, tree hash %s" % (writer.verify(), writer.tree_hash().hex()[:32]))
    writer.close()


def _printer(name: str, say: Callable[..., None]) -> Callable[[Snapshot], None]:
    def show(snap: Snapshot) -> None:
        say("  [%-6s reader] %-7s <- %-8s %s" % (name, snap.state, snap.event or "(sync)",
                                                _fmt(snap.context)))
    return show


def _fmt(context: Dict[str, Any]) -> str:
    return "celsius=%s readings=%s" % (context.get("celsius"), context.get("readings"))


def run(directory: Optional[str] = None, quiet: bool = False) -> int:
    """Run the demo; returns the exit code."""
    say: Callable[..., None] = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    base = directory or tempfile.mkdtemp(prefix="coremachine-demo-")
    t0 = time.monotonic()
    try:
        asyncio.run(_demo(base, say))
    finally:
        if directory is None:
            shutil.rmtree(base, ignore_errors=True)
    say("demo ok in %.1f s" % (time.monotonic() - t0))
    return 0
