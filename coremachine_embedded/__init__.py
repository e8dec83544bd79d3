"""coremachine_embedded: a state machine on a signed, append-only, Merkle-verified
log (Hypercore 10/11 compatible), for Raspberry-Pi-class IoT nodes.

``backend`` says which implementation is in use (``"c"`` or ``"python"``); set
``COREMACHINE_IMPL=auto|c|python`` before importing to choose.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import _backend
from .core import Core, KeyPair
from .errors import (ArgumentTypeError, BlockNotAvailableError, ClosedError,
                     CoreMachineError, CorruptionError, DecodeError, ForkError,
                     FormatVersionError, InvalidArgumentError, InvalidProofError,
                     InvalidSignatureError, KeyMismatchError, MissingDependencyError,
                     OutOfRangeError, ReadOnlyError, SnapshotStaleError, StorageError,
                     StoreLockedError, StoreNotFoundError, TooLargeError)

__version__ = "0.1.0"

# The machine layer loads on first use, so that `import coremachine_embedded`
# stays light on a Pi Zero (no asyncio, no JSON libraries until needed).
_LAZY = {
    "create_machine": "machine", "MachineDefinition": "machine", "DefinitionError": "machine",
    "InvalidActionError": "machine", "GuardRejectedError": "machine",
    "Coremachine": "coremachine", "Snapshot": "coremachine", "MISSING": "coremachine",
    "NotAtHeadError": "coremachine", "ConcurrentActionError": "coremachine",
    "RestoreError": "coremachine", "EntryActionError": "coremachine",
}


if TYPE_CHECKING:  # type checkers see the real names; at run time they load lazily
    from .coremachine import (MISSING, ConcurrentActionError, Coremachine, EntryActionError,
                              NotAtHeadError, RestoreError, Snapshot)
    from .machine import (DefinitionError, GuardRejectedError, InvalidActionError,
                          MachineDefinition, create_machine)


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'coremachine_embedded' has no attribute %r" % name)
    import importlib
    value = getattr(importlib.import_module("." + module, __name__), name)
    globals()[name] = value
    return value

#: "c" (the Cython extension over csrc/) or "python" (the pure-Python backend).
backend: str = _backend.name

__all__ = [
    "Core", "KeyPair", "backend", "__version__", "create_machine", "Coremachine", "Snapshot",
    "MachineDefinition", "MISSING", "DefinitionError", "InvalidActionError",
    "GuardRejectedError", "NotAtHeadError", "ConcurrentActionError", "RestoreError",
    "EntryActionError",
    "ArgumentTypeError", "BlockNotAvailableError", "ClosedError", "CoreMachineError",
    "CorruptionError", "DecodeError", "ForkError", "FormatVersionError",
    "InvalidArgumentError", "InvalidProofError", "InvalidSignatureError", "KeyMismatchError",
    "MissingDependencyError", "OutOfRangeError", "ReadOnlyError", "SnapshotStaleError",
    "StorageError", "StoreLockedError", "StoreNotFoundError", "TooLargeError",
]
