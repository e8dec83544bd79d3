"""``coremachine gateway`` as systemd runs it, in a subprocess: devices
served by one ``coremachine serve`` of several stores, metrics over HTTP, JSON
log lines, SIGHUP adding a device (and refusing a broken file while running
on), SIGTERM stopping cleanly with every replica verifiable."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from typing import Dict

from tests.unit.fleet import MACHINE_REF, free_udp_port
from tests.mqtt_broker import free_port as free_tcp_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT)


def cm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coremachine_embedded", *args],
                          capture_output=True, text=True, env=ENV, timeout=60)


def make_store(path: str, readings: int) -> str:
    r = cm("init", path, "--machine", MACHINE_REF, "--durability", "none")
    assert r.returncode == 0, r.stderr
    for i in range(readings):
        assert cm("act", path, "READING", json.dumps({"t": i, "celsius": 17.0})).returncode == 0
    return r.stdout.split("key ")[1].split()[0]


def scrape(port: int) -> Dict[str, float]:
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def poll(cond, timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cond():
                return
        except OSError:
            pass  # the metrics server is not up yet
        assert time.monotonic() < deadline, "timed out waiting for %s" % what
        time.sleep(0.1)


def device(name: str, key: str, port: int) -> str:
    return '[[device]]\nname = "%s"\nkey = "%s"\nurl = "udp://127.0.0.1:%d"\n' % (name, key,
                                                                                    port)


def test_sighup_reload_sigterm_stop_json_logs_and_metrics(tmp_path) -> None:
    keys = {n: make_store(str(tmp_path / n), k) for n, k in (("a", 3), ("b", 5))}
    port, metrics = free_udp_port(), free_tcp_port()
    serve = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "serve",
                              str(tmp_path / "a"), str(tmp_path / "b"),
                              "udp://127.0.0.1:%d" % port], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=ENV)
    config = tmp_path / "gateway.toml"
    head = '[gateway]\nname = "proc"\nstore_dir = "replicas"\nmachine = "%s"\n' % MACHINE_REF
    config.write_text(head + device("a", keys["a"], port))
    gateway = None
    try:
        lines = [serve.stdout.readline() for _ in range(2)]
        assert all(line.startswith("serving ") for line in lines), lines   # two stores, one URL
        gateway = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "gateway",
                                    "--config", str(config), "--metrics",
                                    "127.0.0.1:%d" % metrics, "--log-format", "json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=ENV)
        poll(lambda: scrape(metrics).get('coremachine_device_length{device="a"}') == 3,
             what="device a")
        page = scrape(metrics)
        assert page['coremachine_device_lag{device="a"}'] == 0
        assert 'coremachine_device_length{device="b"}' not in page

        config.write_text(head + device("a", keys["a"], port) + device("b", keys["b"], port))
        gateway.send_signal(signal.SIGHUP)                 # add b without a restart
        poll(lambda: scrape(metrics).get('coremachine_device_length{device="b"}') == 5,
             what="device b after SIGHUP")

        config.write_text(head + device("b", "zz", port))
        gateway.send_signal(signal.SIGHUP)                 # refused: runs on as it was
        time.sleep(1.0)
        page = scrape(metrics)
        assert page['coremachine_device_length{device="a"}'] == 3 and gateway.poll() is None

        gateway.send_signal(signal.SIGTERM)
        _, err = gateway.communicate(timeout=60)
        assert gateway.returncode == 0, err
    finally:
        for proc in (gateway, serve):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
        if serve.poll() is None:
            serve.kill()
    records = [json.loads(line) for line in err.splitlines()]    # every line is one object
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    messages = [r["message"] for r in records]
    assert any(m.startswith("reloaded %s: 2 devices" % config) for m in messages), messages
    refused = [r for r in records if r["message"].startswith("reload refused")]
    assert len(refused) == 1 and refused[0]["level"] == "error"
    assert "gateway.toml:7: device[0].key: must be 64 hex digits" in refused[0]["message"]
    assert messages[-1] == "gateway proc stopped"
    for name, length in (("a", 3), ("b", 5)):          # closed cleanly: they open and verify
        r = cm("verify", str(tmp_path / "replicas" / name))
        assert r.returncode == 0 and "%d blocks" % length in r.stdout, r.stderr
