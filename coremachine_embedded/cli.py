"""The ``coremachine`` command (also ``python -m coremachine_embedded``).

Exit codes: 0 success; 1 failure (one line on stderr naming the file or peer at
fault; ``verify`` found a damaged store); 2 usage error; 3 timed out; 4 the
machine rejected the action (``act``); 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Dict, List, Optional

from .caps import Durability

URL_HELP = ("udp://HOST:PORT, serial:///dev/ttyX?baud=N, "
            "mqtt[s]://[USER:PASS@]BROKER[:PORT]/PREFIX or tcp://HOST:PORT (Hypercore's "
            "protocol, for JavaScript peers) (docs/protocol.md)")
EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_REJECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130


class Progress:
    """One self-rewriting line on a terminal; silent when piped."""

    def __init__(self, what: str, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty()
        self.what = what
        self.start = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if not self.enabled or (now - self.last < 0.1 and done < total):
            return
        self.last = now
        rate = done / max(now - self.start, 1e-6)
        pct = 100.0 * done / total if total else 100.0
        self.stream.write("\r%s %d/%d blocks (%.0f%%, %.0f/s)  " % (self.what, done, total, pct,
                                                                     rate))
        self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run
    return run(args.dir, quiet=args.quiet)


def _setup_logging(args: argparse.Namespace) -> None:
    from . import logs
    logs.setup(args.log_level or "warning", args.log_format or "text")


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import node
    _setup_logging(args)
    return node.serve(args.stores, args.url, args.wait_for_device)


def _cmd_pull(args: argparse.Namespace) -> int:
    from . import node
    _setup_logging(args)
    return node.pull(args.store, args.key, args.url, args.live, args.timeout, args.window,
                     args.wait_for_device, Progress("pull"))


def _cmd_gateway(args: argparse.Namespace) -> int:
    from .gateway.service import run
    return run(args.config, args.metrics, args.log_level, args.log_format, args.check)


def _cmd_export(args: argparse.Namespace) -> int:
    from . import commands
    count = commands.export(args.store, args.format, args.output)
    if args.output:
        print("%s: %d entries written to %s" % (args.store, count, args.output), file=sys.stderr)
    return EXIT_OK


def _emit(data: Any, as_json: bool, lines: Callable[[], List[str]]) -> None:
    if as_json:
        from . import _json
        sys.stdout.write(_json.dumps(data).decode() + "\n")
    else:
        for line in lines():
            print(line)


def _cmd_keygen(args: argparse.Namespace) -> int:
    from . import commands
    kp = commands.keygen(args.keyfile, args.force)
    print("key %s written to %s (mode 0600)" % (commands.core_key(kp).hex(), args.keyfile))
    print("(the core key readers pull with; with init --compat it is the public key %s)"
          % kp.public_key.hex())
    return EXIT_OK


def _board_defaults(args: argparse.Namespace) -> None:
    if getattr(args, "board", None):
        from . import boards
        board = boards.load(args.board)
        if getattr(args, "store", None) is None:
            args.store = board.store.path
        if getattr(args, "durability", None) is None:
            args.durability = board.store.durability


def _cmd_init(args: argparse.Namespace) -> int:
    from . import commands
    _board_defaults(args)
    if not args.store:
        raise commands.CommandError("give STORE (or --board)", EXIT_USAGE)
    core, existed = commands.init(args.store, args.machine, args.key_file, args.compat,
                                  args.durability or "sync")
    with core:
        print("%s %s: key %s (%s, durability %s)" % (
            "already there:" if existed else "created", args.store, core.key.hex(),
            "compat" if core.compat else "manifest", core.durability))
    return EXIT_OK


def _cmd_act(args: argparse.Namespace) -> int:
    from . import commands
    snap = commands.act(args.store, args.event, args.value, args.machine)
    _emit(snap, args.json, lambda: [snap["state"]])
    return EXIT_OK


def _cmd_stop(args: argparse.Namespace) -> int:
    from . import commands
    pid = commands.stop(args.store, args.timeout)
    print("stopped process %d (it had %s open)" % (pid, args.store))
    return EXIT_OK


def _cmd_state(args: argparse.Namespace) -> int:
    from . import commands
    st = commands.state(args.store, args.machine)
    _emit(st, args.json, lambda: ["state    %s%s" % (st["state"], " (final)" if st["final"] else ""),
                                  "context  %s" % json.dumps(st["context"]),
                                  "entries  %d (fork %d)" % (st["length"], st["fork"]),
                                  "can do   %s" % (", ".join(st["available"]) or "-")])
    return EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    from . import commands
    if args.follow:
        if args.json or args.end is not None:
            raise commands.CommandError("--follow prints entries as they come: not with --json "
                                        "or --to", EXIT_USAGE)
        return _follow(args)
    rows = commands.history(args.store, args.start, args.end)
    return _print_history(args, rows)


def _follow(args: argparse.Namespace) -> int:
    """history --follow: until SIGTERM or Ctrl-C, both a clean exit 0."""
    import signal

    from . import commands
    stopped: List[int] = []
    signal.signal(signal.SIGTERM, lambda sig, _frame: stopped.append(sig))
    try:
        return _print_history(args, commands.follow_history(args.store, args.start,
                                                            stop=lambda: bool(stopped)))
    except KeyboardInterrupt:
        return EXIT_OK


def _print_history(args: argparse.Namespace, rows: Any) -> int:
    from . import _json
    if args.jsonl:
        for r in rows:
            sys.stdout.write(_json.dumps(r).decode() + "\n")
            sys.stdout.flush()
        return EXIT_OK
    if args.json:
        _emit(list(rows), True, list)
        return EXIT_OK
    for r in rows:
        print("%6d  %-12s %-24s -> %-12s fork %d" % (
            r["index"], r["event"] or "-", json.dumps(r["value"]) if r["value"] is not None
            else "-", r["state"] or "?", r["fork"]), flush=args.follow)
    return EXIT_OK


def _cmd_verify(args: argparse.Namespace) -> int:
    from . import commands
    progress = Progress("verify")
    result = commands.verify(args.store, progress)
    progress.done()
    for warning in result["warnings"]:
        print("coremachine: warning: %s: %s" % (args.store, warning), file=sys.stderr)
    print("%s: header and wal checksums checked, %d blocks re-hashed against the tree, "
          "signature of length %d (fork %d) valid"
          % (args.store, result["blocks"], result["length"], result["fork"]))
    return EXIT_OK


def _cmd_info(args: argparse.Namespace) -> int:
    from . import commands
    data = commands.info(args.store)
    if args.key:
        print(data["key"])
        return EXIT_OK
    _emit(data, args.json, lambda: ["%-18s %s" % (k, v) for k, v in data.items()])
    return EXIT_OK


def _cmd_graph(args: argparse.Namespace) -> int:
    from . import commands
    out = commands.graph(args.machine, args.format, args.output, args.store)
    if args.output is None:
        if args.format in ("svg", "png") and sys.stdout.isatty():
            raise commands.CommandError("%s is binary: give -o FILE" % args.format, EXIT_USAGE)
        sys.stdout.buffer.write(out)
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    from . import selfbench
    figures = selfbench.run(quick=args.quick, out=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(figures, indent=1))
    return EXIT_OK


def _version() -> str:
    import platform

    from . import __version__, backend
    return "coremachine %s (%s backend, Python %s)" % (__version__, backend,
                                                      platform.python_version())


def build_parser() -> argparse.ArgumentParser:
    from . import logs
    from .commands import DEFAULT_PULL_TIMEOUT
    parser = argparse.ArgumentParser(
        prog="coremachine",
        description="State machines on signed, append-only, Merkle-verified logs, "
                    "synced over UDP and serial lines.")
    debug_help = "show tracebacks on errors (exit codes stay the same)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # --debug after the subcommand too (SUPPRESS: absent there keeps the value before it)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help=debug_help)

    def command(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    demo = command("demo", help="run the demo on the embedded defaults",
                   description="A writer machine and a reader following it over UDP "
                               "and a serial line (PTY pair).")
    demo.add_argument("--dir", help="where to put the demo stores (default: a temp dir)")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    keygen = command("keygen", help="write a new key pair to KEYFILE (mode 0600)",
                     description="Generate an Ed25519 key pair; KEYFILE holds the "
                                 "secret key in hex, readable by its owner only.")
    keygen.add_argument("keyfile", metavar="KEYFILE")
    keygen.add_argument("--force", action="store_true", help="replace an existing KEYFILE")
    keygen.set_defaults(func=_cmd_keygen)

    init = command("init", help="create a writer store for a machine definition",
                   description="Create a store whose machine is MODULE:ATTR (or "
                               "path/to/file.py:ATTR); later commands remember it.")
    init.add_argument("store", metavar="STORE", nargs="?")
    init.add_argument("--machine", required=True, metavar="MOD:ATTR")
    init.add_argument("--key-file", help="use this key pair (from keygen) instead of a new one")
    init.add_argument("--compat", action="store_true", help="Hypercore 10 compat mode")
    init.add_argument("--durability", choices=[d.value for d in Durability])
    init.add_argument("--board", help="take the store path and durability from a board profile")
    init.set_defaults(func=_cmd_init)

    act = command("act", help="fire one transition; prints the new state",
                  description="Fire EVENT with an optional JSON VALUE; exit 4 if the machine "
                              "rejects it in its current state (or raises on the value). On "
                              "a store that a running serve holds, that process does it.")
    act.add_argument("store", metavar="STORE")
    act.add_argument("event", metavar="EVENT")
    act.add_argument("value", metavar="VALUE_JSON", nargs="?")
    act.add_argument("--machine", metavar="MOD:ATTR", help="default: the one given to init")
    act.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    act.set_defaults(func=_cmd_act)

    state = command("state", help="print the current state and context")
    state.add_argument("store", metavar="STORE")
    state.add_argument("--machine", metavar="MOD:ATTR", help="default: the one given to init")
    state.add_argument("--json", action="store_true")
    state.set_defaults(func=_cmd_state)

    history = command("history", help="print the entries: index, event, value, state, fork")
    history.add_argument("store", metavar="STORE")
    history.add_argument("--from", dest="start", type=int, metavar="N")
    history.add_argument("--to", dest="end", type=int, metavar="N", help="up to, not including")
    history.add_argument("--json", action="store_true", help="one JSON array")
    history.add_argument("--jsonl", action="store_true",
                         help="one JSON object a line, streamed as it reads")
    history.add_argument("--follow", action="store_true",
                         help="then print new entries as they are verified and committed "
                              "(by the gateway, a pull --live, the writer) until interrupted")
    history.set_defaults(func=_cmd_history)

    verify = command("verify", help="re-hash every block, check the signature",
                     description="Exit 0 if the store verifies, 1 naming the damaged "
                                 "file otherwise.")
    verify.add_argument("store", metavar="STORE")
    verify.set_defaults(func=_cmd_verify)

    info = command("info", help="key, discovery key, length, fork, format, size")
    info.add_argument("store", metavar="STORE")
    info.add_argument("--json", action="store_true")
    info.add_argument("--key", action="store_true",
                      help="print only the core key (what readers pull with)")
    info.set_defaults(func=_cmd_info)

    graph = command("graph", help="draw a machine (Mermaid, DOT, SVG, PNG)",
                    description="SVG and PNG need Graphviz (apt-get install graphviz).")
    graph.add_argument("--machine", metavar="MOD:ATTR",
                       help="default: the machine of --store (the one given to init)")
    graph.add_argument("--format", choices=["mermaid", "dot", "svg", "png"], default="mermaid")
    graph.add_argument("-o", "--output", metavar="FILE")
    graph.add_argument("--store", help="highlight the state this store is in")
    graph.set_defaults(func=_cmd_graph)

    bench = command("bench", help="measure this machine (import cost, appends, actions)")
    bench.add_argument("--quick", action="store_true")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(func=_cmd_bench)

    serve = command("serve", help="serve stores (writers or replicas) on a link",
                    description="Answer sync requests for the cores in the STORE_DIRs until "
                                "SIGTERM, SIGINT or coremachine stop (on any of them); prints "
                                "counters on exit. coremachine act on a STORE_DIR is carried "
                                "out here.")
    serve.add_argument("stores", metavar="STORE_DIR", nargs="+")
    serve.add_argument("url", metavar="URL", help=URL_HELP)
    serve.add_argument("--wait-for-device", action="store_true",
                       help="a serial device that does not exist yet is waited for")
    logs.add_arguments(serve)
    serve.set_defaults(func=_cmd_serve)

    stop = command("stop", help="stop the serve or pull --live that holds STORE",
                   description="Ask the process holding STORE (through its control socket) "
                               "to stop as SIGTERM would; returns once it has closed the store.")
    stop.add_argument("store", metavar="STORE")
    stop.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    stop.set_defaults(func=_cmd_stop)

    pull = command("pull", help="fill or refresh a replica from a peer",
                   description="Pull the core KEY_HEX into STORE_DIR from the peer at "
                               "URL; exits 0 once it holds the peer's signed length "
                               "(with --live, keeps following).")
    pull.add_argument("store", metavar="STORE_DIR")
    pull.add_argument("key", metavar="KEY_HEX")
    pull.add_argument("url", metavar="URL", help=URL_HELP)
    pull.add_argument("--live", action="store_true", help="keep following the writer")
    pull.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="give up after SECONDS (exit 3); default %g without --live, "
                           "none with it; 0: never" % DEFAULT_PULL_TIMEOUT)
    pull.add_argument("--wait-for-device", action="store_true",
                      help="a serial device that does not exist yet is waited for")
    pull.add_argument("--window", type=int, default=128, help="block requests in flight")
    logs.add_arguments(pull)
    pull.set_defaults(func=_cmd_pull)

    gateway = command("gateway", help="follow a fleet of devices (gateway.toml)",
                      description="Pull every device in the configuration live, write its "
                                  "local machines, bridge to MQTT; SIGHUP reloads the file, "
                                  "SIGTERM stops. See docs/gateway.md.")
    gateway.add_argument("--config", required=True, metavar="FILE", help="the TOML file")
    gateway.add_argument("--metrics", metavar="HOST:PORT",
                         help="serve Prometheus metrics at http://HOST:PORT/metrics")
    gateway.add_argument("--check", action="store_true",
                         help="check the configuration and exit (0: valid)")
    logs.add_arguments(gateway)
    gateway.set_defaults(func=_cmd_gateway)

    export = command("export", help="write a log as JSON lines, CSV or SQLite",
                     description="Columns: index, fork, event, value, state, context "
                                 "(value and context as JSON). SQLite: one table, "
                                 "'entries', keyed by index.")
    export.add_argument("store", metavar="STORE")
    export.add_argument("--format", choices=["jsonl", "csv", "sqlite"], default="jsonl")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write here (default: standard output; SQLite needs a file)")
    export.set_defaults(func=_cmd_export)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Optional[Callable[[argparse.Namespace], int]] = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(func(args))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as e:  # one clear line; the traceback too with --debug
        if args.debug or os.environ.get("COREMACHINE_DEBUG"):
            traceback.print_exc()
        print("coremachine: error: %s" % e, file=sys.stderr)
        return int(getattr(e, "exit_code", EXIT_FAIL))
