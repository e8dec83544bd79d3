"""The whole `coremachine` command, in subprocesses on real stores:
keygen -> init -> act -> state -> history -> verify -> info -> graph ->
serve/pull over UDP -> verify the replica, and every documented exit code."""
from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time

import pytest

from coremachine_embedded import caps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT)
MACHINE = textwrap.dedent("""
    def start(ctx, n):
        ctx["running"] = True
        ctx["counter"] = n

    def increment(ctx, _value):
        ctx["counter"] += 1

    MACHINE = {
        "initial": "idle",
        "context": {"running": False, "counter": 0},
        "states": {
            "idle": {"on": {"START": {"target": "running", "action": start}}},
            "running": {"on": {"INCREMENT": {"action": increment}, "STOP": "idle"}},
        },
    }
""")


def cm(*args: str, timeout: float = 60, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coremachine_embedded", *args],
                          capture_output=True, text=True, timeout=timeout, env=ENV, cwd=cwd)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_subcommand_has_help() -> None:
    for sub in ("demo", "keygen", "init", "act", "state", "history", "verify", "info", "graph",
                "bench", "serve", "pull"):
        r = cm(sub, "--help")
        assert r.returncode == 0 and "usage: coremachine %s" % sub in r.stdout, sub
    r = cm()
    assert r.returncode == 2 and "COMMAND" in r.stdout
    r = cm("frobnicate")
    assert r.returncode == 2


def test_the_whole_cli(tmp_path) -> None:
    (tmp_path / "machines.py").write_text(MACHINE)
    ref = str(tmp_path / "machines.py") + ":MACHINE"
    store, replica, keyfile = str(tmp_path / "store"), str(tmp_path / "replica"), str(tmp_path / "k")

    r = cm("keygen", keyfile)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(keyfile).st_mode) == 0o600
    assert cm("keygen", keyfile).returncode == 1          # refuses to overwrite
    r = cm("init", store, "--machine", ref, "--key-file", keyfile)
    assert r.returncode == 0, r.stderr
    key = r.stdout.split("key ")[1].split()[0]
    assert cm("init", store, "--machine", ref).returncode == 1       # already a store
    assert cm("init", str(tmp_path / "x"), "--machine", "nope").returncode == 2
    assert cm("init", str(tmp_path / "x"), "--machine", ref + "_MISSING").returncode == 1

    assert cm("act", store, "START", "5").stdout.strip() == "running"
    for _ in range(3):
        assert cm("act", store, "INCREMENT").returncode == 0
    r = cm("act", store, "START", "1")
    assert r.returncode == 4 and "Invalid action: START for state running" in r.stderr
    assert "Traceback" not in r.stderr
    assert cm("act", store, "INCREMENT", "{not json").returncode == 2
    r = cm("act", store, "STOP", "--json")
    assert json.loads(r.stdout)["state"] == "idle"

    st = json.loads(cm("state", store, "--json").stdout)
    assert st["state"] == "idle" and st["context"] == {"running": True, "counter": 8}
    assert st["length"] == 5 and st["available"] == ["START"]
    assert "state    idle" in cm("state", store).stdout

    rows = json.loads(cm("history", store, "--json").stdout)
    assert [(r["index"], r["event"], r["state"]) for r in rows] == [
        (0, "START", "running"), (1, "INCREMENT", "running"), (2, "INCREMENT", "running"),
        (3, "INCREMENT", "running"), (4, "STOP", "idle")]
    assert rows[0]["value"] == 5 and rows[4]["value"] is None
    assert len(json.loads(cm("history", store, "--from", "1", "--to", "3", "--json").stdout)) == 2
    assert "START" in cm("history", store).stdout

    r = cm("verify", store)
    assert r.returncode == 0 and "5 blocks re-hashed" in r.stdout
    info = json.loads(cm("info", store, "--json").stdout)
    assert info["key"] == key and info["length"] == 5
    assert info["format_version"] == caps.FORMAT_VERSION
    assert info["role"] == "writer" and info["durability"] == "sync" and info["size_on_disk"] > 0
    assert info["machine"] == ref

    mermaid = cm("graph", "--machine", ref).stdout
    assert mermaid.startswith("stateDiagram-v2") and "START" in mermaid
    dot = cm("graph", "--machine", ref, "--format", "dot", "--store", store).stdout
    assert "digraph" in dot
    if shutil.which("dot"):
        r = cm("graph", "--machine", ref, "--format", "png", "-o", str(tmp_path / "g.png"))
        assert r.returncode == 0, r.stderr
        assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "serve", store,
                               "udp://127.0.0.1:%d" % port], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert "serving" in server.stdout.readline()
        r = cm("pull", replica, key, "udp://127.0.0.1:%d" % port, "--timeout", "30")
        assert r.returncode == 0, r.stderr
        assert "length 5" in r.stdout and "blocks=5" in r.stderr
        # an absent peer: exit 3 after the timeout, naming the peer
        r = cm("pull", str(tmp_path / "r2"), key, "udp://127.0.0.1:%d" % free_port(),
               "--timeout", "1")
        assert r.returncode == 3 and "timed out" in r.stderr and "udp://127.0.0.1" in r.stderr
        assert cm("pull", str(tmp_path / "r3"), "zz", "udp://127.0.0.1:1").returncode == 1
        assert cm("pull", str(tmp_path / "r3"), key, "tcp://x:1").returncode == 1
    finally:
        server.terminate()
        out, err = server.communicate(timeout=20)
    assert server.returncode == 0 and "requests_served=" in err
    r = cm("verify", replica)
    assert r.returncode == 0 and "5 blocks" in r.stdout
    assert json.loads(cm("info", replica, "--json").stdout)["role"] == "replica"

    # damage: a flipped byte in the data file is found and the file named
    with open(os.path.join(store, "data"), "r+b") as f:
        f.seek(3)
        b = f.read(1)[0]
        f.seek(3)
        f.write(bytes([b ^ 0x20]))
    r = cm("verify", store)
    assert r.returncode == 1
    assert os.path.join(store, "data") in r.stderr and "Traceback" not in r.stderr
    r = cm("--debug", "verify", store)
    assert r.returncode != 0 and "Traceback" in r.stderr
    assert cm("state", str(tmp_path / "nowhere")).returncode == 1


def test_bench_quick_reports_import_cost() -> None:
    r = cm("bench", "--quick", "--json", timeout=300)
    assert r.returncode == 0, r.stderr
    figures = json.loads(r.stdout)
    assert figures["import"]["modules"] > 0 and figures["actions_per_s"] > 0
    assert "import coremachine_embedded" in r.stderr
