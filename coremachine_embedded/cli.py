"""The ``coremachine`` command (also ``python -m coremachine_embedded``).

Exit codes: 0 success, 1 failure (one line on stderr naming what failed),
2 usage error, 3 timed out, 130 interrupted.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from typing import Any, Callable, Dict, List, Optional

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_TIMEOUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


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


def _print_counters(counters: Dict[str, int], stream: Any = None) -> None:
    stream = stream or sys.stderr
    stream.write(" ".join("%s=%d" % kv for kv in sorted(counters.items())) + "\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run
    return run(args.dir, quiet=args.quiet)


def _cmd_serve(args: argparse.Namespace) -> int:
    from . import Core
    from .sync import serve

    core = Core(args.store, durability="batch")

    async def main() -> None:
        ep = await serve(core, args.url)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        print("serving %s (length %d, %s) on %s" % (core.key.hex(), core.length,
                                                     "writer" if core.writable else "replica",
                                                     args.url), flush=True)
        try:
            await stop.wait()
        finally:
            await ep.close()
            _print_counters(ep.counters)
    try:
        asyncio.run(main())
    finally:
        core.close()
    return EXIT_OK


def _cmd_pull(args: argparse.Namespace) -> int:
    from . import Core
    from .errors import InvalidArgumentError
    from .sync import Endpoint, open_link

    try:
        key = bytes.fromhex(args.key)
    except ValueError:
        raise InvalidArgumentError("KEY_HEX must be 64 hex digits") from None
    core = Core(args.store, key=key, durability="batch")
    progress = Progress("pull")

    async def main() -> int:
        ep = Endpoint(window=args.window)
        link, addr = open_link(args.url, listen=False)
        await ep.attach(link)
        try:
            task = ep.pull(core, link, addr, live=args.live, progress=progress)
            await asyncio.wait_for(task, args.timeout)
        except asyncio.TimeoutError:
            progress.done()
            print("coremachine: error: timed out after %gs pulling from %s (have %d of %d)"
                  % (args.timeout, args.url, core.contiguous_length, core.length),
                  file=sys.stderr)
            return EXIT_TIMEOUT
        finally:
            await ep.close()
            core.flush()
            _print_counters(ep.counters)
        progress.done()
        print("pulled %s: length %d, fork %d, verified" % (core.key.hex(), core.length,
                                                            core.fork))
        return EXIT_OK
    try:
        return asyncio.run(main())
    finally:
        core.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coremachine",
        description="State machines on signed, append-only, Merkle-verified logs, "
                    "synced over UDP and serial lines.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser("demo", help="run the demo on the embedded defaults",
                          description="A writer machine and a reader following it over UDP "
                                      "and a serial line (PTY pair).")
    demo.add_argument("--dir", help="where to put the demo stores (default: a temp dir)")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)

    serve = sub.add_parser("serve", help="serve a store (writer or replica) on a link",
                           description="Answer sync requests for the core in STORE_DIR until "
                                       "interrupted; prints counters on exit.")
    serve.add_argument("store", metavar="STORE_DIR")
    serve.add_argument("url", metavar="URL", help="udp://HOST:PORT or serial:///dev/ttyX?baud=N")
    serve.set_defaults(func=_cmd_serve)

    pull = sub.add_parser("pull", help="fill or refresh a replica from a peer",
                          description="Pull the core KEY_HEX into STORE_DIR from the peer at "
                                      "URL; exits 0 once it holds the peer's signed length "
                                      "(with --live, keeps following).")
    pull.add_argument("store", metavar="STORE_DIR")
    pull.add_argument("key", metavar="KEY_HEX")
    pull.add_argument("url", metavar="URL", help="udp://HOST:PORT or serial:///dev/ttyX?baud=N")
    pull.add_argument("--live", action="store_true", help="keep following the writer")
    pull.add_argument("--timeout", type=float, default=None, help="give up after SECONDS (exit 3)")
    pull.add_argument("--window", type=int, default=128, help="block requests in flight")
    pull.set_defaults(func=_cmd_pull)
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
    except Exception as e:  # one clear line unless --debug
        if args.debug or os.environ.get("COREMACHINE_DEBUG"):
            raise
        print("coremachine: error: %s" % e, file=sys.stderr)
        return EXIT_FAIL
