"""Installs the real JavaScript packages (npm) into a cache folder for the
interop tests and benchmarks, and runs Node scripts against them.

``python3 tests/interop/jsenv.py plan`` prints the packages not installed yet;
``... install`` installs them (.ci/ensure-deps.sh --test runs both).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any, Dict, Optional, Sequence, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CACHE = os.environ.get("COREMACHINE_NPM_CACHE", os.path.join(ROOT, ".cache", "npm"))
SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "js")


#: The environments the tests and benchmarks use: name -> (packages, --legacy-peer-deps).
ENVS: Dict[str, Tuple[Sequence[str], bool]] = {
    "hypercore11": (["hypercore@11", "hypercore-crypto@3"], False),
    "coremachine": (["coremachine@1.1.0", "hypercore@11", "hypercore-crypto@3"], True),
}


class NodeUnavailable(RuntimeError):
    pass


def _installed(name: str, packages: Sequence[str]) -> bool:
    stamp = os.path.join(CACHE, name, ".installed")
    if not os.path.exists(stamp):
        return False
    with open(stamp) as f:
        return f.read() == "\n".join(packages)


def ensure(name: str, packages: Optional[Sequence[str]] = None,
           legacy_peer_deps: bool = False) -> str:
    """A directory with ``packages`` (default: those of ``ENVS[name]``) installed
    (once; reused afterwards)."""
    if packages is None:
        packages, legacy_peer_deps = ENVS[name]
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise NodeUnavailable("node and npm are needed (apt-get install nodejs npm)")
    target = os.path.join(CACHE, name)
    stamp = os.path.join(target, ".installed")
    wanted = "\n".join(packages)
    if _installed(name, packages):
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


def place_script(env_dir: str, src: str) -> str:
    """Copy the Node script ``src`` into ``env_dir`` (Node resolves packages
    from the script's folder); returns its path there.  The copy is renamed
    into place, so a process running the script while another test process
    places it again never reads half a file."""
    dst = os.path.join(env_dir, os.path.basename(src))
    tmp = "%s.%d.tmp" % (dst, os.getpid())
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


def run(env_dir: str, script: str, payload: Any, timeout: float = 600) -> Any:
    """Run a Node script (a path, or a name in tests/interop/js/) inside
    ``env_dir`` with JSON on stdin; returns the JSON it prints."""
    src = script if os.path.isabs(script) else os.path.join(SCRIPTS, script)
    dst = place_script(env_dir, src)
    proc = subprocess.run(["node", dst], input=json.dumps(payload), capture_output=True,
                          text=True, cwd=env_dir, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError("node %s failed:\n%s" % (script, proc.stderr[-4000:]))
    return json.loads(proc.stdout)


def main(argv: Sequence[str]) -> int:
    missing = {name: spec for name, spec in ENVS.items() if not _installed(name, spec[0])}
    if argv == ["plan"]:
        print("; ".join("%s/ (%s)" % (name, " ".join(spec[0])) for name, spec in missing.items()))
        return 0
    if argv == ["install"]:
        for name in missing:
            ensure(name)
        return 0
    print("usage: jsenv.py plan|install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
