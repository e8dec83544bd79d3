"""The secret key file (issue 10, line 9): created without following a
symlink and exclusively, with mode 0600; an existing one that is a symlink,
not a regular file, or open to group or others is refused with
InsecureFileError naming it - on both backends, and by the CLI's key files."""
from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

import coremachine_embedded as cm
from coremachine_embedded.errors import InsecureFileError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _writer(path: str) -> bytes:
    kp = cm.KeyPair.generate()
    with cm.Core(path, key_pair=kp) as core:
        core.append(b"one")
    return kp.secret_key


def test_creating_a_store_never_writes_through_a_symlink(tmp_path) -> None:
    target = tmp_path / "elsewhere"
    target.write_bytes(b"precious")
    for dangling in (False, True):
        store = tmp_path / ("store-%d" % dangling)
        store.mkdir()
        link_to = tmp_path / "nothing-here" if dangling else target
        os.symlink(link_to, store / "secret_key")
        with pytest.raises(InsecureFileError) as e:
            cm.Core(str(store), key_pair=cm.KeyPair.generate())
        assert e.value.filename == str(store / "secret_key")
        assert "symlink" in str(e.value)
        assert target.read_bytes() == b"precious" and not (tmp_path / "nothing-here").exists()


def test_a_new_key_file_is_private(tmp_path) -> None:
    store = str(tmp_path / "s")
    _writer(store)
    st = os.lstat(os.path.join(store, "secret_key"))
    assert stat.S_ISREG(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600


def test_an_existing_key_file_open_to_others_or_a_symlink_is_refused(tmp_path) -> None:
    store = str(tmp_path / "s")
    secret = _writer(store)
    key_file = os.path.join(store, "secret_key")
    for mode in (0o644, 0o640, 0o604, 0o660, 0o601):
        os.chmod(key_file, mode)
        with pytest.raises(InsecureFileError) as e:
            cm.Core(store)
        assert e.value.filename == key_file and "%04o" % mode in str(e.value)
    os.chmod(key_file, 0o600)
    with cm.Core(store) as core:
        assert core.writable
    # the same key, moved elsewhere and linked back
    moved = str(tmp_path / "moved")
    os.rename(key_file, moved)
    os.symlink(moved, key_file)
    with pytest.raises(InsecureFileError):
        cm.Core(store)
    os.unlink(key_file)
    os.mkdir(key_file)              # not a regular file
    with pytest.raises(InsecureFileError):
        cm.Core(store)
    os.rmdir(key_file)
    os.rename(moved, key_file)
    with cm.Core(store) as core:
        assert core.writable and core.get(0) == b"one"
    assert open(key_file, "rb").read() == secret


def test_a_replica_made_writer_writes_its_key_file_privately(tmp_path) -> None:
    kp = cm.KeyPair.generate()
    w, r = str(tmp_path / "w"), str(tmp_path / "r")
    with cm.Core(w, key_pair=kp) as writer, cm.Core(r, key=writer.key) as replica:
        writer.append([b"a", b"b"])
        replica.apply_proof(writer.proof(upgrade=(0, 2), manifest=True))
        for i in range(2):
            replica.apply_proof(writer.proof(block=i, nodes=replica.missing_nodes(i)))
    target = tmp_path / "target"
    os.symlink(target, os.path.join(r, "secret_key"))
    with pytest.raises(InsecureFileError):
        cm.Core(r, key_pair=kp)
    assert not target.exists()
    os.unlink(os.path.join(r, "secret_key"))
    with cm.Core(r, key_pair=kp) as core:
        assert core.writable
    assert stat.S_IMODE(os.lstat(os.path.join(r, "secret_key")).st_mode) == 0o600


def _cli(*args: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "coremachine_embedded", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONPATH=ROOT))


def test_the_cli_key_files_follow_the_same_rules(tmp_path) -> None:
    target = tmp_path / "target"
    target.write_text("precious\n")
    link = tmp_path / "key"
    os.symlink(target, link)
    for args in (("keygen", str(link)), ("keygen", str(link), "--force")):
        r = _cli(*args)
        assert r.returncode == 1 and "symlink" in r.stderr, (args, r.stderr)
        assert target.read_text() == "precious\n"
    os.unlink(link)
    assert _cli("keygen", str(link)).returncode == 0
    assert stat.S_IMODE(os.lstat(link).st_mode) == 0o600
    assert _cli("keygen", str(link), "--force").returncode == 0
    assert stat.S_IMODE(os.lstat(link).st_mode) == 0o600
    os.chmod(link, 0o644)
    machine = tmp_path / "m.py"
    machine.write_text("M = {'initial': 'a', 'states': {'a': {}}}\n")
    r = _cli("init", str(tmp_path / "store"), "--machine", "%s:M" % machine, "--key-file",
             str(link))
    assert r.returncode == 1 and "0644" in r.stderr, r.stderr
