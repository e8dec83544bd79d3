"""Draw a machine definition: Mermaid ``stateDiagram-v2``, Graphviz DOT, SVG/PNG.

::

    from coremachine_embedded import graph
    print(graph.to_mermaid(definition))                  # paste into Markdown
    print(graph.to_dot(definition, current="running"))   # the current state highlighted
    graph.render(definition, "svg", "machine.svg")       # runs Graphviz's `dot`

What is drawn:

- the initial state (an arrow from a start dot / Mermaid ``[*]``), final states
  (an arrow to Mermaid ``[*]``; a DOT ``doublecircle``);
- one arrow per candidate transition, labelled ``EVENT [guard: name] / action``
  (UML style).  Guarded candidates are tried in order; the unguarded last one of
  a guarded list is marked ``[else]``.  A lambda guard is shown as ``guard``;
- a transition without a target (stay: no exit/entry actions run) is a self-loop
  marked ``(stay)``; a transition whose target is its own state is a plain
  self-loop (exit and entry actions run);
- ``all`` transitions are drawn from every state that receives them (those that
  are not final and do not define the event themselves), marked ``(all)`` and
  dashed in DOT;
- entry/exit actions: a note on the state (Mermaid), extra fields of the
  state's record (DOT);
- the JavaScript ``on.enter.target`` redirect applied when a machine is opened
  in a state: a dotted arrow marked ``(redirect on open)``;
- ``current``: that state is filled and bold (Mermaid ``classDef current``).

State and event names may hold anything (quotes, spaces, braces, unicode):
Mermaid gets safe identifiers and entity-coded labels (``#34;``), DOT gets
quoted, escaped strings.  Only the standard library is imported here; the
machine layer is loaded when a config dict has to be compiled.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import (TYPE_CHECKING, Any, Callable, List, Mapping, NamedTuple, Optional, Sequence,
                    Tuple, Union)

from .errors import CoreMachineError, InvalidArgumentError

if TYPE_CHECKING:
    from .machine import MachineDefinition, Transition

__all__ = ["to_mermaid", "to_dot", "render", "GraphvizError", "GraphvizNotFoundError",
           "FORMATS", "CURRENT_FILL"]

#: Formats :func:`render` accepts: ``svg``/``png`` through Graphviz, and the two texts.
FORMATS = ("svg", "png", "dot", "mermaid")
#: Fill colour of the current state (both syntaxes).
CURRENT_FILL = "#ffd54f"
_CURRENT_STROKE = "#e65100"
_TIMEOUT = 60.0


class GraphvizError(CoreMachineError, RuntimeError):
    """Graphviz's ``dot`` failed (its stderr is in the message)."""

    code = "GRAPHVIZ_FAILED"


class GraphvizNotFoundError(GraphvizError):
    """The ``dot`` program (Graphviz) is not on ``PATH``."""

    code = "GRAPHVIZ_MISSING"


MachineLike = Union["MachineDefinition", Mapping[str, Any]]


# --- the model both syntaxes draw ----------------------------------------------

class _Edge(NamedTuple):
    source: int
    target: int
    label: str
    kind: str        # "normal", "all" or "redirect"


class _Model(NamedTuple):
    names: Tuple[str, ...]
    initial: int
    finals: Tuple[bool, ...]
    entry: Tuple[Tuple[str, ...], ...]
    exit: Tuple[Tuple[str, ...], ...]
    edges: Tuple[_Edge, ...]
    current: Optional[int]


def _fn_name(fn: Optional[Callable[..., Any]], fallback: str) -> str:
    if fn is None:
        return fallback
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str):
        inner = getattr(fn, "func", None)   # functools.partial
        name = getattr(inner, "__name__", None) if inner is not None else None
    if not isinstance(name, str):
        name = type(fn).__name__            # a callable object
    if not name or name == "<lambda>":
        return fallback
    return name


def _label(t: "Transition", run: Sequence["Transition"]) -> str:
    parts = [t.event]
    if t.target is None:
        parts.append("(stay)")
    if t.from_all:
        parts.append("(all)")
    if t.guard is not None:
        parts.append("[guard: %s]" % _fn_name(t.guard, "guard"))
    elif len(run) > 1:
        parts.append("[else]")
    if t.action is not None:
        parts.append("/ %s" % _fn_name(t.action, "action"))
    return " ".join(parts)


def _definition(machine: MachineLike) -> "MachineDefinition":
    from .machine import MachineDefinition, create_machine
    if isinstance(machine, MachineDefinition):
        return machine
    return create_machine(machine)


