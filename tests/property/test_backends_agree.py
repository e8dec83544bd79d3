"""The C and pure-Python backends agree: for random sequences of appends,
batches, truncations, flushes, checkpoints and reopens they produce the same
state after every step and byte-identical store files at the end; their proofs
are identical and replicas fed those proofs write identical files too."""
from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from coremachine_embedded import _pure
from coremachine_embedded.caps import Durability
from coremachine_embedded.errors import StorageError
from tests.compiled import extension
from tests.fixtures.recipes import read_files

_core = extension("_core")

BACKENDS = (_pure, _core)

ops = st.lists(st.one_of(
    st.tuples(st.just("append"), st.lists(st.binary(max_size=300), min_size=1, max_size=8)),
    st.tuples(st.just("truncate"), st.floats(0, 1)),
    st.tuples(st.just("flush"), st.none()),
    st.tuples(st.just("checkpoint"), st.none()),
    st.tuples(st.just("reopen"), st.none()),
), min_size=1, max_size=14)


def state(log) -> tuple:
    return (log.length, log.fork, log.byte_length, log.contiguous, log.key, log.discovery_key,
            log.tree_hash(), log.signature(), [tuple(r) for r in log.roots], log.manifest,
            log.compat, log.writable)


def outcome(fn, kwargs) -> tuple:
    """The result, or the exception class and code (both backends must agree)."""
    try:
        return ("ok", fn(**kwargs))
    except Exception as e:  # noqa: BLE001 - comparing what each backend raises
        return ("error", type(e), getattr(e, "code", None))


def assert_same_replica_files(base) -> None:
    """The replica stores the two backends wrote under ``base`` are byte-identical."""
    files = [read_files(str(base / ("r-" + b.NAME))) for b in BACKENDS]
    for name in files[0]:
        assert files[0][name] == files[1][name], "%s differs" % name


@settings(max_examples=50)
@given(ops=ops, compat=st.booleans(), seed=st.binary(min_size=32, max_size=32),
       durability=st.sampled_from(list(Durability)),
       checkpoint=st.sampled_from([512, 4096, 0]))
def test_same_states_and_files(tmp_path_factory, ops, compat, seed, durability, checkpoint):
    base = tmp_path_factory.mktemp("agree")
    pk, sk = _pure.keypair_from_seed(seed)
    assert _core.keypair_from_seed(seed) == (pk, sk)
    opts = dict(durability=durability, checkpoint_bytes=checkpoint)
    dirs = [str(base / b.NAME) for b in BACKENDS]
    logs = [b.Log(d, create=True, secret_key=sk, compat=compat, **opts)
            for b, d in zip(BACKENDS, dirs)]
    try:
        for kind, arg in ops:
            for i, log in enumerate(logs):
                if kind == "append":
                    log.append(arg)
                elif kind == "truncate":
                    log.truncate(int(arg * log.length), log.fork + 1)
                elif kind == "reopen":
                    log.close()
                    logs[i] = BACKENDS[i].Log(dirs[i], **opts)
                else:
                    getattr(log, kind)()
            assert state(logs[0]) == state(logs[1])
        length = logs[0].length
        for i in range(length):
            assert logs[0].get(i) == logs[1].get(i)
        rng = random.Random(length)
        for _ in range(6):  # ranges, aligned or not, and out-of-range ones
            start = rng.randrange(length + 2)
            end = start + rng.randrange(-1, length + 2)
            span = dict(start=start, end=end)
            assert outcome(logs[0].get_range, span) == outcome(logs[1].get_range, span)
        assert logs[1].get_range(0, length) == [logs[1].get(i) for i in range(length)]
        if length:
            for _ in range(5):
                start = rng.randrange(length)
                block = rng.randrange(length)
                req = dict(block=block, nodes=rng.randrange(3) if block < start else 0,
                           upgrade=(start, length - start), manifest=True, request=7)
                assert outcome(logs[0].proof, req) == outcome(logs[1].proof, req)
    finally:
        for log in logs:
            log.close()
    files = [read_files(d) for d in dirs]
    assert files[0].keys() == files[1].keys()
    for name in files[0]:
        assert files[0][name] == files[1][name], "%s differs" % name


