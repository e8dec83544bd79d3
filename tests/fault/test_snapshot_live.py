"""Read-only snapshots of a store that another process is writing.

A writer process appends (single blocks and batches), checkpoints, and closes
and reopens its core in a loop; two reader processes open read-only snapshots
of the same store over and over, read the newest blocks and verify the whole
log.  Every snapshot must be a state the writer committed (lengths only grow,
every block is the one written, the signature verifies), never a torn one;
the writer must never find the store locked.  The writer keeps going until
each reader has taken its snapshots, so the readers really race it.  A replica
fed by proofs is read the same way.  Runs on the selected backend.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNAPSHOTS = 25          # each reader's, while the writer runs
MIN_BLOCKS = 1500       # the writer's, at least
MAX_ROUNDS = 200000     # the writer gives up (and fails) after this many rounds

COMMON = textwrap.dedent("""
    import hashlib, json, os, sys, time
    import coremachine_embedded as cm
    KP = cm.KeyPair.from_seed(bytes(range(32)))

    def content(i):
        return (hashlib.blake2b(b"%d" % i, digest_size=16).digest() * 8)[:20 + i % 100]

    def put(path, value):   # atomic: readers of it never see half
        with open(path + ".tmp", "w") as f:
            f.write(json.dumps(value))
        os.replace(path + ".tmp", path)

    def get(path, default):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return default
""")

WRITER = COMMON + textwrap.dedent("""
    store, ctl, mode, readers, snapshots, min_blocks, max_rounds = sys.argv[1:8]
    readers, snapshots, min_blocks, max_rounds = (int(readers), int(snapshots),
                                                  int(min_blocks), int(max_rounds))
    durability = "sync" if mode == "writer-sync" else "batch"

    def readers_done():
        progress = [get(os.path.join(ctl, "reader-%d" % r), {}) for r in range(readers)]
        for p in progress:
            if "failed" in p:
                sys.exit("a reader failed: " + p["failed"])
        return all(p.get("snapshots", 0) >= snapshots for p in progress)

    if mode == "replica":
        source = cm.Core(os.path.join(ctl, "source"), key_pair=KP)
        core = cm.Core(store, key=source.key, durability="batch", checkpoint_bytes=4096,
                       flush_interval=0.05)
    else:
        core = cm.Core(store, key_pair=KP, durability=durability, checkpoint_bytes=4096,
                       flush_interval=0.05)
    n = 0
    for rounds in range(max_rounds):
        if n >= min_blocks and readers_done():
            break
        batch = 5 if rounds % 7 == 0 else 1
        blocks = [content(n + k) for k in range(batch)]
        if mode == "replica":
            source.append(blocks)
            core.apply_proof(source.proof(upgrade=(core.length, source.length - core.length),
                                          manifest=core.manifest is None))
            while core.contiguous_length < source.length:
                i = core.contiguous_length
                core.apply_proof(source.proof(block=i, nodes=core.missing_nodes(i)))
        else:
            core.append(blocks)
        n += batch
        if rounds % 50 == 49:
            core.checkpoint()
        if rounds % 200 == 199:   # no reader holds the lock: the writer reopens
            core.close()
            core = cm.Core(store, durability=durability if mode != "replica" else "batch",
                           checkpoint_bytes=4096, flush_interval=0.05)
    else:
        sys.exit("the readers never took %d snapshots each" % snapshots)
    core.close()
    put(os.path.join(ctl, "done"), {"length": n})
""")

READER = COMMON + textwrap.dedent("""
    store, ctl, me = sys.argv[1], sys.argv[2], int(sys.argv[3])
    seen = []
    done = None

    def failed(kind, error, tb):   # tell the writer, so that it stops at once
        put(os.path.join(ctl, "reader-%d" % me), {"snapshots": len(seen),
                                                  "failed": "%s: %s" % (kind.__name__, error)})
        sys.__excepthook__(kind, error, tb)

    sys.excepthook = failed
    while True:
        done = get(os.path.join(ctl, "done"), None)
        try:
            snap = cm.Core(store, readonly=True)
        except cm.StoreNotFoundError:
            time.sleep(0.01)   # the writer has not created it yet
            continue
        with snap:
            length, held = snap.length, snap.contiguous_length
            assert not seen or length >= seen[-1], (seen[-1], length)
            assert held <= length
            tail = max(0, held - 40)
            assert snap.get_range(tail, held) == [content(i) for i in range(tail, held)]
            if len(seen) % 5 == 0 or done is not None:
                assert snap.verify() == held
                assert all(snap.get(i) == content(i) for i in range(held))
        seen.append(length)
        put(os.path.join(ctl, "reader-%d" % me), {"snapshots": len(seen)})
        if done is not None:
            break
    assert seen[-1] == done["length"], (seen[-1], done)
    print(json.dumps({"snapshots": len(seen), "lengths": sorted(set(seen))[:5],
                      "distinct": len(set(seen))}))
""")


@pytest.mark.parametrize("mode", ["writer-sync", "writer-batch", "replica"])
def test_readers_snapshot_a_store_while_a_process_writes_it(tmp_path, mode: str) -> None:
    store, ctl = str(tmp_path / "store"), str(tmp_path / "ctl")
    os.makedirs(ctl)
    env = dict(os.environ, PYTHONPATH=ROOT)
    readers = [subprocess.Popen([sys.executable, "-c", READER, store, ctl, str(r)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for r in range(2)]
    writer = subprocess.run([sys.executable, "-c", WRITER, store, ctl, mode, "2",
                             str(SNAPSHOTS), str(MIN_BLOCKS), str(MAX_ROUNDS)], env=env,
                            capture_output=True, text=True, timeout=1200)
    outs = [r.communicate(timeout=600) for r in readers]
    assert writer.returncode == 0, writer.stderr[-3000:]
    for r, (out, err) in zip(readers, outs):
        assert r.returncode == 0, err[-3000:]
        report = json.loads(out.strip().splitlines()[-1])
        assert report["snapshots"] > SNAPSHOTS
        assert report["distinct"] >= 2   # it saw the log grow under it
