"""Board profiles (boards/profiles/*.toml, coremachine_embedded.boards) and the
systemd unit templates (boards/systemd/*.service)."""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Tuple
from urllib.parse import urlsplit

import pytest

from coremachine_embedded import Core, KeyPair, boards
from coremachine_embedded.boards import BoardProfileError
from coremachine_embedded.errors import InvalidArgumentError

try:
    import tomllib
except ImportError:  # Python < 3.11
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent.parent
PROFILES = ROOT / "boards" / "profiles"
UNITS = ROOT / "boards" / "systemd"
NAMES = ["generic-linux", "rpi-3b-plus", "rpi-4", "rpi-5", "rpi-zero-2w"]
ZERO = (PROFILES / "rpi-zero-2w.toml").read_text(encoding="utf-8")


@pytest.fixture(autouse=True)
def _no_env_dir(monkeypatch: Any) -> None:
    monkeypatch.delenv(boards.ENV_DIR, raising=False)


# --- the shipped profiles -------------------------------------------------------

def test_available_lists_the_shipped_profiles() -> None:
    assert boards.BUILTIN_DIR == PROFILES
    assert boards.available() == NAMES
    assert sorted(p.stem for p in PROFILES.glob("*.toml")) == NAMES


@pytest.mark.parametrize("name", NAMES)
def test_every_profile_loads_and_validates(name: str, tmp_path: Any) -> None:
    b = boards.load(name)
    assert b == boards.load(PROFILES / (name + ".toml")) == boards.load(str(PROFILES / (
        name + ".toml")))
    assert b.name == name and b.source == str(PROFILES / (name + ".toml"))
    assert isinstance(b.description, str) and b.description
    s = b.serial
    assert s.device.startswith("/dev/") and s.uart in boards.UART_KINDS
    assert isinstance(s.enable_uart, bool)
    assert isinstance(s.config_txt, tuple) and all(isinstance(x, str) for x in s.config_txt)
    assert s.default_baud in boards.STANDARD_BAUD_RATES
    assert s.caveats and all(isinstance(c, str) and c for c in s.caveats)
    assert 1 <= b.udp.port <= 65535
    assert b.store.path == "/var/lib/coremachine"      # the units' StateDirectory
    assert b.store.durability in boards.DURABILITIES
    assert isinstance(b.store.flush_interval, float) and b.store.flush_interval > 0
    assert b.store.checkpoint_bytes > 0 and b.memory.budget_mb > 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        b.name = "x"  # type: ignore[misc]
    # Every line for config.txt is a key=value line the firmware understands.
    for line in s.config_txt:
        assert re.fullmatch(r"[a-z_]+=[A-Za-z0-9_,=-]+", line), line
    # The URLs parse as the sync layer's links and the store options open a Core.
    from coremachine_embedded.sync.serial import SerialLink
    link = SerialLink.from_url(b.serial_url())
    assert (link.path, link.baud) == (s.device, s.default_baud)
    assert SerialLink.from_url(b.serial_url(9600)).baud == 9600
    u = urlsplit(b.udp_url())
    assert (u.scheme, u.hostname, u.port) == ("udp", "0.0.0.0", b.udp.port)
    assert urlsplit(b.udp_url("::1")).hostname == "::1"
    with Core(str(tmp_path / "store"), key_pair=KeyPair.generate(), **b.core_options()) as core:
        assert core.durability == b.store.durability
        core.append(b"x")


def test_profile_facts() -> None:
    """The UART choices the profiles document."""
    for name in ("rpi-zero-2w", "rpi-3b-plus", "rpi-4"):
        s = boards.load(name).serial
        # Bluetooth holds the PL011 unless disable-bt: these boards give it to GPIO14/15.
        assert s.device == "/dev/serial0" and s.uart == "pl011" and s.enable_uart
        assert "enable_uart=1" in s.config_txt and "dtoverlay=disable-bt" in s.config_txt
        text = " ".join(s.caveats)
        for words in ("mini UART", "core clock", "hciuart", "raspi-config"):
            assert words in text, (name, words)
    assert "miniuart-bt" in " ".join(boards.load("rpi-zero-2w").serial.caveats)
    assert "uart2" in " ".join(boards.load("rpi-4").serial.caveats)
    pi5 = boards.load("rpi-5").serial
    assert pi5.device == "/dev/ttyAMA0" and "dtparam=uart0" in pi5.config_txt
    assert "debug" in " ".join(pi5.caveats)
    generic = boards.load("generic-linux")
    assert generic.serial.uart == "usb-serial" and generic.serial.config_txt == ()
    # SD-card boards batch their syncs; the Zero has the longest window.
    zero = boards.load("rpi-zero-2w").store
    assert zero.durability == "batch" and zero.flush_interval >= max(
        boards.load(n).store.flush_interval for n in NAMES)
    assert boards.load("rpi-zero-2w").memory.budget_mb < boards.load("rpi-4").memory.budget_mb


