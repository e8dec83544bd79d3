"""Hypercore's replication stream, byte for byte: sessions recorded between
real JavaScript peers (hypercore 11.39.5, secret-stream 6.9.2, protomux
3.12.1, noise-handshake 4.2.0, noise-curve-ed 2.1.0) are replayed through our
stack - the Noise handshake reproduces every handshake message, the handshake
hash and the split keys; the stream ids and headers match; every frame
decrypts and re-encrypts to the recorded bytes; every protomux frame and
hypercore message decodes and encodes back to the same bytes; and the proofs
the JS writer sent verify in our Core."""
from __future__ import annotations

import json
import os

import pytest

from coremachine_embedded import Core, errors
from coremachine_embedded import _backend
from coremachine_embedded.encoding import DataMessage
from coremachine_embedded.sync.hyper import messages, protomux
from coremachine_embedded.sync.hyper.noise import NoiseXX, generate_keypair
from coremachine_embedded.sync.hyper.secretstream import SecretStream, stream_id

from . import wire_sessions as ws

impl = _backend.impl
SESSIONS = ws.SESSIONS


def test_the_recorded_sessions_are_all_there() -> None:
    assert SESSIONS == ["session-3-blocks", "session-b", "session-live", "session-sparse",
                        "session-truncate", "session-two-cores"]


@pytest.mark.parametrize("name", SESSIONS)
def test_handshake_reproduces_the_recording(name: str) -> None:
    s = ws.load(name)
    to_r = ws.frames(ws.direction(s, ws.TO_RESPONDER))
    to_i = ws.frames(ws.direction(s, ws.TO_INITIATOR))
    i = NoiseXX(True, generate_keypair(ws.INITIATOR_SEED),
                lambda: generate_keypair(ws.INITIATOR_EPHEMERAL))
    r = NoiseXX(False, generate_keypair(ws.RESPONDER_SEED),
                lambda: generate_keypair(ws.RESPONDER_EPHEMERAL))
    m1 = i.send()
    assert m1 == to_r[0] and len(m1) == 32
    assert r.recv(m1) == b""
    m2 = r.send()
    assert m2 == to_i[0] and len(m2) == 96
    i.recv(m2)
    m3 = i.send()
    assert m3 == to_r[1] and len(m3) == 64
    r.recv(m3)
    assert i.complete and r.complete
    assert i.handshake_hash.hex() == s["handshakeHash"] == r.handshake_hash.hex()
    assert i.tx.hex() == s["initiatorTx"] and i.rx.hex() == s["initiatorRx"]
    assert (r.tx, r.rx) == (i.rx, i.tx)
    assert i.remote_static.hex() == s["responderStaticPk"]
    assert r.remote_static.hex() == s["initiatorStaticPk"]
    # the header frames: stream id of the sender's role, then the secretstream header
    hh = i.handshake_hash
    assert to_r[2][:32] == stream_id(hh, True) and len(to_r[2]) == 56
    assert to_i[1][:32] == stream_id(hh, False) and len(to_i[1]) == 56


@pytest.mark.parametrize("name", SESSIONS)
def test_every_frame_decrypts_and_reencrypts_to_the_recorded_bytes(name: str) -> None:
    s = ws.load(name)
    for which, key, handshake_frames in ((ws.TO_RESPONDER, s["initiatorTx"], 2),
                                         (ws.TO_INITIATOR, s["initiatorRx"], 1)):
        data = ws.direction(s, which)
        bodies = ws.frames(data)
        header = bodies[handshake_frames][32:]
        start = sum(3 + len(b) for b in bodies[:handshake_frames + 1])
        pull = impl.StreamPull(bytes.fromhex(key), header)
        plain, end = pull.open(data, start)
        assert end == len(data)
        assert len(plain) == len(bodies) - handshake_frames - 1
        again = impl.StreamPush(bytes.fromhex(key), header).seal(plain)
        assert again == data[start:]


