"""Makes an unpacked wheel self-contained, the way ``auditwheel repair`` does.

Every shared library the extension needs, other than the C library's own
(which the manylinux rules let a wheel take from the system), is copied into
``<package>.libs/`` under a name made unique by its hash (``libsodium.so.23``
becomes ``libsodium-1a2b3c4d.so.23``), with that name as its soname; the
extension's DT_NEEDED entry is renamed to match and its RUNPATH set to
``$ORIGIN/../<package>.libs`` (patchelf).  The unique name is what makes the
loader take the bundled copy even when the system has a libsodium.

The platform tag's glibc floor is the newest ``GLIBC_x.y`` symbol version that
any binary in the wheel needs (``readelf -V``), so pip installs the wheel on
exactly the systems whose glibc has every symbol it uses.
"""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

#: Libraries every glibc system has (PEP 600's manylinux rule): never bundled.
SYSTEM_LIBS = frozenset({
    "libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libutil.so.1",
    "libgcc_s.so.1", "ld-linux-armhf.so.3", "ld-linux-aarch64.so.1", "ld-linux-x86-64.so.2",
})
#: What ``readelf -h`` calls each architecture's machine.
ELF_MACHINES = {"x86_64": "X86-64", "aarch64": "AArch64", "armv7l": "ARM"}


class RepairError(RuntimeError):
    pass


def _readelf(flag: str, path: Path) -> str:
    # readelf reads the ELF files of every architecture, not just the host's.
    return subprocess.run(["readelf", "--wide", flag, str(path)], check=True,
                          capture_output=True, text=True).stdout


def needed(path: Path) -> List[str]:
    """The DT_NEEDED entries (sonames) of an ELF file."""
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf("-d", path))


def glibc_versions(path: Path) -> List[Tuple[int, int]]:
    """The ``GLIBC_x.y`` versions an ELF file needs, from its version-needs section."""
    text = _readelf("-V", path)
    needs = text.split("Version needs section", 1)[1] if "Version needs section" in text else ""
    if "GLIBC_PRIVATE" in needs:
        raise RepairError("%s uses GLIBC_PRIVATE symbols: no glibc promises those" % path.name)
    return sorted({(int(a), int(b)) for a, b in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", needs)})


def check_machine(path: Path, machine: str) -> None:
    """Raises unless ``path`` is an ELF file for ``machine`` (armv7l: hard-float)."""
    header = _readelf("-h", path)
    found = re.search(r"Machine:\s+(.*)", header)
    kind = found.group(1).strip() if found else "?"
    if not kind.endswith(ELF_MACHINES[machine]):
        raise RepairError("%s is built for %s, not %s" % (path.name, kind, machine))
    if machine == "armv7l" and "hard-float" not in header:
        raise RepairError("%s is not built for the hard-float ABI (armhf)" % path.name)


def find_library(cc: str, soname: str) -> Path:
    """Where the compiler ``cc`` (so: its architecture) finds ``soname``."""
    out = subprocess.run([cc, "-print-file-name=" + soname], check=True, capture_output=True,
                         text=True).stdout.strip()
    if os.sep not in out:  # gcc prints the bare name when it finds nothing
        raise RepairError("%s finds no %s to bundle (for this architecture, install its -dev "
                          "package: sh .ci/ensure-deps.sh --wheels)" % (cc, soname))
    return Path(out).resolve()


def _hashed_name(soname: str, data: bytes) -> str:
    stem, _, rest = soname.partition(".so")
    return "%s-%s.so%s" % (stem, hashlib.sha256(data).hexdigest()[:8], rest)


def bundle(tree: Path, extensions: Sequence[Path], cc: str, package: str) -> List[Path]:
    """Copies the libraries ``extensions`` need into ``tree/<package>.libs`` (once
    each) and points the extensions at them; returns the copies."""
    libs = tree / (package + ".libs")
    renamed: Dict[str, str] = {}
    copies: List[Path] = []
    todo = list(extensions)
    while todo:  # the bundled libraries' own needs are bundled too
        for soname in needed(todo.pop()):
            if soname in SYSTEM_LIBS or soname in renamed:
                continue
            source = find_library(cc, soname)
            name = _hashed_name(soname, source.read_bytes())
            libs.mkdir(exist_ok=True)
            copy = libs / name
            shutil.copyfile(source, copy)
            subprocess.run(["patchelf", "--set-soname", name, str(copy)], check=True)
            renamed[soname] = name
            copies.append(copy)
            todo.append(copy)
    for elf in list(extensions) + copies:
        renames = [old for old in needed(elf) if old in renamed]
        # One change a call: patchelf 0.14 mixes up the string table when a
        # --replace-needed and a --set-rpath share one.
        for old in renames:
            subprocess.run(["patchelf", "--replace-needed", old, renamed[old], str(elf)],
                           check=True)
        if elf in extensions:  # (also drops the build machine's own RUNPATH)
            rpath = ["--set-rpath", "$ORIGIN/" + os.path.relpath(libs, elf.parent)] if renames \
                else ["--remove-rpath"]
            subprocess.run(["patchelf"] + rpath + [str(elf)], check=True)
        elif renames:
            subprocess.run(["patchelf", "--set-rpath", "$ORIGIN", str(elf)], check=True)
    return copies


def glibc_floor(binaries: Sequence[Path]) -> Tuple[int, int]:
    """The newest glibc symbol version any of ``binaries`` needs."""
    return max((v for b in binaries for v in glibc_versions(b)), default=(2, 17))


def _record_line(tree: Path, path: Path) -> str:
    data = path.read_bytes()
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return "%s,sha256=%s,%d" % (path.relative_to(tree).as_posix(), digest, len(data))


def write_wheel(tree: Path, out_dir: Path, tag: str) -> Path:
    """Zips ``tree`` (an unpacked wheel) as a wheel tagged ``tag``
    (``cp311-cp311-manylinux_2_33_armv7l``), with WHEEL and RECORD rewritten."""
    (dist_info,) = tree.glob("*.dist-info")
    wheel_file = dist_info / "WHEEL"
    lines = [ln for ln in wheel_file.read_text().splitlines()
             if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    wheel_file.write_text("\n".join(lines + ["Root-Is-Purelib: false", "Tag: " + tag]) + "\n")
    record = dist_info / "RECORD"
    files = sorted((p for p in tree.rglob("*") if p.is_file() and p != record),
                   key=lambda p: (p.parent == dist_info, p.relative_to(tree).as_posix()))
    record.write_text("".join(_record_line(tree, p) + "\n" for p in files)
                      + record.relative_to(tree).as_posix() + ",,\n")
    out = out_dir / ("%s-%s.whl" % (dist_info.name[:-len(".dist-info")], tag))
    out_dir.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in files + [record]:  # RECORD last, dist-info after the package
            info = zipfile.ZipInfo(path.relative_to(tree).as_posix(), (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            executable = path.suffix == ".so" or ".so." in path.name
            info.external_attr = (0o755 if executable else 0o644) << 16
            zf.writestr(info, path.read_bytes())
    return out