def _model(machine: MachineLike, current: Optional[str]) -> _Model:
    d = _definition(machine)
    cur: Optional[int] = None
    if current is not None:
        if current not in d.state_ids:
            raise InvalidArgumentError("current state %r is not a state of this machine "
                                       "(states: %s)" % (current, ", ".join(d.states)))
        cur = d.state_ids[current]
    edges: List[_Edge] = []
    for sid, row in enumerate(d.events_by_state):
        for _event, run in row:
            for t in run:
                target = sid if t.target is None else d.state_ids[t.target]
                edges.append(_Edge(sid, target, _label(t, run), "all" if t.from_all else "normal"))
        redirect = d.open_redirect[sid] if sid < len(d.open_redirect) else -1
        if redirect >= 0:
            edges.append(_Edge(sid, redirect, "(redirect on open)", "redirect"))
    return _Model(
        names=d.states, initial=d.initial_id, finals=d.finals,
        entry=tuple(tuple(_fn_name(f, "entry") for f in fns) for fns in d.entry),
        exit=tuple(tuple(_fn_name(f, "exit") for f in fns) for fns in d.exit),
        edges=tuple(edges), current=cur)


# --- Mermaid -------------------------------------------------------------------

# Kept as they are: word characters (unicode letters too), space and punctuation
# with no meaning in a state name, a transition label or a note.
_MERMAID_SAFE = re.compile(r"[\w .,:()\[\]/+*=!?@'\-]", re.UNICODE)
_MERMAID_ID = re.compile(r"[A-Za-z][A-Za-z0-9_]*\Z")
# Words the stateDiagram grammar gives a meaning to (compared lower-case).
_MERMAID_RESERVED = frozenset({
    "state", "note", "end", "as", "direction", "classdef", "class", "style", "click",
    "left", "right", "of", "hide", "scale", "tb", "bt", "lr", "rl", "default", "fork",
    "join", "choice", "concurrent", "acctitle", "accdescr", "statediagram",
    "statediagram-v2", "current", "final"})


def _mermaid_text(text: str) -> str:
    """Entity-code every character the state-diagram grammar could take for syntax."""
    return "".join(ch if _MERMAID_SAFE.match(ch) else "#%d;" % ord(ch) for ch in text)


def _mermaid_ids(names: Sequence[str]) -> List[str]:
    used = set()
    ids: List[str] = []
    safe = {n for n in names if _MERMAID_ID.match(n) and n.lower() not in _MERMAID_RESERVED}
    for i, name in enumerate(names):
        if name in safe:
            ident = name
        else:
            ident = "s%d" % i
            while ident in safe or ident in used:
                ident += "_"
        used.add(ident)
        ids.append(ident)
    return ids


def to_mermaid(definition: MachineLike, current: Optional[str] = None) -> str:
    """The machine as a Mermaid ``stateDiagram-v2`` (a string ending in a newline).

    :param definition: a :class:`MachineDefinition` or a config dict for
        :func:`create_machine`.
    :param current: a state to highlight.
    :raises DefinitionError: for a config dict that does not compile.
    :raises InvalidArgumentError: if ``current`` is not a state.
    """
    m = _model(definition, current)
    ids = _mermaid_ids(m.names)
    out = ["stateDiagram-v2", "    direction LR"]
    linked = {m.initial} | {e.source for e in m.edges} | {e.target for e in m.edges}
    for sid, (ident, name) in enumerate(zip(ids, m.names)):
        if ident != name:
            out.append('    state "%s" as %s' % (_mermaid_text(name), ident))
        elif sid not in linked and not m.finals[sid]:
            out.append("    %s" % ident)   # a state with no arrow would not be drawn
    out.append("    [*] --> %s" % ids[m.initial])
    for e in m.edges:
        out.append("    %s --> %s : %s" % (ids[e.source], ids[e.target], _mermaid_text(e.label)))
    for sid, final in enumerate(m.finals):
        if final:
            out.append("    %s --> [*]" % ids[sid])
    for sid, ident in enumerate(ids):
        lines = ["entry: %s" % ", ".join(m.entry[sid])] if m.entry[sid] else []
        lines += ["exit: %s" % ", ".join(m.exit[sid])] if m.exit[sid] else []
        if lines:
            out.append("    note right of %s" % ident)
            out.extend("        %s" % _mermaid_text(line) for line in lines)
            out.append("    end note")
    if m.current is not None:
        out.append("    classDef current fill:%s,stroke:%s,stroke-width:3px,font-weight:bold"
                   % (CURRENT_FILL, _CURRENT_STROKE))
        out.append("    class %s current" % ids[m.current])
    return "\n".join(out) + "\n"


# --- Graphviz DOT --------------------------------------------------------------

