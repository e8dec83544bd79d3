"""Installing the package as a user would, into fresh virtual environments:

- `python -m build` makes an sdist and a wheel; the wheel gives a working C
  backend, `coremachine demo` (serial links: pyserial is a dependency) and
  `python -m coremachine_embedded`;
- the sdist with no C compiler, or (in a mount namespace that hides them) no
  libsodium headers, installs the pure-Python backend with one line saying why,
  and the import warning repeats the reason;
- libsodium missing at run time: the warning names the real error, and the
  pure backend fails with MissingDependencyError, not deep in pysodium;
- on Python < 3.11, tomli comes with the package and board profiles load.

Each venv costs seconds, so the builds happen once per module and only in the
C run (the Python run would build the same things again)."""
from __future__ import annotations

import glob
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Dict, List

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COREMACHINE_IMPL")}
ONLY_IN_C_RUN = pytest.mark.skipif(os.environ.get("COREMACHINE_IMPL") == "python",
                                   reason="builds and installs the package: once, in the C run")
# Where the dynamic loader finds libsodium (as the extension and pysodium load it).
LIBSODIUM_PATH = ("import ctypes, ctypes.util\n"
                  "ctypes.CDLL(ctypes.util.find_library('sodium'))\n"
                  "print([ln.split()[-1] for ln in open('/proc/self/maps') if 'libsodium' in ln][0])")
FALLBACK_LINE = "coremachine_embedded: installing the pure-Python backend without the C extension"

SMOKE = textwrap.dedent("""
    import os, sys, tempfile
    import coremachine_embedded as cm
    from coremachine_embedded import boards, graph
    assert cm.backend == sys.argv[1], cm.backend
    assert "site-packages" in cm.__file__, cm.__file__
    d = tempfile.mkdtemp()
    core = cm.Core(os.path.join(d, "s"), key_pair=cm.KeyPair.from_seed(bytes(32)))
    m = cm.Coremachine(core, {"initial": "a", "context": {"n": 0},
                              "states": {"a": {"on": {"GO": {"target": "b"}}}, "b": {}}})
    m.action("GO")
    assert core.verify() == 1 and m.state == "b"
    assert set(boards.available()) >= {"rpi-zero-2w", "rpi-3b-plus", "rpi-4", "rpi-5",
                                       "generic-linux"}
    assert boards.load("rpi-zero-2w").serial.default_baud > 0
    assert "stateDiagram" in graph.to_mermaid(m.definition)
    core.close()
    print("smoke ok")
""")


def run(cmd: List[str], env: Dict[str, str] = ENV, timeout: float = 900,
        **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                          **kw)  # type: ignore[call-overload]


def make_venv(path: str, python: str = sys.executable) -> str:
    subprocess.run([python, "-m", "venv", path], check=True, timeout=300)
    return os.path.join(path, "bin", "python")


