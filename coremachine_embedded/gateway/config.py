"""The gateway's configuration file (TOML), read and checked in one go.

Every mistake is a :class:`~coremachine_embedded.errors.ConfigError` whose
message is one line naming the file, the line and the field::

    gateway.toml:14: device[1].key: must be 64 hex digits (the core key), not 'abc'

``device[1]`` is the second ``[[device]]`` table (TOML arrays count from 0).
Relative paths are relative to the file's folder.  The format is in
docs/gateway.md.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import urlsplit

from ..boards import toml_loads
from ..errors import ConfigError, InvalidArgumentError
from ..logs import FORMATS as LOG_FORMATS, LEVELS as LOG_LEVELS

__all__ = ["GatewayConfig", "DeviceConfig", "LocalConfig", "MqttConfig", "load", "loads",
           "NAME_PATTERN", "LOG_LEVELS", "LOG_FORMATS"]

#: device and local machine names: they name store folders and MQTT topics
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
MQTT_SCHEMES = ("mqtt", "mqtts")


@dataclass(frozen=True)
class DeviceConfig:
    """A device the gateway follows: its log is pulled into ``store``."""

    name: str
    key: bytes
    urls: Tuple[str, ...]          # tried in turn: the next when one stays silent
    machine: Optional[str]         # MOD:ATTR (None: the log is followed, not interpreted)
    store: str


@dataclass(frozen=True)
class LocalConfig:
    """A machine the gateway itself writes (a store made by ``coremachine init``)."""

    name: str
    store: str
    machine: Optional[str]         # None: the one ``init`` recorded in the store
    actions: Tuple[str, ...]       # events MQTT may fire ("*": any); empty: none


@dataclass(frozen=True)
class MqttConfig:
    """The broker the bridge publishes to."""

    url: str                       # mqtt://host[:1883] or mqtts://host[:8883]
    username: Optional[str] = None
    password: Optional[str] = None
    ca_file: Optional[str] = None  # mqtts: the CA to trust (default: the system's)
    cert_file: Optional[str] = None  # mqtts: a client certificate...
    key_file: Optional[str] = None   # ...and its key
    tls_insecure: bool = False     # mqtts: skip the host name check (testing only)
    client_id: str = ""            # default: coremachine-<gateway name>
    topic_prefix: str = "coremachine"
    discovery_prefix: str = "homeassistant"  # "" turns Home Assistant discovery off
    keepalive: int = 30
    retry_min: float = 1.0         # seconds before reconnecting, doubling...
    retry_max: float = 60.0        # ...up to this

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "mqtts"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or (8883 if self.tls else 1883)


@dataclass(frozen=True)
class GatewayConfig:
    """The whole file, checked."""

    path: str
    name: str
    store_dir: str
    machine: Optional[str] = None
    listen: Tuple[str, ...] = ()
    flush_interval: float = 5.0    # replicas are made durable this often (one fsync each)
    retry_min: float = 0.5
    retry_max: float = 30.0
    silence: float = 30.0
    metrics: Optional[str] = None
    log_level: str = "info"
    log_format: str = "text"
    devices: Tuple[DeviceConfig, ...] = ()
    locals: Tuple[LocalConfig, ...] = ()
    mqtt: Optional[MqttConfig] = None


# --- where things are in the text ----------------------------------------------

_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')\s*=")


class _Lines:
    """Line numbers of tables and keys, from a light scan of the text (good for
    the files people write; anything it cannot place gets its table's line)."""

    def __init__(self, text: str) -> None:
        self.tables: Dict[str, int] = {}
        self.keys: Dict[Tuple[str, str], int] = {}
        counts: Dict[str, int] = {}
        table = ""
        for n, line in enumerate(text.splitlines(), 1):
            m = _HEADER.match(line)
            if m:
                name = m.group(2).strip().strip("\"'")
                if m.group(1) == "[[":
                    counts[name] = counts.get(name, -1) + 1
                    name = "%s[%d]" % (name, counts[name])
                table = name
                self.tables.setdefault(table, n)
                continue
            m = _KEY.match(line)
            if m:
                self.keys.setdefault((table, m.group(1).strip("\"'")), n)

    def line(self, table: str, key: Optional[str] = None) -> Optional[int]:
        if key is not None and (table, key) in self.keys:
            return self.keys[(table, key)]
        return self.tables.get(table)

    def key_at(self, line: int) -> Optional[str]:
        """The dotted field assigned on ``line``, if the scan found one there."""
        for (table, key), n in self.keys.items():
            if n == line:
                return "%s.%s" % (table, key) if table else key
        return None


class _Table:
    """One TOML table being checked: typed getters that raise ConfigError
    naming the file, line and field."""

    def __init__(self, data: Dict[str, Any], name: str, path: str, lines: _Lines,
                 keys: Tuple[str, ...]) -> None:
        self.data = data
        self.name = name
        self.path = path
        self.lines = lines
        for key in data:  # a misspelt key first: it explains a "missing" one
            if key not in keys:
                raise self.fail("unknown key (expected one of: %s)" % ", ".join(keys), key)

    def fail(self, message: str, key: Optional[str] = None) -> ConfigError:
        field = ".".join(p for p in (self.name, key) if p) or None
        return ConfigError(message, self.path, self.lines.line(self.name, key), field)

    def get(self, key: str, kind: str, default: Any = None, required: bool = False) -> Any:
        if key not in self.data:
            if required:
                where = "[%s]" % self.name if self.name else "the file"
                raise self.fail("missing (%s needs %s = ...)" % (where, key), key)
            return default
        value = self.data[key]
        if not _TYPES[kind][0](value):
            raise self.fail("must be %s, not %s %r" % (_TYPES[kind][1], _toml_type(value), value),
                            key)
        return value

    def check(self, key: str, ok: bool, message: str) -> None:
        if not ok:
            raise self.fail(message, key)


_TYPES: Dict[str, Tuple[Callable[[Any], bool], str]] = {
    "str": (lambda v: isinstance(v, str), "a string"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "number": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "list[str]": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
                  "a list of strings"),
    "table": (lambda v: isinstance(v, dict), "a table"),
    "list[table]": (lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v),
                    "an array of tables ([[...]])"),
}


