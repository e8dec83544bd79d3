"""What a replicator did and why it dropped things, by name."""
from __future__ import annotations

from typing import Dict


class Counters(Dict[str, int]):
    """Counts of what an endpoint did and why it dropped things."""

    def inc(self, name: str, n: int = 1) -> None:
        self[name] = self.get(name, 0) + n
