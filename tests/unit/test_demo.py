"""`make demo` runs the demo: it must finish, verify and say so."""
from __future__ import annotations

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_runs_and_verifies() -> None:
    proc = subprocess.run([sys.executable, "-m", "coremachine_embedded", "demo"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert out.count("[serial reader]") >= 13 and out.count("[udp    reader]") >= 13
    assert "udp    replica: 13 entries re-hashed, signature valid, identical to the writer: yes" in out
    assert "serial replica: 13 entries re-hashed, signature valid, identical to the writer: yes" in out
    assert "demo ok" in out