def _toml_type(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


# --- reading ------------------------------------------------------------------------

def load(path: str) -> GatewayConfig:
    """Read and check the gateway configuration at ``path``.

    :raises ConfigError: unreadable, not TOML, or a field missing, unknown,
        of the wrong type or out of range (one line: file, line, field).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("cannot read: %s" % (getattr(e, "strerror", None) or e), path) from None
    return loads(text, path)


def loads(text: str, path: str = "<config>") -> GatewayConfig:
    """Check the TOML ``text`` as if read from ``path`` (relative paths in it
    are relative to ``path``'s folder)."""
    lines = _Lines(text)
    try:
        data = toml_loads("reading the gateway configuration")(text)
    except ValueError as e:  # tomllib.TOMLDecodeError
        message = str(e)
        m = re.search(r"\(at line (\d+), column \d+\)", message)
        line = int(m.group(1)) if m else None
        raise ConfigError("not valid TOML: %s" % re.sub(r"\s*\(at line.*\)", "", message), path,
                          line, lines.key_at(line) if line else None) from None
    base = os.path.dirname(os.path.abspath(path))
    top = _Table(data, "", path, lines, ("gateway", "mqtt", "device", "local"))
    gw = _Table(top.get("gateway", "table", required=True), "gateway", path, lines, (
        "name", "store_dir", "machine", "listen", "flush_interval", "retry_min", "retry_max",
        "silence", "metrics", "log_level", "log_format"))
    name = gw.get("name", "str", "gateway")
    gw.check("name", bool(NAME_PATTERN.match(name)), _name_rule(name))
    store_dir = _path(base, gw.get("store_dir", "str", required=True))
    machine = gw.get("machine", "str")
    if machine is not None:
        _check_machine_ref(gw, "machine", machine)
    listen = tuple(gw.get("listen", "list[str]", []))
    for url in listen:
        _check_url(gw, "listen", url)
        # a Hypercore server serves a fixed set of cores: the fleet's changes with reloads
        gw.check("listen", not url.startswith("tcp://"), "takes udp://, serial:// or "
                 "mqtt(s):// URLs (tcp:// serves a fixed set: use coremachine serve)")
    cfg: Dict[str, Any] = {
        "path": os.path.abspath(path), "name": name, "store_dir": store_dir, "machine": machine,
        "listen": listen,
        "flush_interval": _positive(gw, "flush_interval", 5.0),
        "retry_min": _positive(gw, "retry_min", 0.5),
        "retry_max": _positive(gw, "retry_max", 30.0),
        "silence": _positive(gw, "silence", 30.0),
        "metrics": gw.get("metrics", "str"),
        "log_level": gw.get("log_level", "str", "info"),
        "log_format": gw.get("log_format", "str", "text"),
    }
    gw.check("retry_max", cfg["retry_max"] >= cfg["retry_min"], "must be >= retry_min")
    if cfg["metrics"] is not None:
        try:
            parse_host_port(cfg["metrics"])
        except InvalidArgumentError as e:
            raise gw.fail(e.message, "metrics") from None
    gw.check("log_level", cfg["log_level"] in LOG_LEVELS,
             "%r is not one of %s" % (cfg["log_level"], ", ".join(LOG_LEVELS)))
    gw.check("log_format", cfg["log_format"] in LOG_FORMATS,
             "%r is not one of %s" % (cfg["log_format"], ", ".join(LOG_FORMATS)))

    names: Dict[str, str] = {}
    keys: Dict[bytes, str] = {}
    stores: Dict[str, str] = {}
    devices = []
    for i, table in enumerate(top.get("device", "list[table]", [])):
        t = _Table(table, "device[%d]" % i, path, lines,
                   ("name", "key", "url", "urls", "machine", "store"))
        devices.append(_device(t, base, store_dir, machine, names, keys, stores))
    local_machines = []
    for i, table in enumerate(top.get("local", "list[table]", [])):
        t = _Table(table, "local[%d]" % i, path, lines, ("name", "store", "machine", "actions"))
        local_machines.append(_local(t, base, names, stores))
    mqtt_table = top.get("mqtt", "table")
    mqtt = None
    if mqtt_table is not None:
        mqtt = _mqtt(_Table(mqtt_table, "mqtt", path, lines, (
            "url", "username", "password", "password_file", "ca_file", "cert_file", "key_file",
            "tls_insecure", "client_id", "topic_prefix", "discovery_prefix", "keepalive",
            "retry_min", "retry_max")), base, name)
    return GatewayConfig(devices=tuple(devices), locals=tuple(local_machines), mqtt=mqtt, **cfg)


def _device(t: _Table, base: str, store_dir: str, default_machine: Optional[str],
            names: Dict[str, str], keys: Dict[bytes, str], stores: Dict[str, str]
            ) -> DeviceConfig:
    name = _unique_name(t, names)
    key_hex = t.get("key", "str", required=True)
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    t.check("key", len(key) == 32, "must be 64 hex digits (the core key), not %r" % key_hex)
    t.check("key", key not in keys, "the same key as %s" % keys.get(key))
    keys[key] = t.name
    urls = t.get("urls", "list[str]")
    if urls is None:
        urls = [t.get("url", "str", required=True)]
        field = "url"
    else:
        t.check("url", "url" not in t.data, "give url or urls, not both")
        t.check("urls", bool(urls), "must name at least one URL")
        field = "urls"
    for url in urls:
        _check_url(t, field, url)
    machine = t.get("machine", "str", default_machine)
    if machine is not None:
        _check_machine_ref(t, "machine", machine)
    store = _path(base, t.get("store", "str", os.path.join(store_dir, name)))
    _unique_store(t, store, stores)
    return DeviceConfig(name, key, tuple(urls), machine, store)


def _local(t: _Table, base: str, names: Dict[str, str], stores: Dict[str, str]) -> LocalConfig:
    name = _unique_name(t, names)
    store = _path(base, t.get("store", "str", required=True))
    _unique_store(t, store, stores)
    machine = t.get("machine", "str")
    if machine is not None:
        _check_machine_ref(t, "machine", machine)
    actions = t.get("actions", "list[str]", [])
    for event in actions:
        t.check("actions", bool(event.strip()), "an event name must not be empty")
    return LocalConfig(name, store, machine, tuple(actions))


def _mqtt(t: _Table, base: str, gateway_name: str) -> MqttConfig:
    url = t.get("url", "str", required=True)
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        port_ok = False
    t.check("url", parts.scheme in MQTT_SCHEMES and bool(parts.hostname) and port_ok
            and parts.path in ("", "/"),
            "a broker URL looks like mqtt://host:1883 or mqtts://host:8883, not %r" % url)
    password = t.get("password", "str")
    password_file = t.get("password_file", "str")
    if password_file is not None:
        t.check("password_file", password is None, "give password or password_file, not both")
        try:
            with open(_path(base, password_file), encoding="utf-8") as f:
                password = f.read().strip()
        except OSError as e:
            raise t.fail("cannot read: %s" % (e.strerror or e), "password_file") from None
    files = {}
    for key in ("ca_file", "cert_file", "key_file"):
        value = t.get(key, "str")
        if value is not None:
            value = _path(base, value)
            t.check(key, os.path.isfile(value), "no such file: %s" % value)
        files[key] = value
    t.check("key_file", (files["cert_file"] is None) == (files["key_file"] is None),
            "cert_file and key_file go together")
    prefix = t.get("topic_prefix", "str", "coremachine")
    t.check("topic_prefix", _topic_ok(prefix), "must be a topic without +, # or a "
            "leading/trailing /, not %r" % prefix)
    discovery = t.get("discovery_prefix", "str", "homeassistant")
    t.check("discovery_prefix", discovery == "" or _topic_ok(discovery),
            "must be a topic without +, # or a leading/trailing / (or \"\"), not %r" % discovery)
    keepalive = t.get("keepalive", "int", 30)
    t.check("keepalive", 5 <= keepalive <= 65535, "must be 5 to 65535 seconds")
    cfg = MqttConfig(
        url=url, username=t.get("username", "str", parts.username), password=password
        if password is not None else parts.password, tls_insecure=t.get("tls_insecure", "bool",
                                                                         False),
        client_id=t.get("client_id", "str", "coremachine-%s" % gateway_name),
        topic_prefix=prefix, discovery_prefix=discovery, keepalive=keepalive,
        retry_min=_positive(t, "retry_min", 1.0), retry_max=_positive(t, "retry_max", 60.0),
        **files)
    t.check("retry_max", cfg.retry_max >= cfg.retry_min, "must be >= retry_min")
    return cfg


# --- field checks -------------------------------------------------------------------

def _unique_name(t: _Table, names: Dict[str, str]) -> str:
    name = t.get("name", "str", required=True)
    t.check("name", bool(NAME_PATTERN.match(name)), _name_rule(name))
    t.check("name", name not in names, "%r is taken by %s" % (name, names.get(name)))
    names[name] = t.name
    return str(name)


def _unique_store(t: _Table, store: str, stores: Dict[str, str]) -> None:
    t.check("store", store not in stores, "%s is also the store of %s"
            % (store, stores.get(store)))
    stores[store] = t.name


def _name_rule(name: str) -> str:
    return ("%r is not a name: 1-64 letters, digits, '-' or '_', starting with a letter "
            "or digit (it names a folder and MQTT topics)" % name)


def _topic_ok(topic: str) -> bool:
    return bool(topic) and not any(c in topic for c in "+#\0") and \
        not topic.startswith("/") and not topic.endswith("/")


def _positive(t: _Table, key: str, default: float) -> float:
    value = float(t.get(key, "number", default))
    t.check(key, value > 0, "must be positive, not %r" % value)
    return value


def _path(base: str, value: str) -> str:
    return os.path.normpath(os.path.join(base, os.path.expanduser(value)))


def _check_url(t: _Table, key: str, url: str) -> None:
    from .. import sync
    try:
        sync.check_url(url)
    except InvalidArgumentError as e:
        raise t.fail(e.message, key) from None


def _check_machine_ref(t: _Table, key: str, ref: str) -> None:
    target, sep, attr = ref.rpartition(":")
    t.check(key, bool(sep and target and attr),
            "takes MODULE:ATTR or path/to/file.py:ATTR, not %r" % ref)


def parse_host_port(text: str) -> Tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9464`` for IPv6) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise InvalidArgumentError("takes HOST:PORT (e.g. 127.0.0.1:9464), not %r" % text)
    return host, int(port)
