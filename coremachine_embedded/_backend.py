"""The one place that picks the backend, from ``COREMACHINE_IMPL``.

``auto`` (default): the C extension; if it is missing, the pure-Python backend
with a loud warning saying how to build the extension.  ``c``: the extension or
ImportError.  ``python``: the pure-Python backend.  Anything else: ImportError.
With the C backend, ``speedups`` is the C twin of ``snapshot.copy_json`` and
``_json``'s fast-path check (None with the pure-Python backend).
"""
from __future__ import annotations

import os
import warnings
from types import ModuleType
from typing import Optional

_BUILD_HINT = ("build it with `make build` (or `pip install .`); it needs a C compiler, "
               "Cython and libsodium-dev")


def _load() -> ModuleType:
    impl = os.environ.get("COREMACHINE_IMPL", "auto").strip().lower() or "auto"
    if impl == "python":
        from . import _pure
        return _pure
    if impl not in ("auto", "c"):
        raise ImportError("COREMACHINE_IMPL must be auto, c or python, not %r" % impl)
    try:
        from . import _core
        return _core
    except ImportError as e:
        if impl == "c":
            raise ImportError("COREMACHINE_IMPL=c but the C extension is not built (%s): %s"
                              % (e, _BUILD_HINT)) from e
        warnings.warn("coremachine_embedded: the C extension is not built (%s); using the "
                      "much slower pure-Python backend. To fix: %s" % (e, _BUILD_HINT),
                      RuntimeWarning, stacklevel=3)
        from . import _pure
        return _pure


def _load_speedups() -> Optional[ModuleType]:
    """With the C backend, the C twins of two hot Python functions
    (_speedups.pyx); None otherwise, and the Python versions run."""
    if impl.NAME != "c":
        return None
    try:
        from . import _speedups
        return _speedups
    except ImportError:
        return None


impl = _load()
name: str = impl.NAME
speedups = _load_speedups()
