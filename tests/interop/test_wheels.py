"""``make wheels`` (tools/wheels.py), proved: the x86_64, aarch64 and armv7l
wheels are built here, each installs with pip into a Python of its
architecture and passes tests/interop/wheel_smoke.py (C backend, the bundled
libsodium, create/act/reopen/verify, a UDP pull on 127.0.0.1).

aarch64 and armv7l run under qemu-user, in a Debian Bookworm Python
assembled from .debs (tools/debroot.py, cached in .cache/debroot) that has no
libsodium and no compiler; x86_64 runs in a fresh venv of this Python.  The
smoke test's /proc/self/maps check is what proves the bundled libsodium is the
one loaded.  The wheels'
binaries are also read back: architecture, bundled libraries, RUNPATH, and a
glibc floor in the tag that is exactly what their symbols need.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from tools import debroot
from tools.debroot import ARCHES
from tools.wheelrepair import ELF_MACHINES

ROOT = debroot.REPO
SMOKE = Path(__file__).resolve().parent / "wheel_smoke.py"
FOREIGN = ["aarch64", "armv7l"]
#: The extension modules a wheel must carry: one for each .pyx (setup.py builds them all).
EXTENSIONS = sorted(p.stem for p in (ROOT / "coremachine_embedded").glob("*.pyx"))
TOOLS = ["patchelf", "readelf", "apt-get", "dpkg-deb"] + \
    ["%s-gcc" % ARCHES[m].triplet for m in FOREIGN] + [str(ARCHES[m].qemu) for m in FOREIGN]

pytestmark = [
    pytest.mark.skipif(os.environ.get("COREMACHINE_IMPL") == "python",
                       reason="the wheels carry the C extension: tested once, in the C run"),
    pytest.mark.skipif(platform.machine() != "x86_64",
                       reason="the cross toolchains and qemu-user are set up for an x86_64 host"),
    pytest.mark.skipif(any(shutil.which(t) is None for t in TOOLS),
                       reason="needs %s: sh .ci/ensure-deps.sh --wheels" % ", ".join(TOOLS)),
]


def _tag(wheel: Path) -> Tuple[str, Tuple[int, int]]:
    """(architecture, glibc floor) of a wheel named ...-manylinux_2_33_armv7l.whl."""
    found = re.search(r"-manylinux_(\d+)_(\d+)_(\w+)\.whl$", wheel.name)
    assert found, wheel.name
    return found.group(3), (int(found.group(1)), int(found.group(2)))


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    out = tmp_path_factory.mktemp("wheels")
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "wheels.py"), "--out", str(out)],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stdout + r.stderr
    built = {_tag(w)[0]: w for w in out.glob("*.whl")}
    assert sorted(built) == sorted(ARCHES), built
    return built


@pytest.fixture(scope="module")
def dependencies(wheels: Dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheels of the package's dependencies (pure Python: one set for all)."""
    house = tmp_path_factory.mktemp("dependencies")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
                    "--wheel-dir", str(house), str(wheels["x86_64"])], check=True, timeout=600)
    (house / wheels["x86_64"].name).unlink()
    assert all(w.name.endswith("-none-any.whl") for w in house.glob("*.whl"))
    return house