# --- broken profiles --------------------------------------------------------------

def _sub(old: str, new: str) -> Any:
    def edit(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, 1)
    return edit


BROKEN: List[Tuple[str, Any, str, str]] = [
    # (case, edit of the Zero's text, field named, words in the message)
    ("unknown top-level key", _sub('name = "rpi-zero-2w"', 'name = "rpi-zero-2w"\ncolour = 1'),
     "colour", "unknown key"),
    ("unknown key in a table", _sub("port = 7000", "port = 7000\nspeed = 3"), "udp.speed",
     "unknown key"),
    ("unknown table", _sub("[udp]", "[tcp]\nport = 1\n[udp]"), "tcp", "unknown key"),
    ("missing key", _sub("port = 7000", ""), "udp.port", "missing key"),
    ("renamed top-level key", _sub('description = "', 'descr = "'), "descr", "unknown key"),
    ("missing top-level key", lambda t: re.sub(r"(?m)^description = .*$", "", t),
     "description", "missing key"),
    ("missing table", lambda t: t[:t.index("[memory]")], "memory", "missing table"),
    ("table of the wrong type", lambda t: "udp = 7000\n" + t.replace("[udp]\nport = 7000", ""),
     "udp", "must be a table"),
    ("baud as a string", _sub("default_baud = 115200", 'default_baud = "115200"'),
     "serial.default_baud", "must be an integer, not string"),
    ("boolean as an integer", _sub("enable_uart = true", "enable_uart = 1"),
     "serial.enable_uart", "must be a boolean"),
    ("integer as a boolean", _sub("port = 7000", "port = true"), "udp.port",
     "must be an integer, not boolean"),
    ("list as a string", _sub('config_txt = ["enable_uart=1", "dtoverlay=disable-bt"]',
                              'config_txt = "enable_uart=1"'), "serial.config_txt",
     "must be a list of strings"),
    ("list of non-strings", _sub("caveats = [", "caveats = [1, "), "serial.caveats",
     "must be a list of strings"),
    ("float as a string", _sub("flush_interval = 5.0", 'flush_interval = "5s"'),
     "store.flush_interval", "must be a number"),
    ("baud not standard", _sub("default_baud = 115200", "default_baud = 115201"),
     "serial.default_baud", "not a standard baud rate"),
    ("port zero", _sub("port = 7000", "port = 0"), "udp.port", "out of range"),
    ("port too high", _sub("port = 7000", "port = 70000"), "udp.port", "out of range"),
    ("durability", _sub('durability = "batch"', 'durability = "fsync"'), "store.durability",
     "not one of sync, batch, none"),
    ("relative store path", _sub('path = "/var/lib/coremachine"', 'path = "var/coremachine"'),
     "store.path", "relative path"),
    ("zero budget", _sub("budget_mb = 64", "budget_mb = 0"), "memory.budget_mb",
     "must be positive"),
    ("negative budget", _sub("budget_mb = 64", "budget_mb = -8"), "memory.budget_mb",
     "must be positive"),
    ("zero flush interval", _sub("flush_interval = 5.0", "flush_interval = 0.0"),
     "store.flush_interval", "must be positive"),
    ("zero checkpoint", _sub("checkpoint_bytes = 1048576", "checkpoint_bytes = 0"),
     "store.checkpoint_bytes", "must be positive"),
    ("uart kind", _sub('uart = "pl011"', 'uart = "usart"'), "serial.uart", "not one of"),
    ("device not in /dev", _sub('device = "/dev/serial0"', 'device = "serial0"'),
     "serial.device", "not a device path"),
    ("empty name", _sub('name = "rpi-zero-2w"', 'name = " "'), "name", "must not be empty"),
    ("name not the file's", _sub('name = "rpi-zero-2w"', 'name = "rpi-4"'), "name",
     "does not match the file name"),
]


