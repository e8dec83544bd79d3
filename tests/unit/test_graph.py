"""coremachine_embedded.graph: Mermaid and DOT text, rendered by the real Graphviz.

The DOT text is parsed and laid out by Graphviz's own ``dot`` (``-Tjson`` gives
back every text it draws, so escaping is checked on what is drawn) and rendered
to SVG and PNG; those tests skip only when ``dot`` is not installed
(``.ci/ensure-deps.sh --test`` installs it).  The Mermaid text is checked by a
small parser of the ``stateDiagram-v2`` subset ``to_mermaid`` writes.

``docs/quickstart-machine.svg`` is the README quick-start machine rendered by
``graph.render``; regenerate it with::

    COREMACHINE_REGENERATE=1 python3 -m pytest -q tests/unit/test_graph.py -k quickstart_svg
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from typing import Any, Dict, List, Optional, Tuple

import pytest

from coremachine_embedded import graph
from coremachine_embedded.errors import CoreMachineError, InvalidArgumentError
from coremachine_embedded.machine import DefinitionError, create_machine

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
QUICKSTART_SVG = os.path.join(ROOT, "docs", "quickstart-machine.svg")
HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz `dot` is not installed "
                                                    "(apt-get install graphviz)")
SVG_NS = "{http://www.w3.org/2000/svg}"


# --- the machines -------------------------------------------------------------

def quickstart_config() -> Dict[str, Any]:
    """The README quick start's ``create_machine`` config, taken from README.md itself."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        block = re.findall(r"```python\n(.*?)```", f.read(), re.S)[0]
    code = block.split("\n# Open the log")[0]
    code = code.replace("definition = create_machine(", "config = (")
    namespace: Dict[str, Any] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    return namespace["config"]  # type: ignore[no-any-return]


def quickstart():  # type: ignore[no-untyped-def]
    return create_machine(quickstart_config())


def led_on(ctx, state):  # type: ignore[no-untyped-def]
    pass


def led_off(ctx, state):  # type: ignore[no-untyped-def]
    pass


def is_big(ctx, value):  # type: ignore[no-untyped-def]
    return value > 100


def stop(ctx, value):  # type: ignore[no-untyped-def]
    pass


def reset(ctx, value):  # type: ignore[no-untyped-def]
    pass


AWKWARD = 'the "busy" {state} | <x> \\ #1; 50%'
UNICODE = "déjà vu ✓ 状态"


def rich_config() -> Dict[str, Any]:
    return {
        "initial": "idle",
        "context": {"n": 0},
        "states": {
            "idle": {"on": {"START": {"target": "running"},
                            "GO WEIRD": {"target": AWKWARD}}},
            "running": {
                "entry": led_on,
                "exit": [led_off, lambda ctx, state: None],
                "on": {
                    "INCREMENT": {"action": lambda ctx, v: None},      # stay
                    "STOP": [
                        {"target": "done", "guard": is_big, "action": stop},
                        {"target": "idle", "guard": lambda ctx, v: v == 0},
                        {"target": "idle", "action": stop},
                    ],
                    "RESET": "idle",                                    # own wins over all
                },
            },
            AWKWARD: {"on": {"ÉVÉNEMENT \"x\"": UNICODE}},
            UNICODE: {"on": {"enter": {"target": "idle"}}},
            "end": {},                                                  # a Mermaid keyword
            "done": {"final": True, "entry": led_on},
        },
        "all": {"RESET": {"target": "idle", "action": reset}},
    }


def rich():  # type: ignore[no-untyped-def]
    return create_machine(rich_config())


# --- a checker for the Mermaid stateDiagram-v2 subset that to_mermaid writes --

class Mermaid:
    def __init__(self) -> None:
        self.declared: Dict[str, str] = {}          # id -> label
        self.used: List[str] = []                   # ids in the order first used
        self.transitions: List[Tuple[str, str, Optional[str]]] = []
        self.notes: Dict[str, List[str]] = {}
        self.class_defs: Dict[str, str] = {}
        self.classes: Dict[str, str] = {}

    def label(self, ident: str) -> str:
        return self.declared.get(ident, ident)

    def edges(self) -> List[Tuple[str, str, Optional[str]]]:
        """Transitions with ids replaced by the state names they show."""
        def name(i: str) -> str:
            return i if i == "[*]" else self.label(i)
        return [(name(a), name(b), lab) for a, b, lab in self.transitions]


