"""Installs the real JavaScript packages (npm) into a cache folder for the
interop tests and benchmarks, and runs Node scripts against them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("COREMACHINE_NPM_CACHE", os.path.join(ROOT, ".cache", "npm"))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")


class NodeUnavailable(RuntimeError):
    pass


def ensure(name: str, packages: Sequence[str], legacy_peer_deps: bool = False) -> str:
    """A directory with ``packages`` installed (once; reused afterwards)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise NodeUnavailable("node and npm are needed (apt-get install nodejs npm)")
    target = os.path.join(CACHE, name)
    stamp = os.path.join(target, ".installed")
    wanted = "\n".join(packages)
    if os.path.exists(stamp) and open(stamp).read() == wanted:
        return target
    os.makedirs(target, exist_ok=True)
    with open(os.path.join(target, "package.json"), "w") as f:
        json.dump({"name": "cm-interop-" + name, "private": True, "type": "module"}, f)
    cmd = ["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"]
    if legacy_peer_deps:
        cmd.append("--legacy-peer-deps")
    subprocess.run(cmd + list(packages), cwd=target, check=True, timeout=900)
    with open(stamp, "w") as f:
        f.write(wanted)
    return target


def run(env_dir: str, script: str, payload: Any, timeout: float = 600) -> Any:
    """Run a Node script (a path, or a name in tests/interop/js/) inside
    ``env_dir`` with JSON on stdin; returns the JSON it prints."""
    src = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
    dst = os.path.join(env_dir, os.path.basename(src))
    shutil.copyfile(src, dst)
    proc = subprocess.run(["node", dst], input=json.dumps(payload), capture_output=True,
                          text=True, cwd=env_dir, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("node %s failed:\n%s" % (script, proc.stderr[-4000:]))
    return json.loads(proc.stdout)
