"""Fixtures of the fault tests."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.mqtt_broker import MOSQUITTO, NO_MOSQUITTO, Broker


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A fresh Mosquitto broker on 127.0.0.1 for one test (skipped without mosquitto)."""
    if MOSQUITTO is None:
        pytest.skip(NO_MOSQUITTO)
    b = Broker()
    yield b
    b.close()
