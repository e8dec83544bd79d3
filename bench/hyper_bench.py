"""Hypercore's own protocol: catch-up of a 20,000-entry machine log over TCP
loopback between separate processes - JS writer -> JS reader (the real
hypercore 11 on both sides), JS writer -> our reader, our writer -> JS reader -
in interleaved rounds of the same run; CPU and RSS of every side; and the time
for one 1 MiB block."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, List

from bench.common import ROOT, Report, workdir
from bench.sync_bench import build_log
from tests.interop import jsenv

import coremachine_embedded as cm

WORKER = os.path.join(ROOT, "bench", "hyper_worker.py")
JS = os.path.join(ROOT, "bench", "js")
ROUNDS = 3


def script(env: str, name: str) -> str:
    """bench/js/``name`` copied into the npm environment (Node resolves the
    packages from the script's folder)."""
    return jsenv.place_script(env, os.path.join(JS, name))


class Writer:
    """A serving process (JS or ours) that reports its CPU and RSS on request."""

    def __init__(self, cmd: List[str], cwd: str) -> None:
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None
        self.info = json.loads(self.proc.stdout.readline())

    def stats(self) -> Dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())  # type: ignore[no-any-return]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def js_writer(env: str, base: str, core: cm.Core, name: str) -> Writer:
    blocks_file = os.path.join(base, name + "-blocks.json")
    with open(blocks_file, "w") as f:
        json.dump([core.get(i).hex() for i in range(core.length)], f)
    d = os.path.join(base, name)
    os.makedirs(d)
    return Writer(["node", script(env, "hyper_writer.mjs"),
                   json.dumps({"blocks_file": blocks_file, "dir": d})], env)


def js_reader(env: str, base: str, writer: Writer, length: int, tree_hash: str,
              n: int) -> Dict[str, Any]:
    d = os.path.join(base, "js-reader-%d" % n)
    os.makedirs(d)
    out = subprocess.run(["node", script(env, "hyper_reader.mjs"), json.dumps({
        "port": writer.info["port"], "key": writer.info["key"], "length": length,
        "tree_hash": tree_hash, "dir": d})], cwd=env, check=True, capture_output=True,
        text=True, timeout=600).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def our_reader(base: str, writer: Writer, n: int) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, WORKER, "pull", writer.info["key"],
                          str(writer.info["port"]), os.path.join(base, "our-reader-%d" % n)],
                         check=True, capture_output=True, text=True, timeout=600).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def timed(writer: Writer, read: Any) -> Dict[str, Any]:
    """One catch-up, with the writer's CPU seconds spent on it."""
    before = writer.stats()["cpu_seconds"]
    result = dict(read())
    result["writer_cpu"] = writer.stats()["cpu_seconds"] - before
    return result


