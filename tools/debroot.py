"""Debian Bookworm file trees for a foreign architecture, assembled from .debs.

apt resolves the packages' dependencies as on an empty system (its own empty
status file), downloads them into a cache, and ``dpkg-deb -x`` unpacks them
into a folder: no root, no chroot, no binfmt_misc.  Two uses:

* :func:`python_headers`: the target's Python headers (libpython3.11-dev),
  for cross-compiling the extension;
* :func:`python_userland`: a Python 3.11 of that architecture with its
  libraries and pip (as Raspberry Pi OS ships them), run under qemu-user as
  ``qemu-arm -L ROOT ROOT/usr/bin/python3.11`` (:func:`run_python`).

apt needs the architecture in dpkg's list and its package lists
(``sh .ci/ensure-deps.sh --cross`` adds both).  Everything lives under
``.cache/debroot`` and is reused while the resolved package set is unchanged.
"""
from __future__ import annotations

import fcntl
import getpass
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache" / "debroot"
#: The Python of Raspberry Pi OS Bookworm (and Debian 12).
PYTHON_VERSION = "3.11"


@dataclass(frozen=True)
class Arch:
    machine: str        # uname -m, and the wheel tag's architecture
    deb: str            # Debian's name
    triplet: str        # GNU triplet: cross tools are <triplet>-gcc, ...
    qemu: Optional[str]  # the qemu-user binary that runs it on x86_64


ARCHES: Dict[str, Arch] = {a.machine: a for a in (
    Arch("x86_64", "amd64", "x86_64-linux-gnu", None),
    Arch("aarch64", "arm64", "aarch64-linux-gnu", "qemu-aarch64"),
    Arch("armv7l", "armhf", "arm-linux-gnueabihf", "qemu-arm"),
)}


class DebrootError(RuntimeError):
    pass


def _apt(arch: Arch, *args: str, debs: Path, cwd: Optional[Path] = None) -> str:
    """apt-get for ``arch`` alone, on an empty status, downloading into ``debs``."""
    (debs / "partial").mkdir(parents=True, exist_ok=True)
    status = CACHE / "empty-status"
    status.touch()
    cmd = ["apt-get", "-q", "-y", "--no-install-recommends",
           "-o", "Debug::NoLocking=1",            # never waits for (or blocks) the system's apt
           "-o", "Dir::State::status=%s" % status,
           "-o", "Dir::Cache::archives=%s" % debs,
           "-o", "Dir::Cache::pkgcache=", "-o", "Dir::Cache::srcpkgcache=",
           "-o", "APT::Architecture=%s" % arch.deb, "-o", "APT::Architectures::=%s" % arch.deb,
           "-o", "APT::Sandbox::User=%s" % getpass.getuser()] + list(args)
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=cwd)
    except FileNotFoundError:
        raise DebrootError("apt-get is needed (a Debian or Ubuntu machine)") from None
    if r.returncode != 0:
        raise DebrootError("%s failed: %s\n(the %s architecture needs to be known to apt: "
                           "as root, sh .ci/ensure-deps.sh --cross)"
                           % (" ".join(cmd[:1] + list(args)), r.stderr.strip()[-2000:], arch.deb))
    return r.stdout


def fetch(arch: Arch, packages: Sequence[str], with_dependencies: bool = True) -> List[Path]:
    """The .debs of ``packages`` (and their dependencies), downloaded once."""
    command = "install" if with_dependencies else "download"
    # apt lists only what is not downloaded yet: resolve against an empty folder.
    uris = _apt(arch, "--print-uris", command, *packages, debs=CACHE / "resolve")
    names = re.findall(r"^'[^']+' (\S+\.deb) ", uris, flags=re.M)
    if not names:
        raise DebrootError("apt resolved nothing for %s:%s" % (" ".join(packages), arch.deb))
    folder = CACHE / "debs" / arch.deb
    debs = [folder / name for name in names]
    if not all(d.exists() for d in debs):
        if with_dependencies:
            _apt(arch, "--download-only", "install", *packages, debs=folder)
        else:  # `apt-get download` writes into the current directory
            _apt(arch, "download", *packages, debs=folder, cwd=folder)
    missing = [d.name for d in debs if not d.exists()]
    if missing:
        raise DebrootError("apt did not download %s" % ", ".join(missing))
    return sorted(debs)