@settings(max_examples=30)
@given(blocks=st.lists(st.binary(max_size=200), min_size=1, max_size=40),
       compat=st.booleans(), seed=st.integers(0, 2**31))
def test_replicas_write_the_same_files(tmp_path_factory, blocks, compat, seed):
    base = tmp_path_factory.mktemp("agree-replica")
    pk, sk = _pure.keypair_from_seed(seed.to_bytes(4, "little") * 8)
    writer = _pure.Log(str(base / "w"), create=True, secret_key=sk, compat=compat)
    rng = random.Random(seed)
    cut = rng.randrange(len(blocks) + 1)
    writer.append(blocks[:cut])
    replicas = [b.Log(str(base / ("r-" + b.NAME)), create=True, key=writer.key,
                      durability=Durability.BATCH) for b in BACKENDS]
    try:
        for step in range(2):
            if step == 1:
                writer.append(blocks[cut:] or [b"end"])
            for r in replicas:
                start = r.length
                if writer.length > start:
                    r.apply_proof(writer.proof(upgrade=(start, writer.length - start),
                                               manifest=r.manifest is None and not compat))
            order = list(range(replicas[0].contiguous, writer.length))
            rng.shuffle(order)
            for i in order + sorted(order):
                results = []
                for r in replicas:
                    msg = writer.proof(block=i, nodes=r.missing_nodes(i))
                    res = r.apply_proof(msg)
                    results.append((res.block_stored, res.upgraded, res.length))
                assert results[0] == results[1]
                assert state(replicas[0]) == state(replicas[1])
    finally:
        writer.close()
        for r in replicas:
            r.close()
    assert_same_replica_files(base)


@settings(max_examples=25)
@given(blocks=st.lists(st.binary(max_size=120), min_size=2, max_size=80),
       size=st.sampled_from([2, 4, 8, 16, 64]), seed=st.integers(0, 2**31))
def test_runs_write_the_same_files(tmp_path_factory, blocks, size, seed):
    """Batched runs (apply_run) store identical bytes on both backends."""
    base = tmp_path_factory.mktemp("agree-runs")
    pk, sk = _pure.keypair_from_seed(seed.to_bytes(4, "little") * 8)
    writer = _pure.Log(str(base / "w"), create=True, secret_key=sk)
    writer.append(blocks)
    replicas = [b.Log(str(base / ("r-" + b.NAME)), create=True, key=writer.key)
                for b in BACKENDS]
    try:
        for r in replicas:
            r.apply_proof(writer.proof(upgrade=(0, writer.length), manifest=True))
            while r.contiguous < writer.length:
                start = r.contiguous
                n = size
                while n > 1 and (start % n or start + n > writer.length):
                    n //= 2
                r.apply_proof(writer.proof(block=start, nodes=r.missing_nodes(start)))
                if n > 1:
                    assert r.apply_run(start, [writer.get(i) for i in range(start, start + n)]) \
                        == n - 1
        assert state(replicas[0]) == state(replicas[1])
    finally:
        writer.close()
        for r in replicas:
            r.close()
    assert_same_replica_files(base)


# --- the same errors (issue 10, line 11) ----------------------------------------------

def describe(e: BaseException) -> tuple:
    """An error as the backends must agree on it: class, code, errno and the
    store file it names."""
    name = getattr(e, "filename", None)
    return (type(e), getattr(e, "code", None), getattr(e, "errno", None),
            os.path.basename(name) if name else None)


def failure(fn, *args) -> tuple:
    """What ``fn`` raised (:func:`describe`), or ("ok",)."""
    try:
        fn(*args)
    except Exception as e:  # noqa: BLE001 - comparing what each backend raises
        return describe(e)
    return ("ok",)


