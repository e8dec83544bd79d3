"""Board profiles: serial, UDP, store and memory settings per kind of board.

::

    from coremachine_embedded import boards
    boards.available()                       # ['generic-linux', 'rpi-3b-plus', ...]
    board = boards.load("rpi-zero-2w")       # or a path to a .toml file
    core = Core(board.store.path + "/node", key_pair=kp, **board.core_options())
    url = board.serial_url()                 # 'serial:///dev/serial0?baud=115200'

Profiles are TOML files in ``boards/profiles/`` of this repository; a directory
named by ``COREMACHINE_BOARDS_DIR`` is searched first (a profile there with the
same name overrides the built-in one).  Each file is checked against the schema
below; every mistake is a :class:`BoardProfileError` naming the file and the
field.  Reading TOML uses :mod:`tomllib` (Python 3.11+) or the ``tomli``
package on older Pythons.  See docs/boards.md.
"""
from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from .caps import Durability
from .errors import InvalidArgumentError

__all__ = ["BoardProfile", "SerialSettings", "UdpSettings", "StoreSettings", "MemorySettings",
           "BoardProfileError", "load", "available", "profile_dirs", "BUILTIN_DIR",
           "ENV_DIR", "STANDARD_BAUD_RATES", "DURABILITIES", "UART_KINDS"]

#: The repository's profiles (``boards/profiles`` next to the package).
BUILTIN_DIR = Path(__file__).resolve().parent.parent / "boards" / "profiles"
#: The same profiles inside an installed package (copied there by setup.py).
PACKAGED_DIR = Path(__file__).resolve().parent / "board_profiles"
#: Environment variable naming an extra profiles directory, searched first.
ENV_DIR = "COREMACHINE_BOARDS_DIR"
#: Rates Linux termios can set exactly (``B1200`` .. ``B4000000``).
STANDARD_BAUD_RATES = (1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400,
                       460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000,
                       2500000, 3000000, 3500000, 4000000)
DURABILITIES = tuple(d.value for d in Durability)
#: ``pl011`` (full UART), ``mini-uart`` (Broadcom mini UART: baud follows the core
#: clock), ``usb-serial`` (a USB adapter).
UART_KINDS = ("pl011", "mini-uart", "usb-serial")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")

PathLike = Union[str, "os.PathLike[str]"]


class BoardProfileError(InvalidArgumentError):
    """A board profile is missing, unreadable or invalid.

    ``path`` is the profile file (None for an unknown board name) and ``field``
    the dotted key at fault (``serial.default_baud``), or None.
    """

    code = "BAD_BOARD_PROFILE"

    def __init__(self, message: str, path: Optional[str] = None,
                 field: Optional[str] = None) -> None:
        where = ": ".join(p for p in (path, field) if p)
        super().__init__("%s: %s" % (where, message) if where else message)
        self.path = path
        self.field = field


@dataclass(frozen=True)
class SerialSettings:
    device: str
    uart: str
    enable_uart: bool
    config_txt: Tuple[str, ...]
    default_baud: int
    caveats: Tuple[str, ...]


@dataclass(frozen=True)
class UdpSettings:
    port: int


@dataclass(frozen=True)
class StoreSettings:
    path: str
    durability: str
    flush_interval: float
    checkpoint_bytes: int


@dataclass(frozen=True)
class MemorySettings:
    budget_mb: int


@dataclass(frozen=True)
class BoardProfile:
    """One validated board profile (see the TOML files in ``boards/profiles``)."""

    name: str
    description: str
    serial: SerialSettings
    udp: UdpSettings
    store: StoreSettings
    memory: MemorySettings
    source: str            # the file it was read from

    def core_options(self) -> Dict[str, Any]:
        """Keyword arguments for :class:`~coremachine_embedded.Core` (durability etc.)."""
        return {"durability": self.store.durability,
                "flush_interval": self.store.flush_interval,
                "checkpoint_bytes": self.store.checkpoint_bytes}

    def serial_url(self, baud: Optional[int] = None) -> str:
        """A ``serial://`` link URL for the board's device."""
        return "serial://%s?baud=%d" % (self.serial.device, baud or self.serial.default_baud)

    def udp_url(self, host: str = "0.0.0.0") -> str:
        """A ``udp://`` link URL on the board's port."""
        return "udp://%s:%d" % ("[%s]" % host if ":" in host else host, self.udp.port)


