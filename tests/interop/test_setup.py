"""`.ci/ensure-deps.sh` (what `make demo` and `make test` run first) on an
externally managed system Python (Debian's /usr/bin/python3, PEP 668): it says
what it will install and where, makes the venv from that Python, installs into
the venv only, and an up-to-date venv costs nothing the second time."""
from __future__ import annotations

import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SYSTEM_PYTHON = "/usr/bin/python3"


def externally_managed(python: str) -> bool:
    stdlib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('stdlib'))"],
                            capture_output=True, text=True).stdout.strip()
    return os.path.exists(os.path.join(stdlib, "EXTERNALLY-MANAGED"))


def site_packages(python: str) -> list:
    code = ("import site, os; print('\\n'.join(sorted(f for d in site.getsitepackages() "
            "if os.path.isdir(d) for f in os.listdir(d))))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True,
                          check=True).stdout.splitlines()


@pytest.mark.skipif(os.environ.get("COREMACHINE_IMPL") == "python",
                    reason="makes a venv and installs into it: once, in the C run")
def test_ensure_deps_on_an_externally_managed_python(tmp_path) -> None:
    if not (os.access(SYSTEM_PYTHON, os.X_OK) and externally_managed(SYSTEM_PYTHON)):
        pytest.skip("no externally managed %s here" % SYSTEM_PYTHON)
    before = site_packages(SYSTEM_PYTHON)
    venv = str(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COREMACHINE_IMPL",
                                                            "VIRTUAL_ENV")}
    env.update(PYTHON=SYSTEM_PYTHON, VENV=venv)
    first = subprocess.run(["sh", ".ci/ensure-deps.sh"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=900)
    assert first.returncode == 0, first.stdout + first.stderr
    plan = first.stdout.splitlines()
    assert plan[0] == "ensure-deps: will install:"
    assert "ensure-deps:   a virtual environment at %s (python -m venv, from %s" % (
        venv, SYSTEM_PYTHON) in first.stdout
    assert any(line.startswith("ensure-deps:   pip packages into %s: " % venv) and
               "Cython" in line for line in plan), first.stdout
    assert "ensure-deps:   this package into %s, editable" % venv in first.stdout
    # the venv is the system Python's, and has the package and its command
    version = subprocess.run([os.path.join(venv, "bin", "coremachine"), "--version"],
                             capture_output=True, text=True, env=env, timeout=120)
    assert version.returncode == 0, version.stderr
    assert "Python %s" % subprocess.run(
        [SYSTEM_PYTHON, "-c", "import platform; print(platform.python_version())"],
        capture_output=True, text=True).stdout.strip() in version.stdout
    assert site_packages(SYSTEM_PYTHON) == before          # nothing went into the system
    # up to date: says nothing, installs nothing
    second = subprocess.run(["sh", ".ci/ensure-deps.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and second.stdout == "", second.stdout + second.stderr
    # the test level adds the test tools; `build` is checked by its __main__, so a
    # build/ folder (what setup.py build_ext leaves) does not pass for it
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    third = subprocess.run(["sh", ".ci/ensure-deps.sh", "--test"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=900)
    assert third.returncode == 0, third.stdout + third.stderr
    packages = [ln for ln in third.stdout.splitlines() if "pip packages into" in ln]
    assert packages and " build" in packages[0] and "pytest" in packages[0], third.stdout
    check = subprocess.run([os.path.join(venv, "bin", "python"), "-c", "import build.__main__"],
                           cwd=ROOT, capture_output=True, text=True, env=env)
    assert check.returncode == 0, check.stderr


def test_setup_py_with_an_old_setuptools_names_the_fix() -> None:
    """Debian 12's setuptools (66) cannot read pyproject.toml's PEP 639 license:
    setup.py says so in one line, naming what works, before touching the tree."""
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        pytest.skip("no %s here" % SYSTEM_PYTHON)
    found = subprocess.run([SYSTEM_PYTHON, "-c",
                            "import setuptools; print(setuptools.__version__)"],
                           capture_output=True, text=True)
    if found.returncode != 0 or int(found.stdout.split(".")[0]) >= 77:
        pytest.skip("%s has no setuptools older than 77" % SYSTEM_PYTHON)
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "COREMACHINE_IMPL")}
    proc = subprocess.run([SYSTEM_PYTHON, "setup.py", "--version"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert ("setup.py needs setuptools >= 77 (pyproject.toml's license is a PEP 639 expression);"
            " %s has setuptools %s." % (SYSTEM_PYTHON, found.stdout.strip())) in proc.stderr
    assert "make build" in proc.stderr and "pip install ." in proc.stderr
