"""A real JavaScript Hypercore peer in a Node process (js/hyper_peer.mjs),
driven line by line; calls can be awaited from a running asyncio loop."""
from __future__ import annotations

import asyncio
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
from typing import Any, Dict, List

from tests.interop import jsenv

PACKAGES = ["hypercore@11", "corestore@7", "coremachine@1.1.0", "hypercore-crypto@3"]


def env() -> str:
    """The npm environment with hypercore, corestore and coremachine."""
    return jsenv.ensure("hyperwire", PACKAGES, legacy_peer_deps=True)


class JSPeer:
    """One Node process; :meth:`call` sends a command and returns the answer."""

    def __init__(self, env_dir: str) -> None:
        dst = jsenv.place_script(env_dir, os.path.join(jsenv.SCRIPTS, "hyper_peer.mjs"))
        # Its stores (RocksDB, ~150 MB each) live here and go with close().
        self.dir = tempfile.mkdtemp(prefix="hyper-peer-")
        self.proc = subprocess.Popen(["node", dst, self.dir], cwd=env_dir, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self._answers: "queue.Queue[Dict[str, Any]]" = queue.Queue()
        self._stderr: List[str] = []
        self._next = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._answers.put(json.loads(line))
        self._answers.put({"id": None, "ok": False, "error": "the node process ended"})

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    def call(self, op: str, timeout: float = 60.0, **args: Any) -> Dict[str, Any]:
        with self._lock:
            self._next += 1
            cid = self._next
            assert self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(dict(args, op=op, id=cid)) + "\n")
            self.proc.stdin.flush()
            while True:
                try:
                    answer = self._answers.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError("node did not answer %s %r in %.0f s\n%s"
                                       % (op, args, timeout, "".join(self._stderr[-40:])))
                if answer["id"] in (cid, None):
                    break
        if not answer["ok"]:
            raise RuntimeError("node %s failed: %s\n%s" % (op, answer["error"],
                                                          "".join(self._stderr[-40:])))
        return answer

    async def acall(self, op: str, timeout: float = 60.0, **args: Any) -> Dict[str, Any]:
        """:meth:`call` without blocking the running loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.call(op, timeout, **args))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)
