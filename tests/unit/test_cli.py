"""The whole `coremachine` command, in subprocesses on real stores:
keygen -> init -> act -> state -> history -> verify -> info -> graph ->
serve/pull over UDP -> verify the replica, and every documented exit code."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from coremachine_embedded import caps, cli

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
    r = cm("init", store, "--machine", ref)          # again, as `git init`: changes nothing
    assert r.returncode == 0 and r.stdout.startswith("already there: %s: key %s" % (store, key))
    assert cm("init", store, "--machine", THERMOSTAT).returncode == 1       # another machine
    assert cm("keygen", str(tmp_path / "k2")).returncode == 0
    r = cm("init", store, "--machine", ref, "--key-file", str(tmp_path / "k2"))
    assert r.returncode == 1 and "another key" in r.stderr                 # another key
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
    assert cm("info", store, "--key").stdout == key + "\n"

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
        assert "serving" in next_line(server.stdout)
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


# --- errors and long-running commands (issue 8, line 6) ------------------------------

THERMOSTAT = "coremachine_embedded.demo:THERMOSTAT"


def init_thermostat(tmp_path) -> tuple:
    store = str(tmp_path / "node")
    r = cm("init", store, "--machine", THERMOSTAT)
    assert r.returncode == 0, r.stderr
    return store, r.stdout.split("key ")[1].split()[0]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("coremachine: error: ")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def next_line(stream, timeout: float = 120) -> str:
    """The next line a child process writes to ``stream``; fails (instead of
    hanging the suite) when none comes within ``timeout`` (no wall-clock claim:
    a generous bound on a loaded machine)."""
    assert stream is not None
    got: list = []
    reader = threading.Thread(target=lambda: got.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    assert got, "no line from the process within %ss" % timeout
    return str(got[0])


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "coremachine_embedded", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)


def test_version() -> None:
    r = cm("--version")
    assert r.returncode == 0
    assert re.match(r"coremachine 0\.1\.0 \((c|python) backend, Python 3\.\d+", r.stdout)


def test_an_action_that_raises_exits_4_naming_the_event_and_the_error(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    r = cm("act", store, "READING", "18.2")      # the action indexes reading["celsius"]
    assert r.returncode == 4
    line = one_error_line(r.stderr)
    assert "READING 18.2 in state idle" in line
    assert "TypeError: 'float' object is not subscriptable" in line
    assert json.loads(cm("info", store, "--json").stdout)["length"] == 0   # nothing written
    assert cm("act", store, "READING", '{"t": 0, "celsius": 18.2}').stdout.strip() == "heating"


def test_debug_is_accepted_anywhere_and_keeps_the_exit_code(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    for args in (["--debug", "act", store, "READING", "18.2"],
                 ["act", "--debug", store, "READING", "18.2"],
                 ["act", store, "READING", "18.2", "--debug"]):
        r = cm(*args)
        assert r.returncode == 4, args
        assert "Traceback" in r.stderr and "TypeError" in r.stderr, args
    r = cm("act", store, "NOT_AN_EVENT", "--debug")
    assert r.returncode == 4 and "Traceback" in r.stderr
    r = cm("state", str(tmp_path / "nowhere"), "--debug")
    assert r.returncode == 1 and "STORE_NOT_FOUND" in r.stderr
    assert cm("info", store, "--debug", "--json").returncode == 0


def test_act_on_a_missing_store_is_store_not_found(tmp_path) -> None:
    for args in (["act", str(tmp_path / "nowhere"), "GO"],
                 ["act", str(tmp_path / "nowhere"), "GO", "--machine", THERMOSTAT],
                 ["state", str(tmp_path / "nowhere")], ["history", str(tmp_path / "nowhere")]):
        r = cm(*args)
        assert r.returncode == 1, args
        assert "STORE_NOT_FOUND" in one_error_line(r.stderr), args
    assert not (tmp_path / "nowhere").exists()


def test_keygen_prints_the_core_key_that_init_uses(tmp_path) -> None:
    keyfile = str(tmp_path / "k")
    r = cm("keygen", keyfile)
    assert r.returncode == 0, r.stderr
    printed = r.stdout.split("key ")[1].split()[0]
    r = cm("init", str(tmp_path / "s"), "--machine", THERMOSTAT, "--key-file", keyfile)
    assert r.stdout.split("key ")[1].split()[0] == printed
    r = cm("init", str(tmp_path / "c"), "--machine", THERMOSTAT, "--key-file", keyfile,
           "--compat")
    compat_key = r.stdout.split("key ")[1].split()[0]
    assert compat_key == json.loads(cm("info", str(tmp_path / "s"), "--json").stdout)["public_key"]
    assert compat_key != printed


def test_graph_reads_the_machine_from_the_store(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    cm("act", store, "READING", '{"t": 0, "celsius": 15}')
    r = cm("graph", "--store", store)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("stateDiagram-v2") and "heating" in r.stdout
    dot = cm("graph", "--store", store, "--format", "dot").stdout
    assert "digraph" in dot
    r = cm("graph")
    assert r.returncode == 2 and "--machine" in r.stderr


def test_history_jsonl_is_one_object_a_line(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    for t, celsius in enumerate([15, 21, 18]):
        cm("act", store, "READING", json.dumps({"t": t, "celsius": celsius}))
    r = cm("history", store, "--jsonl")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(x["index"], x["state"]) for x in rows] == [(0, "heating"), (1, "idle"),
                                                         (2, "heating")]
    assert rows[1]["value"] == {"t": 1, "celsius": 21}
    assert json.loads(cm("history", store, "--json").stdout) == rows


def test_serve_on_a_busy_port_names_the_address(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        url = "udp://127.0.0.1:%d" % busy.getsockname()[1]
        r = cm("serve", store, url)
    assert r.returncode == 1
    assert "cannot listen on %s: Address already in use" % url in one_error_line(r.stderr)


def test_a_missing_serial_device_is_an_error_or_waited_for(tmp_path) -> None:
    store, key = init_thermostat(tmp_path)
    device = str(tmp_path / "ttyNOPE")
    for args in (["serve", store, "serial://" + device],
                 ["pull", str(tmp_path / "r"), key, "serial://%s?baud=9600" % device]):
        r = cm(*args)
        assert r.returncode == 1, args
        assert "no serial device %s" % device in one_error_line(r.stderr), args
    assert not (tmp_path / "r").exists()
    cm("act", store, "READING", '{"t": 0, "celsius": 15}')
    server = start("serve", store, "serial://" + device, "--wait-for-device")
    socat = None
    try:
        assert server.stderr is not None
        assert "waiting for %s" % device in next_line(server.stderr)
        if shutil.which("socat") is None:
            pytest.skip("socat is needed to plug the serial line in")
        # plug the line in: a PTY pair whose one end appears at the awaited path
        socat = subprocess.Popen(["socat", "pty,raw,echo=0,link=" + device,
                                  "pty,raw,echo=0,link=%s-peer" % device],
                                 stderr=subprocess.DEVNULL)
        r = cm("pull", str(tmp_path / "r"), key, "serial://%s-peer?baud=115200" % device,
               "--timeout", "60", "--wait-for-device")
        assert r.returncode == 0, r.stderr
        assert "length 1" in r.stdout
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
        if socat is not None:
            socat.terminate()
            socat.wait(timeout=10)
    assert server.returncode == 0, err
    assert "serving" in out and "requests_served=" in err     # flushed, counters printed


def test_pull_from_nobody_times_out_saying_no_peer_answered(tmp_path) -> None:
    store, key = init_thermostat(tmp_path)
    dk = json.loads(cm("info", store, "--json").stdout)["discovery_key"]
    replica = str(tmp_path / "replica")
    r = cm("pull", replica, key, "udp://127.0.0.1:%d" % free_port(), "--timeout", "1")
    assert r.returncode == 3
    line = one_error_line(r.stderr)
    assert "timed out after 1s" in line and "no peer answered for this key" in line
    assert "discovery key %s" % dk in line
    assert not os.path.exists(replica)   # nothing verified arrived: not bound to the key


def test_pull_has_a_default_timeout_without_live(tmp_path, monkeypatch) -> None:
    from coremachine_embedded import node
    monkeypatch.setattr(node, "DEFAULT_PULL_TIMEOUT", 0.5)
    replica = tmp_path / "replica"
    code = node.pull(str(replica), "ab" * 32, "udp://127.0.0.1:%d" % free_port(), live=False,
                     timeout=None, window=16, wait_for_device=False,
                     progress=cli.Progress("pull"))
    assert code == 3 and not replica.exists()


def test_pull_binds_the_replica_only_to_a_key_a_peer_verified(tmp_path) -> None:
    store, key = init_thermostat(tmp_path)
    cm("act", store, "READING", '{"t": 0, "celsius": 15}')
    replica = str(tmp_path / "replica")
    os.mkdir(replica)
    (tmp_path / "replica" / "notes.txt").write_text("mine")
    port = free_port()
    server = start("serve", store, "udp://127.0.0.1:%d" % port)
    try:
        assert "serving" in next_line(server.stdout)
        wrong = "11" * 32
        r = cm("pull", replica, wrong, "udp://127.0.0.1:%d" % port, "--timeout", "1")
        assert r.returncode == 3 and "no peer answered for this key" in r.stderr
        assert sorted(os.listdir(replica)) == ["notes.txt"]   # the folder was there: kept
        # an empty replica bound to another key (a pull killed early) is started afresh
        from coremachine_embedded import Core
        Core(replica, key=bytes.fromhex(wrong)).close()
        r = cm("pull", replica, key, "udp://127.0.0.1:%d" % port, "--timeout", "30")
        assert r.returncode == 0, r.stderr
        assert json.loads(cm("info", replica, "--json").stdout)["key"] == key
        # one holding verified data is never replaced
        r = cm("pull", replica, wrong, "udp://127.0.0.1:%d" % port, "--timeout", "1")
        assert r.returncode == 1 and "holds another core (key %s, 1 blocks)" % key in r.stderr
        assert cm("verify", replica).returncode == 0
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)


def test_sigterm_makes_serve_and_live_pull_flush_print_counters_and_exit_0(tmp_path) -> None:
    store, key = init_thermostat(tmp_path)
    for t in range(3):
        cm("act", store, "READING", json.dumps({"t": t, "celsius": 15 + t}))
    port = free_port()
    server = start("serve", store, "udp://127.0.0.1:%d" % port)
    replica = str(tmp_path / "replica")
    puller = None
    try:
        assert "serving" in next_line(server.stdout)
        puller = start("pull", replica, key, "udp://127.0.0.1:%d" % port, "--live")
        assert puller.stdout is not None
        assert next_line(puller.stdout).startswith("caught up at length 3; following live")
        puller.send_signal(signal.SIGTERM)
        out, err = puller.communicate(timeout=30)
        assert puller.returncode == 0, err
        assert "stopped: have 3 of 3, verified" in out and "blocks=3" in err
    finally:
        if puller is not None and puller.poll() is None:
            puller.kill()
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, err
    assert "requests_served=" in err
    r = cm("verify", replica)
    assert r.returncode == 0 and "3 blocks re-hashed" in r.stdout
