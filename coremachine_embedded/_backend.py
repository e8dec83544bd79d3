"""The one place that picks the backend, from ``COREMACHINE_IMPL``.

``auto`` (default): the C extension; if it is missing or cannot load, the
pure-Python backend with a loud warning naming the real cause.  ``c``: the
extension or ImportError.  ``python``: the pure-Python backend.  Anything else:
ImportError.
"""
from __future__ import annotations

import os
import sys
from types import ModuleType

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


def _load() -> ModuleType:
    impl = os.environ.get("COREMACHINE_IMPL", "auto").strip().lower() or "auto"
    if impl == "python":
        from . import _pure
        return _pure
    if impl not in ("auto", "c"):
        raise ImportError("COREMACHINE_IMPL must be auto, c or python, not %r" % impl)
    try:
        # Not `from . import _core`: that reports a missing extension as "most
        # likely due to a circular import".  (No importlib: it costs modules.)
        __import__(__package__ + "._core")
        return sys.modules[__package__ + "._core"]
    except ImportError as e:
        if impl == "c":
            raise ImportError("COREMACHINE_IMPL=c but %s" % why_no_extension(e)) from e
        import warnings
        warnings.warn("coremachine_embedded: %s; using the much slower pure-Python backend"
                      % why_no_extension(e), RuntimeWarning, stacklevel=3)
        from . import _pure
        return _pure


impl = _load()
name: str = impl.NAME
