"""Sync: catch-up of a 20,000-entry machine log over UDP loopback against the JS
hypercore's in-process replication of the same log, the same under 20% loss,
through a local MQTT broker (bench/mqtt_bench.py), and goodput over a serial
line paced at 115200 baud."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List

from bench.common import ROOT, Report, workdir

import coremachine_embedded as cm
from coremachine_embedded import Coremachine

WORKER = os.path.join(ROOT, "bench", "sync_worker.py")
COUNTED = ("retries", "timeouts", "duplicates", "dropped_invalid_proof", "blocks")


def build_log(path: str, entries: int, payload: int = 0) -> cm.Core:
    """A counter machine's log (each entry ~80 bytes of JSON), or with
    ``payload`` > 0 entries carrying that many bytes of text."""
    core = cm.Core(path, key_pair=cm.KeyPair.generate(), durability="none")
    machine = Coremachine(core, {
        "initial": "counting", "context": {"n": 0, "note": ""},
        "states": {"counting": {"on": {"TICK": {"action": _tick}}}}})
    for i in range(entries):
        machine.action("TICK", "x" * payload if payload else i)
    core.flush()
    return core


def _tick(ctx: Dict[str, Any], value: Any) -> None:
    ctx["n"] += 1
    if isinstance(value, str):
        ctx["note"] = value


class Server:
    """A serving process (`bench/sync_worker.py serve`)."""

    def __init__(self, store: str, url: str, base: str) -> None:
        port_file = os.path.join(base, "port-%d" % time.monotonic_ns())
        self.proc = subprocess.Popen([sys.executable, WORKER, "serve", store, url, port_file])
        deadline = time.monotonic() + 20
        while not os.path.exists(port_file):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the serving process did not start")
            time.sleep(0.02)
        with open(port_file) as f:
            self.port = int(f.read())

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


def pull(stores: List[str], key: bytes, url: str) -> List[Dict[str, Any]]:
    """Pulls into each of ``stores`` in turn, in one process; their reports."""
    out = subprocess.run([sys.executable, WORKER, "pull", key.hex(), url] + stores, check=True,
                         stdout=subprocess.PIPE, text=True, timeout=600).stdout
    return [json.loads(line) for line in out.strip().splitlines()]


def js_replication(base: str, core: cm.Core) -> Dict[str, Any]:
    from tests.interop import jsenv
    env = jsenv.ensure("hypercore11")
    blocks_file = os.path.join(base, "blocks.json")
    with open(blocks_file, "w") as f:
        json.dump([core.get(i).hex() for i in range(core.length)], f)
    d = os.path.join(base, "js")
    os.makedirs(d)
    out = jsenv.run(env, os.path.join(ROOT, "bench", "js", "hypercore_replicate.mjs"),
                    {"blocks_file": blocks_file, "dir": d})
    runs = out["runs"]
    assert all(r["ok"] and r["blocks"] == core.length for r in runs), runs
    return {"seconds": statistics.median(r["seconds"] for r in runs)}


def run(report: Report, quick: bool) -> None:
    section = "sync"
    print("\n== sync (backend: %s) ==" % cm.backend, flush=True)
    base = workdir("sync-")
    try:
        entries = 5000 if quick else 20000
        writer = build_log(os.path.join(base, "writer"), entries)
        key, digest = writer.key, writer.tree_hash().hex()
        try:
            js = js_replication(base, writer)
        except Exception as e:  # no node: say so, measure the rest
            print("  (JS replication not measured: %s)" % e)
            js = {}
        writer.close()
        server = Server(os.path.join(base, "writer"), "udp://127.0.0.1:0", base)
        try:
            lossless = median_rate(pull([os.path.join(base, "reader%d" % k) for k in range(3)],
                                        key, "udp://127.0.0.1:%d" % server.port), entries, digest)
            report.add(section, "catch-up of %s entries over UDP loopback" % "{:,}".format(
                entries), lossless, "blocks/s", "JS hypercore in-process replication",
                entries / js["seconds"] if js else None, ">= 10x",
                bool(js) and lossless >= 10 * entries / js["seconds"])
            # Loss is judged through the same relay process with and without
            # loss, so the relay's own cost is not counted against the protocol.
            relayed = proxied_rate(base, key, digest, entries, server.port, 0.0)
            lossy = proxied_rate(base, key, digest, entries, server.port, 0.20)
            if relayed is not None and lossy is not None:
                report.add(section, "  through a UDP relay, no loss", relayed, "blocks/s")
                report.add(section, "  through the relay, 20% loss", lossy, "blocks/s",
                           "the relay without loss", relayed, ">= 0.5x", lossy >= 0.5 * relayed)
        finally:
            server.stop()
        from bench import mqtt_bench
        mqtt_bench.run(report, section, base, key, digest, entries, lossless, quick)
        serial_goodput(report, section, base, quick)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def proxied_rate(base: str, key: bytes, digest: str, entries: int, port: int,
                 loss: float) -> Any:
    """Catch-up rate through tests/fault/udp_proxy.py dropping ``loss`` of the
    datagrams each way (median of 3 pulls in one process, through one relay)."""
    try:
        from tests.fault.udp_proxy import UDPProxy
    except ImportError as e:
        print("  (relayed runs not measured: %s)" % e)
        return None

    async def main() -> List[Dict[str, Any]]:
        proxy = UDPProxy(("127.0.0.1", port), loss=loss, seed=7)
        await proxy.start()
        try:
            stores = [os.path.join(base, "relayed-%g-%d" % (loss, k)) for k in range(3)]
            return await asyncio.get_running_loop().run_in_executor(
                None, pull, stores, key, "udp://127.0.0.1:%d" % proxy.address[1])
        finally:
            await proxy.close()
    return median_rate(asyncio.run(main()), entries, digest)


def median_rate(reports: List[Dict[str, Any]], entries: int, digest: str) -> float:
    """Blocks per second of the median pull; every pull must have verified."""
    for r in reports:
        assert r["verified"] and r["tree_hash"] == digest and r["blocks"] == entries, r
    return float(statistics.median(entries / r["seconds"] for r in reports))


# issue 10's noisy line: 1 byte in 2,000 flipped, 1 in 5,000 dropped, 1 in 5,000 inserted
NOISE = {"flip": 1 / 2000, "drop": 1 / 5000, "insert": 1 / 5000}


def serial_goodput(report: Report, section: str, base: str, quick: bool) -> None:
    """Payload bytes delivered per second over a PTY null-modem paced at
    115200 baud, as a fraction of the line rate (11,520 bytes/s); the same
    ~560-byte entries also through tests/fault/serial_line.py's relay with
    issue 10's noise (targets: >= 85% clean, >= 35% noisy)."""
    from coremachine_embedded.demo import NullModem
    from tests.fault.serial_line import NoisyLine, have_socat
    line_rate = 115200 / 10
    cases = [("machine entries (~80 B)", 150 if quick else 600, 0, False),
             ("1 KiB entries", 20 if quick else 80, 1000, False),
             ("~560 B entries", 100 if quick else 400, 244, False)]
    if have_socat():
        cases.append(("~560 B entries, noisy line", 100 if quick else 400, 244, True))
    else:
        print("  (noisy serial line not measured: socat is not installed)")
    for label, entries, payload, noisy in cases:
        name = "serial-%d-%d" % (payload, noisy)
        writer = build_log(os.path.join(base, name + "-w"), entries, payload)
        key, size = writer.key, writer.byte_length
        writer.close()
        modem: Any = NoisyLine(os.path.join(base, name + "-line"), seed=10, **NOISE).start() \
            if noisy else NullModem()
        paths = (modem.a, modem.b) if noisy else modem.paths
        server = Server(os.path.join(base, name + "-w"),
                        "serial://%s?baud=115200" % paths[0], base)
        try:
            r = pull([os.path.join(base, name + "-r")], key,
                     "serial://%s?baud=115200" % paths[1])[0]
        finally:
            server.stop()
            modem.close()
        assert r["verified"]
        link = r["link"]
        print("    (%s: %.1f s, %s; link: %s)" % (label, r["seconds"], ", ".join(
            "%s %d" % kv for kv in sorted(r["counters"].items()) if kv[0] in COUNTED),
            ", ".join("%s %d" % (k, link[k]) for k in (
                "bad_crc", "bad_cobs", "reports_tx", "fec_rx", "fec_recovered") if k in link)))
        goodput = size / r["seconds"]
        used = link["bytes_rx"] / r["seconds"]
        target = 0.35 if noisy else 0.85
        report.add(section, "serial 115200 goodput, %s" % label, goodput / line_rate * 100, "%",
                   target=">= %d%%" % (target * 100), ok=goodput >= target * line_rate)
        report.add(section, "  line busy with sync traffic", used / line_rate * 100, "%")
