"""kill -9 during sync: ``coremachine serve`` and ``coremachine pull`` run as
separate processes over UDP on 127.0.0.1; either one is killed with SIGKILL
at random points of the transfer and started again.  The sync must resume
and complete, the replica must open and verify after every kill, never go
backwards, and end equal to the writer.

"Mid-transfer" is judged by the replica's ``data`` file (block bytes at their
offsets, docs/format.md) growing past a random fraction of the writer's, so
the kills land inside the transfer whatever the speed of the machine."""
from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from typing import Any, List, Optional

from coremachine_embedded import Core, Coremachine
from tests.fault.test_sync_replication import COUNTER, assert_same_log, build_writer_store

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 20_000
TIMEOUT = 180.0


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> Any:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(*args: str, stdout: Any = subprocess.PIPE) -> "subprocess.Popen[str]":
    return subprocess.Popen([sys.executable, "-m", "coremachine_embedded"] + list(args),
                            stdout=stdout, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=_env())


def start_server(store: str, url: str) -> "subprocess.Popen[str]":
    proc = _cli("serve", store, url)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("serving "), (line, proc.poll(), proc.stderr and proc.stderr.read())
    return proc


def start_pull(store: str, key: bytes, url: str,
               timeout: float = TIMEOUT) -> "subprocess.Popen[str]":
    return _cli("pull", store, key.hex(), url, "--timeout", str(timeout))


def data_size(store: str) -> int:
    try:
        return os.path.getsize(os.path.join(store, "data"))
    except OSError:
        return 0


def wait_for_bytes(proc: "subprocess.Popen[str]", store: str, target: int) -> bool:
    """Wait until the replica holds ``target`` bytes of data (True) or the
    puller exited (False)."""
    deadline = time.monotonic() + TIMEOUT
    while data_size(store) < target:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, "no progress to %d bytes" % target
        time.sleep(0.005)
    return True


def kill9(proc: "subprocess.Popen[str]") -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=20)
    assert proc.returncode == -signal.SIGKILL


def finish(proc: "subprocess.Popen[str]") -> str:
    out, err = proc.communicate(timeout=TIMEOUT + 30)
    assert proc.returncode == 0, (proc.returncode, out, err)
    return out


def stop(proc: Optional["subprocess.Popen[str]"]) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def replica_state(store: str) -> int:
    """Open the replica after a kill: it must open and verify what it holds;
    returns its contiguous length."""
    with Core(store) as core:
        assert core.verify() == core.contiguous_length
        return core.contiguous_length


def check_final(wdir: str, rdir: str, final: Any) -> None:
    with Core(wdir) as writer, Core(rdir) as reader:
        assert_same_log(reader, writer, every_block=True)
        machine = Coremachine(reader, COUNTER)
        assert {"state": machine.state, "context": machine.context} == final
        machine.close()


def test_kill_the_puller_mid_transfer_and_resume(tmp_path: Any) -> None:
    wdir, rdir = str(tmp_path / "writer"), str(tmp_path / "reader")
    key, final = build_writer_store(wdir, N, seed=51)
    total = data_size(wdir)
    url = "udp://127.0.0.1:%d" % free_udp_port()
    rng = random.Random(52)
    # random points, increasing: each kill lands in the part not pulled yet
    points = sorted(rng.uniform(lo, hi) for lo, hi in ((0.02, 0.2), (0.25, 0.5), (0.55, 0.8),
                                                       (0.85, 0.97)))
    server = start_server(wdir, url)
    held: List[int] = [0]
    try:
        for point in points:
            pull = start_pull(rdir, key, url)
            if not wait_for_bytes(pull, rdir, int(point * total)):
                finish(pull)   # it got there first: it must have succeeded
                break
            time.sleep(rng.uniform(0, 0.005))   # a batched run of 64 blocks takes ~1 ms here
            kill9(pull)
            have = replica_state(rdir)
            assert have >= held[-1], "the replica went backwards: %s -> %d" % (held, have)
            held.append(have)
        out = finish(start_pull(rdir, key, url))
        assert "length %d, fork 0, verified" % N in out
    finally:
        stop(server)
    # at least three kills found the replica short of the writer
    assert sum(1 for have in held[1:] if have < N) >= 3, "too few kills mid-transfer: %s" % held
    check_final(wdir, rdir, final)