class _Locked:
    """An exclusive lock on ``path`` (two runs may download or unpack at once)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "w")

    def __enter__(self) -> None:
        fcntl.flock(self._f, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._f, fcntl.LOCK_UN)
        self._f.close()


def assemble(name: str, arch: Arch, packages: Sequence[str],
             with_dependencies: bool = True) -> Path:
    """``.cache/debroot/<name>-<deb arch>``: ``packages`` (with their
    dependencies) unpacked.  Made again when apt resolves another set of .debs."""
    root = CACHE / ("%s-%s" % (name, arch.deb))
    stamp = root / ".debroot-manifest"
    with _Locked(CACHE / (arch.deb + ".lock")):
        debs = fetch(arch, packages, with_dependencies)
        manifest = "\n".join(d.name for d in debs) + "\n"
        if stamp.exists() and stamp.read_text() == manifest:
            return root
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        for deb in debs:
            subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        stamp.write_text(manifest)
    return root


def python_headers(arch: Arch) -> List[Path]:
    """Include directories with the target's ``Python.h`` and ``pyconfig.h``."""
    # Only this package: its dependencies' headers (libc6-dev, ...) would shadow
    # the cross compiler's own.
    root = assemble("headers", arch, ["libpython%s-dev" % PYTHON_VERSION],
                    with_dependencies=False)
    include = root / "usr" / "include"
    if not (include / ("python" + PYTHON_VERSION) / "Python.h").exists():
        raise DebrootError("no Python.h in %s" % include)
    # Debian's python3.11/pyconfig.h includes <TRIPLET/python3.11/pyconfig.h>.
    return [include / ("python" + PYTHON_VERSION), include]


def python_userland(arch: Arch) -> Path:
    """A Python of ``arch`` with Debian's pip (as Raspberry Pi OS has them); never
    libsodium.  Unpacked .debs come without .pyc files: the guest writes them
    into the tree on first import (unless PYTHONDONTWRITEBYTECODE is set)."""
    return assemble("python", arch, ["python%s" % PYTHON_VERSION, "python3-pip"])


def interpreter(root: Path) -> Path:
    return root / "usr" / "bin" / ("python" + PYTHON_VERSION)


def run_python(arch: Arch, root: Path, args: Sequence[str], *,
               python: Optional[Path] = None, env: Optional[Mapping[str, str]] = None,
               timeout: float = 600, cwd: Optional[str] = None
               ) -> "subprocess.CompletedProcess[str]":
    """Runs ``python args`` (default: the userland's interpreter) under qemu-user.

    ``-L root`` makes the guest's loader and absolute paths look in ``root``
    first; a path missing there falls back to the host's file (so the host's
    own armhf/arm64 libraries stay reachable by their usual names).  The
    guest cannot start other programs (that would need binfmt_misc), so
    everything it does happens in this one process.
    """
    if arch.qemu is None:
        raise DebrootError("%s runs natively" % arch.machine)
    exe = str(python or interpreter(root))
    return subprocess.run([arch.qemu, "-L", str(root), exe] + list(args), capture_output=True,
                          text=True, timeout=timeout, env=dict(env or os.environ), cwd=cwd)


def main(argv: Sequence[str]) -> int:
    """``python3 tools/debroot.py ARCH``: assemble the Python userland, print its path."""
    if len(argv) != 1 or argv[0] not in ARCHES or ARCHES[argv[0]].qemu is None:
        print("usage: python3 tools/debroot.py armv7l|aarch64", file=sys.stderr)
        return 2
    print(python_userland(ARCHES[argv[0]]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
