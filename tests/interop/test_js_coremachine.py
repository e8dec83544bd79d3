"""Our Coremachine against the real npm coremachine@1.1.0 (on hypercore 11),
with the README's quick-start machine and random event sequences:

- the JS Coremachine opened on a JS hypercore holding our block bytes (same key
  seed) restores exactly our state and context, with identical tree hashes and
  signatures after every append;
- a JS-written log, appended to our core, has the same tree hashes and
  signatures and our Coremachine restores the JS state; running the same
  events here accepts and rejects exactly what JS does, with the same message.
"""
from __future__ import annotations

import random

import pytest

import coremachine_embedded as cm
from coremachine_embedded import Coremachine, InvalidActionError, create_machine
from tests.interop import jsenv


def start(ctx, counter):
    ctx["running"] = True
    ctx["counter"] = counter


def increment(ctx, _value):
    ctx["counter"] += 1


def stop(ctx, final_count):
    ctx["running"] = False
    if final_count is not None:
        ctx["counter"] = final_count


QUICK_START = create_machine({
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": start}}},
        "running": {"on": {
            "INCREMENT": {"target": "running", "action": increment},
            "STOP": {"target": "idle", "action": stop},
        }},
    },
})


@pytest.fixture(scope="module")
def js_env() -> str:
    return jsenv.ensure("coremachine")


def random_events(rng: random.Random) -> list:
    events = []
    for _ in range(rng.randrange(1, 30)):
        name = rng.choice(["START", "INCREMENT", "INCREMENT", "STOP", "PAUSE"])
        # START always carries the counter (JS would store `undefined` by dropping
        # the key); STOP's value is optional, as in the README.
        has_value = name == "START" or (name == "STOP" and rng.random() < 0.6)
        events.append([name, rng.randrange(-1000, 10**6) if has_value else None, has_value])
    return events


def run_ours(machine: Coremachine, events: list) -> tuple:
    results, states = [], []
    for name, value, has_value in events:
        try:
            machine.action(name, value) if has_value else machine.action(name)
            results.append("ok")
            states.append({"length": machine.core.length,
                           "tree_hash": machine.core.tree_hash().hex(),
                           "signature": machine.core.signature.hex()})
        except InvalidActionError as e:
            results.append(e.message)
    return results, states


def test_js_restores_our_logs_and_we_restore_js_logs(js_env: str, tmp_path) -> None:
    rng = random.Random(1127)
    cases, ours = [], []
    for n in range(12):
        seed = rng.randbytes(32)
        events = random_events(rng)
        kp = cm.KeyPair.from_seed(seed)
        core = cm.Core(tmp_path / ("ours%d" % n), key_pair=kp)
        machine = Coremachine(core, QUICK_START)
        results, states = run_ours(machine, events)
        blocks = [core.get(i).hex() for i in range(core.length)]
        ours.append({"key": core.key.hex(), "state": machine.state, "context": machine.context,
                     "results": results, "states": states, "blocks": blocks, "seed": seed})
        core.close()
        cases.append({"mode": "restore", "seed": seed.hex(), "blocks": blocks})
        cases.append({"mode": "run", "seed": rng.randbytes(32).hex(), "events": events})
    js = jsenv.run(js_env, "coremachine_cases.mjs", cases)
    checked_blocks = 0
    for n, (mine, restored, js_run) in enumerate(zip(ours, js[0::2], js[1::2])):
        # Our log in JS.
        assert restored["key"] == mine["key"]
        assert restored["states"] == mine["states"], "tree hashes/signatures differ"
        assert (restored["state"], restored["context"]) == (mine["state"], mine["context"])
        checked_blocks += len(mine["blocks"])
        # The JS log here.
        events = cases[2 * n + 1]["events"]
        kp = cm.KeyPair.from_seed(bytes.fromhex(cases[2 * n + 1]["seed"]))
        with cm.Core(tmp_path / ("js%d" % n), key_pair=kp) as core:
            assert core.key.hex() == js_run["key"]
            states = []
            for block in js_run["blocks"]:
                core.append(bytes.fromhex(block))
                states.append({"length": core.length, "tree_hash": core.tree_hash().hex(),
                               "signature": core.signature.hex()})
            assert states == js_run["states"]
            machine = Coremachine(core, QUICK_START)
            assert (machine.state, machine.context) == (js_run["state"], js_run["context"])
        # The same events here: same accept/reject pattern, same final state.
        with cm.Core(tmp_path / ("again%d" % n), key_pair=kp) as core:
            machine = Coremachine(core, QUICK_START)
            results, _ = run_ours(machine, events)
            assert results == js_run["results"]
            assert (machine.state, machine.context) == (js_run["state"], js_run["context"])
    assert checked_blocks > 50
