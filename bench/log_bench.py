"""The signed log: durable appends, group commit, batched appends, open time,
RSS and bytes on disk, against a raw fdatasync loop and the JS hypercore."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from bench.common import ROOT, Report, interleaved, median_time, rate, workdir

import coremachine_embedded as cm

BLOCK = bytes(range(64))


def raw_fdatasync(directory: str, n: int) -> None:
    """The physical limit: append 64 bytes and fdatasync, n times."""
    fd = os.open(os.path.join(directory, "raw"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for _ in range(n):
            os.write(fd, BLOCK)
            os.fdatasync(fd)
    finally:
        os.close(fd)


def build_store(path: str, blocks: int) -> None:
    with cm.Core(path, key_pair=cm.KeyPair.generate(), durability="none") as core:
        batch = [BLOCK] * 10000
        done = 0
        while done < blocks:
            k = min(10000, blocks - done)
            core.append(batch[:k])
            done += k


RSS_PROBE = textwrap.dedent("""
    import sys, json
    sys.path.insert(0, sys.argv[2])
    from bench.common import rss_kib
    import coremachine_embedded as cm
    before = rss_kib()
    core = cm.Core(sys.argv[1])
    core.get(core.length - 1)
    core.tree_hash(); core.signature
    after = rss_kib()
    print(json.dumps({"before": before, "after": after}))
    core.close()
""")


def run(report: Report, quick: bool) -> None:
    section = "log"
    print("\n== the signed log (backend: %s) ==" % cm.backend, flush=True)
    base = workdir("log-")
    try:
        n_sync = 200 if quick else 1000
        with cm.Core(os.path.join(base, "sync"), key_pair=cm.KeyPair.generate()) as core:
            r = interleaved(n_sync, {
                "raw": lambda: raw_fdatasync(base, n_sync),
                "ours": lambda: [core.append(BLOCK) for _ in range(n_sync)]})
        raw, ours = r["raw"], r["ours"]
        report.add(section, "durable appends/s (sync, 64 B, one call each)", ours, "/s",
                   "raw write+fdatasync loop", raw, ">= 0.8x", ours >= 0.8 * raw)

        n_batch = 20000 if quick else 100000
        with cm.Core(os.path.join(base, "batch"), key_pair=cm.KeyPair.generate(),
                     durability="batch") as core:
            def batch_loop() -> None:
                for _ in range(n_batch):
                    core.append(BLOCK)
                core.flush()
            ours_batch = rate(n_batch, batch_loop)
        report.add(section, "appends/s, durability=batch (64 B, one call each)", ours_batch,
                   "/s", "raw write+fdatasync loop", raw)

        n_blocks = 200000 if quick else 1000000
        with cm.Core(os.path.join(base, "batched"), key_pair=cm.KeyPair.generate()) as core:
            chunk = [BLOCK] * 1000
            batched = rate(n_blocks, lambda: [core.append(chunk) for _ in range(n_blocks // 1000)])
        report.add(section, "blocks/s, append([1000 x 64 B]), durability=sync", batched, "/s",
                   target=">= 150k", ok=batched >= 150000)

        js = js_append_rate(base, quick)
        if js:
            report.add(section, "JS hypercore 11 appends/s (await each, no fsync)", js["single"],
                       "/s")
            report.add(section, "  ours durability=batch vs JS single appends", ours_batch, "/s",
                       "JS hypercore", js["single"])
            report.add(section, "  ours batched vs JS append([1000 blocks])", batched, "/s",
                       "JS hypercore", js["batched"])

        sizes = [1000, 100000] + ([] if quick else [1000000])
        rss = {}
        for size in sizes:
            path = os.path.join(base, "open-%d" % size)
            build_store(path, size)
            def reopen() -> None:
                cm.Core(path).close()
            t = median_time(reopen, 15)
            report.add(section, "open time at %s blocks" % "{:,}".format(size), t * 1000, "ms",
                       target="< 5 ms" if size == 1000000 else None,
                       ok=t < 0.005 if size == 1000000 else None)
            out = subprocess.run([sys.executable, "-c", RSS_PROBE, path, ROOT], check=True,
                                 capture_output=True, text=True).stdout
            probe = json.loads(out)
            rss[size] = probe["after"]
            report.add(section, "RSS after open + read at %s blocks" % "{:,}".format(size),
                       probe["after"] / 1024, "MiB")
            files = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
            if size == sizes[-1]:
                over = (files - size * len(BLOCK)) / size
                report.add(section, "bytes on disk per 64 B block beyond the payload "
                           "(%s blocks)" % "{:,}".format(size), over, "B",
                           target="<= 90", ok=over <= 90)
            shutil.rmtree(path)
        growth = (rss[sizes[-1]] - rss[sizes[0]]) / 1024
        report.add(section, "RSS growth %s -> %s blocks" % ("{:,}".format(sizes[0]),
                                                            "{:,}".format(sizes[-1])),
                   growth, "MiB", target="< 2 MB", ok=growth < 2)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def js_append_rate(base: str, quick: bool) -> dict:
    try:
        from tests.interop import jsenv
        env = jsenv.ensure("hypercore11")
        return jsenv.run(env, os.path.join(ROOT, "bench", "js", "hypercore_append.mjs"),
                         {"count": 2000 if quick else 20000, "size": 64, "batch": 1000,
                          "dir": base})
    except Exception as e:  # no node: say so, measure the rest
        print("  (JS hypercore not measured: %s)" % e)
        return {}
