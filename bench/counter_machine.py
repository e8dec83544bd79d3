"""The machine the benchmarks drive, in a module of its own: a `coremachine
state` process measured by the bench imports this and nothing else of bench/."""


def start(ctx, n):
    ctx["running"] = True
    ctx["counter"] = n


def increment(ctx, _v):
    ctx["counter"] += 1


DEFINITION = {
    "initial": "idle",
    "context": {"running": False, "counter": 0},
    "states": {
        "idle": {"on": {"START": {"target": "running", "action": start}}},
        "running": {"on": {"INCREMENT": {"target": "running", "action": increment},
                           "STOP": {"target": "idle"}}},
    },
}