@pytest.mark.parametrize("name", SESSIONS)
def test_secret_streams_fed_the_recording_see_every_message(name: str) -> None:
    """Our SecretStream on each side, fed the other side's bytes as they were
    read from TCP, reaches the same keys and opens every message."""
    s = ws.load(name)
    initiator, responder = ws.streams()
    assert initiator.take_output() == ws.direction(s, ws.TO_RESPONDER)[:35]
    got = ws.plaintexts(s)
    assert len(got) == sum(len(ws.frames(ws.direction(s, d))) for d in
                           (ws.TO_RESPONDER, ws.TO_INITIATOR)) - 5  # 3 noise, 2 headers
    initiator, responder = ws.streams()
    for e in s["wire"]:
        (responder if e["dir"] == ws.TO_RESPONDER else initiator).feed(bytes.fromhex(e["hex"]))
    assert initiator.ready and responder.ready
    assert initiator.handshake_hash.hex() == s["handshakeHash"]
    assert responder.remote_public_key.hex() == s["initiatorStaticPk"]


@pytest.mark.parametrize("name", SESSIONS)
def test_every_protomux_frame_and_message_reencodes_identically(name: str) -> None:
    s = ws.load(name)
    seen = set()
    for _, frame in ws.plaintexts(s):
        assert ws.reencode(frame) == frame
        for ev in protomux.decode(frame):
            if isinstance(ev, protomux.Message):
                msg = messages.decode(ev.type, ev.body)
                assert msg is not None and msg.encode() == ev.body
                seen.add(messages.NAMES[ev.type])
            elif isinstance(ev, protomux.Open):
                assert ev.protocol == messages.PROTOCOL
                assert messages.Handshake.decode(ev.handshake).encode() == ev.handshake
    assert {"sync", "request", "data"} <= seen and seen & {"range", "bitfield"}


@pytest.mark.parametrize("name", SESSIONS)
def test_capabilities_in_the_opens_are_what_we_compute(name: str) -> None:
    s = ws.load(name)
    keys = s.get("coreKeys") or [s["coreKey"]]
    hh = bytes.fromhex(s["handshakeHash"])
    for which, frame in ws.plaintexts(s):
        for ev in protomux.decode(frame):
            if not isinstance(ev, protomux.Open):
                continue
            hs = messages.Handshake.decode(ev.handshake)
            key = next(bytes.fromhex(k) for k in keys
                       if impl.discovery_key(bytes.fromhex(k)) == ev.id)
            assert hs.capability == messages.capability(which == ws.TO_RESPONDER, key, hh)
            assert hs.capability != messages.capability(which != ws.TO_RESPONDER, key, hh)


@pytest.mark.parametrize("name", ["session-3-blocks", "session-live", "session-two-cores",
                                  "session-sparse", "session-truncate"])
def test_the_js_proofs_verify_and_store_in_our_replica(name: str, tmp_path) -> None:
    """Apply every data message the JS side sent, in order, to a Core replica
    (a block that arrived before the one it builds on waits, as in a pull):
    it ends with what the JS reader ended with."""
    s = ws.load(name)
    keys = s.get("coreKeys") or [s["coreKey"]]
    replicas = {}
    for k in keys:
        key = bytes.fromhex(k)
        replicas[impl.discovery_key(key)] = Core(tmp_path / k[:8], key=key)
    channel_core = {}
    waiting = []

    def apply(core, body) -> bool:
        """False: the block is verified but not next (a replica holds a prefix)."""
        try:
            result = core.apply_proof(body)
        except errors.BlockNotAvailableError:
            return False
        return result.block_stored or result.block_index is None
    for which, frame in ws.plaintexts(s):
        for ev in protomux.decode(frame):
            if isinstance(ev, protomux.Open) and which == ws.TO_INITIATOR:
                channel_core[ev.remote_id] = replicas[ev.id]
            elif isinstance(ev, protomux.Message) and which == ws.TO_INITIATOR \
                    and ev.type == messages.DATA:
                core = channel_core[ev.remote_id]
                msg = DataMessage.decode(ev.body)
                if msg.block is None and msg.upgrade is None:
                    continue  # a hash-only proof (JS's reorg search): we do not use those
                if apply(core, ev.body):
                    waiting = [(c, b) for c, b in waiting if not apply(c, b)]
                else:
                    waiting.append((core, ev.body))
    want = s["blocks"] if name == "session-two-cores" else [s["blocks"]]
    for k, blocks in zip(keys, want):
        core = replicas[impl.discovery_key(bytes.fromhex(k))]
        if name == "session-sparse":  # only blocks 5 and 6, not contiguous from 0
            assert core.length == 10 and core.contiguous_length == 0 and len(waiting) == 2
        elif name == "session-truncate":
            # the new fork verified; the JS reader kept blocks 0-1 (it found them
            # equal with hash requests), a replica here fetches them again
            assert (core.fork, core.length, core.contiguous_length) == (1, 5, 0)
            assert len(waiting) == 3
        else:
            assert [core.get(i).decode() for i in range(len(blocks))] == blocks
        core.close()


