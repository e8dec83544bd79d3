"""Hypercore's replication stream under Hypothesis: the C and pure-Python
backends seal, open and compute the Noise DH identically, and every decoder
of the stack (handshake and secret-stream frames, protomux frames, hypercore
messages) meets random and mutated input with a specific error, never a crash
or another exception."""
from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coremachine_embedded import _pure, errors
from coremachine_embedded.encoding import Reader, encode_uint
from coremachine_embedded.sync.hyper import messages, protomux
from coremachine_embedded.sync.hyper.secretstream import SecretStream

from ..interop import wire_sessions as ws

try:
    from coremachine_embedded import _core
except ImportError:  # pragma: no cover - depends on the build
    if os.environ.get("COREMACHINE_IMPL") == "python":
        _core = None
    else:
        raise

needs_both = pytest.mark.skipif(_core is None, reason="the C extension is not built")
keys = st.binary(min_size=32, max_size=32)
headers = st.binary(min_size=24, max_size=24)
bodies = st.lists(st.binary(max_size=300), max_size=12)
RECORDED = [frame for name in ws.SESSIONS for _, frame in ws.plaintexts(ws.load(name))]


@needs_both
@given(keys, headers, bodies, st.data())
def test_backends_seal_and_open_the_same_frames(key, header, msgs, data) -> None:
    sealed_c = _core.StreamPush(key, header).seal(msgs)
    sealed_py = _pure.StreamPush(key, header).seal(msgs)
    assert sealed_c == sealed_py
    # each backend opens the bytes cut at arbitrary points
    for impl in (_core, _pure):
        pull = impl.StreamPull(key, header)
        cuts = sorted(data.draw(st.lists(st.integers(0, len(sealed_c)), max_size=5)))
        got, buf, pos = [], b"", 0
        for end in cuts + [len(sealed_c)]:
            buf += sealed_c[len(buf):end] if end > len(buf) else b""
            out, pos = pull.open(buf, pos)
            got += out
        assert got == msgs and pos == len(sealed_c)


@needs_both
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_backends_compute_the_same_noise_dh(seed_a, seed_b) -> None:
    _, sk = _pure.keypair_from_seed(seed_a)
    pk, _ = _pure.keypair_from_seed(seed_b)
    assert _core.noise_dh(sk, pk) == _pure.noise_dh(sk, pk)


@needs_both
@given(keys, st.integers(0, 2 ** 64 - 1), st.binary(max_size=64), st.binary(max_size=200))
def test_backends_agree_on_the_noise_cipher(key, counter, ad, plaintext) -> None:
    sealed = _core.noise_encrypt(key, counter, ad, plaintext)
    assert sealed == _pure.noise_encrypt(key, counter, ad, plaintext)
    assert _pure.noise_decrypt(key, counter, ad, sealed) == plaintext
    assert _core.noise_decrypt(key, counter ^ 1, ad, sealed) is None


@needs_both
@given(keys, headers, bodies, st.integers(0, 10_000), st.integers(1, 255))
def test_backends_refuse_the_same_tampered_frames(key, header, msgs, where, flip) -> None:
    sealed = bytearray(_core.StreamPush(key, header).seal(msgs + [b"tail"]))
    sealed[where % len(sealed)] ^= flip
    outcomes = []
    for impl in (_core, _pure):
        try:
            outcomes.append(("ok", impl.StreamPull(key, header).open(bytes(sealed))))
        except errors.CoreMachineError as e:
            outcomes.append(("error", e.code))
    assert outcomes[0] == outcomes[1]
    assert outcomes[0][0] == "error" or outcomes[0][1][0] != msgs + [b"tail"]


def _mutate(data: bytes, edits) -> bytes:
    out = bytearray(data)
    for pos, value, op in edits:
        if not out:
            out.append(value)
            continue
        i = pos % len(out)
        if op == 0:
            out[i] = value
        elif op == 1:
            del out[i]
        else:
            out.insert(i, value)
    return bytes(out)


edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255), st.integers(0, 2)),
                 min_size=1, max_size=6)