def pip_install(py: str, *args: str, env: Dict[str, str] = ENV,
                wrap: List[str] = []) -> subprocess.CompletedProcess:
    proc = run(wrap + [py, "-m", "pip", "install", *args], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def copy_of(path: str, tmp_path: pathlib.Path) -> str:
    """``path`` under a new name: pip caches the wheel it builds from an sdist by
    the sdist's location, and each install here must build its own."""
    target = tmp_path / ("copy-%d" % len(list(tmp_path.glob("copy-*"))))
    target.mkdir()
    return shutil.copy(path, str(target))


def smoke(py: str, backend: str, cwd: str) -> subprocess.CompletedProcess:
    proc = run([py, "-c", SMOKE, backend], cwd=cwd, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "smoke ok" in proc.stdout
    return proc


def hiding(paths: List[str]) -> List[str]:
    """A command prefix that runs its command in a private mount namespace where
    ``paths`` do not exist (overlayfs whiteouts), or skips when that is not
    possible (needs root and unshare)."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("hiding system files needs root and unshare(1)")
    mounts = []
    for directory in sorted({os.path.dirname(os.path.realpath(p)) for p in paths}):
        white = os.path.join(os.environ.get("TMPDIR", "/tmp"),
                             "cm-whiteout-%d%s" % (os.getpid(), directory.replace("/", "-")))
        os.makedirs(white, exist_ok=True)
        for p in paths:
            if os.path.dirname(os.path.realpath(p)) == directory:
                name = os.path.join(white, os.path.basename(p))
                if not os.path.exists(name):
                    os.mknod(name, 0o600 | 0o020000, os.makedev(0, 0))  # a whiteout
        mounts.append("mount -t overlay overlay -o lowerdir=%s:%s %s"
                      % (white, directory, directory))
    prefix = ["unshare", "-m", "sh", "-c", " && ".join(mounts) + ' && exec "$@"', "hide"]
    probe = run(prefix + ["true"], timeout=60)
    if probe.returncode != 0:
        pytest.skip("cannot make a mount namespace here: %s" % probe.stderr.strip())
    return prefix


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, str]:
    pytest.importorskip("build.__main__", reason="the 'build' package is not installed")
    out = tmp_path_factory.mktemp("dist")
    proc = run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out), ROOT])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sdists = glob.glob(str(out / "*.tar.gz"))
    wheels = glob.glob(str(out / "*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1
    return {"sdist": sdists[0], "wheel": wheels[0]}


@ONLY_IN_C_RUN
def test_wheel_in_a_fresh_venv_runs_the_demo_and_the_command(dist, tmp_path) -> None:
    py = make_venv(str(tmp_path / "venv"))
    pip_install(py, dist["wheel"])
    smoke(py, "c", str(tmp_path))
    demo = run([str(tmp_path / "venv" / "bin" / "coremachine"), "demo"], cwd=str(tmp_path),
               timeout=120)
    assert demo.returncode == 0, demo.stderr
    assert "serial replica: 13 entries re-hashed" in demo.stdout and "demo ok" in demo.stdout
    version = run([py, "-m", "coremachine_embedded", "--version"], timeout=60)
    assert version.returncode == 0
    assert version.stdout.startswith("coremachine 0.1.0 (c backend, Python ")


@ONLY_IN_C_RUN
def test_sdist_without_a_compiler_or_libsodium_headers_installs_the_pure_backend(
        dist, tmp_path) -> None:
    py = make_venv(str(tmp_path / "venv"))
    # No C compiler: CC names one that does not exist.
    proc = pip_install(py, "-v", copy_of(dist["sdist"], tmp_path),
                       env=dict(ENV, CC=str(tmp_path / "no-cc")))
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if FALLBACK_LINE in ln]
    assert len(lines) == 1, proc.stdout[-3000:]
    assert "no C compiler (%s not found)" % (tmp_path / "no-cc") in lines[0]
    out = smoke(py, "python", str(tmp_path))
    assert "the C extension was left out at install time: no C compiler" in out.stderr
    assert "circular import" not in out.stderr
    demo = run([py, "-m", "coremachine_embedded", "demo"], cwd=str(tmp_path), timeout=300)
    assert demo.returncode == 0 and "demo ok" in demo.stdout, demo.stderr

    # No libsodium headers (the library itself is there): hidden in a namespace.
    include = run(["pkg-config", "--variable=includedir", "libsodium"]).stdout.strip()
    headers = [os.path.join(include or "/usr/include", "sodium.h"),
               os.path.join(include or "/usr/include", "sodium")]
    wrap = hiding(headers)
    proc = pip_install(py, "-v", "--force-reinstall", "--no-deps",
                       copy_of(dist["sdist"], tmp_path), wrap=wrap)
    lines = [ln for ln in (proc.stdout + proc.stderr).splitlines() if FALLBACK_LINE in ln]
    assert len(lines) == 1 and "no libsodium headers (sodium.h)" in lines[0], proc.stdout[-3000:]
    assert "apt-get install libsodium-dev" in lines[0]
    out = smoke(py, "python", str(tmp_path))
    assert "left out at install time: no libsodium headers (sodium.h)" in out.stderr


def test_libsodium_missing_at_run_time_is_named(tmp_path) -> None:
    """The C extension (or pysodium) cannot find libsodium.so: both say so."""
    where = run([sys.executable, "-c", LIBSODIUM_PATH])
    if where.returncode != 0:
        pytest.skip("libsodium is not installed as a shared library")
    directory = os.path.dirname(os.path.realpath(where.stdout.strip()))
    wrap = hiding(glob.glob(os.path.join(directory, "libsodium.so*")))
    code = textwrap.dedent("""
        import warnings
        warnings.simplefilter("always")
        import coremachine_embedded as cm
        print("backend", cm.backend)
        try:
            cm.KeyPair.generate()
        except cm.MissingDependencyError as e:
            print("error", e)
    """)
    env = dict(ENV, PYTHONPATH=ROOT, COREMACHINE_IMPL="auto")
    proc = run(wrap + [sys.executable, "-c", code], env=env, cwd=str(tmp_path), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "backend python" in proc.stdout
    assert "error MISSING_DEPENDENCY: the pure-Python backend signs with libsodium" in proc.stdout
    assert "libsodium.so" in proc.stdout and "cannot open shared object file" in proc.stdout
    if glob.glob(os.path.join(ROOT, "coremachine_embedded", "_core*.so")):
        assert "the C extension is built but cannot be loaded (libsodium.so" in proc.stderr
        assert "install libsodium" in proc.stderr
    assert "circular import" not in proc.stderr


def old_python() -> str:
    """A Python older than 3.11 (no tomllib) with venv support, if this machine has one."""
    candidates = [os.environ.get("COREMACHINE_OLD_PYTHON", "")]
    candidates += sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    candidates += ["/usr/bin/python3.9", "/usr/bin/python3.10"]
    for python in candidates:
        if python and os.access(python, os.X_OK) and run(
                [python, "-c", "import sys, ensurepip; sys.exit(sys.version_info >= (3, 11))"],
                timeout=60).returncode == 0:
            return python
    pytest.skip("no Python older than 3.11 on this machine (set COREMACHINE_OLD_PYTHON)")


@ONLY_IN_C_RUN
def test_python_before_3_11_gets_tomli_and_loads_board_profiles(dist, tmp_path) -> None:
    py = make_venv(str(tmp_path / "venv"), old_python())
    # The pure backend keeps this test free of a second compile.
    pip_install(py, copy_of(dist["sdist"], tmp_path), env=dict(ENV, COREMACHINE_IMPL="python"))
    assert run([py, "-c", "import tomli"]).returncode == 0
    smoke(py, "python", str(tmp_path))
    init = run([str(tmp_path / "venv" / "bin" / "coremachine"), "init", str(tmp_path / "s"),
                "--machine", "coremachine_embedded.demo:THERMOSTAT", "--board", "rpi-zero-2w"],
               timeout=120)
    assert init.returncode == 0, init.stderr
    assert "durability batch" in init.stdout  # the profile's, read from its TOML
