"""The demo behind ``make demo``: a signed log on the embedded defaults."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Optional

from . import Core, KeyPair, backend


def run(directory: Optional[str] = None, quiet: bool = False) -> int:
    say = (lambda *a: None) if quiet else print
    owned = directory is None
    base = tempfile.mkdtemp(prefix="coremachine-demo-") if owned else directory
    assert base is not None
    writer_dir = os.path.join(base, "writer")
    replica_dir = os.path.join(base, "replica")
    try:
        say("coremachine_embedded demo (backend: %s)" % backend)
        kp = KeyPair.generate()
        t0 = time.perf_counter()
        with Core(writer_dir, key_pair=kp) as core:
            say("created %s (manifest mode, durability=sync)" % writer_dir)
            say("  key           %s" % core.key.hex())
            say("  discovery key %s" % core.discovery_key.hex())
            for i in range(20):
                reading = {"sensor": "t0", "seq": i, "celsius": round(20 + i * 0.25, 2)}
                core.append(json.dumps(reading, separators=(",", ":")).encode())
            say("appended 20 readings one by one: each is signed and fsync'ed")
            batch = [b'{"sensor":"t0","seq":%d}' % i for i in range(20, 1000)]
            core.append(batch)
            say("appended %d readings in one batch (one signature)" % len(batch))
            say("  length %d, %d bytes, tree hash %s" % (core.length, core.byte_length,
                                                         core.tree_hash().hex()[:32]))
            length, digest, signature = core.length, core.tree_hash(), core.signature
        say("closed after %.1f ms" % ((time.perf_counter() - t0) * 1000))

        with Core(writer_dir) as core:
            assert core.length == length and core.tree_hash() == digest
            assert core.signature == signature
            checked = core.verify()
            say("reopened: length %d, signature still valid, %d blocks re-hashed and verified"
                % (core.length, checked))
            say("  last block: %s" % core.get(core.length - 1).decode())
            with Core(replica_dir, key=core.key) as replica:
                replica.apply_proof(core.proof(upgrade=(0, core.length), manifest=True))
                for i in range(core.length):
                    replica.apply_proof(core.proof(block=i, nodes=replica.missing_nodes(i)))
                assert replica.tree_hash() == core.tree_hash()
                assert replica.signature == core.signature
                assert replica.get(500) == core.get(500)
                say("replica filled from the writer's proofs only: %d blocks, each verified "
                    "against the signed tree before it was stored" % replica.contiguous_length)
        say("demo ok")
        return 0
    finally:
        if owned:
            shutil.rmtree(base, ignore_errors=True)
