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
from typing import Any, Dict, List, Optional

from . import Core, KeyPair, _json, caps
from .errors import CoreMachineError, InvalidArgumentError, StorageError

META = "coremachine.json"
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REJECTED = 0, 1, 2, 3, 4


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


def machine_for(store: str, ref: Optional[str]) -> Any:
    ref = ref or read_meta(store).get("machine")
    if not ref:
        raise CommandError("%s has no machine: give --machine MODULE:ATTR (or init the store "
                           "with one)" % store, EXIT_USAGE)
    return load_machine(ref)


# --- commands -----------------------------------------------------------------------

def keygen(keyfile: str, force: bool = False) -> str:
    """Write a new key pair's secret key (hex) to ``keyfile``, mode 0600."""
    kp = KeyPair.generate()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(keyfile, flags, 0o600)
    except FileExistsError:
        raise CommandError("%s exists (use --force to replace it)" % keyfile) from None
    with os.fdopen(fd, "w") as f:
        f.write(kp.secret_key.hex() + "\n")
    os.chmod(keyfile, 0o600)
    return kp.public_key.hex()


def read_keyfile(keyfile: str) -> KeyPair:
    try:
        with open(keyfile) as f:
            raw = bytes.fromhex(f.read().strip())
    except (OSError, ValueError) as e:
        raise CommandError("cannot read key file %s: %s" % (keyfile, e)) from None
    if len(raw) == 32:
        return KeyPair.from_seed(raw)
    if len(raw) == 64 and KeyPair.from_seed(raw[:32]).secret_key == raw:
        return KeyPair.from_seed(raw[:32])
    raise CommandError("%s does not hold a 64-byte secret key (or a 32-byte seed)" % keyfile)


def init(store: str, machine_ref: str, keyfile: Optional[str], compat: bool,
         durability: str) -> Core:
    """Create a writer store for a machine definition."""
    from .machine import create_machine
    create_machine(load_machine(machine_ref))  # fail before creating anything
    if os.path.exists(os.path.join(store, "header")):
        raise CommandError("%s already holds a store" % store)
    kp = read_keyfile(keyfile) if keyfile else KeyPair.generate()
    core = Core(store, key_pair=kp, compat=compat, durability=durability)
    with open(os.path.join(store, META), "w") as f:
        json.dump({"machine": machine_ref, "durability": durability,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}, f, indent=1)
    return core


def act(store: str, event: str, value_json: Optional[str], machine_ref: Optional[str]) -> Any:
    from .coremachine import Coremachine
    from .machine import InvalidActionError
    definition = machine_for(store, machine_ref)
    value: Any = None
    if value_json is not None:
        try:
            value = _json.loads(value_json)
        except ValueError as e:
            raise CommandError("VALUE_JSON is not JSON: %s" % e, EXIT_USAGE) from None
    with open_store(store) as core:
        machine = Coremachine(core, definition)
        try:
            return machine.action(event) if value_json is None else machine.action(event, value)
        except InvalidActionError as e:
            raise CommandError(e.message, EXIT_REJECTED) from None


def state(store: str, machine_ref: Optional[str]) -> Dict[str, Any]:
    from .coremachine import Coremachine
    with open_store(store) as core:
        machine = Coremachine(core, machine_for(store, machine_ref))
        return {"state": machine.state, "context": machine.context, "length": core.length,
                "fork": core.fork, "final": machine.is_final,
                "available": machine.available_actions()}


def history(store: str, start: Optional[int], end: Optional[int]) -> List[Dict[str, Any]]:
    """Entries [start, end) as recorded: index, event, value, state, context, fork.
    Reads the blocks directly: no machine definition needed."""
    from . import export as exporting
    with open_store(store) as core:
        return list(exporting.rows(core, start or 0, end))


def export(store: str, fmt: str, output: Optional[str]) -> int:
    """Write the store's entries as ``fmt`` (jsonl, csv, sqlite) to ``output``
    (None: standard output); returns how many."""
    from . import export as exporting
    if fmt == "sqlite" and output is None:
        raise CommandError("an SQLite export needs a file: give -o FILE", EXIT_USAGE)
    with open_store(store) as core:
        rows = exporting.rows(core)
        if fmt == "sqlite":
            return exporting.write(rows, fmt, path=output)
        if output is None:
            return exporting.write(rows, fmt, sys.stdout)
        with open(output, "w", encoding="utf-8", newline="") as f:
            return exporting.write(rows, fmt, f)


def verify(store: str, progress: Any = None) -> Dict[str, Any]:
    with open_store(store) as core:
        checked = core.verify(progress)
        return {"blocks": checked, "length": core.length, "fork": core.fork,
                "signature": bool(core.signature)}


def info(store: str) -> Dict[str, Any]:
    meta = read_meta(store)
    with open_store(store) as core:
        size = sum(os.path.getsize(os.path.join(store, f)) for f in os.listdir(store)
                   if os.path.isfile(os.path.join(store, f)))
        return {"key": core.key.hex(), "discovery_key": core.discovery_key.hex(),
                "public_key": core.public_key.hex(), "length": core.length,
                "contiguous_length": core.contiguous_length, "fork": core.fork,
                "byte_length": core.byte_length, "format_version": caps.FORMAT_VERSION,
                "mode": "compat (Hypercore 10)" if core.compat else "manifest (Hypercore 11)",
                "role": "writer" if core.writable else "replica",
                "durability": core.durability, "size_on_disk": size,
                "machine": meta.get("machine"), "backend": _backend_name()}


def _backend_name() -> str:
    from . import backend
    return backend


def graph(machine_ref: str, fmt: str, output: Optional[str], store: Optional[str]) -> bytes:
    from . import graph as graphs
    definition = load_machine(machine_ref)
    current = None
    if store:
        current = state(store, machine_ref)["state"]
    return graphs.render(definition, fmt, output, current=current)


def check_store_arg(store: str) -> None:
    if not os.path.isdir(store):
        raise StorageError("no store directory", store)
    if not os.path.exists(os.path.join(store, "header")):
        raise InvalidArgumentError("%s is not a store (no header file)" % store)
