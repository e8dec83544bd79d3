"""csrc/cm.h decides every shared number; the Python side must say the same.

Every ``#define CM_X`` of cm.h is ``caps.X``; the enums ``cm_err``,
``cm_durability`` and ``cm_file_id`` are ``caps.CErrorCode``,
``caps.Durability`` and ``errors.FILE_NAMES`` (and ``cm_file_names``); the
on-disk format's defines in csrc/cm_store.h are ``_pure.store``'s.  Change a
number in one place only and this test names the other.
"""
from __future__ import annotations

import os
import re
from typing import Dict

import coremachine_embedded
from coremachine_embedded import caps, errors
from coremachine_embedded._pure import store, wal

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# cm_store.h defines that only the C implementation has (memory, read batching).
C_ONLY = {"CM_VCACHE", "SCRATCH_KEEP", "RANGE_RUN"}


def _read(name: str) -> str:
    with open(os.path.join(ROOT, "csrc", name)) as f:
        return re.sub(r"/\*.*?\*/", " ", f.read(), flags=re.S)


def _c_value(expr: str) -> int:
    """The value of a C integer constant expression of a #define."""
    py = re.sub(r"UINT64_C\((\w+)\)", r"\1", expr)
    py = re.sub(r"\((?:uint64_t|size_t|uint32_t)\)", "", py)
    py = re.sub(r"\b(\d+)[uU]?[lL]*\b", r"\1", py)
    assert re.fullmatch(r"[\d\s()<+*-]+", py), "not a plain constant: %r" % expr
    return int(eval(py, {"__builtins__": {}}))  # noqa: S307 - digits and operators only


def _defines(name: str) -> Dict[str, str]:
    return {m.group(1): m.group(2).strip()
            for m in re.finditer(r"^#define (\w+)[ \t]+(.+)$", _read(name), re.M)}


def _enum(name: str) -> Dict[str, int]:
    body = re.search(r"typedef enum %s \{(.*?)\} %s;" % (name, name), _read("cm.h"), re.S)
    assert body, name
    out, value = {}, -1
    for item in body.group(1).split(","):
        item = item.strip()
        if not item:
            continue
        key, _, expr = item.partition("=")
        value = int(expr) if expr.strip() else value + 1
        out[key.strip()] = value
    return out


def test_every_cm_h_define_is_the_same_in_caps() -> None:
    checked = 0
    for c_name, expr in _defines("cm.h").items():
        if c_name.startswith("CM_VERSION") or c_name == "CM_H":
            continue
        py_name = c_name[len("CM_"):]
        assert hasattr(caps, py_name), "cm.h has %s, caps has no %s" % (c_name, py_name)
        assert getattr(caps, py_name) == _c_value(expr), "%s differs" % c_name
        checked += 1
    assert checked >= 20


def test_code_version_is_the_package_version() -> None:
    d = _defines("cm.h")
    version = d["CM_VERSION"].strip('"')
    assert version == coremachine_embedded.__version__
    assert version == "%s.%s.%s" % (d["CM_VERSION_MAJOR"], d["CM_VERSION_MINOR"],
                                    d["CM_VERSION_PATCH"])


def test_error_codes_are_cm_err_and_each_has_an_exception() -> None:
    c_codes = {k[len("CM_ERR_"):]: v for k, v in _enum("cm_err").items() if k != "CM_OK"}
    py_codes = {k: v for k, v in vars(caps.CErrorCode).items() if k.isupper()}
    assert c_codes == py_codes
    assert set(errors.C_ERRORS) == set(py_codes.values())
    for code, cls in errors.C_ERRORS.items():
        assert issubclass(cls, errors.CoreMachineError)
        assert errors.from_code(code, "m").code == cls.code


def test_durability_is_cm_durability() -> None:
    c_modes = {k[len("CM_DURABLE_"):]: v for k, v in _enum("cm_durability").items()}
    assert c_modes == {d.name: d.code for d in caps.Durability}
    for d in caps.Durability:
        assert caps.Durability.parse(d.value) is d and str(d) == d.value == d.name.lower()


def test_file_names_are_cm_file_id_and_cm_file_names() -> None:
    ids = _enum("cm_file_id")
    names = re.search(r"cm_file_names\[\d+\] = \{(.*?)\};", _read("cm_store.c"), re.S)
    assert names
    c_names = [n.strip().strip('"') or None for n in names.group(1).split(",")]
    assert list(errors.FILE_NAMES) == c_names
    for c_name, index in ids.items():
        expected = None if c_name == "CM_FILE_NONE" else c_name[len("CM_FILE_"):].lower()
        assert errors.FILE_NAMES[index] == expected


def test_on_disk_format_constants_are_the_same_in_the_pure_store() -> None:
    checked = 0
    for c_name, expr in _defines("cm_store.h").items():
        if c_name in C_ONLY or c_name == "CM_STORE_H":
            continue
        assert getattr(store, c_name) == _c_value(expr), "%s differs" % c_name
        checked += 1
    assert checked >= 12
    assert wal._HEADER.size == store.BODY_FIXED and wal._RECORD.size == store.REC_FIXED
    assert wal._STABLE.size == store.BODY_STABLE and wal._WAL_NODE.size == store.NODE_ENTRY
    assert store.TREE_NODE.size == store.NODE_SLOT
