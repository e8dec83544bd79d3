"""Both backends are one interface: ``_backend.Backend``.  mypy --strict checks
both modules against it (tests/unit/test_typing.py); here the two export the
same names as the contract, and the C extension's stub (``_core.pyi``, what
mypy sees of it) matches the compiled module, signature for signature."""
from __future__ import annotations

import ast
import os
import subprocess
import sys

import pytest

from coremachine_embedded import _backend, _pure

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _contract_names() -> set:
    names = set()
    for node in ast.walk(ast.parse(open(os.path.join(ROOT, "coremachine_embedded",
                                                     "_backend.py")).read())):
        if isinstance(node, ast.ClassDef) and node.name == "Backend":
            for member in node.body:
                if isinstance(member, ast.FunctionDef):
                    names.add(member.name)
                elif isinstance(member, ast.AnnAssign) and isinstance(member.target, ast.Name):
                    names.add(member.target.id)
    return names


def _stub_names() -> set:
    tree = ast.parse(open(os.path.join(ROOT, "coremachine_embedded", "_core.pyi")).read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom) and node.module == "proofs":
            names.update(a.asname for a in node.names if a.asname)
    return names


def test_the_pure_backend_and_the_stub_export_the_contract() -> None:
    assert set(_pure.__all__) == _contract_names()
    assert _stub_names() == _contract_names()


def test_the_selected_backend_has_every_name_of_the_contract() -> None:
    for name in _contract_names():
        assert hasattr(_backend.impl, name), name


def test_the_stub_matches_the_compiled_extension(tmp_path) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed (sh .ci/ensure-deps.sh --test)")
    try:
        from coremachine_embedded import _core
    except ImportError as e:
        if os.environ.get("COREMACHINE_IMPL") == "python":
            pytest.skip("the C extension is not built (COREMACHINE_IMPL=python run): %s" % e)
        raise
    public = {n for n, v in vars(_core).items()
              if not n.startswith("_") and getattr(v, "__module__", "") == _core.__name__}
    assert public <= _contract_names(), "exported by _core, not in the contract"
    # Names the stub leaves out (the module's own imports) are not errors;
    # every name it has must match the runtime, parameters and kinds alike.
    # (Newer mypy wants extension classes marked @disjoint_base, which older
    # typeshed lacks: that one remark is allowed for the extension's classes.)
    allow = tmp_path / "allowlist"
    allow.write_text("".join("coremachine_embedded._core.%s\n" % name for name in
                             ("Log", "Table", "StreamPush", "StreamPull")))
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "--ignore-missing-stub",
                           "--allowlist", str(allow), "--ignore-unused-allowlist",
                           "coremachine_embedded._core"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
