"""A local control socket: how ``coremachine act`` and ``coremachine stop`` reach
the process that holds a store open (a store is locked to one process).

A process opts in with :class:`ControlServer`: ``coremachine serve`` and
``coremachine pull --live`` do; a firmware script does it for its own machine::

    with ControlServer(core.directory, machine=cube, on_stop=stop.set):
        ...   # `coremachine act STORE EVENT VALUE` now fires EVENT on `cube`

The socket is ``control.sock`` in the store folder, mode 0600, and a request
from another user is refused (``SO_PEERCRED``), so the socket gives nothing that
the store's files do not.  One JSON object a line each way: ``{"op": "act",
"event": .., "value_json": .., "machine": ..}`` is answered with the new
snapshot or the rejection (message and exit code, as ``act`` would exit);
``{"op": "stop"}`` with the pid, after which the owner's ``on_stop`` runs.
"""
from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from typing import Any, Callable, Dict, Optional, TypeVar

from .errors import CoreMachineError

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1 << 20
_UNIX_PATH_MAX = 107
T = TypeVar("T")


def _at(directory: str, use: Callable[[str], T]) -> T:
    """``use(path of the socket)``; a path too long for a Unix socket address
    goes through the folder's descriptor (/proc/self/fd/N/control.sock)."""
    path = os.path.join(directory, SOCKET_NAME)
    if len(os.fsencode(path)) <= _UNIX_PATH_MAX:
        return use(path)
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY)
    try:
        return use("/proc/self/fd/%d/%s" % (fd, SOCKET_NAME))
    finally:
        os.close(fd)


class ControlServer:
    """Carries out commands sent to the store folder ``directory``.

    :param machine: the Coremachine that ``act`` fires events on, or
    :param machine_for: ``ref -> Coremachine``, for a definition named by the
        client's ``--machine`` (None: the store's own).
    :param on_stop: called (in the server's thread) after a ``stop`` request
        was answered.
    """

    def __init__(self, directory: str, machine: Any = None, *,
                 machine_for: Optional[Callable[[Optional[str]], Any]] = None,
                 on_stop: Optional[Callable[[], None]] = None) -> None:
        self.directory = directory
        self.path = os.path.join(directory, SOCKET_NAME)
        self._machine = machine
        self._machine_for = machine_for
        self._on_stop = on_stop
        self._sock: Optional[socket.socket] = None
        self._thread: Optional[threading.Thread] = None
        self._closing = False

    def start(self) -> "ControlServer":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

        def bind(path: str) -> None:
            try:  # left by a process that died: we hold the store, so it is not in use
                os.unlink(path)
            except FileNotFoundError:
                pass
            old = os.umask(0o177)  # created 0600: no window where others may connect
            try:
                sock.bind(path)
            finally:
                os.umask(old)
            os.chmod(path, 0o600)
        try:
            _at(self.directory, bind)
            sock.listen(8)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="coremachine-control",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._sock is None or self._closing:
            return
        self._closing = True
        try:
            os.unlink(self.path)
        except OSError:
            pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
        except OSError:
            pass
        self._sock.close()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self) -> "ControlServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the server thread ---------------------------------------------------------

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._closing:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            with conn:
                stop = self._answer(conn)
            if stop and self._on_stop is not None:
                self._on_stop()

    def _answer(self, conn: socket.socket) -> bool:
        """Reads one request, writes one reply; True after a stop request."""
        conn.settimeout(30)
        _pid, uid, _gid = struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
        request: Dict[str, Any] = {}
        try:
            request = _read_request(conn)  # first: a reply before it would reset the connection
            if uid != os.geteuid():
                request = {}
                raise _Refused("the control socket takes commands from its owner only", 1)
            reply = self._dispatch(request)
        except _Refused as e:
            reply = {"ok": False, "error": e.message, "exit": e.exit_code}
        except CoreMachineError as e:
            reply = {"ok": False, "error": str(e), "exit": int(getattr(e, "exit_code", 1))}
        except Exception as e:  # reported to the client, never kills the owner
            reply = {"ok": False, "error": "%s: %s" % (type(e).__name__, e), "exit": 1}
        try:
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except OSError:
            pass  # the client went away: the act (if any) happened all the same
        return request.get("op") == "stop" and bool(reply.get("ok"))

    def _dispatch(self, request: Dict[str, Any]) -> Dict[str, Any]:
        op = request.get("op")
        if op == "stop":
            return {"ok": True, "pid": os.getpid()}
        if op == "act":
            from .commands import fire, parse_value
            event = request.get("event")
            value_json = request.get("value_json")
            ref = request.get("machine")
            if not isinstance(event, str) or not isinstance(value_json, (str, type(None))) \
                    or not isinstance(ref, (str, type(None))):
                raise _Refused("act needs an event name", 2)
            if self._machine_for is not None:
                machine = self._machine_for(ref)
            elif self._machine is not None:
                machine = self._machine
            else:
                raise _Refused("this process takes no actions", 1)
            snap = fire(machine, event, parse_value(value_json))
            return {"ok": True, "snapshot": snap.to_dict()}
        raise _Refused("unknown request %r" % (op,), 2)


class _Refused(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def _read_line(sock: socket.socket) -> bytes:
    """Up to and with the first newline (or what came before the peer closed)."""
    data = b""
    while not data.endswith(b"\n") and len(data) <= MAX_REQUEST:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _read_request(conn: socket.socket) -> Dict[str, Any]:
    data = _read_line(conn)
    if len(data) > MAX_REQUEST:
        raise _Refused("request too large", 2)
    try:
        request = json.loads(data)
    except ValueError:
        raise _Refused("the request is not JSON", 2) from None
    if not isinstance(request, dict):
        raise _Refused("the request is not a JSON object", 2)
    return request


# --- the client ---------------------------------------------------------------------

class NoControlSocket(Exception):
    """Nothing listens on the store's control socket."""


def request(directory: str, message: Dict[str, Any], timeout: float = 120) -> Dict[str, Any]:
    """Send ``message`` to the process holding ``directory``; returns its reply.

    :raises NoControlSocket: no socket, or nobody listening on it.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    with sock:
        try:
            _at(directory, sock.connect)
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise NoControlSocket(str(e)) from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = _read_line(sock)
    if not data:
        raise NoControlSocket("the process holding %s closed the connection" % directory)
    reply: Dict[str, Any] = json.loads(data)
    return reply


def wait_gone(directory: str, timeout: float) -> bool:
    """Wait until the process that owned ``directory``'s socket has closed it."""
    deadline = time.monotonic() + timeout
    path = os.path.join(directory, SOCKET_NAME)
    while os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
