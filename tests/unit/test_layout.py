"""The shape of the source tree: the store's C files and their Python twins
go in pairs and in layers, no C file depends on itself through others, no
source file grows past about 600 lines, and no module reaches into the private
attributes of another module's objects."""
from __future__ import annotations

import ast
import os
import re
from typing import Any, Dict, List, Set

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CSRC = os.path.join(ROOT, "csrc")
PURE = os.path.join(ROOT, "coremachine_embedded", "_pure")

# The store, file for file (csrc/cm_<name>.c <-> _pure/<name>.py), by layer:
# a file may call only files of lower layers (csrc/cm_store.h says the same).
STORE_LAYERS = {"store": 0, "snapshot": 1, "wal": 2, "treefile": 2, "blocks": 3, "writer": 4,
                "replica": 4, "opening": 5}
MAX_LINES = 600
# Files still to be split: none now (remove an entry when its split lands;
# the test then holds it to the limit).
OVER_LIMIT_FOR_NOW: Set[str] = set()
# Underscore names that are public API (namedtuple methods, os/sys functions).
PUBLIC_UNDERSCORE = {"_replace", "_asdict", "_fields", "_make", "_exit", "_getframe"}


def _c_files() -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(CSRC)):
        if name.endswith(".c"):
            with open(os.path.join(CSRC, name)) as f:
                out[name[:-2]] = f.read()
    return out


def _strip_comments(src: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*|\"(\\.|[^\"\\])*\"", " ", src, flags=re.S)


def _c_dependencies() -> Dict[str, Set[str]]:
    """file -> the files whose external functions or data it uses."""
    files = {name: _strip_comments(src) for name, src in _c_files().items()}
    defined: Dict[str, str] = {}
    definition = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(cm_\w+)\s*(\(|\[[^\]]*\]\s*=)",
                            re.M)
    for name, src in files.items():
        for m in definition.finditer(src):
            line_end = src.find("\n", m.end())
            tail = src[m.end():line_end if line_end >= 0 else len(src)]
            if m.group(2) == "(" and tail.rstrip().endswith(";"):
                continue  # a declaration
            defined.setdefault(m.group(1), name)
    deps: Dict[str, Set[str]] = {name: set() for name in files}
    for name, src in files.items():
        for symbol in set(re.findall(r"\b(cm_\w+)\b", src)):
            owner = defined.get(symbol)
            if owner is not None and owner != name:
                deps[name].add(owner)
    return deps


def _cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """A cycle of the graph as a path, or [] if it has none."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_c_files_depend_on_each_other_without_cycles() -> None:
    deps = _c_dependencies()
    assert "cm_encoding" not in deps["cm_crypto"] or "cm_crypto" not in deps["cm_encoding"]
    assert _cycle(deps) == [], " -> ".join(_cycle(deps))


def test_c_headers_include_each_other_without_cycles() -> None:
    graph = {}
    for name in os.listdir(CSRC):
        if name.endswith((".c", ".h")):
            with open(os.path.join(CSRC, name)) as f:
                graph[name] = set(re.findall(r'^#include "([\w.]+)"', f.read(), re.M))
    assert _cycle(graph) == [], " -> ".join(_cycle(graph))


def test_the_store_is_split_the_same_way_in_both_trees() -> None:
    c_store = {name[3:] for name, src in _c_files().items() if '#include "cm_store.h"' in src}
    py_store = set()
    for name in os.listdir(PURE):
        if name.endswith(".py"):
            with open(os.path.join(PURE, name)) as f:
                tree = ast.parse(f.read())
            bases = {b.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
                     for b in node.bases if isinstance(b, ast.Name)}
            if name[:-3] in STORE_LAYERS or bases & {"StoreState", "Wal", "TreeFile", "Blocks",
                                                     "Writer", "Replica"}:
                py_store.add(name[:-3])
    assert c_store == set(STORE_LAYERS)
    assert py_store == set(STORE_LAYERS)


def test_store_files_call_only_lower_layers() -> None:
    deps = _c_dependencies()
    for name, layer in STORE_LAYERS.items():
        for dep in deps["cm_" + name]:
            if dep[3:] in STORE_LAYERS:
                assert STORE_LAYERS[dep[3:]] < layer, "cm_%s.c calls %s.c" % (name, dep)
    for name, layer in STORE_LAYERS.items():
        with open(os.path.join(PURE, name + ".py")) as f:
            tree = ast.parse(f.read())
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", "") == "TYPE_CHECKING"
                       for n in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1 and \
                    node.module in STORE_LAYERS and id(node) not in typing_only:
                assert STORE_LAYERS[node.module] < layer, "%s.py imports %s" % (name,
                                                                              node.module)


SOURCE_SUFFIXES = (".py", ".pyx", ".pxi", ".pyi", ".c", ".h", ".js", ".mjs", ".cjs")
# Where our sources live: the package, the C core and its tests, the Python
# tests, benchmarks and tools (not build output, not installed npm packages).
SOURCE_TOPS = ("coremachine_embedded", "csrc", "tests", "bench", "tools", "boards")
NOT_SOURCE_DIRS = {"node_modules", "__pycache__", "build", ".venv", ".hypothesis"}


def _over_the_limit(root: str) -> List[str]:
    """Source files under root's SOURCE_TOPS with more than MAX_LINES lines."""
    over = []
    for top in SOURCE_TOPS:
        for directory, subdirs, names in os.walk(os.path.join(root, top)):
            subdirs[:] = [d for d in subdirs if d not in NOT_SOURCE_DIRS]
            for name in names:
                generated = name.endswith(".c") and os.path.exists(
                    os.path.join(directory, name[:-2] + ".pyx"))  # Cython's output
                if not name.endswith(SOURCE_SUFFIXES) or name.endswith("_table.h") or generated:
                    continue
                path = os.path.join(directory, name)
                rel = os.path.relpath(path, root)
                with open(path, errors="replace") as f:
                    lines = sum(1 for _ in f)
                if lines > MAX_LINES and rel not in OVER_LIMIT_FOR_NOW:
                    over.append("%s (%d lines)" % (rel, lines))
    return over


