"""The erasure code (sync/fec.py) and the adaptive coding of a serial link
(sync/linkcode.py) on real objects: any k of k + m chunks rebuild the data,
the segment size follows the reported noise (shrinks, grows back), and bad
segments or reports are dropped and counted."""
from __future__ import annotations

import itertools
import random
from typing import Dict, List

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coremachine_embedded.sync import fec, linkcode
from coremachine_embedded.sync.framing import FrameDecoder, encode_frame
from coremachine_embedded.sync.linkcode import (Assembler, LinkCoder, NoiseEstimate, plan,
                                                segments)


# --- the erasure code ----------------------------------------------------------------

def test_gf256_field_laws() -> None:
    for a in range(1, 256):
        assert fec.gf_mul(a, fec.gf_inv(a)) == 1
        assert fec.gf_mul(a, 1) == a and fec.gf_mul(a, 0) == 0
    with pytest.raises(ZeroDivisionError):
        fec.gf_inv(0)
    # distributive over XOR (addition)
    rng = random.Random(1)
    for _ in range(500):
        a, b, c = (rng.randrange(256) for _ in range(3))
        assert fec.gf_mul(a, b ^ c) == fec.gf_mul(a, b) ^ fec.gf_mul(a, c)


def test_every_k_subset_rebuilds_the_data() -> None:
    data = bytes(random.Random(2).randrange(256) for _ in range(301))
    k, m = 4, 3
    chunks = fec.encode(data, k, m)
    assert len(chunks) == k + m and {len(c) for c in chunks} == {76}
    assert b"".join(chunks[:k])[:len(data)] == data           # systematic
    for keep in itertools.combinations(range(k + m), k):
        assert fec.decode({i: chunks[i] for i in keep}, k, len(data)) == data
    with pytest.raises(ValueError):
        fec.decode({i: chunks[i] for i in range(k - 1)}, k, len(data))


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=3000), st.integers(1, 40), st.integers(0, 30),
       st.randoms(use_true_random=False))
def test_any_k_of_k_plus_m(data: bytes, k: int, m: int, rnd: random.Random) -> None:
    k = min(k, len(data))
    chunks = fec.encode(data, k, m)
    keep = rnd.sample(range(k + m), k)
    assert fec.decode({i: chunks[i] for i in keep}, k, len(data)) == data


def test_bad_code_parameters() -> None:
    for k, m in ((0, 1), (1, -1), (200, 56)):
        with pytest.raises(ValueError):
            fec.encode(b"abc", k, m)
    with pytest.raises(ValueError):
        fec.encode(b"", 1, 1)


# --- choosing the code ---------------------------------------------------------------

