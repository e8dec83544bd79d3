"""Issue 10, line 7: a 400-entry machine log (~560-byte entries) pulled over a
115200-baud line that flips 1 byte in 2,000 and drops and inserts 1 in 5,000
each way (real PTYs and a relay: tests/fault/serial_line.py), with the
default 4,096-byte envelopes, full and half duplex.  The link cuts envelopes
into erasure-coded segments once the receiver reports noise (sync/linkcode.py);
the pull must complete and the counters must show the adaptation.  Time is
measured by `make bench` (the noisy-line row), not asserted here: the
timeout is only a stall guard."""
from __future__ import annotations

import asyncio
import time
from typing import Any, Dict, Tuple

import pytest

from coremachine_embedded import Coremachine, Core, KeyPair
from coremachine_embedded.sync import Endpoint
from coremachine_embedded.sync.serial import SerialLink
from tests.fault.serial_line import NoisyLine, noisy_line  # noqa: F401
from tests.fault.test_sync_replication import assert_same_log, run

ENTRIES = 400
NOISE = {"flip": 1 / 2000, "drop": 1 / 5000, "insert": 1 / 5000}
STALL_GUARD = 240.0     # seconds; the line carries the log in ~20 s when clean



def _note(ctx: Dict[str, Any], value: Any) -> None:
    ctx["n"] += 1
    ctx["note"] = value


NOTE = {"initial": "logging", "context": {"n": 0, "note": ""},
        "states": {"logging": {"on": {"NOTE": {"action": _note}}}}}


def build_log(directory: str) -> Core:
    """A machine log whose entries are about 560 bytes (the note is in the
    event and in the context)."""
    core = Core(directory, key_pair=KeyPair.from_seed(b"\x07" * 32), durability="none")
    machine = Coremachine(core, NOTE)
    for i in range(ENTRIES):
        machine.action("NOTE", ("entry %d " % i).ljust(244, "."))
    core.flush()
    sizes = [len(core.get(i)) for i in range(1, core.length)]
    assert 520 <= sum(sizes) / len(sizes) <= 600
    machine.close()
    return core


def pull_over(line_a: str, line_b: str, baud: int, writer: Core, reader: Core,
              half_duplex: bool = False) -> Tuple[Dict[str, int], Dict[str, int], float]:
    """Serve ``writer`` on ``line_a``, pull it into ``reader`` on ``line_b``:
    the server's and the client's link counters, and the seconds it took."""
    async def main() -> Tuple[Dict[str, int], Dict[str, int], float]:
        server, client = Endpoint(), Endpoint()
        slink = SerialLink(line_a, baud, half_duplex=half_duplex)
        clink = SerialLink(line_b, baud, half_duplex=half_duplex)
        await server.attach(slink)
        server.serve(writer)
        await client.attach(clink)
        try:
            t0 = time.monotonic()
            await asyncio.wait_for(client.pull(reader, clink, None), STALL_GUARD)
            return dict(slink.counters), dict(clink.counters), time.monotonic() - t0
        finally:
            await client.close()
            await server.close()
    return run(main(), STALL_GUARD + 30)


@pytest.mark.parametrize("half_duplex", [False, True], ids=["full-duplex", "half-duplex"])
def test_noisy_115200_line_carries_the_log(tmp_path: Any, noisy_line: Any,  # noqa: F811
                                           half_duplex: bool) -> None:
    writer = build_log(str(tmp_path / "writer"))
    reader = Core(str(tmp_path / "reader"), key=writer.key, durability="none")
    line: NoisyLine = noisy_line(baud=115200, seed=71, half_duplex=half_duplex, **NOISE)
    server, client, seconds = pull_over(line.a, line.b, 115200, writer, reader, half_duplex)
    line.check()
    print("%s: %.1f s, goodput %.0f%% of the line; server link %s; client link %s" % (
        "half duplex" if half_duplex else "full duplex", seconds,
        100 * writer.byte_length / seconds / 11520, server, client))
    lc = line.counters
    assert lc["a>b.flips"] > 100 and lc["a>b.drops"] > 20 and lc["a>b.inserts"] > 20, lc
    assert_same_log(reader, writer, every_block=True)
    # the receiver saw the noise and said so; the server cut its envelopes into
    # smaller segments, and lost segments were rebuilt from parity
    assert client["bad_crc"] + client["bad_cobs"] > 0 and client["reports_tx"] > 0
    assert server["reports_rx"] > 0 and server["chunk_shrunk"] >= 1
    assert server["fec_tx"] > 0 and server["segments_tx"] > 3 * server["fec_tx"]
    assert client["fec_rx"] > 0 and client["fec_recovered"] > 0
    assert client["fec_malformed"] == server["fec_malformed"] == 0
    reader.close()
    writer.close()


def test_clean_line_sends_whole_frames(tmp_path: Any, noisy_line: Any) -> None:  # noqa: F811
    """No noise, no reports, no segments: the clean-line format is unchanged."""
    writer = build_log(str(tmp_path / "writer"))
    reader = Core(str(tmp_path / "reader"), key=writer.key, durability="none")
    line: NoisyLine = noisy_line(baud=921600, seed=72)
    server, client, _ = pull_over(line.a, line.b, 921600, writer, reader)
    line.check()
    assert_same_log(reader, writer, every_block=True)
    for c in (server, client):
        assert c["bad_crc"] == c["bad_cobs"] == 0
        assert c["reports_tx"] == c["reports_rx"] == c["fec_tx"] == c["fec_rx"] == 0
    assert client["frames_rx"] == server["frames_tx"] > 0
    reader.close()
    writer.close()
