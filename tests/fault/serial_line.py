"""Serial lines for tests: pseudo-terminal pairs made by socat, and a noisy,
pluggable line with a relay in the middle.

Plain line (two endpoints connected directly)::

    with PtyPair(tmp_path / "a", tmp_path / "b") as pair:
        SerialLink(pair.a) <-> SerialLink(pair.b)

Noisy line (two PTY pairs and a relay thread forwarding bytes each way)::

    endpoint A            relay thread             endpoint B
    pair.a <= socat => a.relay <-noise-> b.relay <= socat => pair.b

    with NoisyLine(tmp_path, flip=0.01, drop=0.005, insert=0.005, seed=1) as line:
        SerialLink(line.a) <-> SerialLink(line.b)
        line.unplug(); ...; line.replug()
        line.counters   # what was injected

``NoisyLine(half_duplex=True, baud=...)`` also emulates a shared medium: every
chunk read from one side occupies the wire for ``len * 10 / baud`` seconds
and is delivered when it has been "sent"; chunks of the two sides whose wire
times overlap are both garbled (random bytes), as on an RS-485 pair.

``unplug(mode="device")`` (default) is a USB adapter pulled out: the socat
pair(s) are killed, the endpoints' ports hang up (pyserial: read returns no
data with POLLHUP, write fails with EIO) and the link paths disappear until
``replug()`` recreates the pairs at the same paths (new /dev/pts numbers).
``unplug(mode="cable")`` is a cable pulled between two UARTs: the ports stay
open and the relay just discards the bytes.

The pytest fixtures ``pty_pair`` and ``noisy_line`` (a factory) at the end
clean up after the test; every socat started here is also killed at exit, and
dies with the main thread of the process that started it.
"""
from __future__ import annotations

import atexit
import contextlib
import math
import os
import pathlib
import random
import select
import shutil
import subprocess
import termios
import threading
import time
import tty
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple, Union

import pytest

PathLike = Union[str, "os.PathLike[str]"]

SOCAT = shutil.which("socat")
_LIVE: Set["subprocess.Popen[bytes]"] = set()
_LIVE_LOCK = threading.Lock()


def have_socat() -> bool:
    return SOCAT is not None


def require_socat() -> None:
    """Skip the calling test when socat is missing."""
    if SOCAT is None:
        pytest.skip("socat is not installed (sh .ci/ensure-deps.sh --test)")


def _kill_all() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for p in procs:
        _stop_process(p)


atexit.register(_kill_all)


SETPRIV = shutil.which("setpriv")


def _die_with_us() -> List[str]:
    """A command prefix that makes the child die with this process
    (PR_SET_PDEATHSIG via util-linux setpriv; no preexec_fn, which is unsafe
    with threads running).  The signal fires when the *thread* that started
    the child exits, so it is only used from the main thread."""
    if SETPRIV is None or threading.current_thread() is not threading.main_thread():
        return []
    return [SETPRIV, "--pdeathsig", "TERM", "--"]


def _stop_process(p: "subprocess.Popen[bytes]") -> None:
    if p.poll() is None:
        try:
            p.terminate()
            p.wait(2.0)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(2.0)
        except ProcessLookupError:
            pass
    with _LIVE_LOCK:
        _LIVE.discard(p)


class PtyPair:
    """Two connected pseudo-terminals made by ``socat -d -d pty,raw,echo=0,link=A
    pty,raw,echo=0,link=B``: whatever is written to ``a`` is read from ``b``
    and the other way round.  The link paths are fixed; ``stop()`` and
    ``start()`` again make a new pair at the same paths."""

    def __init__(self, a: PathLike, b: PathLike, log: Optional[PathLike] = None,
                 timeout: float = 5.0) -> None:
        self.a = str(a)
        self.b = str(b)
        self.log = str(log) if log is not None else self.a + ".socat.log"
        self.timeout = timeout
        self.proc: Optional["subprocess.Popen[bytes]"] = None
        self.starts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> "PtyPair":
        require_socat()
        if self.running:
            return self
        for path in (self.a, self.b):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)          # a stale link of a socat killed with SIGKILL
        os.makedirs(os.path.dirname(self.a) or ".", exist_ok=True)
        os.makedirs(os.path.dirname(self.b) or ".", exist_ok=True)
        assert SOCAT is not None
        with open(self.log, "ab") as log:
            proc = subprocess.Popen(
                _die_with_us() + [SOCAT, "-d", "-d", "pty,raw,echo=0,link=" + self.a,
                                  "pty,raw,echo=0,link=" + self.b],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, close_fds=True)
        with _LIVE_LOCK:
            _LIVE.add(proc)
        self.proc = proc
        deadline = time.monotonic() + self.timeout
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            if proc.poll() is not None:
                self.stop()
                raise RuntimeError("socat exited with %s: see %s" % (proc.returncode, self.log))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("socat did not create %s and %s" % (self.a, self.b))
            time.sleep(0.001)
        self.starts += 1
        return self

    def stop(self) -> None:
        """Kill socat: both PTYs hang up and the links disappear."""
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop_process(proc)
        for path in (self.a, self.b):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def restart(self) -> "PtyPair":
        self.stop()
        return self.start()

    def __enter__(self) -> "PtyPair":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def open_raw(path: str) -> int:
    """Open a PTY end non-blocking and raw (no echo, no line discipline)."""
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ECHO | termios.ECHONL)
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
    except termios.error:
        pass
    return fd


