"""The gateway's TOML configuration: a valid file in full, and every kind of
mistake as ONE line naming the file, the line and the field (in Python and
from the command line)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from coremachine_embedded.errors import ConfigError, InvalidArgumentError
from coremachine_embedded.gateway import config as gwconfig

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEY_A, KEY_B = "ab" * 32, "cd" * 32

VALID = textwrap.dedent("""\
    # a fleet of two
    [gateway]
    name = "shed-gw"
    store_dir = "replicas"
    machine = "coremachine_embedded.demo:THERMOSTAT"
    listen = ["udp://0.0.0.0:7000"]
    silence = 10
    metrics = "127.0.0.1:9464"
    log_format = "json"

    [mqtt]
    url = "mqtt://user:secret@broker.local:1884"
    discovery_prefix = ""

    [[device]]
    name = "kitchen"
    key = "%s"
    url = "udp://10.0.0.21:7000"

    [[device]]
    name = "shed"
    key = "%s"
    urls = ["serial:///dev/ttyUSB0?baud=115200", "udp://10.0.0.22:7000"]
    store = "/var/lib/other/shed"
    machine = "path/to/machines.py:SHED"

    [[local]]
    name = "valve"
    store = "valve"
    actions = ["OPEN", "CLOSE"]
    """) % (KEY_A, KEY_B)


def write(tmp_path, text: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_a_valid_file_in_full(tmp_path) -> None:
    cfg = gwconfig.load(write(tmp_path, VALID))
    assert cfg.name == "shed-gw" and cfg.store_dir == str(tmp_path / "replicas")
    assert cfg.listen == ("udp://0.0.0.0:7000",) and cfg.silence == 10.0
    assert cfg.metrics == "127.0.0.1:9464" and cfg.log_format == "json"
    kitchen, shed = cfg.devices
    assert kitchen.key == bytes.fromhex(KEY_A) and kitchen.urls == ("udp://10.0.0.21:7000",)
    assert kitchen.store == str(tmp_path / "replicas" / "kitchen")
    assert kitchen.machine == "coremachine_embedded.demo:THERMOSTAT"   # the default
    assert shed.urls[0].startswith("serial://") and shed.store == "/var/lib/other/shed"
    assert shed.machine == "path/to/machines.py:SHED"
    (valve,) = cfg.locals
    assert valve.store == str(tmp_path / "valve") and valve.actions == ("OPEN", "CLOSE")
    assert cfg.mqtt is not None
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("broker.local", 1884, False)
    assert (cfg.mqtt.username, cfg.mqtt.password) == ("user", "secret")
    assert cfg.mqtt.client_id == "coremachine-shed-gw" and cfg.mqtt.discovery_prefix == ""


def test_the_smallest_file(tmp_path) -> None:
    cfg = gwconfig.load(write(tmp_path, '[gateway]\nstore_dir = "/srv/gw"\n'))
    assert cfg.devices == () and cfg.locals == () and cfg.mqtt is None
    assert cfg.name == "gateway" and cfg.log_level == "info"


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


# (text in VALID, its replacement, the field named, message part); the line named
# is the replacement's (None: the [gateway] header, for a missing key)
MISTAKES = [
    ('key = "%s"' % KEY_A, 'key = "abc"', "device[0].key", "64 hex digits"),
    ('key = "%s"' % KEY_B, 'key = "%s"' % KEY_A, "device[1].key", "the same key as device[0]"),
    ('name = "shed"', 'name = "kitchen"', "device[1].name", "taken by device[0]"),
    ('name = "shed"', 'name = "shed/1"', "device[1].name", "not a name"),
    ('url = "udp://10.0.0.21:7000"', 'url = "tcpx://10.0.0.21:7000"', "device[0].url",
     "unknown link"),
    ('url = "udp://10.0.0.21:7000"', 'url = "udp://10.0.0.21"', "device[0].url",
     "udp://host:port"),
    ('url = "udp://10.0.0.21:7000"', 'url = 7000', "device[0].url",
     "must be a string, not integer"),
    ('url = "udp://10.0.0.21:7000"', 'colour = "red"', "device[0].colour", "unknown key"),
    ('silence = 10', 'silence = -1', "gateway.silence", "must be positive"),
    ('log_format = "json"', 'log_format = "xml"', "gateway.log_format",
     "'xml' is not one of text, json"),
    ('metrics = "127.0.0.1:9464"', 'metrics = "9464"', "gateway.metrics", "HOST:PORT"),
    ('store_dir = "replicas"', '', "gateway.store_dir", "missing"),
    ('url = "mqtt://user:secret@broker.local:1884"', 'url = "http://broker"', "mqtt.url",
     "mqtt://host:1883"),
    ('actions = ["OPEN", "CLOSE"]', 'actions = "OPEN"', "local[0].actions",
     "a list of strings"),
    ('store = "valve"', 'store = "/var/lib/other/shed"', "local[0].store",
     "also the store of device[1]"),
    ('machine = "path/to/machines.py:SHED"', 'machine = "noattr"', "device[1].machine",
     "MODULE:ATTR"),
]


@pytest.mark.parametrize("old,new,field,message", MISTAKES)
def test_each_mistake_is_one_line_naming_file_line_and_field(tmp_path, old, new, field,
                                                              message) -> None:
    assert old in VALID
    text = VALID.replace(old, new, 1)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        gwconfig.load(path)
    e = info.value
    line = line_of(VALID, "[gateway]") if not new else VALID[:VALID.index(old)].count("\n") + 1
    assert (e.path, e.field, e.line) == (path, field, line), str(e)
    assert str(e).startswith("BAD_CONFIG: %s:%d: %s: " % (path, line, field))
    assert message in str(e) and "\n" not in str(e)
    assert isinstance(e, InvalidArgumentError)


def test_toml_syntax_errors_name_the_line_and_the_key(tmp_path) -> None:
    text = VALID.replace("silence = 10", "silence = 10 10")
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        gwconfig.load(path)
    assert info.value.line == line_of(text, "silence = 10 10")
    assert info.value.field == "gateway.silence"
    assert "not valid TOML" in str(info.value) and "\n" not in str(info.value)


def test_unreadable_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        gwconfig.load(str(tmp_path / "nope.toml"))
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[gateway]")
    with pytest.raises(ConfigError, match="cannot read"):
        gwconfig.load(str(tmp_path / "bin.toml"))


def test_mqtt_password_file_and_tls_files(tmp_path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "ca.pem").write_text("x")
    base = '[gateway]\nstore_dir = "r"\n[mqtt]\nurl = "mqtts://b.example"\n'
    cfg = gwconfig.load(write(tmp_path, base + 'password_file = "pw"\nca_file = "ca.pem"\n'))
    assert cfg.mqtt is not None
    assert cfg.mqtt.password == "s3cret" and cfg.mqtt.tls and cfg.mqtt.port == 8883
    assert cfg.mqtt.ca_file == str(tmp_path / "ca.pem")
    with pytest.raises(ConfigError, match=r"gateway.toml:6: mqtt.ca_file: no such file"):
        gwconfig.load(write(tmp_path, base + 'password = "p"\nca_file = "missing.pem"\n'))
    with pytest.raises(ConfigError, match="cert_file and key_file go together"):
        gwconfig.load(write(tmp_path, base + 'cert_file = "ca.pem"\n'))


def test_the_cli_prints_one_line_and_check_validates(tmp_path) -> None:
    env = dict(os.environ, PYTHONPATH=ROOT)
    path = write(tmp_path, VALID.replace('key = "%s"' % KEY_A, 'key = "zz"'))
    r = subprocess.run([sys.executable, "-m", "coremachine_embedded", "gateway", "--config",
                        path], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("coremachine: error: BAD_CONFIG: %s:%d: device[0].key: "
                               % (path, line_of(VALID, 'key = "%s"' % KEY_A)))
    path = write(tmp_path, VALID)
    r = subprocess.run([sys.executable, "-m", "coremachine_embedded", "gateway", "--config",
                        path, "--check"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "2 devices, 1 local machines" in r.stdout, r.stderr


def test_the_example_file_in_boards_is_valid() -> None:
    cfg = gwconfig.load(os.path.join(ROOT, "boards", "examples", "gateway.toml"))
    assert [d.name for d in cfg.devices] == ["kitchen", "shed"]
    assert cfg.devices[1].urls[0].startswith("serial://") and cfg.locals[0].actions == (
        "SHUTDOWN",)
    assert cfg.mqtt is not None and cfg.mqtt.discovery_prefix == "homeassistant"