def _guest_env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PIP_"))}
    env.update(COREMACHINE_IMPL="c", PIP_CONFIG_FILE=os.devnull,
               PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def _smoke_summary(r: "subprocess.CompletedProcess[str]") -> Dict[str, object]:
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[-2] == "wheel smoke ok", r.stdout
    summary: Dict[str, object] = json.loads(lines[-1])
    return summary


def _record_ok(names: List[str], zf: zipfile.ZipFile) -> None:
    (record,) = [n for n in names if n.endswith(".dist-info/RECORD")]
    rows = [line.split(",") for line in zf.read(record).decode().splitlines()]
    assert sorted(r[0] for r in rows) == sorted(names)
    for path, digest, size in rows:
        if path == record:
            continue
        data = zf.read(path)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
        assert digest == "sha256=" + expected.decode() and int(size) == len(data), path


def _readelf(flag: str, elf: Path) -> str:
    return subprocess.run(["readelf", "--wide", flag, str(elf)], capture_output=True, text=True,
                          check=True).stdout


def test_each_wheel_carries_libsodium_and_the_glibc_floor_its_symbols_need(
        wheels: Dict[str, Path], tmp_path: Path) -> None:
    for machine, wheel in wheels.items():
        tree = tmp_path / machine
        with zipfile.ZipFile(wheel) as zf:
            _record_ok(zf.namelist(), zf)
            zf.extractall(tree)
        extensions = sorted((tree / "coremachine_embedded").glob("*.so"))
        # One binary for each .pyx, every one for this wheel's architecture.
        assert [e.name.split(".")[0] for e in extensions] == EXTENSIONS, extensions
        python = debroot.PYTHON_VERSION if machine in FOREIGN else "%d.%d" % sys.version_info[:2]
        suffix = ".cpython-%s-%s.so" % (python.replace(".", ""), ARCHES[machine].triplet)
        assert all(e.name.endswith(suffix) for e in extensions), (suffix, extensions)
        libs = sorted((tree / "coremachine_embedded.libs").iterdir())
        assert [p.name.split("-")[0] for p in libs] == ["libsodium"], libs
        core = _readelf("-d", extensions[EXTENSIONS.index("_core")])
        assert re.findall(r"\(NEEDED\).*\[(.+)\]", core) == [libs[0].name, "libc.so.6"]
        assert "[$ORIGIN/../coremachine_embedded.libs]" in core
        newest = (0, 0)
        for elf in extensions + libs:
            header = _readelf("-h", elf)
            assert re.search(r"Machine:\s+.*%s$" % ELF_MACHINES[machine], header, re.M), header
            assert machine != "armv7l" or "hard-float ABI" in header, header
            needs = set(re.findall(r"\(NEEDED\).*\[(.+)\]", _readelf("-d", elf)))
            assert needs - {libs[0].name} <= {"libc.so.6", "ld-linux-armhf.so.3",
                                              "ld-linux-aarch64.so.1", "ld-linux-x86-64.so.2"}
            # The versions of the undefined symbols (tools/wheelrepair.py reads
            # the version-needs section instead), e.g. fstat64@GLIBC_2.33.
            for major, minor in re.findall(r"@GLIBC_(\d+)\.(\d+)", _readelf("--dyn-syms", elf)):
                newest = max(newest, (int(major), int(minor)))
        assert _tag(wheel)[1] == newest, (wheel.name, newest)
        assert newest <= (2, 36)  # Raspberry Pi OS Bookworm's glibc


def test_x86_64_wheel_in_a_fresh_venv(wheels: Dict[str, Path], dependencies: Path,
                                      tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    env = _guest_env()
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-index", "--find-links",
                    str(dependencies), str(wheels["x86_64"])], check=True, env=env, timeout=600)
    (tmp_path / "work").mkdir()
    summary = _smoke_summary(subprocess.run(
        [python, str(SMOKE), str(tmp_path / "work")], capture_output=True, text=True, env=env,
        timeout=600, cwd=str(tmp_path)))
    assert summary["machine"] == "x86_64"
    assert summary["extensions"] == EXTENSIONS
    cli = subprocess.run([str(venv / "bin" / "coremachine"), "--help"], capture_output=True,
                         text=True, env=env, timeout=120)
    assert cli.returncode == 0 and "serve" in cli.stdout, cli.stderr


@pytest.mark.parametrize("machine", FOREIGN)
def test_foreign_wheel_under_qemu(machine: str, wheels: Dict[str, Path], dependencies: Path,
                                  tmp_path: Path) -> None:
    arch = ARCHES[machine]
    root = debroot.python_userland(arch)
    # Like a Pi without libsodium23, the userland has none.  (qemu's -L falls
    # back to the host's files, and this host has libsodium for armhf/arm64:
    # the proof that the bundled copy is loaded is /proc/self/maps, in the smoke.)
    assert not list(root.rglob("libsodium*"))
    env = _guest_env()

    def guest(args: List[str], timeout: float = 900) -> "subprocess.CompletedProcess[str]":
        return debroot.run_python(arch, root, args, python=venv / "bin" / "python", env=env,
                                  timeout=timeout, cwd=str(tmp_path))

    venv = tmp_path / "venv"
    # As on Raspberry Pi OS: a venv that sees Debian's pip.  No `ensurepip`: the
    # guest cannot start programs of its own architecture (no binfmt_misc).
    r = debroot.run_python(arch, root, ["-m", "venv", "--without-pip", "--system-site-packages",
                                        "--copies", str(venv)], env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    r = guest(["-m", "pip", "install", "--no-index", "--find-links", str(dependencies),
               str(wheels[machine])])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Successfully installed coremachine-embedded" in r.stdout
    (tmp_path / "work").mkdir()
    summary = _smoke_summary(guest([str(SMOKE), str(tmp_path / "work")]))
    assert summary["machine"] == machine
    assert summary["extensions"] == EXTENSIONS
    assert str(summary["python"]).startswith(debroot.PYTHON_VERSION + ".")
    cli = guest(["-m", "coremachine_embedded", "--help"], timeout=300)
    assert cli.returncode == 0 and "serve" in cli.stdout, cli.stderr
    if machine == "armv7l":
        # 32-bit Raspberry Pi OS on a Pi 4 or 5 boots a 64-bit kernel: `uname -m`
        # says aarch64 there, and pip must still take this wheel.
        tag = wheels[machine].name.split("-", 2)[2][:-len(".whl")]
        env["_PYTHON_HOST_PLATFORM"] = "linux-aarch64"  # what sysconfig reports there
        r = guest(["-c", "from pip._vendor.packaging import tags; "
                         "print('\\n'.join(map(str, tags.sys_tags())))"], timeout=300)
        assert r.returncode == 0, r.stderr
        assert tag in r.stdout.split(), (tag, r.stdout[:500])
