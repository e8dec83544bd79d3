"""The README's Python examples run as written."""
from __future__ import annotations

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def blocks() -> list:
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_quick_start_prints_what_the_readme_says(tmp_path) -> None:
    out = subprocess.run([sys.executable, "-c", blocks()[0]], cwd=tmp_path, check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    assert out.splitlines() == ["running {'running': True, 'counter': 1}",
                                "running {'running': True, 'counter': 3}"]


def test_log_examples_run(tmp_path) -> None:
    code = blocks()[1]
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))
    # The replica example needs a writer store and runs against it.
    setup = ("from coremachine_embedded import Core, KeyPair\n"
             "with Core('writer', key_pair=KeyPair.generate()) as w:\n"
             "    w.append([b'a', b'b', b'c'])\n")
    subprocess.run([sys.executable, "-c", setup + blocks()[2]], cwd=tmp_path, check=True,
                   env=dict(os.environ, PYTHONPATH=ROOT))