def test_no_source_file_is_over_about_600_lines() -> None:
    assert _over_the_limit(ROOT) == []


def test_the_line_limit_covers_test_files(tmp_path: Any) -> None:
    """A test file (Python or C) over the limit is caught like any other."""
    for rel in ("tests/unit/test_long.py", "csrc/tests/test_long.c"):
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x = 1\n" * MAX_LINES)
    assert _over_the_limit(str(tmp_path)) == []
    for rel in ("tests/unit/test_long.py", "csrc/tests/test_long.c"):
        with open(tmp_path / rel, "a") as f:
            f.write("x = 1\n")
    assert sorted(_over_the_limit(str(tmp_path))) == [
        "csrc/tests/test_long.c (%d lines)" % (MAX_LINES + 1),
        "tests/unit/test_long.py (%d lines)" % (MAX_LINES + 1)]


def _defined_by(cls: ast.ClassDef) -> Set[str]:
    """The names a class defines: its methods, the attributes it sets on
    self/cls, its __slots__."""
    names: Set[str] = set()
    for node in ast.walk(cls):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in ("self", "cls") and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets) and \
                isinstance(node.value, (ast.Tuple, ast.List)):
            names.update(e.value for e in node.value.elts if isinstance(e, ast.Constant))
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__") and name not in PUBLIC_UNDERSCORE


def _is_module(path: str, level: int, module: str, name: str) -> bool:
    """Whether ``from <level dots><module> import <name>`` in ``path`` names a
    module of the package (a private module is the package's own business)."""
    base = os.path.dirname(path)
    for _ in range(level - 1):
        base = os.path.dirname(base)
    folder = os.path.join(base, *module.split(".")) if module else base
    return level > 0 and os.path.isdir(folder) and any(
        entry == name or entry.startswith(name + ".") for entry in os.listdir(folder))


def private_reaches(path: str, source: str) -> List[str]:
    """Where the module at ``path`` uses private names of others:
    ``obj._name`` or ``getattr(obj, "_name")`` (and setattr, hasattr,
    delattr) with obj not self/cls, except inside a class that defines
    ``_name`` itself (an object of its own class), and ``from m import _name``
    of anything but a module."""
    found: List[str] = []

    def visit(node: ast.AST, own: Set[str]) -> None:
        if isinstance(node, ast.ClassDef):
            own = own | _defined_by(node)
        holder: Any = None
        if isinstance(node, ast.ImportFrom):
            found.extend("from %s%s import %s" % ("." * node.level, node.module or "", a.name)
                         for a in node.names if _private(a.name) and
                         not _is_module(path, node.level, node.module or "", a.name))
        elif isinstance(node, ast.Attribute):
            holder, name = node.value, node.attr
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
                node.func.id in ("getattr", "setattr", "hasattr", "delattr") and \
                len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and \
                isinstance(node.args[1].value, str):
            holder, name = node.args[0], node.args[1].value
        if holder is not None and _private(name) and not (
                isinstance(holder, ast.Name) and (holder.id in ("self", "cls") or name in own)):
            found.append("%s.%s" % (ast.unparse(holder), name))
        for child in ast.iter_child_nodes(node):
            visit(child, own)

    visit(ast.parse(source), set())
    return found


def test_no_module_reaches_into_private_attributes_of_another() -> None:
    found = set()
    for directory, _, names in os.walk(os.path.join(ROOT, "coremachine_embedded")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                with open(path) as f:
                    found.update("%s: %s" % (os.path.relpath(path, ROOT), where)
                                 for where in private_reaches(path, f.read()))
    assert found == set()


def test_the_private_reach_check_catches_a_sample(tmp_path: Any) -> None:
    """Each kind of reach is found; an object of the class itself, a private
    module of the package and namedtuple's ``_replace`` are not."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "_helpers.py").write_text("")
    source = (
        "from ._helpers import _secret, public\n"
        "from . import _helpers\n"
        "from .wal import _parse_slot\n"
        "class Mine:\n"
        "    __slots__ = ('_slot',)\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def copy(self, other):\n"
        "        other._mine, other._slot = self._mine, 0\n"
        "        return other._replace(x=1), other._theirs\n"
        "def reach(ep, sock, other):\n"
        "    ep._entries.clear()\n"
        "    ep.link._send(b'')\n"
        "    other._mine = 3\n"
        "    return getattr(sock, '_sock', sock), hasattr(ep, 'public')\n")
    assert sorted(private_reaches(str(package / "sample.py"), source)) == [
        "ep._entries", "ep.link._send", "from ._helpers import _secret",
        "from .wal import _parse_slot", "other._mine", "other._theirs", "sock._sock"]
