"""The gateway at fleet scale: one ``coremachine gateway`` following 1,000
simulated devices on UDP loopback, each appending one entry a second (the
devices in four helper processes, bench/fleet_worker.py).  Reported: the
gateway's CPU share of one core and its RSS over a steady-state window, and
the delay from each append on a device to the gateway's verified copy
(median, p99); beside it, the same fleet followed by the example firmware
``boards/examples/gateway.py``-style set-up, one Endpoint and socket per
device, the way a fleet was followed before the daemon (CPU share ratio).

The delay is measured without the gateway's help: the helpers log the Unix
time of every append, a probe in the gateway process
(``python -m bench.gateway_bench probe``) logs when each device's verified
length grew (one list append per change), and the two are joined after."""
from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

from bench.common import ROOT, Report, workdir

WORKER = os.path.join(ROOT, "bench", "fleet_worker.py")
MACHINE = os.path.join(ROOT, "bench", "fleet_worker.py") + ":MACHINE"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def run(report: Report, quick: bool) -> None:
    section = "gateway"
    devices, helpers = (200, 2) if quick else (1000, 4)
    warmup, window = (5.0, 10.0) if quick else (10.0, 30.0)
    print("\n== gateway: %d devices, one entry a second each (load average %.1f) ==" % (
        devices, os.getloadavg()[0]), flush=True)
    base = workdir("gateway-")
    try:
        fleet = Fleet(base, devices, helpers)
        try:
            daemon = measure(base, fleet, "daemon", warmup, window)
            example = measure(base, fleet, "per-device", warmup, window)
        finally:
            appends = fleet.stop()
        for result in (daemon, example):
            result["delays"] = delays(appends, result["records"], result["window"])
        d = daemon
        print("    (load average at the end: %.1f; the helpers: %s)" % (
            os.getloadavg()[0], ", ".join("%s %d" % kv for kv in sorted(fleet.counters.items())
                                          if kv[1])))
        c = d["counters"]
        print("    (daemon: %d appends in the window, %d verified copies, %d missing; "
              "%d envelopes in, %d out, %d retries)" % (
                  d["delays"]["appends"], d["delays"]["seen"], d["delays"]["missing"],
                  c.get("rx_envelopes", 0), c.get("tx_envelopes", 0), c.get("retries", 0)))
        report.add(section, "gateway CPU, %d devices x 1 entry/s" % devices, d["cpu"] * 100,
                   "% core", "one Endpoint per device", example["cpu"] * 100, "< 30%",
                   d["cpu"] < 0.30, lower_is_better=True)
        report.add(section, "  gateway RSS", d["rss"] / 2 ** 20, "MiB", "one Endpoint per "
                   "device", example["rss"] / 2 ** 20, "< 150 MiB", d["rss"] < 150 * 2 ** 20,
                   lower_is_better=True)
        report.add(section, "  append -> verified copy, median", d["delays"]["median"] * 1000,
                   "ms", "one Endpoint per device", example["delays"]["median"] * 1000,
                   lower_is_better=True)
        report.add(section, "  append -> verified copy, p99", d["delays"]["p99"] * 1000, "ms",
                   "one Endpoint per device", example["delays"]["p99"] * 1000, "< 1000 ms",
                   d["delays"]["p99"] < 1.0 and d["delays"]["missing"] == 0,
                   lower_is_better=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


class Fleet:
    """The helper processes and the devices they serve."""

    def __init__(self, base: str, total: int, helpers: int) -> None:
        self.base = base
        self.procs: List[subprocess.Popen[bytes]] = []
        share = total // helpers
        firsts = [k * share for k in range(helpers)]
        for first in firsts:
            count = share if first != firsts[-1] else total - first
            self.procs.append(subprocess.Popen([sys.executable, WORKER, base, str(first),
                                                str(count), str(total)]))
        self.devices: List[Dict[str, Any]] = []
        deadline = time.monotonic() + 300
        for first in firsts:
            path = os.path.join(base, "ready-%d.json" % first)
            while not os.path.exists(path):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                    self.stop()
                    raise RuntimeError("the fleet helpers did not start")
                time.sleep(0.1)
            with open(path) as f:
                self.devices += json.load(f)
        self.firsts = firsts

    def stop(self) -> Dict[str, List[float]]:
        """Stop the helpers; each device's append times (the helpers' counters
        go to ``self.counters``)."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        appends: Dict[str, List[float]] = {}
        self.counters: Dict[str, int] = {}
        for p, first in zip(self.procs, getattr(self, "firsts", [])):
            p.wait(timeout=120)
            path = os.path.join(self.base, "appends-%d.json" % first)
            if os.path.exists(path):
                with open(path) as f:
                    got = json.load(f)
                appends.update(got["appends"])
                for key, value in list(got["counters"].items()) + list(got["links"].items()):
                    self.counters[key] = self.counters.get(key, 0) + value
        self.procs = []
        return appends


def measure(base: str, fleet: Fleet, kind: str, warmup: float, window: float) -> Dict[str, Any]:
    """Run a gateway of ``kind`` on the fleet: CPU and RSS over the window
    after ``warmup``, and its probe's records."""
    out = os.path.join(base, "records-%s.json" % kind)
    stores = os.path.join(base, "replicas-" + kind)
    config = os.path.join(base, "gateway-%s.toml" % kind)
    with open(config, "w") as f:
        f.write('[gateway]\nname = "bench"\nstore_dir = "%s"\nmachine = "%s"\n\n' % (
            stores, MACHINE))
        for d in fleet.devices:
            f.write('[[device]]\nname = "%s"\nkey = "%s"\nurl = "udp://127.0.0.1:%d"\n'
                    % (d["name"], d["key"], d["port"]))
    proc = subprocess.Popen([sys.executable, "-m", "bench.gateway_bench", kind, config, out],
                            cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        started = time.time()
        deadline = time.monotonic() + 600
        while not os.path.exists(out + ".ready"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the %s gateway did not follow every device (exit %s)"
                                   % (kind, proc.poll()))
            time.sleep(0.2)
        print("    (%s: every device followed after %.0f s)" % (kind, time.time() - started),
              flush=True)
        time.sleep(warmup)
        cpu0, t0 = cpu_seconds(proc.pid), time.time()
        time.sleep(window)
        cpu1, t1 = cpu_seconds(proc.pid), time.time()
        rss = rss_bytes(proc.pid)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    with open(out) as f:
        probe = json.load(f)
    return {"cpu": (cpu1 - cpu0) / (t1 - t0), "rss": rss, "records": probe["records"],
            "window": (t0, t1), "counters": probe["counters"]}


def cpu_seconds(pid: int) -> float:
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS   # utime + stime


def rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def delays(appends: Dict[str, List[float]], records: List[Tuple[str, int, float]],
           window: Tuple[float, float]) -> Dict[str, Any]:
    """Append -> verified copy, for the appends made in the window: entry i
    of a device is copied when its held length first exceeds i."""
    grew: Dict[str, List[Tuple[float, int]]] = {}
    for name, length, t in records:
        grew.setdefault(name, []).append((t, length))
    out: List[float] = []
    missing = 0
    for name, times in appends.items():
        seen = sorted(grew.get(name, []))
        k = 0
        for index, t in enumerate(times):
            if not window[0] <= t <= window[1] - 2.0:   # the last 2 s may still be in flight
                continue
            while k < len(seen) and seen[k][1] <= index:
                k += 1
            if k == len(seen):
                missing += 1
            else:
                out.append(max(0.0, seen[k][0] - t))
    out.sort()
    return {"appends": len(out) + missing, "seen": len(out), "missing": missing,
            "median": statistics.median(out) if out else float("inf"),
            "p99": out[int(0.99 * (len(out) - 1))] if out else float("inf")}


# --- the probe: a gateway process that logs when each device's length grew -----------

def _probe(kind: str, config: str, out: str) -> None:
    from coremachine_embedded.gateway.config import load
    records: List[Tuple[str, int, float]] = []
    links: Dict[int, Any] = {}      # the pooled links seen (they close before the end)
    waiting = {d.name for d in load(config).devices}

    def record(member: Any) -> None:
        records.append((member.name, member.core.contiguous_length, time.time()))
        if member.link is not None:
            links[id(member.link)] = member.link
        if waiting:
            waiting.discard(member.name)
            if not waiting:   # every device followed live: the steady state can be measured
                with open(out + ".ready", "w") as f:
                    f.write("%f\n" % time.time())

    if kind == "daemon":
        from coremachine_embedded.gateway.service import run
        run(config, log_level="warning", on_start=lambda gateway: gateway.on_change(record))
        totals = [p.counters() for p in links.values()]
    else:
        totals = _per_device_gateway(config, record)
    with open(out, "w") as f:
        json.dump({"records": records, "counters": _sum(totals)}, f)


def _per_device_gateway(config: str, record: Any) -> List[Dict[str, int]]:
    """The fleet followed as boards/examples/gateway.py does it: one Endpoint
    and one UDP socket per device, one live pull each."""
    import asyncio
    from coremachine_embedded import Core
    from coremachine_embedded.gateway.config import load
    from coremachine_embedded.sync import Endpoint, open_link

    cfg = load(config)

    async def main() -> List[Dict[str, int]]:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        endpoints, tasks, cores, unsubscribe = [], [], [], []
        for dev in cfg.devices:
            core = Core(dev.store, key=dev.key, durability="batch")
            cores.append(core)
            unsubscribe.append(core.on_change(lambda change, name=dev.name, core=core:
                                              loop.call_soon(record, _Named(name, core))))
            ep = Endpoint()
            link, addr = open_link(dev.urls[0], listen=False)
            await ep.attach(link)
            endpoints.append(ep)
            tasks.append(loop.create_task(ep.pull(core, link, addr, live=True)))
        await stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        totals = [dict(ep.counters) for ep in endpoints]
        for ep in endpoints:
            await ep.close()
        for stop_recording in unsubscribe:
            stop_recording()
        await asyncio.sleep(0)    # the records already scheduled run before the cores close
        for core in cores:
            core.close()
        return totals
    return asyncio.run(main())


def _sum(counters: List[Dict[str, int]]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    for c in counters:
        for k, v in c.items():
            out[k] = out.get(k, 0) + v
    return out


class _Named:
    def __init__(self, name: str, core: Any) -> None:
        self.name, self.core, self.link = name, core, None


if __name__ == "__main__":
    _probe(sys.argv[1], sys.argv[2], sys.argv[3])
