"""The replication sessions recorded between real JavaScript peers
(tests/interop/vectors/wire/, README there): loading and replaying them."""
from __future__ import annotations

import glob
import json
import os
from typing import Any, Dict, List, Tuple

from coremachine_embedded.encoding import encode_uint
from coremachine_embedded.sync.hyper import protomux
from coremachine_embedded.sync.hyper.noise import generate_keypair
from coremachine_embedded.sync.hyper.secretstream import SecretStream

WIRE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors", "wire")
SESSIONS = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(WIRE, "session-*.json")))
INITIATOR_SEED = b"\xa1" * 32
RESPONDER_SEED = b"\xb1" * 32
INITIATOR_EPHEMERAL = b"\xe1" * 32
RESPONDER_EPHEMERAL = b"\xe2" * 32
TO_RESPONDER, TO_INITIATOR = "I->R", "R->I"


def load(name: str) -> Dict[str, Any]:
    with open(os.path.join(WIRE, name + ".json")) as f:
        return json.load(f)  # type: ignore[no-any-return]


def direction(session: Dict[str, Any], which: str) -> bytes:
    """Everything one side wrote, in order."""
    return b"".join(bytes.fromhex(e["hex"]) for e in session["wire"] if e["dir"] == which)


def frames(data: bytes) -> List[bytes]:
    """Split ``uint24 LE length | body`` frames (bodies only)."""
    out, pos = [], 0
    while pos + 3 <= len(data):
        size = int.from_bytes(data[pos:pos + 3], "little")
        out.append(data[pos + 3:pos + 3 + size])
        pos += 3 + size
    assert pos == len(data), "a partial frame at the end of a recording"
    return out


def streams() -> Tuple[SecretStream, SecretStream]:
    """(initiator, responder) with the recorded sessions' fixed keys."""
    initiator = SecretStream(True, generate_keypair(INITIATOR_SEED),
                             ephemeral=lambda: generate_keypair(INITIATOR_EPHEMERAL))
    responder = SecretStream(False, generate_keypair(RESPONDER_SEED),
                             ephemeral=lambda: generate_keypair(RESPONDER_EPHEMERAL))
    return initiator, responder


def plaintexts(session: Dict[str, Any]) -> List[Tuple[str, bytes]]:
    """Every decrypted message of the session, ``(direction, message)``, in
    the order the bytes were read."""
    initiator, responder = streams()
    out = []
    for e in session["wire"]:
        side = responder if e["dir"] == TO_RESPONDER else initiator
        out += [(e["dir"], m) for m in side.feed(bytes.fromhex(e["hex"]))]
    return out


def reencode(frame: bytes) -> bytes:
    """A protomux frame encoded again from its decoded events."""
    items = []
    for ev in protomux.decode(frame):
        if isinstance(ev, protomux.Message):
            items.append((ev.remote_id, encode_uint(ev.type) + ev.body))
        elif isinstance(ev, protomux.Open):
            items.append((0, protomux.encode_open(ev.remote_id, ev.protocol, ev.id,
                                                  ev.handshake)[1:]))
        elif isinstance(ev, protomux.Close):
            items.append((0, protomux.encode_close(ev.remote_id)[1:]))
        else:
            items.append((0, protomux.encode_reject(ev.local_id)[1:]))
    if frame[:2] == b"\x00\x00":
        return protomux.encode_batch(items)
    channel, item = items[0]
    return encode_uint(channel) + item
