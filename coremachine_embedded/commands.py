"""The store commands of ``coremachine``: keygen, init, act, state, history,
verify, info, graph and bench (``cli.py`` wires them to argparse).

``init`` writes ``coremachine.json`` next to the store files with the machine
reference and the durability, so later commands need only the store path.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import Core, KeyPair, _json, caps
from .errors import (CoreMachineError, SnapshotStaleError, StoreLockedError,
                     StoreNotFoundError)
from .storage import insecure

META = "coremachine.json"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REJECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
#: How long ``pull`` without ``--live`` waits, unless ``--timeout`` says otherwise.
DEFAULT_PULL_TIMEOUT = 60.0
FOLLOW_POLL = 0.25   # seconds between the read-only snapshots of history --follow


class CommandError(CoreMachineError):
    """A command cannot do what was asked; ``exit_code`` says how to exit."""

    code = "COMMAND"

    def __init__(self, message: str, exit_code: int = EXIT_FAIL) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


def load_machine(ref: str) -> Any:
    """``package.module:attr`` or ``path/to/file.py:attr`` -> the definition."""
    target, sep, attr = ref.rpartition(":")
    if not sep or not target or not attr:
        raise CommandError("--machine takes MODULE:ATTR or path/to/file.py:ATTR, not %r" % ref,
                           EXIT_USAGE)
    if target.endswith(".py") or os.sep in target:
        path = os.path.abspath(target)
        if not os.path.exists(path):
            raise CommandError("machine file %s does not exist" % path)
        spec = importlib.util.spec_from_file_location("_coremachine_user_%d" % abs(hash(path)),
                                                      path)
        if spec is None or spec.loader is None:
            raise CommandError("cannot load %s" % path)
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, os.path.dirname(path))
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(os.path.dirname(path))
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as e:
            raise CommandError("cannot import %s: %s" % (target, e)) from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise CommandError("%s has no attribute %r" % (target, attr)) from None


def read_meta(store: str) -> Dict[str, Any]:
    path = os.path.join(store, META)
    try:
        with open(path) as f:
            meta: Dict[str, Any] = json.load(f)
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise CommandError("%s is not valid JSON: %s" % (path, e)) from None
    return meta


def open_store(store: str, durability: Optional[str] = None) -> Core:
    meta = read_meta(store)
    return Core(store, durability=durability or meta.get("durability", "sync"))


def open_to_read(store: str) -> Core:
    """A read-only snapshot of ``store``'s newest committed state: it takes no
    lock, so reading never stops a process that holds the store (serve, pull
    --live, a firmware script) or one that is starting, and never writes."""
    return Core(store, readonly=True)


def machine_for(store: str, ref: Optional[str]) -> Any:
    ref = ref or read_meta(store).get("machine")
    if not ref:
        raise CommandError("%s has no machine: give --machine MODULE:ATTR (or init the store "
                           "with one)" % store, EXIT_USAGE)
    return load_machine(ref)


# --- commands -----------------------------------------------------------------------

def keygen(keyfile: str, force: bool = False) -> KeyPair:
    """Write a new key pair's secret key (hex) to ``keyfile``: created
    exclusively, never through a symlink, mode 0600 (``force`` removes an
    existing regular file first)."""
    kp = KeyPair.generate()
    if os.path.islink(keyfile):
        raise CommandError("%s: %s" % (keyfile, insecure(keyfile)))
    if force and os.path.lexists(keyfile):
        os.unlink(keyfile)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(keyfile, flags, 0o600)
    except FileExistsError:
        raise CommandError("%s exists (use --force to replace it)" % keyfile) from None
    except OSError as e:
        raise CommandError("cannot write key file %s: %s" % (keyfile, e)) from None
    with os.fdopen(fd, "w") as f:
        f.write(kp.secret_key.hex() + "\n")
    return kp


def core_key(kp: KeyPair, compat: bool = False) -> bytes:
    """The key readers pull with for a writer with ``kp``: the hash of its
    default manifest (Hypercore 11), or the public key in compat mode."""
    if compat:
        return kp.public_key
    from . import _backend
    return bytes(_backend.impl.manifest_hash(_backend.impl.default_manifest(kp.public_key)))


def read_keyfile(keyfile: str) -> KeyPair:
    """The key pair in ``keyfile`` (a regular file only its owner can read)."""
    try:
        fd = os.open(keyfile, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        why = insecure(keyfile)
        raise CommandError("cannot read key file %s: %s" % (keyfile, why or e)) from None
    why = insecure(keyfile, os.fstat(fd))
    if why:
        os.close(fd)
        raise CommandError("%s: %s" % (keyfile, why))
    try:
        with os.fdopen(fd) as f:
            raw = bytes.fromhex(f.read().strip())
    except (OSError, ValueError) as e:
        raise CommandError("cannot read key file %s: %s" % (keyfile, e)) from None
    if len(raw) == 32:
        return KeyPair.from_seed(raw)
    if len(raw) == 64 and KeyPair.from_seed(raw[:32]).secret_key == raw:
        return KeyPair.from_seed(raw[:32])
    raise CommandError("%s does not hold a 64-byte secret key (or a 32-byte seed)" % keyfile)


def init(store: str, machine_ref: str, keyfile: Optional[str], compat: bool,
         durability: str) -> Tuple[Core, bool]:
    """Create a writer store for a machine definition; returns it and whether it
    was there already.  Like ``git init``, running it again on a store created
    for the same machine (and key) changes nothing; another machine is an error."""
    from .machine import create_machine
    create_machine(load_machine(machine_ref))  # fail before creating anything
    kp = read_keyfile(keyfile) if keyfile else None
    if os.path.exists(os.path.join(store, "header")):
        existing = read_meta(store).get("machine")
        if existing != machine_ref:
            raise CommandError("%s already holds a store for %s" % (store, existing or
                                                                   "no machine"))
        core = open_store(store)
        if not core.writable or (kp is not None and kp.public_key != core.public_key) \
                or compat != core.compat:
            core.close()
            raise CommandError("%s already holds a store for %s with another key or mode"
                               % (store, machine_ref))
        return core, True
    core = Core(store, key_pair=kp or KeyPair.generate(), compat=compat, durability=durability)
    with open(os.path.join(store, META), "w") as f:
        json.dump({"machine": machine_ref, "durability": durability,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    return core, False


def parse_value(value_json: Optional[str]) -> Any:
    """VALUE_JSON as given on the command line (MISSING when absent)."""
    from .coremachine import MISSING
    if value_json is None:
        return MISSING
    try:
        return _json.loads(value_json)
    except ValueError as e:
        raise CommandError("VALUE_JSON is not JSON: %s" % e, EXIT_USAGE) from None


def fire(machine: Any, event: str, value: Any) -> Any:
    """``machine.action(event, value)``; a rejection, or an exception from the
    machine's own guards and actions, is a CommandError with exit code 4."""
    from .coremachine import MISSING
    from .machine import InvalidActionError
    state = machine.state
    try:
        return machine.action(event) if value is MISSING else machine.action(event, value)
    except InvalidActionError as e:
        raise CommandError(e.message, EXIT_REJECTED) from None
    except CoreMachineError:
        raise
    except Exception as e:  # raised by the definition's code: nothing was written
        shown = event if value is MISSING else "%s %s" % (event, _json.dumps(value).decode())
        raise CommandError("%s in state %s: the machine raised %s: %s (nothing was written)"
                           % (shown, state, type(e).__name__, e), EXIT_REJECTED) from e


