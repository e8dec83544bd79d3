"""Replication between two network namespaces joined by a veth pair, with
random loss from nftables (``numgen random mod 100 < 10 drop`` on UDP leaving
either namespace) and a token-bucket rate limit (``tc qdisc ... tbf rate
2mbit``) on both veth ends: ``coremachine serve`` runs in one namespace and
``coremachine pull`` in the other (``ip netns exec``), as separate processes.
The replica must verify and equal the writer.

Needs root, ``ip netns``, ``nft`` and ``tc`` (``tc netem`` is not used: not
every kernel has it).  Every step is probed by doing it; when one fails the
test is skipped with the failing command and its error, and whatever was
created is removed."""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
from typing import Any, Iterator, List, Optional

import pytest

from coremachine_embedded import Core, Coremachine
from tests.fault.test_sync_replication import COUNTER, assert_same_log, build_writer_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 8_000
PORT = 7411
SERVER_IP, CLIENT_IP = "10.199.0.1", "10.199.0.2"
LOSS_PERCENT = 10


def _run(cmd: List[str], timeout: float = 20) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


class Netns:
    """Two namespaces (server ``s``, client ``c``) joined by a veth pair, with
    loss and a rate limit; :meth:`close` removes everything."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.s = "cmsync-%s-s" % tag
        self.c = "cmsync-%s-c" % tag
        self.veth_s = "cv%ss" % tag       # interface names are at most 15 characters
        self.veth_c = "cv%sc" % tag
        self.created: List[str] = []

    def step(self, cmd: List[str]) -> str:
        try:
            r = _run(cmd)
        except (OSError, subprocess.TimeoutExpired) as e:
            self.close()
            pytest.skip("network namespace set-up failed: %s: %s" % (" ".join(cmd), e))
        if r.returncode != 0:
            self.close()
            pytest.skip("network namespace set-up failed: %s: %s"
                        % (" ".join(cmd), (r.stderr or r.stdout).strip()))
        return r.stdout

    def in_ns(self, ns: str, cmd: List[str]) -> List[str]:
        return ["ip", "netns", "exec", ns] + cmd

    def setup(self) -> "Netns":
        for ns in (self.s, self.c):
            self.step(["ip", "netns", "add", ns])
            self.created.append(ns)
        self.step(["ip", "link", "add", self.veth_s, "type", "veth", "peer", "name", self.veth_c])
        self.step(["ip", "link", "set", self.veth_s, "netns", self.s])
        self.step(["ip", "link", "set", self.veth_c, "netns", self.c])
        for ns, dev, ip in ((self.s, self.veth_s, SERVER_IP), (self.c, self.veth_c, CLIENT_IP)):
            self.step(["ip", "-n", ns, "addr", "add", ip + "/24", "dev", dev])
            self.step(["ip", "-n", ns, "link", "set", dev, "up"])
            self.step(["ip", "-n", ns, "link", "set", "lo", "up"])
            self.step(self.in_ns(ns, ["true"]))     # `ip netns exec` works here
            # random loss of the UDP datagrams leaving this namespace
            self.step(self.in_ns(ns, ["nft", "add", "table", "inet", "cmsync"]))
            self.step(self.in_ns(ns, ["nft", "add", "chain", "inet", "cmsync", "out",
                                      "{ type filter hook output priority 0; policy accept; }"]))
            self.step(self.in_ns(ns, ["nft", "add", "rule", "inet", "cmsync", "out",
                                      "meta", "l4proto", "udp", "numgen", "random", "mod", "100",
                                      "<", str(LOSS_PERCENT), "counter", "drop"]))
            # and a slow link
            self.step(self.in_ns(ns, ["tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                                      "2mbit", "burst", "32kbit", "latency", "400ms"]))
        return self

    def dropped(self, ns: str) -> int:
        """Datagrams the nftables rule dropped in ``ns`` so far."""
        out = _run(self.in_ns(ns, ["nft", "list", "table", "inet", "cmsync"])).stdout
        m = re.search(r"counter packets (\d+)", out)
        return int(m.group(1)) if m else 0

    def close(self) -> None:
        for ns in reversed(self.created):   # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.created = []


def _why_not() -> Optional[str]:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables, tc)"
    for tool in ("ip", "nft", "tc"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    return None


@pytest.fixture
def netns() -> Iterator[Netns]:
    why = _why_not()
    if why:
        pytest.skip(why)
    ns = Netns()
    try:
        yield ns.setup()
    finally:
        ns.close()


def _env() -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def test_serve_and_pull_between_namespaces_with_loss_and_a_rate_limit(
        tmp_path: Any, netns: Netns) -> None:
    wdir, rdir = str(tmp_path / "writer"), str(tmp_path / "reader")
    key, final = build_writer_store(wdir, N, seed=41)
    url = "udp://%s:%d" % (SERVER_IP, PORT)
    server = subprocess.Popen(
        netns.in_ns(netns.s, [sys.executable, "-m", "coremachine_embedded", "serve", wdir, url]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=_env())
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("serving %s (length %d, writer)" % (key.hex(), N)), line
        pull = subprocess.run(
            netns.in_ns(netns.c, [sys.executable, "-m", "coremachine_embedded", "pull", rdir,
                                  key.hex(), url, "--timeout", "240"]),
            capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=300)
        assert pull.returncode == 0, (pull.returncode, pull.stdout, pull.stderr)
        assert "length %d, fork 0, verified" % N in pull.stdout
        counters = dict(kv.split("=") for kv in pull.stderr.split() if "=" in kv)
        assert int(counters.get("retries", 0)) > 0, pull.stderr   # the loss was felt
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.communicate()
    assert server.returncode == 0
    assert netns.dropped(netns.s) > 0 and netns.dropped(netns.c) > 0

    with Core(wdir) as writer, Core(rdir) as reader:
        assert_same_log(reader, writer)
        machine = Coremachine(reader, COUNTER)
        assert {"state": machine.state, "context": machine.context} == final
        machine.close()
