"""The ``coremachine`` command."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run
    return run(args.dir, quiet=args.quiet)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="coremachine",
        description="Signed, append-only, Merkle-verified logs for IoT nodes.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the demo on the embedded defaults",
                          description="Create a signed log, append, reopen, verify, and "
                                      "fill a replica from the writer's proofs.")
    demo.add_argument("--dir", help="where to put the demo stores (default: a temp dir)")
    demo.add_argument("-q", "--quiet", action="store_true")
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # one clear line unless --debug
        if args.debug:
            raise
        print("coremachine: error: %s" % e, file=sys.stderr)
        return 1