ID = r"[A-Za-z][A-Za-z0-9_]*"
RESERVED = {"state", "note", "end", "as", "direction", "classdef", "class", "style", "click",
            "left", "right", "of", "hide", "default", "fork", "join", "choice"}


def decode_text(text: str, where: str) -> str:
    """Check an escaped text and decode its entity codes (``#34;``)."""
    assert "\n" not in text and '"' not in text, where
    stripped = re.sub(r"#\d+;", "", text)
    assert "#" not in stripped and ";" not in stripped, "raw # or ; in %s: %r" % (where, text)
    assert "%%" not in stripped and "<" not in stripped and ">" not in stripped, where
    return re.sub(r"#(\d+);", lambda m: chr(int(m.group(1))), text)


def parse_mermaid(text: str) -> Mermaid:
    assert text.endswith("\n")
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    out = Mermaid()

    def use(ident: str, where: str) -> None:
        if ident == "[*]":
            return
        assert re.fullmatch(ID, ident), "bad state id %r in %s" % (ident, where)
        if ident not in out.declared:
            assert ident.lower() not in RESERVED, "reserved word %r used as an id" % ident
        if ident not in out.used:
            out.used.append(ident)

    i = 1
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("%%"):
            continue
        if re.fullmatch(r"direction (LR|TB|RL|BT)", line):
            continue
        m = re.fullmatch(r'state "([^"]*)" as (%s)' % ID, line)
        if m:
            assert m.group(2) not in out.declared, "declared twice: %s" % m.group(2)
            assert m.group(2) not in out.used, "declared after use: %s" % m.group(2)
            out.declared[m.group(2)] = decode_text(m.group(1), line)
            continue
        if re.fullmatch(ID, line):       # a bare state id declares that state
            use(line, line)
            continue
        m = re.fullmatch(r"(\S+) --> (\S+)(?: : (.+))?", line)
        if m:
            a, b, lab = m.groups()
            use(a, line)
            use(b, line)
            assert b != "[*]" or lab is None, "a label on the end arrow: %s" % line
            out.transitions.append((a, b, None if lab is None else decode_text(lab, line)))
            continue
        m = re.fullmatch(r"note (right|left) of (%s)" % ID, line)
        if m:
            use(m.group(2), line)
            body = []
            while lines[i].strip() != "end note":
                body.append(decode_text(lines[i].strip(), "note"))
                i += 1
                assert i < len(lines), "unterminated note"
            i += 1
            out.notes[m.group(2)] = body
            continue
        m = re.fullmatch(r"classDef (%s) (\S+)" % ID, line)
        if m:
            out.class_defs[m.group(1)] = m.group(2)
            continue
        m = re.fullmatch(r"class (%s) (%s)" % (ID, ID), line)
        if m:
            assert m.group(2) in out.class_defs, "class before its classDef"
            use(m.group(1), line)
            out.classes[m.group(1)] = m.group(2)
            continue
        raise AssertionError("line the checker does not know: %r" % line)
    return out


# --- Mermaid -----------------------------------------------------------------

def test_mermaid_quickstart_lines() -> None:
    text = graph.to_mermaid(quickstart())
    assert text.splitlines() == [
        "stateDiagram-v2",
        "    direction LR",
        "    [*] --> idle",
        "    idle --> running : START / start",
        "    running --> running : INCREMENT / increment",
        "    running --> idle : STOP / stop",
    ]
    parsed = parse_mermaid(text)
    assert parsed.edges() == [("[*]", "idle", None), ("idle", "running", "START / start"),
                              ("running", "running", "INCREMENT / increment"),
                              ("running", "idle", "STOP / stop")]