def test_plan_follows_the_noise() -> None:
    assert plan(4096, 0.0) is None                  # a clean line: whole frames
    assert plan(4096, 1e-6) is None
    sizes: List[int] = []
    parity: List[float] = []
    for rate in (1e-5, 1e-4, 3e-4, 9e-4, 3e-3, 1e-2):
        code = plan(4096, rate)
        assert code is not None
        k, m = code
        assert 1 <= k <= linkcode.MAX_DATA_SHARDS and m >= 1 and k + m <= fec.MAX_SHARDS
        sizes.append(-(-4096 // k))
        parity.append(m / k)
    # noisier: smaller segments and more parity
    assert sizes == sorted(sizes, reverse=True) and parity == sorted(parity)
    # at the noise of issue 10 (1/2000 flipped, 1/5000 dropped and inserted)
    k, m = plan(4096, 9e-4) or (0, 0)
    size = -(-4096 // k)
    assert 60 <= size <= 200
    efficiency = k / (k + m) * size / (size + linkcode.SEGMENT_OVERHEAD)
    assert efficiency > 0.6


def test_segments_fit_a_small_mtu() -> None:
    for mtu in (16, 40, 64, 100):
        coder = LinkCoder(mtu, {})
        coder.noise.report(10000, 9000, 50)           # very noisy: 1-chunk codes
        for n in range(1, mtu + 1):
            parts = coder.outgoing(b"\x01" * n, 0.0)
            assert len(parts) > 1 and all(len(p) <= mtu for p in parts), (mtu, n)


def test_plan_loses_few_envelopes_at_the_planned_rate() -> None:
    """Simulate the planned code against independent byte errors."""
    rng = random.Random(3)
    rate = 9e-4
    k, m = plan(4096, rate) or (0, 0)
    size = -(-4096 // k) + linkcode.SEGMENT_OVERHEAD
    survive = (1 - rate) ** size
    lost = sum(sum(rng.random() > survive for _ in range(k + m)) > m for _ in range(2000))
    assert lost <= 2000 * 0.01


# --- the noise estimate --------------------------------------------------------------

def _reports(est: NoiseEstimate, rate: float, frame: int, rounds: int, state: List[int],
             rng: random.Random) -> None:
    """Feed ``est`` reports of a receiver taking frames of ``frame`` bytes, each
    byte hit with probability ``rate``."""
    for _ in range(rounds):
        for _ in range(20):
            state[0] += frame
            if rng.random() < 1 - (1 - rate) ** frame:
                state[2] += 1
            else:
                state[1] += frame
        est.report(*state)


def test_noise_estimate_converges_and_forgets() -> None:
    rng = random.Random(4)
    est = NoiseEstimate()
    state = [0, 0, 0]
    _reports(est, 9e-4, 120, 40, state, rng)
    assert 5e-4 < est.rate < 1.6e-3
    _reports(est, 0.0, 4096, 40, state, rng)   # the line got clean
    assert est.rate < 1e-5 and plan(4096, est.rate) is None
    est.silent()
    assert est.rate > 0
    # counters wrap at 2^32
    before = est.rate
    est.report(state[0] + (1 << 32) + 4096, state[1] + (1 << 32) + 4096, state[2])
    assert est.rate <= before


# --- segments, reports and the link coder --------------------------------------------

def test_segments_rebuild_in_any_order_and_only_once() -> None:
    env = bytes(range(256)) * 7
    asm = Assembler(4096)
    segs = segments(env, 9, 6, 3)
    random.Random(5).shuffle(segs)
    out = [asm.add(s) for s in segs]
    assert [o for o in out if o is not None] == [env]
    assert out.index(env) == 5                 # the 6th distinct segment completes it
    assert asm.recovered == (1 if any(s[5] >= 6 for s in segs[:6]) else 0)
    assert not asm.sets                         # late parity is ignored


@pytest.mark.parametrize("bad", [
    b"\xc1\x01\x00\x02\x01\x00",                          # shorter than a header
    b"\xc1\x01\x00\x00\x01\x00\x04\x00" + b"ab",          # k = 0
    b"\xc1\x01\x00\x02\x01\x03\x04\x00" + b"ab",          # index beyond k + m
    b"\xc1\x01\x00\x02\x01\x00\x04\x00" + b"abc",         # chunk size does not match
    b"\xc1\x01\x00\x02\x01\x00\x00\x20" + b"x" * 4096,    # longer than the mtu
    b"\xc1\x01\x00\xff\x01\x00\x04\x00" + b"ab",          # k + m > 255
    b"\xc2\x00\x00",                                      # a short report
])
def test_malformed_segments_and_reports_are_dropped_and_counted(bad: bytes) -> None:
    counters: Dict[str, int] = {}
    coder = LinkCoder(4096, counters)
    assert coder.incoming(bad, 0.0) is None
    assert counters["fec_malformed"] == 1
    env = b"\x01" + bytes(500)
    assert coder.incoming(env, 0.0) == env      # and the link goes on


def test_pending_sets_are_bounded() -> None:
    asm = Assembler(4096)
    for seq in range(100):
        assert asm.add(segments(b"y" * 1000, seq, 4, 2)[0]) is None
    assert len(asm.sets) == linkcode.PENDING_SETS
    assert asm.abandoned == 100 - linkcode.PENDING_SETS


def test_link_coders_adapt_through_their_reports() -> None:
    """Two coders joined by a simulated noisy channel: whole frames until the
    receiver reports noise, then segments that shrink; back to whole frames
    when the channel is clean again."""
    rng = random.Random(6)
    tx_counters: Dict[str, int] = {}
    rx_counters: Dict[str, int] = {}
    tx, rx = LinkCoder(4096, tx_counters), LinkCoder(4096, rx_counters)
    decoder = FrameDecoder(4096)
    rx_bytes = 0
    rate = [9e-4]
    now = [0.0]
    delivered: List[bytes] = []
    sent: List[bytes] = []

    def channel(frame: bytes) -> bytes:
        out = bytearray(frame)
        for i in range(len(out) - 1):
            if rng.random() < rate[0]:
                out[i] ^= 1 << rng.randrange(8)
        return bytes(out)

    noisy_shrunk = 0
    for n in range(400):
        env = b"\x01" + bytes([n & 0xFF]) * 3000
        sent.append(env)
        for part in tx.outgoing(env, now[0]):
            frame = channel(encode_frame(part))
            rx_bytes += len(frame)
            for payload in decoder.feed(frame):
                got = rx.incoming(payload, now[0])
                if got is not None:
                    delivered.append(got)
            now[0] += len(frame) / 11520
        report = rx.report(rx_bytes, decoder.bad_crc + decoder.bad_cobs, now[0])
        if report is not None:
            tx.incoming(report, now[0])
        if n == 200:
            rate[0] = 0.0
            noisy_shrunk = tx_counters["chunk_shrunk"]
            assert tx.chunk < 400 and tx_counters["fec_tx"] > 150
            assert 1.2 < tx.expansion < 2.0     # parity and headers, as planned
            assert rx_counters["fec_recovered"] > 50
    assert noisy_shrunk >= 1 and tx_counters["chunk_grown"] >= 1
    assert tx.chunk == 4096 and tx.expansion == 1.0 and tx.outgoing(b"\x01" * 100, now[0]) == [b"\x01" * 100]
    assert all(d in sent for d in delivered)
    assert len(delivered) >= 390            # a few whole frames before the first report
    assert rx_counters["fec_malformed"] == 0


# --- the retry wait (the stall of issue 10 at 392 of 400 blocks) ----------------------

def test_a_request_lost_again_and_again_is_asked_again_within_the_cap() -> None:
    from coremachine_embedded.sync import flow
    rtt = flow.Rtt()
    rtt.sample(2.5)
    waits = []
    for tries in range(1, 9):
        rtt.timed_out()
        waits.append(flow.deadline(100.0, rtt.rto(), tries, lost=False) - 100.0)
    assert waits == sorted(waits)                  # it still backs off...
    assert waits[0] < waits[-1] == flow.MAX_RETRY_WAIT   # ...up to the cap, not 16 RTOs
    assert flow.deadline(100.0, 0.05, 3, lost=False) == pytest.approx(100.2)
    assert flow.deadline(100.0, 0.05, 3, lost=True) == pytest.approx(100.05)