def act(store: str, event: str, value_json: Optional[str],
        machine_ref: Optional[str]) -> Dict[str, Any]:
    """Fire ``event`` on the store's machine; returns the new snapshot as a dict.
    A store held by a running process (``serve``, ``pull --live``, a firmware
    script with a ControlServer) is acted on by that process."""
    from .coremachine import Coremachine
    value = parse_value(value_json)
    try:
        core = open_store(store)
    except StoreLockedError as locked:
        reply = _ask_holder(store, {"op": "act", "event": event, "value_json": value_json,
                                    "machine": machine_ref}, locked)
        remote: Dict[str, Any] = reply["snapshot"]
        return remote
    with core:
        machine = Coremachine(core, machine_for(store, machine_ref))
        snap: Dict[str, Any] = fire(machine, event, value).to_dict()
        return snap


def stop(store: str, timeout: float) -> int:
    """Ask the process holding ``store`` to stop; returns its pid once it has
    closed the store."""
    from . import control
    if not os.path.exists(os.path.join(store, "header")):
        raise StoreNotFoundError("no such store", os.path.join(store, "header"))
    deadline = time.monotonic() + timeout
    while True:
        try:
            pid = int(_ask_holder(store, {"op": "stop"}, None)["pid"])
            break
        except CommandError:
            # held, but its control socket not up yet (a process just started)?
            if time.monotonic() > deadline or not _held(store):
                raise
            time.sleep(0.05)
    if not control.wait_gone(store, timeout):
        raise CommandError("process %d holding %s did not stop within %gs" % (pid, store, timeout),
                           EXIT_TIMEOUT)
    return pid


def _held(store: str) -> bool:
    """Whether some process holds the store's lock, read from /proc/locks: the
    check takes no lock that a process opening the store could run into."""
    try:
        st = os.stat(os.path.join(store, "header"))
        with open("/proc/locks") as f:
            locks = f.read().split()
    except OSError:
        return False
    return "%02x:%02x:%d" % (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino) in locks