@settings(max_examples=60)
# the manifest's quorum 1 -> 0, and its signer count 1 -> 129 (found: they differed)
@example(blocks=[b""] * 5, seed=0, cuts=[], flips=[(184, 1)], junk=b"", which=0)
@example(blocks=[b""] * 5, seed=0, cuts=[], flips=[(185, 0x80)], junk=b"", which=0)
@given(blocks=st.lists(st.binary(max_size=90), min_size=1, max_size=24),
       seed=st.integers(0, 2**31), cuts=st.lists(st.integers(0, 4000), max_size=3),
       flips=st.lists(st.tuples(st.integers(0, 4000), st.integers(1, 255)), max_size=3),
       junk=st.binary(max_size=8), which=st.integers(0, 3))
def test_the_same_malformed_proof_gets_the_same_error(tmp_path_factory, blocks, seed, cuts,
                                                      flips, junk, which):
    """A proof with bytes flipped, cut off or appended: both backends' replicas
    refuse it with the same error class and code (or both take it)."""
    base = tmp_path_factory.mktemp("agree-proofs")
    _, sk = _pure.keypair_from_seed(seed.to_bytes(4, "little") * 8)
    writer = _pure.Log(str(base / "w"), create=True, secret_key=sk)
    writer.append(blocks)
    n = writer.length
    proof = [writer.proof(0, 0, 0, (0, n), True), writer.proof(0, n - 1, 0, (0, n), False),
             writer.proof(0, n - 1, 0, None, False), writer.proof(0, 0, 0, (0, 1), True)][which]
    writer.close()
    mutated = bytearray(proof)
    for pos, bits in flips:
        if mutated:
            mutated[pos % len(mutated)] ^= bits
    for cut in cuts:
        del mutated[cut % (len(mutated) + 1):]
    mutated += junk
    replicas = [b.Log(str(base / ("r-" + b.NAME)), create=True, key=writer.key)
                for b in BACKENDS]
    try:
        outcomes = [failure(r.apply_proof, bytes(mutated)) for r in replicas]
        assert outcomes[0] == outcomes[1], outcomes
        assert state(replicas[0]) == state(replicas[1])
    finally:
        for r in replicas:
            r.close()


def test_a_store_file_that_cannot_be_opened_is_the_same_error(tmp_path) -> None:
    """A directory where ``tree`` should be: StorageError with EISDIR naming
    ``tree`` on both (the C backend lost the errno of a failed open)."""
    _, sk = _pure.keypair_from_seed(bytes(32))
    outcomes = []
    for b in BACKENDS:
        d = str(tmp_path / b.NAME)
        b.Log(d, create=True, secret_key=sk).close()
        os.unlink(os.path.join(d, "tree"))
        os.mkdir(os.path.join(d, "tree"))
        outcomes.append(failure(b.Log, d))
    assert outcomes[0] == outcomes[1] == (StorageError, "STORAGE", errno.EISDIR, "tree")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 192 KiB tmpfs (mounting needs root: skipped otherwise)."""
    mount = str(tmp_path / "small")
    os.mkdir(mount)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", mount],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a small tmpfs: %s" % (r.stderr.strip() or r.returncode))
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", mount], check=True)


def test_a_full_disk_is_the_same_storage_error(small_filesystem) -> None:
    """Appends until the file system is full: StorageError with ENOSPC naming
    the same file on both backends (the pure one raised a bare OSError), and
    the core refuses to go on until it is reopened."""
    _, sk = _pure.keypair_from_seed(bytes(32))
    outcomes = []
    for b in BACKENDS:
        d = os.path.join(small_filesystem, b.NAME)
        log = b.Log(d, create=True, secret_key=sk)
        block = bytes(range(256)) * 4
        full: tuple = ("never full",)
        try:
            for _ in range(1000):
                log.append([block])
        except Exception as e:  # noqa: BLE001 - compared below
            full = describe(e)
        try:
            outcomes.append((full, failure(log.append, [block])))
        finally:
            try:
                log.close()
            except Exception:  # noqa: BLE001 - a core stopped by the full disk
                pass
            shutil.rmtree(d, ignore_errors=True)
    assert outcomes[0] == outcomes[1], outcomes
