"""The control socket: `coremachine act` and `coremachine stop` on a store that a
running process holds (serve, pull --live, a script with a ControlServer), in
subprocesses on real stores."""
from __future__ import annotations

import json
import os
import re
import pathlib
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap

import pytest

from coremachine_embedded import Core, Coremachine, KeyPair, control
from coremachine_embedded.demo import THERMOSTAT
from tests.unit.test_cli import (ENV, cm, free_port, init_thermostat, next_line, one_error_line,
                                 start)


def serving(store: str) -> subprocess.Popen:
    server = start("serve", store, "udp://127.0.0.1:%d" % free_port())
    assert "serving" in next_line(server.stdout)
    return server


def test_act_on_a_served_store_is_carried_out_by_the_server(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    server = serving(store)
    try:
        sock = os.path.join(store, control.SOCKET_NAME)
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        r = cm("act", store, "READING", '{"t": 0, "celsius": 18.2}')
        assert r.returncode == 0 and r.stdout == "heating\n", r.stderr
        r = cm("act", store, "READING", '{"t": 1, "celsius": 21}', "--json")
        snap = json.loads(r.stdout)
        assert snap["state"] == "idle" and snap["index"] == 1 and snap["context"]["readings"] == 2
        # rejections keep their exit codes and their one line
        r = cm("act", store, "NOT_AN_EVENT")
        assert r.returncode == 4 and "Invalid action: NOT_AN_EVENT for state idle" in r.stderr
        r = cm("act", store, "READING", "18.2")
        assert r.returncode == 4
        assert "READING 18.2 in state idle: the machine raised TypeError" in one_error_line(
            r.stderr)
        assert cm("act", store, "READING", "{bad").returncode == 2
        r = cm("act", store, "READING", "1", "--machine", "coremachine_embedded.demo:NOPE")
        assert r.returncode == 1 and "acts with the machine" in r.stderr
        # reads while serve holds the store: snapshots, the serve goes on
        st = json.loads(cm("state", store, "--json").stdout)
        assert st["state"] == "idle" and st["length"] == 2
        rows = [json.loads(line) for line in cm("history", store, "--jsonl").stdout.splitlines()]
        assert [row["state"] for row in rows] == ["heating", "idle"]
        r = cm("verify", store)
        assert r.returncode == 0 and "2 blocks re-hashed" in r.stdout, r.stderr
        info = json.loads(cm("info", store, "--json").stdout)
        assert info["length"] == 2 and info["role"] == "writer"
        assert cm("graph", "--store", store).returncode == 0
        assert cm("act", store, "READING", '{"t": 2, "celsius": 15}').stdout == "heating\n"
    finally:
        server.send_signal(signal.SIGTERM)
        server.communicate(timeout=30)
    assert server.returncode == 0
    assert not os.path.exists(os.path.join(store, control.SOCKET_NAME))
    r = cm("history", store, "--jsonl")
    assert [json.loads(line)["state"] for line in r.stdout.splitlines()] == [
        "heating", "idle", "heating"]
    assert cm("verify", store).returncode == 0


def test_stop_ends_serve_and_live_pull_as_sigterm_does(tmp_path) -> None:
    store, key = init_thermostat(tmp_path)
    cm("act", store, "READING", '{"t": 0, "celsius": 15}')
    port = free_port()
    server = start("serve", store, "udp://127.0.0.1:%d" % port)
    assert "serving" in next_line(server.stdout)
    replica = str(tmp_path / "replica")
    puller = start("pull", replica, key, "udp://127.0.0.1:%d" % port, "--live")
    assert "caught up at length 1" in next_line(puller.stdout)
    r = cm("act", replica, "READING", "{}", "--machine", "coremachine_embedded.demo:THERMOSTAT")
    assert r.returncode == 1 and "takes no actions" in r.stderr
    r = cm("state", replica, "--machine", "coremachine_embedded.demo:THERMOSTAT", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["state"] == "heating", r.stderr
    for store_dir, proc in ((replica, puller), (store, server)):
        r = cm("stop", store_dir)
        assert r.returncode == 0 and "stopped process %d" % proc.pid in r.stdout, r.stderr
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert "=" in err.splitlines()[-1]   # the counters
    assert cm("verify", replica).returncode == 0     # the store is free again
    r = cm("stop", store)
    assert r.returncode == 1 and "no process holding" in r.stderr
    assert "STORE_NOT_FOUND" in cm("stop", str(tmp_path / "nowhere")).stderr


def test_a_locked_store_without_a_control_socket_says_so(tmp_path) -> None:
    store, _ = init_thermostat(tmp_path)
    with Core(store):     # held by this process, which takes no commands
        r = cm("act", store, "READING", '{"t": 0, "celsius": 15}')
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "STORE_LOCKED" in line and "takes no commands" in line


def test_a_script_opts_in_with_a_control_server(tmp_path) -> None:
    """A firmware script's own machine carries out `coremachine act`."""
    store = str(tmp_path / "s" / ("deep" * 30))     # longer than a socket address may be
    script = textwrap.dedent("""
        import sys, threading
        from coremachine_embedded import Core, Coremachine, KeyPair
        from coremachine_embedded.control import ControlServer
        from coremachine_embedded.demo import THERMOSTAT
        core = Core(sys.argv[1], key_pair=KeyPair.generate())
        machine = Coremachine(core, THERMOSTAT)
        stopped = threading.Event()
        with ControlServer(sys.argv[1], machine=machine, on_stop=stopped.set):
            print("ready", flush=True)
            stopped.wait(60)
            print(machine.state, machine.context["readings"], flush=True)
        core.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, store], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    assert next_line(proc.stdout) == "ready\n"
    assert len(os.fsencode(os.path.join(store, control.SOCKET_NAME))) > 108
    r = cm("act", store, "READING", '{"t": 0, "celsius": 15}', "--machine",
           "coremachine_embedded.demo:THERMOSTAT")
    assert r.returncode == 0 and r.stdout == "heating\n", r.stderr
    assert cm("stop", store).returncode == 0
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines()[-1] == "heating 1"


def test_requests_from_another_user_are_refused(tmp_path) -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to connect as another user")
    # outside pytest's 0700 temp folders, so that the other user can reach the socket
    base = tempfile.mkdtemp(prefix="cm-control-")
    os.chmod(base, 0o755)
    store = pathlib.Path(base) / "s"
    core = Core(str(store), key_pair=KeyPair.generate())
    machine = Coremachine(core, THERMOSTAT)
    with control.ControlServer(str(store), machine=machine):
        sock = store / control.SOCKET_NAME
        os.chmod(str(store), 0o755)
        os.chmod(str(sock), 0o666)    # the mode aside, the server checks who is asking
        probe = ("import json, socket; s = socket.socket(socket.AF_UNIX); s.connect(%r); "
                 "s.sendall(b'{\"op\": \"stop\"}\\n'); print(s.recv(4096).decode())" % str(sock))
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", probe], capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply == {"ok": False, "error": "the control socket takes commands from its "
                                               "owner only", "exit": 1}
        assert control.request(str(store), {"op": "act", "event": "READING",
                                            "value_json": '{"t": 0, "celsius": 15}',
                                            "machine": None})["ok"]
    assert machine.state == "heating"
    core.close()
    shutil.rmtree(base)


def test_malformed_requests_get_an_error_not_a_crash(tmp_path) -> None:
    store = tmp_path / "s"
    core = Core(str(store), key_pair=KeyPair.generate())
    with control.ControlServer(str(store), machine=Coremachine(core, THERMOSTAT)):
        for message, code in (({"op": "nope"}, 2), ({"op": "act"}, 2),
                              ({"op": "act", "event": "READING", "value_json": 5}, 2)):
            reply = control.request(str(store), message)
            assert reply["ok"] is False and reply["exit"] == code, reply
        import socket
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(store / control.SOCKET_NAME))
            s.sendall(b"not json\n")
            assert json.loads(s.recv(4096))["error"] == "the request is not JSON"
        assert control.request(str(store), {"op": "act", "event": "SHUTDOWN",
                                            "value_json": None})["snapshot"]["state"] == "off"
    core.close()


def test_reads_in_a_loop_while_a_writer_acts_and_checkpoints(tmp_path) -> None:
    """Other processes read and verify a store, over and over, while the process
    holding it appends (checkpointing often): every read is a consistent,
    verified state, lengths never go back, and the writer is never stopped."""
    store, stop = str(tmp_path / "node"), str(tmp_path / "stop")
    writer = textwrap.dedent("""
        import os, sys
        from coremachine_embedded import Core, Coremachine, KeyPair
        from coremachine_embedded.demo import THERMOSTAT
        core = Core(sys.argv[1], key_pair=KeyPair.generate(), durability="batch",
                    checkpoint_bytes=4096)
        machine = Coremachine(core, THERMOSTAT)
        print("ready", flush=True)
        t = 0
        while not os.path.exists(sys.argv[2]):
            machine.action("READING", {"t": t, "celsius": 15 + t % 10})
            t += 1
        core.close()
        print("done", t, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", writer, store, stop], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    try:
        assert next_line(proc.stdout) == "ready\n"
        seen = []
        for _ in range(5):
            r = cm("verify", store)
            assert r.returncode == 0, r.stderr
            verified = int(re.search(r"(\d+) blocks re-hashed", r.stdout).group(1))
            st = json.loads(cm("state", store, "--json", "--machine",
                               "coremachine_embedded.demo:THERMOSTAT").stdout)
            assert st["length"] >= verified and st["context"]["readings"] == st["length"]
            seen.append(st["length"])
            assert proc.poll() is None        # the writer went on all along
        assert seen == sorted(seen) and seen[-1] > seen[0]
    finally:
        open(stop, "w").close()
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    written = int(out.split()[-1])
    assert json.loads(cm("info", store, "--json").stdout)["length"] == written