def _dot_string(text: str) -> str:
    """``text`` as a DOT quoted string shown literally (an escString label)."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\n")
    return '"%s"' % "".join(ch if ch >= " " or ch == "\t" else " " for ch in text)


def _record_field(text: str) -> str:
    """``text`` escaped for one field of a record label (before DOT quoting)."""
    out = []
    for ch in text.replace("\r\n", "\n").replace("\r", "\n"):
        if ch in "\\{}|<> ":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch < " ":
            out.append("\\ ")
        else:
            out.append(ch)
    return "".join(out)


def _dot_record(fields: Sequence[str]) -> str:
    body = "|".join(fields)
    return '"%s"' % body.replace('"', '\\"')


def to_dot(definition: MachineLike, current: Optional[str] = None) -> str:
    """The machine as a Graphviz ``digraph`` (a string ending in a newline).

    States are records (name, then ``entry:``/``exit:`` fields); final states
    are double circles; the initial state is pointed at by a start dot.

    :raises DefinitionError: for a config dict that does not compile.
    :raises InvalidArgumentError: if ``current`` is not a state.
    """
    m = _model(definition, current)
    out = [
        "digraph machine {",
        '    graph [rankdir=LR, fontname="Helvetica", nodesep=0.4, ranksep=0.6];',
        '    node [shape=Mrecord, fontname="Helvetica", fontsize=12];',
        '    edge [fontname="Helvetica", fontsize=10];',
        '    "__start" [shape=point, width=0.18, label="", tooltip="initial state"];',
    ]
    for sid, name in enumerate(m.names):
        attrs: List[str] = []
        if m.finals[sid]:
            lines = [name] + ["entry: %s" % ", ".join(m.entry[sid])] * bool(m.entry[sid]) \
                + ["exit: %s" % ", ".join(m.exit[sid])] * bool(m.exit[sid])
            attrs += ["shape=doublecircle", "label=%s" % _dot_string("\n".join(lines))]
        else:
            fields = [_record_field(name)]
            if m.entry[sid]:
                fields.append(_record_field("entry: %s" % ", ".join(m.entry[sid])) + "\\l")
            if m.exit[sid]:
                fields.append(_record_field("exit: %s" % ", ".join(m.exit[sid])) + "\\l")
            attrs.append("label=%s" % _dot_record(fields))
        attrs.append("tooltip=%s" % _dot_string(name))
        if sid == m.current:
            attrs += ['style="filled,bold"', 'fillcolor="%s"' % CURRENT_FILL,
                      'color="%s"' % _CURRENT_STROKE, "penwidth=2.5"]
        out.append('    "s%d" [%s];' % (sid, ", ".join(attrs)))
    out.append('    "__start" -> "s%d";' % m.initial)
    for e in m.edges:
        attrs = ["label=%s" % _dot_string(e.label)]
        if e.kind == "all":
            attrs.append("style=dashed")
        elif e.kind == "redirect":
            attrs += ["style=dotted", "arrowhead=empty"]
        out.append('    "s%d" -> "s%d" [%s];' % (e.source, e.target, ", ".join(attrs)))
    out.append("}")
    return "\n".join(out) + "\n"


# --- rendering -----------------------------------------------------------------

def _dot_binary() -> str:
    path = shutil.which("dot")
    if path is None:
        raise GraphvizNotFoundError(
            "Graphviz's `dot` program is not on PATH; install Graphviz "
            "(Debian/Raspberry Pi OS: `sudo apt-get install graphviz`), or draw the "
            "machine as text with to_mermaid()/to_dot()")
    return path


def render(definition: MachineLike, fmt: str, path: Optional[Union[str, "os.PathLike[str]"]]
           = None, current: Optional[str] = None) -> bytes:
    """Render the machine: ``svg``/``png`` with Graphviz's ``dot``, or ``dot``/``mermaid`` text.

    :param path: also write the bytes there (replacing the file atomically).
    :returns: the rendered bytes.
    :raises GraphvizNotFoundError: ``dot`` is not installed (code ``GRAPHVIZ_MISSING``).
    :raises GraphvizError: ``dot`` failed or took more than a minute.
    :raises InvalidArgumentError: an unknown format or ``current`` state.
    """
    if fmt not in FORMATS:
        raise InvalidArgumentError("unknown graph format %r (use one of: %s)"
                                   % (fmt, ", ".join(FORMATS)))
    if fmt == "mermaid":
        data = to_mermaid(definition, current).encode("utf-8")
    else:
        source = to_dot(definition, current)
        if fmt == "dot":
            data = source.encode("utf-8")
        else:
            data = _run_dot(source, fmt)
    if path is not None:
        _write_atomic(os.fspath(path), data)
    return data


def _run_dot(source: str, fmt: str) -> bytes:
    binary = _dot_binary()
    try:
        proc = subprocess.run([binary, "-T" + fmt], input=source.encode("utf-8"),
                              capture_output=True, timeout=_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        raise GraphvizError("dot -T%s took more than %gs" % (fmt, _TIMEOUT)) from None
    except OSError as e:
        raise GraphvizError("could not run %s: %s" % (binary, e)) from None
    if proc.returncode != 0 or not proc.stdout:
        err = proc.stderr.decode("utf-8", "replace").strip() or "no output"
        raise GraphvizError("dot -T%s failed (exit %d): %s" % (fmt, proc.returncode, err))
    return proc.stdout


def _write_atomic(path: str, data: bytes) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".graph-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp's 0600 is wrong for a picture
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
