"""Fixtures shared by the unit tests."""
from __future__ import annotations

from typing import Any, Iterator

import pytest

from tests.unit.coremachine_helpers import Stores


@pytest.fixture
def stores(tmp_path: Any) -> Iterator[Stores]:
    """Real cores in tmp_path, closed at the end of the test."""
    s = Stores(tmp_path)
    yield s
    s.close()