class _Noise:
    """Per-byte noise of one direction: each byte independently gets an event
    with probability flip + drop + insert (the gaps between events are drawn
    geometrically, so clean stretches cost nothing)."""

    def __init__(self, rng: random.Random, counters: Dict[str, int], prefix: str) -> None:
        self.rng = rng
        self.c = counters
        self.prefix = prefix
        self.flip = self.drop = self.insert = 0.0
        self._gap = -1

    def set(self, flip: float, drop: float, insert: float) -> None:
        if min(flip, drop, insert) < 0 or flip + drop + insert >= 1:
            raise ValueError("noise probabilities must be >= 0 and sum to < 1")
        self.flip, self.drop, self.insert = flip, drop, insert
        self._gap = -1

    def _draw_gap(self, p: float) -> int:
        u = 1.0 - self.rng.random()    # (0, 1]
        return int(math.log(u) / math.log(1.0 - p))

    def apply(self, data: bytes) -> bytes:
        p = self.flip + self.drop + self.insert
        if p <= 0 or not data:
            return data
        rng, c, pre = self.rng, self.c, self.prefix
        out = bytearray()
        i, n = 0, len(data)
        while True:
            if self._gap < 0:
                self._gap = self._draw_gap(p)
            if i + self._gap >= n:
                self._gap -= n - i
                out += data[i:]
                return bytes(out)
            j = i + self._gap
            out += data[i:j]
            self._gap = -1
            r = rng.random() * p
            if r < self.flip:
                out.append(data[j] ^ (1 << rng.randrange(8)))
                c["flips"] += 1
                c[pre + "flips"] += 1
            elif r < self.flip + self.drop:
                c["drops"] += 1
                c[pre + "drops"] += 1
            else:
                out.append(rng.randrange(256))
                out.append(data[j])
                c["inserts"] += 1
                c[pre + "inserts"] += 1
            i = j + 1


class _Chunk:
    __slots__ = ("start", "end", "data", "collided")

    def __init__(self, start: float, end: float, data: bytes) -> None:
        self.start = start
        self.end = end
        self.data = data
        self.collided = False


SIDES = ("a", "b")