def _ask_holder(store: str, message: Dict[str, Any],
                locked: Optional[StoreLockedError]) -> Dict[str, Any]:
    from . import control
    try:
        reply = control.request(store, message)
    except control.NoControlSocket:
        if locked is None:
            raise CommandError("no process holding %s takes commands (no %s)"
                               % (store, control.SOCKET_NAME)) from None
        raise CommandError("%s; the process holding it takes no commands (start it with "
                           "coremachine serve, or act from that process)" % locked) from None
    if not reply.get("ok"):
        raise CommandError(str(reply.get("error")), int(reply.get("exit", EXIT_FAIL)))
    return reply


def state(store: str, machine_ref: Optional[str]) -> Dict[str, Any]:
    from .coremachine import Coremachine
    with open_to_read(store) as core:
        machine = Coremachine(core, machine_for(store, machine_ref))
        return {"state": machine.state, "context": machine.context, "length": core.length,
                "fork": core.fork, "final": machine.is_final,
                "available": machine.available_actions()}


def history(store: str, start: Optional[int], end: Optional[int]) -> Iterator[Dict[str, Any]]:
    """Entries [start, end) as recorded: index, fork, event, value, state, context,
    one at a time.  Reads the blocks directly: no machine definition needed."""
    from . import export as exporting
    with open_to_read(store) as core:
        yield from exporting.rows(core, start or 0, end)


def follow_history(store: str, start: Optional[int], poll: float = FOLLOW_POLL,
                   stop: Optional[Callable[[], bool]] = None) -> Iterator[Dict[str, Any]]:
    """:func:`history` from ``start``, then each new entry as the process that
    holds the store (a gateway, a ``pull --live``, a writer) commits it: a new
    read-only snapshot every ``poll`` seconds, so only verified, committed
    blocks are shown.  Runs until ``stop()`` is true (never, by default).  A
    new fork goes on from the lesser of the next index and the new length."""
    from . import export as exporting
    next_index, fork = max(0, start or 0), None
    while stop is None or not stop():
        try:
            with open_to_read(store) as core:
                if fork is not None and core.fork != fork:
                    next_index = min(next_index, core.contiguous_length)
                fork = core.fork
                for row in exporting.rows(core, next_index):
                    next_index = row["index"] + 1
                    yield row
        except SnapshotStaleError:
            continue   # truncated while read: read the new state at once
        time.sleep(poll)


def export(store: str, fmt: str, output: Optional[str]) -> int:
    """Write the store's entries as ``fmt`` (jsonl, csv, sqlite) to ``output``
    (None: standard output); returns how many.  A read-only snapshot: a store
    that the gateway or a pull --live holds is exported as it runs."""
    from . import export as exporting
    if fmt == "sqlite" and output is None:
        raise CommandError("an SQLite export needs a file: give -o FILE", EXIT_USAGE)
    with open_to_read(store) as core:
        rows = exporting.rows(core)
        if fmt == "sqlite":
            return exporting.write(rows, fmt, path=output)
        if output is None:
            return exporting.write(rows, fmt, sys.stdout)
        with open(output, "w", encoding="utf-8", newline="") as f:
            return exporting.write(rows, fmt, f)


def verify(store: str, progress: Any = None) -> Dict[str, Any]:
    with open_to_read(store) as core:
        warnings: List[str] = []
        checked = core.verify(progress, warnings)
        return {"blocks": checked, "length": core.length, "fork": core.fork,
                "signature": bool(core.signature), "warnings": warnings}


def info(store: str) -> Dict[str, Any]:
    meta = read_meta(store)
    with open_to_read(store) as core:
        size = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store)
                   if os.path.isfile(os.path.join(store, f)))
        return {"key": core.key.hex(), "discovery_key": core.discovery_key.hex(),
                "public_key": core.public_key.hex(), "length": core.length,
                "contiguous_length": core.contiguous_length, "fork": core.fork,
                "byte_length": core.byte_length, "format_version": caps.FORMAT_VERSION,
                "mode": "compat (Hypercore 10)" if core.compat else "manifest (Hypercore 11)",
                "role": "writer" if os.path.exists(os.path.join(store, "secret_key"))
                else "replica",
                "durability": meta.get("durability") or core.durability, "size_on_disk": size,
                "machine": meta.get("machine"), "backend": _backend_name()}


def _backend_name() -> str:
    from . import backend
    return backend


def graph(machine_ref: Optional[str], fmt: str, output: Optional[str],
          store: Optional[str]) -> bytes:
    """A diagram of ``machine_ref`` (default: the machine ``store`` was created
    for), with the store's current state highlighted."""
    from . import graph as graphs
    if machine_ref is None and store is None:
        raise CommandError("give --machine MODULE:ATTR or --store STORE", EXIT_USAGE)
    current = None
    if store:
        current = state(store, machine_ref)["state"]
        machine_ref = machine_ref or read_meta(store)["machine"]
    assert machine_ref is not None
    return graphs.render(load_machine(machine_ref), fmt, output, current=current)
