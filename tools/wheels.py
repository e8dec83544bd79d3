"""``make wheels``: wheels for x86_64, aarch64 and armv7l (64- and 32-bit
Raspberry Pi OS Bookworm: CPython 3.11, glibc 2.36), built on this machine.

1. ``pip wheel`` builds the wheel for this machine (setup.py, in pip's own
   build environment) from a copy of the source tree, so the checkout is left
   as it was; its pure-Python files, board profiles and metadata are the same
   for every architecture.
2. For each other architecture every extension setup.py declares (``_core``,
   ``_speedups``) is compiled again with that architecture's cross compiler
   (``arm-linux-gnueabihf-gcc``, ...), from the sources, include directories
   and flags setup.py declares, against Debian Bookworm's Python 3.11 headers
   for it (tools/debroot.py) and its libsodium (``libsodium-dev:armhf``, ...),
   and the native extensions are removed.
3. Each wheel is repaired (tools/wheelrepair.py): every binary checked to be
   for its architecture, libsodium bundled, the glibc floor read from the
   binaries' symbol versions, the manylinux tag set.

Usage: ``python3 tools/wheels.py [--out DIR] [ARCH ...]`` (default: dist/wheels,
all three).  docs/wheels.md says how to install them on a Pi.
"""
from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, List, Sequence, Tuple

if __package__ in (None, ""):  # run as a script: tools/ is not on sys.path as a package
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools import debroot, wheelrepair  # noqa: E402
from tools.debroot import ARCHES, PYTHON_VERSION, Arch  # noqa: E402

REPO = debroot.REPO
PACKAGE = "coremachine_embedded"
#: Python's usual flags for an extension (sysconfig's OPT); setup.py adds its own.
OPT = ["-O2", "-fwrapv", "-DNDEBUG", "-fPIC", "-shared", "-Wl,-O1"]


def _build_env() -> "dict[str, str]":
    # The wheels must carry the extension: a build that cannot make it fails
    # (setup.py says why) instead of falling back to the pure-Python backend.
    return dict(os.environ, COREMACHINE_IMPL="c")


def source_copy(work: Path) -> Path:
    """The source tree without what builds and tests leave in it."""
    src = work / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".cache", ".venv", "build", "dist", "node_modules", "*.egg-info", "*.so",
        "_core.c", "_speedups.c", "__pycache__", ".hypothesis", ".pytest_cache", ".mypy_cache"))
    return src


def native_wheel(src: Path, work: Path) -> Path:
    """``pip wheel``: this machine's wheel, as setup.py builds it."""
    out = work / "native"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet",
                    "--disable-pip-version-check", "--wheel-dir", str(out), str(src)],
                   check=True, env=_build_env(), timeout=1800)
    (wheel,) = out.glob("*.whl")
    return wheel


@functools.lru_cache(maxsize=None)
def extension_specs(src: Path) -> Tuple[Any, ...]:
    """setup.py's Extensions (sources after Cython, include dirs, flags, libraries)."""
    import setuptools  # type: ignore[import-untyped]  # noqa: F401  (first: it provides distutils)
    from distutils.core import run_setup
    saved_cwd, saved_env = os.getcwd(), dict(os.environ)
    try:
        os.chdir(src)
        os.environ.update(_build_env())
        dist = run_setup("setup.py", stop_after="init")
    except (ImportError, SystemExit) as e:
        raise wheelrepair.RepairError("reading setup.py's extension with %s: %s (this Python "
                                      "needs setuptools and Cython: make deps)"
                                      % (sys.executable, e)) from None
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if not dist.ext_modules:
        raise wheelrepair.RepairError("setup.py declares no extension to cross-compile")
    return tuple(dist.ext_modules)


def cross_compile(arch: Arch, ext: Any, src: Path, target: Path) -> None:
    """Compiles ``ext`` for ``arch`` into ``target`` with ``<triplet>-gcc``."""
    cc = arch.triplet + "-gcc"
    includes = [str(src / d) for d in ext.include_dirs] + \
        [str(d) for d in debroot.python_headers(arch)]
    macros = ["-D%s=%s" % (k, v) if v is not None else "-D" + k for k, v in ext.define_macros]
    cmd = ([cc] + OPT + list(ext.extra_compile_args) + macros + ["-I" + d for d in includes]
           + [str(src / s) for s in ext.sources] + list(ext.extra_link_args)
           + ["-l" + lib for lib in ext.libraries] + ["-o", str(target)])
    subprocess.run(cmd, check=True, timeout=1800)