class NoisyLine:
    """A line between endpoint paths ``a`` and ``b`` that injects noise and
    can be unplugged.  Counters (``counters``, totals and per direction with
    prefixes ``a>b.`` / ``b>a.``): ``bytes`` read from that side, ``flips``,
    ``drops``, ``inserts``, ``collisions`` (total only: overlapping chunk
    pairs on a half-duplex line), ``garbled_bytes``, ``discarded`` (bytes lost while
    unplugged or because the far side did not read), ``unplugs``, ``replugs``."""

    MAX_PENDING = 1 << 20    # bytes waiting for a slow reader before they are discarded

    def __init__(self, directory: PathLike, flip: float = 0.0, drop: float = 0.0,
                 insert: float = 0.0, half_duplex: bool = False, baud: int = 115200,
                 seed: Optional[int] = 0, names: Tuple[str, str] = ("a", "b")) -> None:
        d = pathlib.Path(directory)
        self.dir = d
        self.a = str(d / names[0])
        self.b = str(d / names[1])
        self.pairs = {"a": PtyPair(self.a, str(d / (names[0] + ".relay"))),
                      "b": PtyPair(self.b, str(d / (names[1] + ".relay")))}
        self.half_duplex = half_duplex
        self.byte_time = 10.0 / baud
        self.rng = random.Random(seed)
        keys = ("bytes", "flips", "drops", "inserts", "collisions", "garbled_bytes", "discarded")
        self.counters: Dict[str, int] = dict.fromkeys(keys, 0)
        for pre in ("a>b.", "b>a."):
            for k in keys:
                if k != "collisions":          # a collision belongs to both directions
                    self.counters[pre + k] = 0
        self.counters["unplugs"] = 0
        self.counters["replugs"] = 0
        self._lock = threading.Lock()
        # one generator per direction: the noise of a byte stream does not
        # depend on how the two directions interleave in time
        self._noise = {"a": _Noise(random.Random(self.rng.random()), self.counters, "a>b."),
                       "b": _Noise(random.Random(self.rng.random()), self.counters, "b>a.")}
        self.set_noise(flip, drop, insert)
        self._fds: Dict[str, Optional[int]] = {"a": None, "b": None}
        self._out: Dict[str, bytearray] = {"a": bytearray(), "b": bytearray()}  # to write to side
        self._pending: Dict[str, List[_Chunk]] = {"a": [], "b": []}   # from side, on the wire
        self._busy_until = {"a": 0.0, "b": 0.0}
        self._cable = True
        self._commands: List[Tuple[Callable[[], None], threading.Event]] = []
        self._wake_r, self._wake_w = -1, -1
        self._thread: Optional[threading.Thread] = None
        self._running = False
        self.error: Optional[BaseException] = None

    # --- control (any thread) ---------------------------------------------------------

    def set_noise(self, flip: float = 0.0, drop: float = 0.0, insert: float = 0.0,
                  direction: Optional[str] = None) -> None:
        """Set the per-byte probabilities (both directions, or ``"a"``: a->b, ``"b"``)."""
        with self._lock:
            for side in ([direction] if direction else SIDES):
                self._noise[side].set(flip, drop, insert)

    def start(self) -> "NoisyLine":
        require_socat()
        self.dir.mkdir(parents=True, exist_ok=True)
        for pair in self.pairs.values():
            pair.start()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="NoisyLine relay", daemon=True)
        self._thread.start()
        self._call(self._open_all)
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._running = False
            self._wakeup()
            self._thread.join(5.0)
            self._thread = None
        for side in SIDES:
            self._close_side(side)
        for pair in self.pairs.values():
            pair.stop()
        for fd in (self._wake_r, self._wake_w):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._wake_r = self._wake_w = -1

    def __enter__(self) -> "NoisyLine":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def unplug(self, side: str = "both", mode: str = "device") -> None:
        """Pull the plug.  ``mode="device"``: the adapter of ``side`` ("a",
        "b" or "both") disappears (its PTY pair is killed: the endpoint sees
        a hang-up and its path vanishes).  ``mode="cable"``: bytes stop
        flowing, nothing else happens."""
        if mode not in ("device", "cable"):
            raise ValueError("mode is 'device' or 'cable'")
        sides = SIDES if side == "both" else (side,)
        self.counters["unplugs"] += 1
        if mode == "cable":
            self._call(lambda: self._set_cable(False))
            return
        def close_sides() -> None:
            for s in sides:
                self._close_side(s)

        self._call(close_sides)
        for s in sides:
            self.pairs[s].stop()

    def replug(self) -> None:
        """Undo every unplug: recreate the PTY pairs that are gone (same link
        paths) and let bytes flow again."""
        for s in SIDES:
            if not self.pairs[s].running:
                self.pairs[s].start()
        self.counters["replugs"] += 1

        def plug() -> None:
            self._open_all()
            self._set_cable(True)

        self._call(plug)

    @property
    def plugged(self) -> bool:
        return self._cable and all(p.running for p in self.pairs.values())

    def _call(self, fn: Callable[[], Any], timeout: float = 5.0) -> None:
        """Run ``fn`` in the relay thread and wait for it."""
        if self._thread is None or threading.current_thread() is self._thread:
            fn()
            return
        done = threading.Event()
        with self._lock:
            self._commands.append((fn, done))
        self._wakeup()
        if not done.wait(timeout):
            raise RuntimeError("NoisyLine relay thread does not answer")
        if self.error is not None:
            raise RuntimeError("NoisyLine relay thread failed") from self.error

    def _wakeup(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # --- relay thread -----------------------------------------------------------------

    def _set_cable(self, plugged: bool) -> None:
        self._cable = plugged
        if not plugged:
            for s in SIDES:
                self._discard(s, sum(len(ch.data) for ch in self._pending[s]))
                self._pending[s].clear()
                self._discard(s, len(self._out[s]))
                self._out[s].clear()

    def _open_all(self) -> None:
        for s in SIDES:
            self._open_side(s)

    def _open_side(self, side: str) -> None:
        if self._fds[side] is None:
            self._fds[side] = open_raw(self.pairs[side].b)

    def _close_side(self, side: str) -> None:
        fd, self._fds[side] = self._fds[side], None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._pending[side].clear()
        self._out[side].clear()

    def _discard(self, from_side: str, n: int) -> None:
        if n:
            pre = "a>b." if from_side == "a" else "b>a."
            self.counters["discarded"] += n
            self.counters[pre + "discarded"] += n

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # surfaced by _call and check()
            self.error = e
            with self._lock:
                cmds, self._commands = self._commands, []
            for _, done in cmds:
                done.set()

    def check(self) -> None:
        """Raise if the relay thread died."""
        if self.error is not None:
            raise RuntimeError("NoisyLine relay thread failed") from self.error

    def _loop(self) -> None:
        poller_timeout = 0.05
        while self._running:
            with self._lock:
                cmds, self._commands = self._commands, []
            for fn, done in cmds:
                try:
                    fn()
                finally:
                    done.set()
            now = time.monotonic()
            self._deliver_due(now)
            timeout = poller_timeout
            for s in SIDES:
                if self._pending[s]:
                    timeout = min(timeout, max(0.0, self._pending[s][0].end - now))
            rlist = [self._wake_r] + [fd for fd in self._fds.values() if fd is not None]
            wlist = [fd for s, fd in self._fds.items() if fd is not None and self._out[s]]
            try:
                r, w, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                continue    # an fd was closed under us by a command: next round
            if self._wake_r in r:
                with contextlib.suppress(OSError):
                    os.read(self._wake_r, 4096)
            for s in SIDES:
                fd = self._fds[s]
                if fd is not None and fd in r:
                    self._read(s, fd)
            for s in SIDES:
                fd = self._fds[s]
                if fd is not None and fd in w and self._out[s]:
                    self._flush(s, fd)

    def _read(self, side: str, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            self._close_side(side)      # its socat went away
            return
        if not data:
            p = select.poll()
            p.register(fd, select.POLLIN)
            if any(ev & (select.POLLHUP | select.POLLERR) for _, ev in p.poll(0)):
                self._close_side(side)
            return
        now = time.monotonic()
        pre = "a>b." if side == "a" else "b>a."
        self.counters["bytes"] += len(data)
        self.counters[pre + "bytes"] += len(data)
        if not self._cable:
            self._discard(side, len(data))
            return
        if not self.half_duplex:
            self._send_to(_other(side), self._noise[side].apply(data), side)
            return
        start = max(now, self._busy_until[side])
        chunk = _Chunk(start, start + len(data) * self.byte_time, data)
        self._busy_until[side] = chunk.end
        for other in self._pending[_other(side)]:
            if other.end > chunk.start and other.start < chunk.end:
                self.counters["collisions"] += 1
                other.collided = True
                chunk.collided = True
        self._pending[side].append(chunk)

    def _deliver_due(self, now: float) -> None:
        for s in SIDES:
            q = self._pending[s]
            while q and q[0].end <= now:
                ch = q.pop(0)
                data = ch.data
                if ch.collided:
                    pre = "a>b." if s == "a" else "b>a."
                    data = bytes(self.rng.randrange(256) for _ in range(len(data)))
                    self.counters["garbled_bytes"] += len(data)
                    self.counters[pre + "garbled_bytes"] += len(data)
                self._send_to(_other(s), self._noise[s].apply(data), s)

    def _send_to(self, side: str, data: bytes, from_side: str) -> None:
        fd = self._fds[side]
        if fd is None:
            self._discard(from_side, len(data))
            return
        out = self._out[side]
        if len(out) + len(data) > self.MAX_PENDING:
            self._discard(from_side, len(data))
            return
        out += data
        self._flush(side, fd)

    def _flush(self, side: str, fd: int) -> None:
        out = self._out[side]
        while out:
            try:
                n = os.write(fd, out)
            except BlockingIOError:
                return
            except OSError:
                self._close_side(side)
                return
            if n <= 0:
                return
            del out[:n]


def _other(side: str) -> str:
    return "b" if side == "a" else "a"


# --- pytest fixtures -----------------------------------------------------------------

@pytest.fixture
def pty_pair(tmp_path: pathlib.Path) -> Iterator[PtyPair]:
    """A plain line: ``pty_pair.a`` <-> ``pty_pair.b``."""
    require_socat()
    pair = PtyPair(tmp_path / "ttyA", tmp_path / "ttyB")
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def noisy_line(tmp_path: pathlib.Path) -> Iterator[Callable[..., NoisyLine]]:
    """A factory: ``noisy_line(flip=0.01, drop=0.005, insert=0.005,
    half_duplex=False, baud=115200, seed=0)`` returns a started NoisyLine
    (each in its own directory); all are closed after the test."""
    require_socat()
    lines: List[NoisyLine] = []

    def make(**kw: Any) -> NoisyLine:
        line = NoisyLine(tmp_path / ("line%d" % len(lines)), **kw)
        lines.append(line)
        return line.start()

    try:
        yield make
    finally:
        for line in lines:
            line.close()
