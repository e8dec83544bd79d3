"""`python -m build` makes an sdist and a wheel; installing the sdist in a fresh
virtual environment builds the C extension and the installed package works
(C backend, a machine on a log, board profiles, the console script)."""
from __future__ import annotations

import glob
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SMOKE = textwrap.dedent("""
    import os, sys, tempfile
    import coremachine_embedded as cm
    from coremachine_embedded import boards, graph
    assert cm.backend == "c", cm.backend
    assert "site-packages" in cm.__file__, cm.__file__
    d = tempfile.mkdtemp()
    core = cm.Core(os.path.join(d, "s"), key_pair=cm.KeyPair.from_seed(bytes(32)))
    m = cm.Coremachine(core, {"initial": "a", "context": {"n": 0},
                              "states": {"a": {"on": {"GO": {"target": "b"}}}, "b": {}}})
    m.action("GO")
    assert core.verify() == 1 and m.state == "b"
    assert set(boards.available()) >= {"rpi-zero-2w", "rpi-3b-plus", "rpi-4", "rpi-5",
                                       "generic-linux"}
    assert "stateDiagram" in graph.to_mermaid(m.definition)
    core.close()
    print("smoke ok")
""")


@pytest.mark.skipif(os.environ.get("COREMACHINE_IMPL") == "python",
                    reason="builds and installs the C extension: done once, in the C run")
def test_sdist_and_wheel_build_and_install_in_a_fresh_venv(tmp_path) -> None:
    pytest.importorskip("build", reason="the 'build' package is not installed")
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                    ROOT], check=True, capture_output=True, timeout=900)
    sdists = glob.glob(str(out / "*.tar.gz"))
    wheels = glob.glob(str(out / "*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py = str(venv / "bin" / "python")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COREMACHINE_IMPL")}
    subprocess.run([py, "-m", "pip", "install", "-q", sdists[0]], check=True,
                   capture_output=True, timeout=900, env=env)
    smoke = subprocess.run([py, "-c", SMOKE], capture_output=True, text=True, timeout=120,
                           cwd=str(tmp_path), env=env)
    assert smoke.returncode == 0, smoke.stderr
    assert "smoke ok" in smoke.stdout
    cli = subprocess.run([str(venv / "bin" / "coremachine"), "--help"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert cli.returncode == 0 and "serve" in cli.stdout