def test_kill_the_server_mid_transfer_and_restart_it_on_the_same_port(tmp_path: Any) -> None:
    wdir, rdir = str(tmp_path / "writer"), str(tmp_path / "reader")
    key, final = build_writer_store(wdir, N, seed=61)
    total = data_size(wdir)
    url = "udp://127.0.0.1:%d" % free_udp_port()
    rng = random.Random(62)
    server: Optional["subprocess.Popen[str]"] = start_server(wdir, url)
    pull = start_pull(rdir, key, url)
    kills = 0
    try:
        for lo, hi in ((0.05, 0.3), (0.4, 0.6), (0.7, 0.9)):
            if not wait_for_bytes(pull, rdir, int(rng.uniform(lo, hi) * total)):
                break
            assert server is not None
            kill9(server)
            server = None
            kills += 1
            time.sleep(rng.uniform(0.1, 1.0))      # the puller retries into the void
            assert pull.poll() is None, "the puller gave up while the server was down"
            server = start_server(wdir, url)        # same store, same port
        out = finish(pull)
        assert "length %d, fork 0, verified" % N in out
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.communicate()
        stop(server)
    assert kills >= 2, "the server was not killed mid-transfer"
    check_final(wdir, rdir, final)


def test_kill_both_at_random_then_resume(tmp_path: Any) -> None:
    """Puller and server killed together, several times, at random points."""
    wdir, rdir = str(tmp_path / "writer"), str(tmp_path / "reader")
    key, final = build_writer_store(wdir, N, seed=71)
    total = data_size(wdir)
    url = "udp://127.0.0.1:%d" % free_udp_port()
    rng = random.Random(72)
    held = 0
    for lo, hi in ((0.1, 0.3), (0.4, 0.7)):
        server = start_server(wdir, url)
        pull = start_pull(rdir, key, url)
        try:
            if not wait_for_bytes(pull, rdir, int(rng.uniform(lo, hi) * total)):
                finish(pull)
                break
            first, second = (server, pull) if rng.random() < 0.5 else (pull, server)
            kill9(first)
            time.sleep(rng.uniform(0, 0.1))
            kill9(second)
        finally:
            for p in (pull, server):
                if p.poll() is None:
                    p.kill()
                    p.communicate()
        with Core(wdir) as writer:       # the writer's store survives a kill -9 of serve
            assert writer.length == N and writer.verify() == N
        have = replica_state(rdir)
        assert have >= held
        held = have
    server = start_server(wdir, url)
    try:
        finish(start_pull(rdir, key, url))
    finally:
        stop(server)
    check_final(wdir, rdir, final)


def test_a_pull_whose_server_stays_dead_times_out_with_exit_3(tmp_path: Any) -> None:
    wdir, rdir = str(tmp_path / "writer"), str(tmp_path / "reader")
    key, final = build_writer_store(wdir, 5_000, seed=81)
    url = "udp://127.0.0.1:%d" % free_udp_port()
    server = start_server(wdir, url)
    pull = start_pull(rdir, key, url, timeout=6)
    try:
        wait_for_bytes(pull, rdir, data_size(wdir) // 10)
        kill9(server)
        out, err = pull.communicate(timeout=60)
    finally:
        if pull.poll() is None:
            pull.kill()
            pull.communicate()
    assert pull.returncode == 3, (pull.returncode, out, err)
    assert "timed out after 6s" in err
    have = replica_state(rdir)
    assert 0 < have < 5_000
    server = start_server(wdir, url)
    try:
        finish(start_pull(rdir, key, url))
    finally:
        stop(server)
    check_final(wdir, rdir, final)
