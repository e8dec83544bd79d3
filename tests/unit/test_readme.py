"""Every README code block runs as written, in order, in one folder, twice.

The folder is a copy of the repository's files (the Install block installs
``.`` from it).  ``sh`` blocks run with ``sh -e`` and ``python`` blocks with the
Python this suite runs on, whose folder is first on PATH (as after
``. .venv/bin/activate``); each block's lines ending in ``# prints: X`` must
print X, in order.  As root, the blocks that use the README's fixed ports (7000, 7001)
share a network namespace of their own, so those ports cannot meet anything else
on this machine (the others need the internet: pip).

The set-up blocks are the exception: ``make demo`` and ``make test`` are what
.ci/run runs (here they are compared with it; running ``make test`` here would
run this test again), and the activation block runs in the repository itself.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterator, List, Tuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
SETUP_MARKERS = ("make demo", ". .venv/bin/activate")


def blocks() -> List[Tuple[str, str]]:
    """(language, code) of every ```sh and ```python block, in order."""
    with open(os.path.join(ROOT, "README.md")) as f:
        return re.findall(r"```(sh|python)\n(.*?)```", f.read(), re.S)


def setup_blocks() -> List[str]:
    return [code for lang, code in blocks() if any(m in code for m in SETUP_MARKERS)]


def expected_prints(code: str) -> List[str]:
    return [m.strip() for m in re.findall(r"# prints: (.*)$", code, re.M)]


def repository_copy(target: str) -> None:
    """The repository's files (tracked and new, not ignored) under ``target``."""
    listed = subprocess.run(["git", "-C", ROOT, "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True)
    if listed.returncode != 0:
        shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", ".cache", "*.so", "__pycache__"))
        return
    for name in listed.stdout.splitlines():
        src = os.path.join(ROOT, name)
        if os.path.isfile(src):
            os.makedirs(os.path.join(target, os.path.dirname(name)), exist_ok=True)
            shutil.copy2(src, os.path.join(target, name))


@pytest.fixture
def netns() -> Iterator[List[str]]:
    """A command prefix that runs in a private network namespace (loopback
    up), or nothing when that is not possible here."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        yield []
        return
    name = "cmreadme%d" % os.getpid()
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        yield []
        return
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"],
                       check=True, capture_output=True)
        yield ["ip", "netns", "exec", name]
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_the_setup_blocks_are_what_ci_runs() -> None:
    found = setup_blocks()
    assert len(found) == 2, "the README's set-up: make demo/make test, then activate"
    readme_makes = [ln.split("#")[0].strip() for ln in found[0].splitlines() if ln.strip()]
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci_makes = [ln.strip() for ln in f if ln.strip().startswith("make ")]
    assert readme_makes == ci_makes == ["make demo", "make test"]
    if not os.path.exists(os.path.join(ROOT, ".venv", "bin", "activate")):
        pytest.skip("no .venv here (make demo makes it)")
    r = subprocess.run(["sh", "-e", "-c", found[1]], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("coremachine 0.1.0 (")
    assert os.access(os.path.join(ROOT, ".venv", "bin", "coremachine"), os.X_OK)


def test_every_readme_block_runs_as_written_twice(tmp_path, netns) -> None:
    if shutil.which("coremachine", path=BIN) is None:
        pytest.skip("the coremachine command is not next to %s (run from make's .venv)"
                    % sys.executable)
    folder = str(tmp_path / "repo")
    repository_copy(folder)
    env = dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    env.pop("PYTHONPATH", None)
    groups: List[int] = []
    try:
        for run in (1, 2):
            for number, (lang, code) in enumerate(blocks()):
                if any(m in code for m in SETUP_MARKERS):
                    continue
                script = os.path.join(folder, ".readme-%d.%s" % (number, lang))
                with open(script, "w") as f:
                    f.write(code)
                cmd = ["sh", "-e", script] if lang == "sh" else [sys.executable, script]
                out_path = str(tmp_path / ("run%d-block%d.out" % (run, number)))
                # to files: a block's background job (serve &) keeps them open
                with open(out_path, "w") as out, open(out_path + ".err", "w+") as errors:
                    isolated = netns if "://127.0.0.1:7" in code else []
                    proc = subprocess.Popen(isolated + cmd, cwd=folder, env=env, stdout=out,
                                            stderr=errors, start_new_session=True)
                    groups.append(proc.pid)
                    proc.wait(timeout=600)
                    errors.seek(0)
                    err = errors.read()
                with open(out_path) as f:
                    printed = [ln.strip() for ln in f.read().splitlines()]
                where = "run %d, README block %d (%s):\n%s" % (run, number, lang, code)
                assert proc.returncode == 0, "%s\nstderr:\n%s" % (where, err[-3000:])
                lines = iter(printed)
                for want in expected_prints(code):
                    assert any(line == want for line in lines), \
                        "%s\ndid not print %r; printed:\n%s" % (where, want, "\n".join(printed))
            # the README stops what it started (`stop` returns once the store is
            # free; the process exits right after)
            for pgid in groups:
                assert gone(pgid, 30), "README block processes still running after run %d" % run
        check_import_figure(folder)
    finally:
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def gone(pgid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def check_import_figure(folder: str) -> None:
    """The module count in the README's performance table is what the clean venv
    of the Install block loads (Python 3.11, C backend; the time is not checked:
    it is measured, not asserted)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        m = re.search(r"\| `import coremachine_embedded`[^|]*\| [^|]*?(\d+) modules", f.read())
    assert m, "the README's import row"
    py = os.path.join(folder, "venv", "bin", "python")
    probe = ("import sys; before = set(sys.modules); import coremachine_embedded as c; "
             "print(c.backend, len(set(sys.modules) - before))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COREMACHINE_IMPL")}
    # Away from the source tree (as the Install block's `cd venv`): in ``folder``
    # the import would find the unbuilt sources, not what pip installed.
    backend, count = subprocess.run([py, "-c", probe], cwd=os.path.dirname(os.path.dirname(py)),
                                    env=env, check=True, capture_output=True,
                                    text=True).stdout.split()
    if backend != "c" or sys.version_info[:2] != (3, 11):
        return
    assert int(count) == int(m.group(1)), "a clean venv loads %s modules" % count