# --- the schema ---------------------------------------------------------------

Check = Callable[[Any], Optional[str]]   # returns what is wrong, or None


def _positive(v: Any) -> Optional[str]:
    return None if v > 0 else "must be positive, not %r" % (v,)


def _baud(v: Any) -> Optional[str]:
    if v in STANDARD_BAUD_RATES:
        return None
    return "%r is not a standard baud rate (one of %s)" % (
        v, ", ".join(str(b) for b in STANDARD_BAUD_RATES))


def _port(v: Any) -> Optional[str]:
    return None if 1 <= v <= 65535 else "port %r is out of range (1-65535)" % (v,)


def _one_of(options: Tuple[str, ...]) -> Check:
    def check(v: Any) -> Optional[str]:
        return None if v in options else "%r is not one of %s" % (v, ", ".join(options))
    return check


def _absolute(v: Any) -> Optional[str]:
    if not PurePosixPath(v).is_absolute():
        return "%r is a relative path; give an absolute one (e.g. /var/lib/coremachine)" % (v,)
    return None


def _device(v: Any) -> Optional[str]:
    return None if v.startswith("/dev/") else "%r is not a device path under /dev/" % (v,)


def _non_empty(v: Any) -> Optional[str]:
    return None if v.strip() else "must not be empty"


# section -> key -> (type name, check); section "" holds the top-level keys.
_SCHEMA: Dict[str, Dict[str, Tuple[str, Optional[Check]]]] = {
    "": {"name": ("str", _non_empty), "description": ("str", _non_empty)},
    "serial": {"device": ("str", _device), "uart": ("str", _one_of(UART_KINDS)),
               "enable_uart": ("bool", None), "config_txt": ("list[str]", None),
               "default_baud": ("int", _baud), "caveats": ("list[str]", None)},
    "udp": {"port": ("int", _port)},
    "store": {"path": ("str", _absolute), "durability": ("str", _one_of(DURABILITIES)),
              "flush_interval": ("number", _positive), "checkpoint_bytes": ("int", _positive)},
    "memory": {"budget_mb": ("int", _positive)},
}


def _type_ok(kind: str, v: Any) -> bool:
    if kind == "str":
        return isinstance(v, str)
    if kind == "bool":
        return isinstance(v, bool)
    if kind == "int":
        return isinstance(v, int) and not isinstance(v, bool)
    if kind == "number":
        return isinstance(v, (int, float)) and not isinstance(v, bool)
    if kind == "list[str]":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    raise AssertionError(kind)


_TYPE_WORDS = {"str": "a string", "bool": "a boolean (true/false)", "int": "an integer",
               "number": "a number", "list[str]": "a list of strings"}


def _toml_name(v: Any) -> str:
    return {bool: "boolean", int: "integer", float: "float", str: "string", list: "array",
            dict: "table"}.get(type(v), type(v).__name__)


def _validate(data: Mapping[str, Any], path: str) -> Dict[str, Dict[str, Any]]:
    """Check ``data`` against the schema; the values by section."""
    unknown = sorted(set(data) - set(_SCHEMA) - set(_SCHEMA[""]))
    if unknown:
        raise BoardProfileError("unknown key (expected: %s)" % ", ".join(
            sorted(set(_SCHEMA[""]) | set(_SCHEMA) - {""})), path, unknown[0])
    out: Dict[str, Dict[str, Any]] = {}
    for section, keys in _SCHEMA.items():
        if section:
            table = data.get(section)
            if table is None:
                raise BoardProfileError("missing table [%s]" % section, path, section)
            if not isinstance(table, dict):
                raise BoardProfileError("must be a table [%s], not %s"
                                        % (section, _toml_name(table)), path, section)
        else:
            table = dict(data)
        extra = sorted(set(table) - set(keys)) if section else []
        if extra:
            raise BoardProfileError("unknown key (expected: %s)" % ", ".join(keys), path,
                                    "%s.%s" % (section, extra[0]))
        values: Dict[str, Any] = {}
        for key, (kind, check) in keys.items():
            field = "%s.%s" % (section, key) if section else key
            if key not in table:
                raise BoardProfileError("missing key", path, field)
            v = table[key]
            if not _type_ok(kind, v):
                raise BoardProfileError("must be %s, not %s %r"
                                        % (_TYPE_WORDS[kind], _toml_name(v), v), path, field)
            problem = check(v) if check is not None else None
            if problem:
                raise BoardProfileError(problem, path, field)
            values[key] = v
        out[section] = values
    return out