@pytest.mark.parametrize("case,edit,field,words", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_profile_names_file_and_field(tmp_path: Any, case: str, edit: Any, field: str,
                                             words: str) -> None:
    path = tmp_path / "rpi-zero-2w.toml"
    path.write_text(edit(ZERO), encoding="utf-8")
    tomllib.loads(path.read_text())          # the case is about the schema, not the syntax
    with pytest.raises(BoardProfileError) as info:
        boards.load(path)
    e = info.value
    assert e.code == "BAD_BOARD_PROFILE"
    assert isinstance(e, InvalidArgumentError) and isinstance(e, ValueError)
    assert e.path == str(path) and e.field == field
    msg = str(e)
    assert msg.startswith("BAD_BOARD_PROFILE: %s: %s: " % (path, field)), msg
    assert words in msg, msg


def test_invalid_toml_names_the_file(tmp_path: Any) -> None:
    path = tmp_path / "rpi-zero-2w.toml"
    path.write_text(ZERO.replace("port = 7000", "port = = 7000"), encoding="utf-8")
    with pytest.raises(BoardProfileError, match="not valid TOML") as info:
        boards.load(str(path))
    assert info.value.path == str(path) and info.value.field is None
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Any) -> None:
    with pytest.raises(BoardProfileError, match="no such profile file") as info:
        boards.load(tmp_path / "nope.toml")
    assert info.value.path == str(tmp_path / "nope.toml")
    bad = tmp_path / "latin.toml"
    bad.write_bytes(b'name = "caf\xe9"\n')
    with pytest.raises(BoardProfileError, match="cannot read"):
        boards.load(bad)


def test_unknown_board_lists_the_available_ones() -> None:
    with pytest.raises(BoardProfileError) as info:
        boards.load("rpi-6")
    msg = str(info.value)
    assert "unknown board 'rpi-6'" in msg
    for name in NAMES:
        assert name in msg
    with pytest.raises(BoardProfileError, match="not a board name"):
        boards.load("rpi 4!")


def test_env_dir_is_searched_first(tmp_path: Any, monkeypatch: Any) -> None:
    (tmp_path / "my-board.toml").write_text(ZERO.replace('"rpi-zero-2w"', '"my-board"'))
    (tmp_path / "rpi-4.toml").write_text(
        (PROFILES / "rpi-4.toml").read_text().replace("budget_mb = 256", "budget_mb = 300"))
    monkeypatch.setenv(boards.ENV_DIR, str(tmp_path))
    assert boards.available() == sorted(NAMES + ["my-board"])
    assert boards.load("my-board").source == str(tmp_path / "my-board.toml")
    assert boards.load("rpi-4").memory.budget_mb == 300          # overrides the built-in
    assert boards.load("rpi-5").source == str(PROFILES / "rpi-5.toml")
    monkeypatch.setenv(boards.ENV_DIR, str(tmp_path / "missing"))
    with pytest.raises(BoardProfileError, match="COREMACHINE_BOARDS_DIR"):
        boards.available()


def test_without_tomllib_tomli_is_used_or_the_error_says_so(monkeypatch: Any) -> None:
    monkeypatch.setattr(boards, "sys", types.SimpleNamespace(version_info=(3, 10, 0)))
    monkeypatch.setitem(sys.modules, "tomli", None)          # not installed
    with pytest.raises(BoardProfileError, match="pip install tomli"):
        boards.load("rpi-4")
    fake = types.ModuleType("tomli")
    fake.loads = tomllib.loads  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tomli", fake)
    assert boards.load("rpi-4").name == "rpi-4"


