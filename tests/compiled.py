"""The compiled extension modules, for tests that compare them with their
Python twins directly (whatever COREMACHINE_IMPL selects)."""
from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def extension(name: str) -> ModuleType:
    """``coremachine_embedded.<name>`` (``_core``, ``_speedups``); if it is not
    built on a COREMACHINE_IMPL=python run, the calling test module is skipped."""
    try:
        return importlib.import_module("coremachine_embedded." + name)
    except ImportError as e:  # pragma: no cover - depends on the build
        if os.environ.get("COREMACHINE_IMPL") == "python":
            pytest.skip("the C extension is not built (COREMACHINE_IMPL=python run): %s" % e,
                        allow_module_level=True)
        raise
