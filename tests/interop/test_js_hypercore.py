"""Random seeds and blocks through the real npm ``hypercore`` (11.x) and through
our core: identical keys, discovery keys, tree hashes and signatures after every
append call and truncation, in manifest and compat mode."""
from __future__ import annotations

import random

import pytest

import coremachine_embedded as cm
from tests.interop import jsenv


@pytest.fixture(scope="module")
def hypercore_env() -> str:
    return jsenv.ensure("hypercore11")


def random_cases(rng: random.Random, count: int) -> list:
    cases = []
    for n in range(count):
        ops = []
        length = 0
        for _ in range(rng.randrange(1, 12)):
            if length and rng.random() < 0.15:
                length = rng.randrange(length + 1)
                ops.append({"truncate": length})
                continue
            blocks = [rng.randbytes(rng.choice([0, 1, 7, 64, 300, 5000]))
                      for _ in range(rng.randrange(1, 9))]
            ops.append({"append": [b.hex() for b in blocks]})
            length += len(blocks)
        cases.append({"seed": rng.randbytes(32).hex(), "compat": n % 3 == 0, "ops": ops})
    return cases


def test_same_keys_hashes_and_signatures_as_js(hypercore_env: str, tmp_path) -> None:
    rng = random.Random(20261127)
    cases = random_cases(rng, 24)
    js = jsenv.run(hypercore_env, "hypercore_states.mjs", cases)
    assert len(js) == len(cases)
    compared = 0
    for n, (case, expect) in enumerate(zip(cases, js)):
        kp = cm.KeyPair.from_seed(bytes.fromhex(case["seed"]))
        with cm.Core(tmp_path / str(n), key_pair=kp, compat=case["compat"]) as core:
            assert core.key.hex() == expect["key"]
            assert core.discovery_key.hex() == expect["discovery_key"]
            for op, st in zip(case["ops"], expect["states"]):
                if "append" in op:
                    core.append([bytes.fromhex(h) for h in op["append"]])
                else:
                    core.truncate(op["truncate"])
                assert (core.length, core.fork) == (st["length"], st["fork"])
                assert core.tree_hash().hex() == st["tree_hash"]
                assert (core.signature.hex() if core.signature else None) == st["signature"]
                compared += 1
    assert compared > 100