def _extensions_in(tree: Path) -> List[Path]:
    return sorted((tree / PACKAGE).glob("*.so"))


def _module_name(extension: Path) -> str:
    """``_core`` for ``_core.cpython-311-x86_64-linux-gnu.so``."""
    return extension.name.split(".", 1)[0]


def make_wheel(native: Path, src: Path, arch: Arch, out_dir: Path, work: Path) -> Path:
    """The repaired wheel for ``arch``, from the native wheel (and ``src``)."""
    tree = work / arch.machine
    shutil.rmtree(tree, ignore_errors=True)
    with zipfile.ZipFile(native) as zf:
        zf.extractall(tree)
    declared = sorted(ext.name.rsplit(".", 1)[-1] for ext in extension_specs(src))
    built = _extensions_in(tree)
    if sorted(map(_module_name, built)) != declared:
        raise wheelrepair.RepairError("%s has the extensions %s, setup.py declares %s: was it "
                                      "built without a compiler or libsodium-dev?"
                                      % (native.name, [p.name for p in built], declared))
    if arch.machine == platform.machine():
        extensions = built
        cc, prefix = os.environ.get("CC", "cc"), ""
        _name, _version, python_tag, abi_tag, _platform = native.name.split("-")
        tag = "%s-%s" % (python_tag, abi_tag)
    else:
        for path in built:  # the native binaries: a foreign wheel must not carry them
            path.unlink()
        suffix = ".cpython-%s-%s.so" % (PYTHON_VERSION.replace(".", ""), arch.triplet)
        extensions = []
        for ext in extension_specs(src):
            extension = tree / (ext.name.replace(".", "/") + suffix)
            cross_compile(arch, ext, src, extension)
            extensions.append(extension)
        cc, prefix = arch.triplet + "-gcc", arch.triplet + "-"
        tag = "cp{0}-cp{0}".format(PYTHON_VERSION.replace(".", ""))
    for extension in extensions:
        subprocess.run([prefix + "strip", "--strip-unneeded", str(extension)], check=True)
        wheelrepair.check_machine(extension, arch.machine)
    libs = wheelrepair.bundle(tree, extensions, cc, PACKAGE)
    floor = wheelrepair.glibc_floor(extensions + libs)
    platform_tag = "manylinux_%d_%d_%s" % (floor + (arch.machine,))
    return wheelrepair.write_wheel(tree, out_dir, "%s-%s" % (tag, platform_tag))


def missing_tools(machines: Sequence[str]) -> List[str]:
    """The programs building ``machines`` needs that are not on PATH."""
    tools = ["patchelf", "readelf", "strip"]
    for machine in machines:
        if machine != platform.machine():
            triplet = ARCHES[machine].triplet
            tools += ["apt-get", "dpkg-deb", triplet + "-gcc", triplet + "-strip"]
    return sorted({t for t in tools if shutil.which(t) is None})


def build(machines: Sequence[str], out_dir: Path) -> List[Path]:
    """Builds the wheels for ``machines`` into ``out_dir``; returns their paths."""
    missing = missing_tools(machines)
    if missing:
        raise wheelrepair.RepairError("missing %s: as root, sh .ci/ensure-deps.sh --wheels"
                                      % ", ".join(missing))
    with tempfile.TemporaryDirectory(prefix="cm-wheels-") as tmp:
        work = Path(tmp)
        src = source_copy(work)
        extension_specs(src)  # first: fails early if this Python cannot read setup.py
        native = native_wheel(src, work)
        wheels = []
        for machine in machines:
            wheel = make_wheel(native, src, ARCHES[machine], out_dir, work)
            print("built %s" % wheel)
            wheels.append(wheel)
        return wheels


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(REPO / "dist" / "wheels"),
                        help="where the wheels go (default: dist/wheels)")
    parser.add_argument("arch", nargs="*", help="some of %s (default: all)" % ", ".join(ARCHES))
    args = parser.parse_args(argv)
    unknown = set(args.arch) - set(ARCHES)
    if unknown:
        parser.error("unknown architecture %s" % ", ".join(sorted(unknown)))
    try:
        build(args.arch or list(ARCHES), Path(args.out))
    except (wheelrepair.RepairError, debroot.DebrootError,
            subprocess.CalledProcessError) as e:
        print("wheels: %s" % e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
