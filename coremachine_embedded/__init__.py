"""coremachine_embedded: a state machine on a signed, append-only, Merkle-verified
log (Hypercore 10/11 compatible), for Raspberry-Pi-class IoT nodes.

``backend`` says which implementation is in use (``"c"`` or ``"python"``); set
``COREMACHINE_IMPL=auto|c|python`` before importing to choose.
"""
from __future__ import annotations

from . import _backend
from .core import Core, KeyPair
from .errors import (ArgumentTypeError, BlockNotAvailableError, ClosedError,
                     CoreMachineError, CorruptionError, DecodeError, ForkError,
                     FormatVersionError, InvalidArgumentError, InvalidProofError,
                     InvalidSignatureError, KeyMismatchError, OutOfRangeError, ReadOnlyError,
                     StorageError, StoreLockedError, StoreNotFoundError, TooLargeError)

__version__ = "0.1.0"

#: "c" (the Cython extension over csrc/) or "python" (the pure-Python backend).
backend: str = _backend.name

__all__ = [
    "Core", "KeyPair", "backend", "__version__",
    "ArgumentTypeError", "BlockNotAvailableError", "ClosedError", "CoreMachineError",
    "CorruptionError", "DecodeError", "ForkError", "FormatVersionError",
    "InvalidArgumentError", "InvalidProofError", "InvalidSignatureError", "KeyMismatchError",
    "OutOfRangeError", "ReadOnlyError", "StorageError", "StoreLockedError",
    "StoreNotFoundError", "TooLargeError",
]
