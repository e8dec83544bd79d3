"""The smoke test tests/interop/test_wheels.py runs inside the Python a wheel
was installed into (natively, or an armhf/arm64 Python under qemu-user):
``python wheel_smoke.py WORKDIR``.

It checks the installed package runs the C backend from site-packages with the
libsodium bundled in the wheel (the only libsodium mapped into the process) and
its C speedups (``_backend.speedups``, another extension from the wheel),
then creates a store, acts on a machine, reopens and verifies it, and pulls a
replica over UDP on 127.0.0.1 (serve and pull in this one process).  Prints
``wheel smoke ok`` and a JSON summary line at the end.
"""
from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
from typing import Any, Dict, List, Tuple

import coremachine_embedded as cm
from coremachine_embedded import sync

SEED = bytes(range(32))


def _add(ctx: Dict[str, Any], value: Any) -> None:
    ctx["total"] += value


DEFINITION = cm.create_machine({
    "initial": "idle",
    "context": {"total": 0},
    "states": {
        "idle": {"on": {"START": {"target": "counting"}}},
        "counting": {"on": {"ADD": {"action": _add}, "STOP": {"target": "idle"}}},
    },
})


def mapped_libsodium() -> List[str]:
    """The files named libsodium* mapped into this process (qemu-user shows
    the guest's own mappings here)."""
    with open("/proc/self/maps") as f:
        fields = [line.split(None, 5) for line in f]
    return sorted({f[5].strip() for f in fields
                   if len(f) == 6 and "libsodium" in os.path.basename(f[5])})


def loaded_extensions(package: str) -> List[str]:
    """The package's extension modules, each loaded from a binary in ``package``."""
    from coremachine_embedded import _backend
    assert _backend.speedups is not None, "_speedups did not load"
    modules = [_backend.impl, _backend.speedups]
    for module in modules:
        assert os.path.dirname(os.path.abspath(module.__file__ or "")) == package, module
    return sorted(module.__name__.rsplit(".", 1)[-1] for module in modules)


def check_installation() -> Tuple[List[str], List[str]]:
    assert cm.backend == "c", cm.backend
    package = os.path.dirname(os.path.abspath(cm.__file__))
    assert os.path.basename(os.path.dirname(package)) == "site-packages", package
    assert os.path.realpath(package).startswith(os.path.realpath(sys.prefix)), (package, sys.prefix)
    bundled_dir = os.path.join(os.path.dirname(package), "coremachine_embedded.libs")
    cm.KeyPair.from_seed(SEED)  # the extension and its libsodium are loaded by now
    libs = mapped_libsodium()
    assert libs, "no libsodium is mapped into the process"
    assert all(os.path.dirname(p) == bundled_dir for p in libs), libs
    return libs, loaded_extensions(package)


def write_and_reopen(work: str) -> cm.Core:
    path = os.path.join(work, "writer")
    kp = cm.KeyPair.from_seed(SEED)
    with cm.Core(path, key_pair=kp) as core:
        machine = cm.Coremachine(core, DEFINITION)
        machine.action("START")
        for value in range(1, 11):
            machine.action("ADD", value)
        machine.action("STOP")
        assert (machine.state, machine.context) == ("idle", {"total": 55})
        assert core.length == 12
    core = cm.Core(path, key_pair=kp)  # reopened from the files alone
    machine = cm.Coremachine(core, DEFINITION)
    assert (machine.state, machine.context) == ("idle", {"total": 55}), machine.context
    assert core.verify() == 12
    machine.action("START")
    assert core.length == 13
    return core


async def replicate(writer: cm.Core, work: str) -> cm.Core:
    replica = cm.Core(os.path.join(work, "replica"), key=writer.key)
    server = sync.Endpoint()
    link, _ = sync.open_link("udp://127.0.0.1:0")
    await server.attach(link)
    server.serve(writer)
    try:
        host, port = link.address
        client = await asyncio.wait_for(sync.pull(replica, "udp://%s:%d" % (host, port)), 300)
        await client.close()
    finally:
        await server.close()
    return replica


def main(work: str) -> None:
    libs, extensions = check_installation()
    writer = write_and_reopen(work)
    replica = asyncio.run(replicate(writer, work))
    assert replica.length == writer.length == 13
    assert replica.verify() == 13
    assert [replica.get(i) for i in range(13)] == [writer.get(i) for i in range(13)]
    assert replica.tree_hash() == writer.tree_hash()
    assert replica.signature == writer.signature and writer.signature is not None
    mirror = cm.Coremachine(replica, DEFINITION)
    assert (mirror.state, mirror.context) == ("counting", {"total": 55})
    replica.close()
    writer.close()
    print("wheel smoke ok")
    print(json.dumps({"machine": platform.machine(), "libsodium": libs,
                      "extensions": extensions, "python": platform.python_version(),
                      "prefix": sys.prefix}))


if __name__ == "__main__":
    main(sys.argv[1])