@given(st.one_of(st.binary(max_size=400),
                 st.tuples(st.sampled_from(RECORDED), edits).map(lambda t: _mutate(*t))))
def test_protomux_and_message_decoders_fail_only_with_specific_errors(frame) -> None:
    try:
        events = protomux.decode(frame)
    except errors.CoreMachineError:
        return
    for ev in events:
        if isinstance(ev, protomux.Message):
            try:
                msg = messages.decode(ev.type, ev.body)
            except errors.CoreMachineError:
                continue
            if msg is not None:
                assert messages.decode(ev.type, msg.encode()) is not None
        elif isinstance(ev, protomux.Open):
            try:
                messages.Handshake.decode(ev.handshake)
            except errors.CoreMachineError:
                pass


@given(st.integers(0, 9), st.binary(max_size=300))
def test_every_message_type_decodes_random_bodies_or_refuses(kind, body) -> None:
    try:
        msg = messages.decode(kind, body)
    except errors.CoreMachineError:
        return
    assert msg is not None


@given(st.booleans(), st.lists(st.binary(max_size=200), max_size=6))
def test_a_stream_in_its_handshake_refuses_garbage_cleanly(initiator, chunks) -> None:
    stream = SecretStream(initiator)
    try:
        for chunk in chunks:
            assert stream.feed(chunk) == []
    except errors.CoreMachineError:
        return
    assert not stream.ready


@given(st.sampled_from(ws.SESSIONS), st.sampled_from([ws.TO_RESPONDER, ws.TO_INITIATOR]),
       edits)
def test_a_stream_fed_a_mutated_recording_refuses_it_cleanly(name, which, change) -> None:
    """Any change to the recorded bytes - in the handshake, the header or an
    encrypted frame - is refused with a specific error, and what came out
    before is exactly what was sent (nothing unverified is returned)."""
    genuine = [m for d, m in ws.plaintexts(ws.load(name)) if d == which]
    initiator, responder = ws.streams()
    side = responder if which == ws.TO_RESPONDER else initiator
    data = ws.direction(ws.load(name), which)
    mutated = _mutate(data, change)
    got = []
    try:
        for i in range(0, len(mutated), 97):  # as TCP might cut it
            got += side.feed(mutated[i:i + 97])
    except errors.CoreMachineError:
        pass
    assert got == genuine[:len(got)]
    assert mutated == data or len(got) < len(genuine) or mutated.startswith(data)


queued = st.lists(st.one_of(
    st.tuples(st.integers(1, 300), st.integers(0, 3), st.binary(max_size=20)),
    st.tuples(st.just(0), st.just(protomux.CLOSE), st.integers(1, 300).map(encode_uint))),
    max_size=60)


@given(queued, st.integers(1, 6), st.integers(0, 40), st.sets(st.integers(0, 3)))
def test_queued_messages_leave_in_order_in_bounded_batches(items, batch, max_bytes,
                                                           batched) -> None:
    """What a connection flushes: every item once, in order; control items
    and types not batched alone in their frame; batches within both bounds,
    and no two neighbouring frames of batched types that would fit in one."""
    queue = [(ch, encode_uint(kind) + body) for ch, kind, body in items]
    frames = protomux.encode_frames(queue, batch, max_bytes, batched)
    got, sizes = [], []
    for frame in frames:
        events = protomux.decode(frame)
        assert 1 <= len(events) <= batch
        size = sum(1 + len(ev.body) for ev in events if isinstance(ev, protomux.Message))
        if len(events) > 1:
            assert frame[:2] == b"\x00\x00" and size <= max_bytes
            assert all(isinstance(ev, protomux.Message) and ev.type in batched for ev in events)
        joinable = all(isinstance(ev, protomux.Message) and ev.type in batched for ev in events)
        sizes.append((len(events), size, joinable))
        got += events
    want = [protomux.Close(Reader(body).uint()) if ch == 0 else protomux.Message(ch, kind, body)
            for ch, kind, body in items]
    assert got == want
    for (n, size, joinable), (_, next_size, next_joinable) in zip(sizes, sizes[1:]):
        if joinable and next_joinable:   # split only where a bound was reached
            assert n == batch or size + next_size > max_bytes