def test_capability_vectors(vectors) -> None:
    for e in vectors["primitives"]["replicate_capability"]:
        got = messages.capability(e["is_initiator"], bytes.fromhex(e["key"]),
                                  bytes.fromhex(e["handshake_hash"]))
        assert got.hex() == e["capability"]


def test_wire_examples_encode_as_hypercore_does(vectors) -> None:
    for e in vectors["wire_examples"]:
        body = bytes.fromhex(e["hex"])
        if e["message_type_id"] is None:
            msg = messages.Handshake.decode(body)
            assert msg.capability.hex() == e["message"]["capability"]
        else:
            msg = messages.decode(e["message_type_id"], body)
        assert msg.encode() == body, e["type"]
    bf = messages.decode(messages.BITFIELD, bytes.fromhex("0003ffffffff0fff000001000000"))
    assert bf.has(0) and bf.has(31) and bf.has(32) and not bf.has(36) and bf.has(64)
    assert list(bf.runs()) == [(0, 36), (40, 48), (64, 65)]   # words ffffffff, ff0f, 1


def test_the_plaintext_transcript_decodes_and_reencodes(vectors) -> None:
    t = vectors["replication_transcript"]
    kinds = []
    for f in t["frames"]:
        frame = bytes.fromhex(f["hex"])
        assert ws.reencode(frame) == frame
        for ev in protomux.decode(frame):
            if isinstance(ev, protomux.Message):
                msg = messages.decode(ev.type, ev.body)
                assert msg.encode() == ev.body
                kinds.append(messages.NAMES[ev.type])
    assert "data" in kinds and "request" in kinds


def test_dh_vectors_from_noise_curve_ed() -> None:
    with open(os.path.join(ws.WIRE, "dh.json")) as f:
        cases = json.load(f)
    for c in cases:
        _, sk = generate_keypair(bytes.fromhex(c["seed"]))
        assert impl.noise_dh(sk, bytes.fromhex(c["remotePublicKey"])).hex() == c["shared"]
    with pytest.raises(errors.KeyMismatchError):
        impl.noise_dh(sk, b"\x01" + bytes(31))   # the identity point


def test_two_of_our_streams_talk_and_tampering_is_caught() -> None:
    a, b = SecretStream(True), SecretStream(False)
    a.send([b"early"])                          # queued until the handshake is done
    got = []
    for _ in range(3):
        got += b.feed(a.take_output())
        a.feed(b.take_output())
    assert a.ready and b.ready and a.handshake_hash == b.handshake_hash
    assert a.remote_public_key == b.key_pair[0] and b.remote_public_key == a.key_pair[0]
    a.send([b"x" * 70000, b"", b"last"])
    got += b.feed(a.take_output())
    assert got == [b"early", b"x" * 70000, b"last"] and b.keepalives == 1
    b.send([b"back"])
    out = bytearray(b.take_output())
    out[-1] ^= 1
    with pytest.raises(errors.DecryptError):
        a.feed(bytes(out))


def test_a_stream_refuses_a_wrong_header_and_oversized_frames() -> None:
    a, b = SecretStream(True), SecretStream(False, max_frame=1000)
    b.feed(a.take_output())
    a.feed(b.take_output())
    first = a.take_output()               # message 3 and the header
    b.feed(first)
    a.feed(b.take_output())
    a.send([b"y" * 2000])
    with pytest.raises(errors.TooLargeError):
        b.feed(a.take_output()[:10])       # the length alone is enough to refuse it
    c, d = SecretStream(True), SecretStream(False)
    d.feed(c.take_output())
    c.feed(d.take_output())
    out = bytearray(c.take_output())
    out[-30] ^= 1                          # inside the header frame's stream id
    with pytest.raises(errors.ProtocolError):
        d.feed(bytes(out))
    e = SecretStream(False)
    with pytest.raises(errors.HandshakeError):
        e.feed(b"\xff\xff\x01")            # a first handshake message over 65535 bytes