def test_mermaid_rich_machine() -> None:
    text = graph.to_mermaid(rich(), current="running")
    lines = text.splitlines()
    for expected in [
        "    [*] --> idle",
        "    running --> done : STOP [guard: is_big] / stop",
        "    running --> idle : STOP [guard: guard]",            # a lambda guard
        "    running --> idle : STOP [else] / stop",
        "    running --> running : INCREMENT (stay) / action",   # targetless: self-loop
        "    running --> idle : RESET",                          # its own, not the 'all' one
        "    idle --> idle : RESET (all) / reset",
        "    done --> [*]",
        "    note right of running",
        "        entry: led_on",
        "        exit: led_off, exit",
        "    end note",
        "    class running current",
    ]:
        assert expected in lines, expected
    assert "    running --> idle : RESET (all) / reset" not in lines
    assert not any(line.startswith("    done --> ") and "[*]" not in line for line in lines)

    p = parse_mermaid(text)
    names = set(rich().states)
    shown = {p.label(i) for i in p.used}
    assert shown == names                       # every state appears, under its own name
    assert p.declared[next(i for i in p.declared if p.declared[i] == AWKWARD)] == AWKWARD
    edges = p.edges()
    assert ("idle", AWKWARD, "GO WEIRD") in edges
    assert (AWKWARD, UNICODE, 'ÉVÉNEMENT "x"') in edges
    assert (UNICODE, "idle", "(redirect on open)") in edges
    # 'all' reaches every non-final state that does not define RESET itself, and no other
    got = {a for a, b, lab in edges if lab == "RESET (all) / reset"}
    assert got == {"idle", AWKWARD, UNICODE, "end"}
    assert ("done", "[*]", None) in edges
    # the keyword 'end' and the awkward names got generated ids
    assert "end" not in p.used and "end" in p.declared.values()
    assert p.classes == {"running": "current"}
    assert "fill:%s" % graph.CURRENT_FILL in p.class_defs["current"]
    assert p.notes["done"] == ["entry: led_on"]


def test_mermaid_ids_do_not_collide() -> None:
    cfg = {"initial": "s1", "states": {"s1": {"on": {"A": "x y"}}, "x y": {"on": {"B": "s1"}},
                                       "s1_": {}}}
    p = parse_mermaid(graph.to_mermaid(cfg))
    assert len(set(p.used)) == 3
    assert sorted(p.label(i) for i in p.used) == sorted(["s1", "x y", "s1_"])
    assert ("x y", "s1", "B") in p.edges() and ("s1", "x y", "A") in p.edges()


def test_accepts_a_config_dict_and_a_definition() -> None:
    cfg = rich_config()
    assert graph.to_mermaid(cfg) == graph.to_mermaid(create_machine(cfg))
    assert graph.to_dot(cfg, current="idle") == graph.to_dot(create_machine(cfg), current="idle")
    with pytest.raises(DefinitionError):
        graph.to_dot({"initial": "nowhere", "states": {"a": {}}})


def test_unknown_current_state() -> None:
    with pytest.raises(InvalidArgumentError, match="nope"):
        graph.to_mermaid(quickstart(), current="nope")
    with pytest.raises(InvalidArgumentError):
        graph.to_dot(quickstart(), current="nope")


def test_current_highlight_only_when_asked() -> None:
    assert "current" not in graph.to_mermaid(quickstart())
    assert graph.CURRENT_FILL not in graph.to_dot(quickstart())


# --- DOT ---------------------------------------------------------------------

def test_dot_quickstart_text() -> None:
    text = graph.to_dot(quickstart(), current="running")
    lines = [line.strip() for line in text.splitlines()]
    assert lines[0] == "digraph machine {" and lines[-1] == "}"
    assert '"__start" -> "s0";' in lines
    assert '"s0" -> "s1" [label="START / start"];' in lines
    assert '"s1" -> "s1" [label="INCREMENT / increment"];' in lines
    assert '"s1" -> "s0" [label="STOP / stop"];' in lines
    running = next(line for line in lines if line.startswith('"s1" ['))
    assert 'fillcolor="%s"' % graph.CURRENT_FILL in running and "filled" in running
    assert "doublecircle" not in text


