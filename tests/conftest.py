"""Shared fixtures.  The whole suite runs once per backend (``make test`` sets
COREMACHINE_IMPL=c, then =python); tests use the public API, so they exercise
whichever backend is selected."""
from __future__ import annotations

import json
import os
import pathlib

import pytest
from hypothesis import HealthCheck, settings

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS_PATH = ROOT / "tests" / "interop" / "vectors" / "hypercore-v11.json"

settings.register_profile("default", max_examples=60, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=120, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("expensive", max_examples=1000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def vectors() -> dict:
    with open(VECTORS_PATH) as f:
        return json.load(f)