def compare(base: str, env: str, store: str, length: int, tree_hash: str
            ) -> Dict[str, Dict[str, Any]]:
    """Median run of each direction (rounds interleaved, so a slow patch of
    the shared CPU hits every direction alike), plus each writer's max RSS."""
    core = cm.Core(store)
    key = core.key.hex()
    jsw = js_writer(env, base, core, os.path.basename(store) + "-js")
    core.close()
    ours = Writer([sys.executable, WORKER, "serve", store], ROOT)
    ours.info["key"] = key
    runs: Dict[str, List[Dict[str, Any]]] = {"js_js": [], "js_ours": [], "ours_js": []}
    try:
        for k in range(ROUNDS):
            runs["js_js"].append(timed(jsw, lambda: js_reader(env, base, jsw, length, tree_hash,
                                                              3 * k)))
            runs["js_ours"].append(timed(jsw, lambda: our_reader(base, jsw, k)))
            runs["ours_js"].append(timed(ours, lambda: js_reader(env, base, ours, length,
                                                                 tree_hash, 3 * k + 1)))
        rss = {"js_writer": jsw.stats()["max_rss_kib"], "our_writer": ours.stats()["max_rss_kib"]}
    finally:
        jsw.stop()
        ours.stop()
    out: Dict[str, Dict[str, Any]] = {}
    for name, rs in runs.items():
        for r in rs:
            assert r["ok"] and r["blocks"] == length, (name, r)
            if "tree_hash" in r:
                assert r["tree_hash"] == tree_hash
        out[name] = dict(sorted(rs, key=lambda r: r["seconds"])[len(rs) // 2])
    out["rss"] = rss
    return out


def run(report: Report, quick: bool) -> None:
    section = "hypercore protocol"
    print("\n== Hypercore's protocol over TCP (backend: %s) ==" % cm.backend, flush=True)
    try:
        from tests.interop.jspeer import env as js_env
        env = js_env()
    except Exception as e:  # no node: nothing to compare with
        print("  (not measured: %s)" % e)
        return
    base = workdir("hyper-")
    try:
        entries = 5000 if quick else 20000
        store = os.path.join(base, "log")
        log = build_log(store, entries)
        tree_hash = log.tree_hash().hex()
        log.close()
        r = compare(base, env, store, entries, tree_hash)
        js_rate = entries / r["js_js"]["seconds"]
        to_js = entries / r["ours_js"]["seconds"]
        from_js = entries / r["js_ours"]["seconds"]
        n = "{:,}".format(entries)
        report.add(section, "catch-up of %s entries, our writer -> JS reader" % n, to_js,
                   "blocks/s", "JS -> JS", js_rate, ">= 2x", to_js >= 2 * js_rate)
        report.add(section, "catch-up of %s entries, JS writer -> our reader" % n, from_js,
                   "blocks/s", "JS -> JS", js_rate, ">= 1x", from_js >= js_rate)
        ours_cpu, their_cpu = r["js_ours"]["cpu_seconds"], r["js_ours"]["writer_cpu"]
        report.add(section, "  CPU of our reader (JS writer -> us)", ours_cpu, "s",
                   "the JS writer", their_cpu, "< the JS writer's", ours_cpu < their_cpu,
                   lower_is_better=True)
        report.add(section, "  CPU of our writer (us -> JS reader)", r["ours_js"]["writer_cpu"],
                   "s", "the JS writer, JS -> JS", r["js_js"]["writer_cpu"],
                   lower_is_better=True)
        report.add(section, "  CPU of the JS reader: from us / from JS",
                   r["ours_js"]["cpu_seconds"], "s", "from JS", r["js_js"]["cpu_seconds"],
                   lower_is_better=True)
        # the JS reader's own work per block, whoever serves it (see docs/protocol.md)
        for what, label, unit in (("db_reads", "RocksDB reads", "reads"),
                                  ("socket_writes", "socket writes", "writes")):
            report.add(section, "  JS reader's %s per block: from us" % label,
                       r["ours_js"][what] / entries, unit, "from JS", r["js_js"][what] / entries,
                       lower_is_better=True)
        report.add(section, "  max RSS of our reader", r["js_ours"]["max_rss_kib"] / 1024, "MiB",
                   "the JS reader", r["js_js"]["max_rss_kib"] / 1024, lower_is_better=True)
        report.add(section, "  max RSS of our writer", r["rss"]["our_writer"] / 1024, "MiB",
                   "the JS writer", r["rss"]["js_writer"] / 1024, lower_is_better=True)
        one_mib(report, section, base, env)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def one_mib(report: Report, section: str, base: str, env: str) -> None:
    """Time to replicate a log of one 1 MiB block, each direction."""
    store = os.path.join(base, "mib")
    core = cm.Core(store, key_pair=cm.KeyPair.generate(), durability="none")
    core.append(os.urandom(1 << 20))
    tree_hash = core.tree_hash().hex()
    core.close()
    runs = os.path.join(base, "mib-runs")
    os.makedirs(runs)
    r = compare(runs, env, store, 1, tree_hash)
    js = r["js_js"]["seconds"]
    report.add(section, "one 1 MiB block, our writer -> JS reader", r["ours_js"]["seconds"], "s",
               "JS -> JS", js, lower_is_better=True)
    report.add(section, "one 1 MiB block, JS writer -> our reader", r["js_ours"]["seconds"], "s",
               "JS -> JS", js, lower_is_better=True)
    print("    (medians of %d interleaved rounds; every replica verified)" % ROUNDS)