# --- finding and reading ------------------------------------------------------

def profile_dirs() -> List[Path]:
    """The directories searched for profiles, in order."""
    dirs: List[Path] = []
    extra = os.environ.get(ENV_DIR)
    if extra:
        p = Path(extra)
        if not p.is_dir():
            raise BoardProfileError("%s=%s is not a directory" % (ENV_DIR, extra))
        dirs.append(p)
    for builtin in (BUILTIN_DIR, PACKAGED_DIR):
        if builtin.is_dir():
            dirs.append(builtin)
            break
    return dirs


def available() -> List[str]:
    """The names of the profiles found (sorted)."""
    names: set[str] = set()
    for d in profile_dirs():
        names.update(p.stem for p in d.glob("*.toml") if p.is_file() and _NAME.match(p.stem))
    return sorted(names)


def _find(name: str) -> Path:
    if not _NAME.match(name):
        raise BoardProfileError("%r is not a board name (letters, digits, '.', '-', '_')"
                                % name)
    for d in profile_dirs():
        p = d / (name + ".toml")
        if p.is_file():
            return p
    names = available()
    raise BoardProfileError("unknown board %r; available: %s" % (
        name, ", ".join(names) if names else "none (no profiles directory found)"))


def toml_loads(what: str = "reading board profiles") -> Callable[[str], Dict[str, Any]]:
    """tomllib's ``loads`` (or tomli's on Python < 3.11); ``what`` needs it."""
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib.loads
    else:  # pragma: no cover - Python < 3.11
        try:
            import tomli  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise BoardProfileError("%s needs Python 3.11 or later (tomllib), or the tomli "
                                    "package: pip install tomli" % what) from None
        return tomli.loads  # type: ignore[no-any-return,unused-ignore]


def _is_path(name_or_path: PathLike) -> bool:
    if not isinstance(name_or_path, str):
        return True
    return ("/" in name_or_path or os.sep in name_or_path or name_or_path.endswith(".toml"))


def load(name_or_path: PathLike) -> BoardProfile:
    """Read and validate a profile, by board name (``"rpi-4"``) or file path.

    :raises BoardProfileError: an unknown name (the message lists the available
        ones), an unreadable file, invalid TOML, or a field that is missing,
        unknown, of the wrong type or out of range (naming the file and field).
    """
    path = Path(os.fspath(name_or_path)) if _is_path(name_or_path) else _find(str(name_or_path))
    where = str(path)
    loads = toml_loads()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BoardProfileError("no such profile file", where) from None
    except (OSError, UnicodeDecodeError) as e:
        raise BoardProfileError("cannot read: %s" % e, where) from None
    try:
        data = loads(text)
    except ValueError as e:  # tomllib/tomli.TOMLDecodeError
        raise BoardProfileError("not valid TOML: %s" % e, where) from None
    v = _validate(data, where)
    top = v[""]
    if top["name"] != path.stem:
        raise BoardProfileError("name %r does not match the file name %r"
                                % (top["name"], path.name), where, "name")
    s, st = v["serial"], v["store"]
    return BoardProfile(
        name=top["name"], description=top["description"],
        serial=SerialSettings(device=s["device"], uart=s["uart"], enable_uart=s["enable_uart"],
                              config_txt=tuple(s["config_txt"]),
                              default_baud=s["default_baud"], caveats=tuple(s["caveats"])),
        udp=UdpSettings(port=v["udp"]["port"]),
        store=StoreSettings(path=st["path"], durability=st["durability"],
                            flush_interval=float(st["flush_interval"]),
                            checkpoint_bytes=st["checkpoint_bytes"]),
        memory=MemorySettings(budget_mb=v["memory"]["budget_mb"]),
        source=where)