def layout(dot_text: str) -> Dict[str, Any]:
    """Graphviz's own parse and layout of ``dot_text``: nodes and edges with drawn texts."""
    proc = subprocess.run(["dot", "-Tjson"], input=dot_text.encode("utf-8"),
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    assert not proc.stderr.strip(), proc.stderr.decode()          # no warnings either
    data = json.loads(proc.stdout)

    def texts(obj: Dict[str, Any]) -> List[str]:
        return [op["text"] for op in obj.get("_ldraw_", []) if op["op"] == "T"]
    nodes = {o["name"]: {"shape": o.get("shape"), "texts": texts(o), "style": o.get("style", ""),
                         "fill": o.get("fillcolor")} for o in data["objects"]}
    by_gvid = {o["_gvid"]: o["name"] for o in data["objects"]}
    edges = [(by_gvid[e["tail"]], by_gvid[e["head"]], texts(e), e.get("style", ""))
             for e in data["edges"]]
    return {"nodes": nodes, "edges": edges}


@needs_dot
def test_dot_is_parsed_by_graphviz_and_draws_the_names_exactly() -> None:
    d = rich()
    g = layout(graph.to_dot(d, current=AWKWARD))
    nodes, edges = g["nodes"], g["edges"]
    ids = {name: "s%d" % i for i, name in enumerate(d.states)}
    name_of = {v: k for k, v in ids.items()}
    assert nodes["__start"]["shape"] == "point"
    assert ("__start", ids["idle"], [], "") in edges
    for name in d.states:
        assert nodes[ids[name]]["texts"][0] == name      # drawn exactly, however awkward
    assert nodes[ids["done"]]["shape"] == "doublecircle"
    assert all(nodes[ids[n]]["shape"] == "Mrecord" for n in d.states if n != "done")
    assert nodes[ids["running"]]["texts"] == ["running", "entry: led_on", "exit: led_off, exit"]
    assert nodes[ids["done"]]["texts"] == ["done", "entry: led_on"]
    assert nodes[ids[AWKWARD]]["fill"] == graph.CURRENT_FILL
    assert "filled" in nodes[ids[AWKWARD]]["style"]
    assert all(nodes[i]["fill"] is None for i in nodes if i != ids[AWKWARD])

    named = [(name_of[a], name_of[b], t[0] if t else None, s) for a, b, t, s in edges
             if a != "__start"]
    assert ("running", "done", "STOP [guard: is_big] / stop", "") in named
    assert ("running", "idle", "STOP [guard: guard]", "") in named
    assert ("running", "idle", "STOP [else] / stop", "") in named
    assert ("running", "running", "INCREMENT (stay) / action", "") in named
    assert ("idle", AWKWARD, "GO WEIRD", "") in named
    assert (AWKWARD, UNICODE, 'ÉVÉNEMENT "x"', "") in named
    assert (UNICODE, "idle", "(redirect on open)", "dotted") in named
    alls = {a for a, b, t, s in named if t == "RESET (all) / reset"}
    assert alls == {"idle", AWKWARD, UNICODE, "end"}
    assert all(s == "dashed" for a, b, t, s in named if t == "RESET (all) / reset")
    assert len(named) == sum(len(run) for row in d.events_by_state for _, run in row) + 1


@needs_dot
def test_render_svg_and_png(tmp_path: Any) -> None:
    for machine, current in ((quickstart(), "running"), (rich(), UNICODE)):
        png = graph.render(machine, "png", tmp_path / "m.png", current=current)
        assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000
        assert (tmp_path / "m.png").read_bytes() == png
        svg = graph.render(machine, "svg", str(tmp_path / "m.svg"), current=current)
        assert (tmp_path / "m.svg").read_bytes() == svg
        root = ET.fromstring(svg)
        assert root.tag == SVG_NS + "svg"
        current_id = "s%d" % machine.state_ids[current]
        for g in root.iter(SVG_NS + "g"):
            if g.get("class") != "node":
                continue
            title = g.find(SVG_NS + "title")
            assert title is not None
            fills = {el.get("fill") for el in g.iter() if el.get("fill")}
            texts = [t.text for t in g.iter(SVG_NS + "text")]
            if title.text == current_id:
                assert graph.CURRENT_FILL in fills and texts[0] == current
            else:
                assert graph.CURRENT_FILL not in fills
    assert oct((tmp_path / "m.svg").stat().st_mode & 0o777) == oct(0o644)


def test_render_text_formats_need_no_graphviz(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.setenv("PATH", "")
    q = quickstart()
    assert graph.render(q, "mermaid") == graph.to_mermaid(q).encode()
    assert graph.render(q, "dot", tmp_path / "q.dot") == graph.to_dot(q).encode()
    assert (tmp_path / "q.dot").read_text() == graph.to_dot(q)
    with pytest.raises(InvalidArgumentError, match="jpeg"):
        graph.render(q, "jpeg")


def test_missing_dot_is_a_specific_error(monkeypatch: Any, tmp_path: Any) -> None:
    monkeypatch.setenv("PATH", "")
    for fmt in ("svg", "png"):
        with pytest.raises(graph.GraphvizNotFoundError) as info:
            graph.render(quickstart(), fmt, tmp_path / ("x." + fmt))
        e = info.value
        assert e.code == "GRAPHVIZ_MISSING"
        assert isinstance(e, CoreMachineError) and isinstance(e, RuntimeError)
        assert "apt-get install graphviz" in str(e)
        assert not (tmp_path / ("x." + fmt)).exists()


def test_missing_dot_in_a_fresh_process(tmp_path: Any) -> None:
    code = ("from coremachine_embedded import graph\n"
            "try:\n"
            "    graph.render({'initial': 'a', 'states': {'a': {}}}, 'svg')\n"
            "except graph.GraphvizNotFoundError as e:\n"
            "    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=tmp_path,
                         env=dict(os.environ, PATH="", PYTHONPATH=ROOT)).stdout
    assert out.startswith("GRAPHVIZ_MISSING: ") and "apt-get install graphviz" in out


@needs_dot
def test_dot_failure_is_reported(monkeypatch: Any) -> None:
    monkeypatch.setattr(graph, "to_dot", lambda d, c=None: "digraph { this is not dot")
    with pytest.raises(graph.GraphvizError, match="syntax error"):
        graph.render(quickstart(), "svg")


def test_graph_imports_only_the_standard_library() -> None:
    code = ("import sys\n"
            "before = set(sys.modules)\n"
            "import coremachine_embedded.graph\n"
            "print(sorted(m for m in set(sys.modules) - before))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=ROOT)).stdout
    loaded = eval(out)
    ours = {m for m in loaded if m.startswith("coremachine_embedded")}
    # the package itself (and what its __init__ always loads) plus errors and graph
    assert "coremachine_embedded.graph" in ours
    assert "coremachine_embedded.machine" not in ours
    assert "coremachine_embedded.coremachine" not in ours


# --- docs/quickstart-machine.svg is up to date ---------------------------------

_GEOMETRY = ("points", "x", "y", "width", "height", "viewBox", "transform", "d", "cx", "cy",
             "rx", "ry", "x1", "y1", "x2", "y2")


def _graphviz_version(svg: str) -> Optional[str]:
    m = re.search(r"Generated by graphviz version ([^\s]+)", svg)
    return m.group(1) if m else None


def _normalise(svg: str, geometry: bool) -> str:
    """The SVG without comments; with ``geometry=False`` every coordinate is replaced
    (text widths come from the installed fonts, so positions vary between machines)."""
    svg = re.sub(r"<!--.*?-->", "", svg, flags=re.S)
    if not geometry:
        pattern = r'\b(%s)="[^"]*"' % "|".join(_GEOMETRY)
        svg = re.sub(pattern, lambda m: '%s="#"' % m.group(1), svg)
        svg = re.sub(r'font-size="[^"]*"', 'font-size="#"', svg)
    return re.sub(r"\s+", " ", svg).strip()


def _content(svg: str) -> List[Tuple[str, str, Tuple[str, ...], Tuple[str, ...]]]:
    """What the picture says, whatever the Graphviz version: per node and edge, its
    title, its texts and its fills."""
    root = ET.fromstring(svg)
    out = []
    for g in root.iter(SVG_NS + "g"):
        if g.get("class") in ("node", "edge"):
            title = g.find(SVG_NS + "title")
            out.append((str(g.get("class")), title.text if title is not None else "",
                        tuple(t.text or "" for t in g.iter(SVG_NS + "text")),
                        tuple(sorted({el.get("fill", "") for el in g.iter()} - {""}))))
    return sorted(out)


@needs_dot
def test_docs_quickstart_svg_is_up_to_date() -> None:
    fresh = graph.render(quickstart(), "svg").decode("utf-8")
    if os.environ.get("COREMACHINE_REGENERATE"):
        with open(QUICKSTART_SVG, "w", encoding="utf-8") as f:
            f.write(fresh)
    assert os.path.exists(QUICKSTART_SVG), "generate it: see this module's docstring"
    with open(QUICKSTART_SVG, encoding="utf-8") as f:
        committed = f.read()
    hint = ("docs/quickstart-machine.svg is stale; regenerate it: COREMACHINE_REGENERATE=1 "
            "python3 -m pytest -q tests/unit/test_graph.py -k quickstart_svg")
    assert _content(fresh) == _content(committed), hint
    if _graphviz_version(fresh) == _graphviz_version(committed):
        # Same Graphviz: the same document, up to comments and font-dependent geometry.
        assert _normalise(fresh, geometry=False) == _normalise(committed, geometry=False), hint
    for name in ("idle", "running", "START / start", "INCREMENT / increment", "STOP / stop"):
        assert ">%s<" % name in committed