def test_import_is_light() -> None:
    code = ("import sys\nbefore = set(sys.modules)\nimport coremachine_embedded.boards\n"
            "print(sorted(set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=str(ROOT))).stdout
    assert "tomllib" not in out and "coremachine_embedded.machine" not in out


# --- systemd units -------------------------------------------------------------

def parse_unit(path: Path) -> Dict[str, List[Tuple[str, str]]]:
    """INI-style unit file: section -> [(key, value)] (keys may repeat)."""
    sections: Dict[str, List[Tuple[str, str]]] = {}
    current = None
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        assert not raw.endswith("\\"), "%s:%d: no continuation lines" % (path.name, n)
        m = re.fullmatch(r"\[([A-Za-z]+)\]", line)
        if m:
            current = m.group(1)
            assert current not in sections, "%s: [%s] twice" % (path.name, current)
            sections[current] = []
            continue
        m = re.fullmatch(r"([A-Za-z][A-Za-z0-9]*)=(.*)", line)
        assert m and current, "%s:%d: not key=value in a section: %r" % (path.name, n, raw)
        sections[current].append((m.group(1), m.group(2).strip()))
    return sections


def values(unit: Dict[str, List[Tuple[str, str]]], section: str, key: str) -> List[str]:
    return [v for k, v in unit.get(section, []) if k == key]


def one(unit: Dict[str, List[Tuple[str, str]]], section: str, key: str) -> str:
    got = values(unit, section, key)
    assert len(got) == 1, "%s= in [%s]: %r" % (key, section, got)
    return got[0]


UNIT_NAMES = ["coremachine-node.service", "coremachine-gateway.service"]


@pytest.mark.parametrize("name", UNIT_NAMES)
def test_unit_hardening_and_restart(name: str) -> None:
    u = parse_unit(UNITS / name)
    assert set(u) == {"Unit", "Service", "Install"}
    assert one(u, "Unit", "Description")
    assert one(u, "Install", "WantedBy") == "multi-user.target"
    expect = {"Restart": "on-failure", "StateDirectory": "coremachine",
              "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
              "NoNewPrivileges": "yes", "DevicePolicy": "closed", "User": "coremachine"}
    for key, value in expect.items():
        assert one(u, "Service", key) == value, key
    assert re.fullmatch(r"\d+s?", one(u, "Service", "RestartSec"))
    assert "/var/lib/coremachine" in one(u, "Service", "ReadWritePaths").split()
    assert "/dev/serial0 rw" in values(u, "Service", "DeviceAllow")
    assert "dialout" in one(u, "Service", "SupplementaryGroups").split()
    assert set(one(u, "Service", "RestrictAddressFamilies").split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX"}
    assert values(u, "Service", "PrivateDevices") in ([], ["no"])    # it would hide the UART
    assert one(u, "Service", "CapabilityBoundingSet") == ""
    assert re.fullmatch(r"\d+M", one(u, "Service", "MemoryMax"))
    exec_start = shlex.split(one(u, "Service", "ExecStart"))
    assert exec_start[0].startswith("/")


def test_node_unit_runs_firmware_on_its_board() -> None:
    u = parse_unit(UNITS / "coremachine-node.service")
    env = dict(v.split("=", 1) for v in values(u, "Service", "Environment"))
    board = boards.load(env["COREMACHINE_BOARD"])
    assert one(u, "Service", "MemoryMax") == "%dM" % board.memory.budget_mb
    assert env["COREMACHINE_STORE"].startswith(board.store.path + "/")
    assert board.serial.device == "/dev/serial0"
    assert "dev-serial0.device" in one(u, "Unit", "Wants").split()
    assert "dev-serial0.device" in one(u, "Unit", "After").split()
    argv = shlex.split(one(u, "Service", "ExecStart"))
    assert argv[0].endswith("/python") and argv[1].endswith(".py")


def test_gateway_unit_runs_the_gateway_daemon() -> None:
    from coremachine_embedded.cli import build_parser
    u = parse_unit(UNITS / "coremachine-gateway.service")
    for key in ("ExecStartPre", "ExecStart"):
        argv = shlex.split(one(u, "Service", key))
        assert os.path.basename(argv[0]) == "coremachine"
        args = build_parser().parse_args(argv[1:])
        assert args.command == "gateway" and args.config == "/etc/coremachine/gateway.toml"
        assert args.check == (key == "ExecStartPre")
    assert shlex.split(one(u, "Service", "ExecReload")) == ["/bin/kill", "-HUP", "$MAINPID"]
    assert int(one(u, "Service", "LimitNOFILE")) >= 8192


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (it comes with systemd)")
def test_units_pass_systemd_analyze_verify(tmp_path: Any) -> None:
    paths = []
    binaries = set()
    for name in UNIT_NAMES:
        shutil.copy(UNITS / name, tmp_path / name)
        paths.append(str(tmp_path / name))
        binaries.add(shlex.split(one(parse_unit(UNITS / name), "Service", "ExecStart"))[0])
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no"] + paths,
                          capture_output=True, text=True, cwd=tmp_path)
    # The ExecStart programs live in /opt/coremachine on a board, not on this machine.
    rest = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()
            and not any("Command %s is not executable" % b in line for b in binaries
                        if not os.access(b, os.X_OK))]
    assert rest == [], "\n".join(rest)
