"""The backend contract, and the one place that picks a backend.

:class:`Backend` is what both backends are: the C extension
(``_core.pyx`` over csrc/, typed by ``_core.pyi``) and the pure-Python twin
(``_pure``).  ``mypy --strict`` checks both modules against it where
:func:`_load` returns them, and ``tests/unit/test_backend_contract.py`` checks
the stub against the compiled extension.

``COREMACHINE_IMPL`` picks one: ``auto`` (default): the C extension; if it is
missing or cannot load, the pure-Python backend with a loud warning naming the
real cause.  ``c``: the extension or ImportError.  ``python``: the pure-Python
backend.  Anything else: ImportError.  With the C backend, ``speedups`` holds
the C twins of ``snapshot.copy_json`` and ``_json``'s fast-path check (None
with the pure-Python backend, whose Python versions are the reference).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the contract is for mypy; at run time it would only cost import time
    from typing import Any, Dict, List, Optional, Protocol, Sequence, Tuple, Type

    from . import proofs
    from .caps import Durability
    from .encoding import Node

    class Log(Protocol):
        """A signed log in a store (csrc/cm.h's ``cm_core_*``).  Not thread-safe:
        ``Core`` serialises calls."""

        @property
        def length(self) -> int: ...
        @property
        def contiguous(self) -> int: ...
        @property
        def fork(self) -> int: ...
        @property
        def byte_length(self) -> int: ...
        @property
        def writable(self) -> bool: ...
        @property
        def readonly(self) -> bool: ...
        @property
        def compat(self) -> bool: ...
        @property
        def key(self) -> bytes: ...
        @property
        def discovery_key(self) -> bytes: ...
        @property
        def public_key(self) -> bytes: ...
        @property
        def manifest(self) -> Optional[bytes]: ...
        @property
        def roots(self) -> List[Node]: ...
        @property
        def durability(self) -> Durability: ...
        @property
        def recovery(self) -> Dict[str, int]: ...

        def tree_hash(self) -> bytes: ...
        def signature(self) -> Optional[bytes]: ...
        def append(self, blocks: Sequence[bytes]) -> int: ...
        def truncate(self, length: int, fork: int) -> None: ...
        def flush(self) -> None: ...
        def checkpoint(self) -> None: ...
        def close(self) -> None: ...
        def block_size(self, index: int) -> int: ...
        def get(self, index: int) -> bytes: ...
        def get_range(self, start: int, end: int) -> List[bytes]: ...
        def get_node(self, index: int) -> Node: ...
        def has_node(self, index: int) -> bool: ...
        def proof(self, request: int = 0, block: Optional[int] = None, nodes: int = 0,
                  upgrade: Optional[Tuple[int, int]] = None, manifest: bool = False) -> bytes: ...
        def missing_nodes(self, index: int) -> int: ...
        def apply_proof(self, message: bytes) -> proofs.ApplyResult: ...
        def apply_run(self, start: int, values: Sequence[bytes]) -> int: ...


    class OpenLog(Protocol):
        """The ``Log`` class of a backend: opens (or creates) a store, or takes a
        read-only snapshot of one.  ``storage`` is a directory path or a
        ``storage.Storage``."""

        def __call__(self, storage: Any, *, create: bool = False,
                     secret_key: Optional[bytes] = None, key: Optional[bytes] = None,
                     manifest: Optional[bytes] = None, compat: bool = False,
                     durability: Durability = Durability.SYNC, checkpoint_bytes: int = 0,
                     max_block_size: int = 0, readonly: bool = False) -> Log: ...


    class Table(Protocol):
        """The compiled dispatch of a machine (csrc/cm.h's ``cm_table``)."""

        def set(self, state: int, event: int, candidates: Tuple[Any, ...]) -> None: ...
        def lookup(self, state: int, event: int) -> Optional[Tuple[Any, ...]]: ...


    class NewTable(Protocol):
        def __call__(self, n_states: int, n_events: int) -> Table: ...


    class Speedups(Protocol):
        """_speedups.pyx: C twins of two hot Python functions of the action path."""

        def copy_json(self, value: Any) -> Any: ...
        def json_safe(self, value: Any) -> bool: ...

    class StreamPush(Protocol):
        """The sending half of a secret-stream (csrc/cm.h's ``cm_ss_*``)."""

        @property
        def header(self) -> bytes: ...
        def seal(self, messages: Sequence[bytes]) -> bytes: ...


    class NewStreamPush(Protocol):
        def __call__(self, key: bytes, header: Optional[bytes] = None) -> StreamPush: ...


    class StreamPull(Protocol):
        """The receiving half of a secret-stream."""

        def open(self, data: Any, start: int = 0) -> Tuple[List[bytes], int]: ...


    class NewStreamPull(Protocol):
        def __call__(self, key: bytes, header: bytes) -> StreamPull: ...


    class Backend(Protocol):
        """Everything a backend module exports."""

        NAME: str

        # Classes, read-only (a settable protocol member would have to match exactly).
        @property
        def Log(self) -> OpenLog: ...
        @property
        def Table(self) -> NewTable: ...
        @property
        def ApplyResult(self) -> Type[proofs.ApplyResult]: ...
        @property
        def Check(self) -> Type[proofs.Check]: ...
        @property
        def StreamPush(self) -> NewStreamPush: ...
        @property
        def StreamPull(self) -> NewStreamPull: ...

        def full_roots(self, length: int) -> List[int]: ...
        def hash_leaf(self, block_index: int, data: bytes) -> Node: ...
        def hash_parent(self, a: Node, b: Node, index: int) -> Node: ...
        def tree_hash(self, roots: List[Node]) -> bytes: ...
        def discovery_key(self, key: bytes) -> bytes: ...
        def keypair_from_seed(self, seed: bytes) -> Tuple[bytes, bytes]: ...
        def keypair_generate(self) -> Tuple[bytes, bytes]: ...
        def sign(self, message: bytes, secret_key: bytes) -> bytes: ...
        def verify(self, message: bytes, signature: bytes, public_key: bytes) -> bool: ...
        def default_manifest(self, public_key: bytes) -> bytes: ...
        def manifest_hash(self, encoded: bytes) -> bytes: ...
        def check_signature(self, key: bytes, manifest: Optional[bytes], tree_hash: bytes,
                            length: int, fork: int, signature: bytes) -> None: ...
        def check_proof(self, key: bytes, manifest: Optional[bytes], roots: List[Node],
                        message: bytes) -> proofs.Check: ...
        def aead_seal(self, key: bytes, nonce: bytes, ad: bytes, message: bytes) -> bytes: ...
        def aead_open(self, key: bytes, nonce: bytes, ad: bytes,
                      ciphertext: bytes) -> Optional[bytes]: ...
        def noise_dh(self, secret_key: bytes, public_key: bytes) -> bytes: ...
        def noise_encrypt(self, key: bytes, counter: int, ad: bytes, plaintext: bytes) -> bytes: ...
        def noise_decrypt(self, key: bytes, counter: int, ad: bytes,
                          ciphertext: bytes) -> Optional[bytes]: ...


_BUILD_HINT = ("build it with `make build` (or `pip install .`); it needs a C compiler, "
               "the Python headers and libsodium-dev")
# Written by setup.py when an install left the extension out, with the reason.
_NOTE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_no_extension.txt")


def why_no_extension(error: ImportError) -> str:
    """What went wrong importing the C extension, in words a user can act on."""
    if isinstance(error, ModuleNotFoundError) and error.name == __package__ + "._core":
        try:
            with open(_NOTE) as f:
                return "the C extension was left out at install time: " + f.read().strip()
        except OSError:
            return "the C extension is not built: " + _BUILD_HINT
    cause = "the C extension is built but cannot be loaded (%s)" % error
    if "libsodium" in str(error):
        cause += ": install libsodium (apt-get install libsodium23)"
    return cause


def _load() -> Backend:
    impl = os.environ.get("COREMACHINE_IMPL", "auto").strip().lower() or "auto"
    if impl == "python":
        from . import _pure
        return _pure
    if impl not in ("auto", "c"):
        raise ImportError("COREMACHINE_IMPL must be auto, c or python, not %r" % impl)
    try:
        # First __import__: `from . import _core` alone reports a missing
        # extension as "most likely due to a circular import".
        __import__(__package__ + "._core")
        from . import _core
        return _core
    except ImportError as e:
        if impl == "c":
            raise ImportError("COREMACHINE_IMPL=c but %s" % why_no_extension(e)) from e
        import warnings
        warnings.warn("coremachine_embedded: %s; using the much slower pure-Python backend"
                      % why_no_extension(e), RuntimeWarning, stacklevel=3)
        from . import _pure
        return _pure


def _load_speedups() -> Optional[Speedups]:
    if impl.NAME != "c":
        return None
    try:
        from . import _speedups
        return _speedups
    except ImportError:
        return None


impl: Backend = _load()
name: str = impl.NAME
speedups: "Optional[Speedups]" = _load_speedups()
