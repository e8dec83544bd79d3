"""Shared by the test_coremachine_*.py modules: real cores in tmp_path
(closed at the end), the README machine, a counter machine, block readers."""
from __future__ import annotations

import asyncio
import json
from typing import Any, Dict, List, Tuple

import coremachine_embedded as cm
from coremachine_embedded import Coremachine, create_machine


def run(coro: Any, timeout: float = 10) -> Any:
    """asyncio.run with a deadline: a hang is a failure, not a stuck suite."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


class Stores:
    """Real writer cores (and replicas) in tmp_path, closed at the end."""

    def __init__(self, tmp_path: Any) -> None:
        self.tmp_path = tmp_path
        self.cores: List[cm.Core] = []

    def writer(self, name: str = "w") -> cm.Core:
        path = self.tmp_path / name
        core = cm.Core(path, key_pair=cm.KeyPair.generate()) if not path.exists() else \
            cm.Core(path)
        self.cores.append(core)
        return core

    def replica(self, key: bytes, name: str = "r") -> cm.Core:
        core = cm.Core(self.tmp_path / name, key=key)
        self.cores.append(core)
        return core

    def reopen(self, core: cm.Core) -> cm.Core:
        core.close()
        again = cm.Core(core.directory)
        self.cores.append(again)
        return again

    def close(self) -> None:
        for core in self.cores:
            core.close()


def start(ctx: Dict[str, Any], counter: Any) -> None:
    ctx["running"] = True
    ctx["counter"] = counter


def increment(ctx: Dict[str, Any], _: Any) -> None:
    ctx["counter"] += 1


def stop(ctx: Dict[str, Any], final_count: Any) -> None:
    ctx["running"] = False
    if final_count is not None:
        ctx["counter"] = final_count


README = {
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": start}}},
        "running": {"on": {
            "INCREMENT": {"target": "running", "action": increment},
            "STOP": {"target": "idle", "action": stop},
        }},
    },
}


def readme_machine() -> cm.MachineDefinition:
    return create_machine(README)


def counter_machine(**extra: Any) -> cm.MachineDefinition:
    def tick(ctx: Dict[str, Any], value: Any) -> None:
        ctx["n"] += 1 if value is None else value
    cfg: Dict[str, Any] = {"initial": "a", "context": {"n": 0}, "states": {
        "a": {"on": {"TICK": {"action": tick}, "GO": {"target": "b", "action": tick}}},
        "b": {"on": {"TICK": {"action": tick}, "GO": {"target": "a", "action": tick}}}}}
    cfg.update(extra)
    return create_machine(cfg)


def raw_blocks(core: cm.Core) -> List[bytes]:
    return [core.get(i) for i in range(core.length)]


def blocks(core: cm.Core) -> List[Dict[str, Any]]:
    return [json.loads(b) for b in raw_blocks(core)]


def frozen(m: Coremachine) -> Tuple[Any, ...]:
    """Everything that must not change when an action fails."""
    return (m.state, m.context, m.core.length, m.core.fork, raw_blocks(m.core), m.length,
            m.snapshot())


def increment_n(ctx: Dict[str, Any], _: Any) -> None:
    ctx["n"] += 1
