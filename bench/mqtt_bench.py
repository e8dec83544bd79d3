"""Sync through a local Mosquitto broker (started here, as the tests start
theirs): catch-up of the same log as the UDP rows, in blocks/s beside UDP
direct; MQTT messages per block; and the live delay from an append on the
writer to the replica's verified copy (median and p99), MQTT beside UDP.
Writer and replicas are separate processes (bench/sync_worker.py)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

from bench.common import Report

LIVE_INTERVAL = 0.02   # seconds between the writer's appends


def run(report: Report, section: str, base: str, key: bytes, digest: str, entries: int,
        udp_rate: float, quick: bool) -> None:
    from bench.sync_bench import Server, median_rate, pull
    try:
        from tests.mqtt_broker import Broker
        from coremachine_embedded.sync.mqtt import _paho
        _paho()
        broker = Broker()
    except Exception as e:  # no mosquitto or no paho: say so, measure the rest
        print("  (MQTT not measured: %s)" % e)
        return
    try:
        url = broker.url("bench")
        server = Server(os.path.join(base, "writer"), url, base)
        try:
            reports = pull([os.path.join(base, "mqtt-reader%d" % k) for k in range(3)], key, url)
        finally:
            server.stop()
        rate = median_rate(reports, entries, digest)
        report.add(section, "  through the local mosquitto (MQTT 5, QoS 1)", rate, "blocks/s",
                   "UDP direct", udp_rate)
        per_block = statistics.median((r["link"]["published"] + r["link"]["received"]) / entries
                                      for r in reports)
        report.add(section, "  MQTT messages per block (both ways)", per_block, "msgs",
                   lower_is_better=True)
        count = 100 if quick else 400
        udp = live_delay(base, "udp", "udp://127.0.0.1:0", count)
        mqtt = live_delay(base, "mqtt", url, count)
        for i, what in enumerate(("median", "p99")):
            report.add(section, "live delay append -> verified copy, MQTT, %s" % what,
                       mqtt[i] * 1000, "ms", "UDP direct", udp[i] * 1000, lower_is_better=True)
    finally:
        broker.close()


def live_delay(base: str, label: str, url: str, count: int) -> Tuple[float, float]:
    """(median, p99) seconds from append to the replica's verified copy, for
    ``count`` appends ``LIVE_INTERVAL`` apart, writer and replica in two processes."""
    from bench.sync_bench import WORKER, build_log
    store = os.path.join(base, "live-writer-" + label)
    core = build_log(store, 10)
    key = core.key.hex()
    core.close()
    port_file = os.path.join(base, "live-port-" + label)
    writer = subprocess.Popen([sys.executable, WORKER, "live-serve", store, url, port_file,
                               str(count), str(LIVE_INTERVAL)])
    try:
        port = int(_wait_for(port_file, writer))
        client_url = "udp://127.0.0.1:%d" % port if url.startswith("udp:") else url
        ready, out = port_file + ".ready", port_file + ".out"
        reader = subprocess.Popen([sys.executable, WORKER, "live-pull", key, client_url,
                                   os.path.join(base, "live-reader-" + label), str(count),
                                   ready, out])
        try:
            _wait_for(ready, reader)
            open(port_file + ".go", "w").close()
            reader.wait(timeout=60 + count * LIVE_INTERVAL * 4)
        finally:
            reader.kill()
            reader.wait()
        result: Dict[str, Any] = json.loads(_wait_for(out, None))
        appended: List[float] = json.loads(_wait_for(port_file + ".times", writer))
    finally:
        writer.kill()
        writer.wait()
    delays = sorted(v - t for t, v in zip(appended, result["verified"]))
    counters = result["counters"]
    print("    (live %s: %d appends, %d applied from live broadcasts, %d retries)"
          % (label, len(delays), counters.get("broadcasts_applied", 0),
             counters.get("retries", 0)))
    return statistics.median(delays), delays[int(0.99 * (len(delays) - 1))]


def _wait_for(path: str, proc: Any, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError("a benchmark process did not write %s" % path)
        time.sleep(0.01)
    with open(path) as f:
        return f.read()
