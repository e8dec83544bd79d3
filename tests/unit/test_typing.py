"""The package type-checks under mypy --strict (configured in pyproject.toml)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_mypy_strict_passes() -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (sh .ci/ensure-deps.sh --test)")
    proc = subprocess.run([sys.executable, "-m", "mypy", "coremachine_embedded"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Success" in proc.stdout


def test_package_is_marked_typed() -> None:
    assert os.path.exists(os.path.join(ROOT, "coremachine_embedded", "py.typed"))
