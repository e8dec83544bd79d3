"""Logging for the long-running commands (``gateway``, ``serve``, ``pull``):
``--log-level`` and ``--log-format text|json``.

JSON is one object a line on stderr (journald and log shippers take it as
is): ``{"time", "level", "logger", "message"}``, plus ``error`` with the
traceback when there is one, plus any ``extra={...}`` fields of the call.
"""
from __future__ import annotations

import json
import logging
import sys
import time
from typing import IO, Any, Optional

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")

# Attributes every LogRecord has; the others came from ``extra=``.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + ".%03dZ" % record.msecs,
               "level": record.levelname.lower(), "logger": record.name,
               "message": record.getMessage()}
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text", stream: Optional[IO[str]] = None) -> None:
    """Send the package's log records (and any library's) to ``stream``
    (stderr) at ``level`` and above, as text or JSON lines."""
    if level not in LEVELS:
        raise ValueError("log level must be one of %s, not %r" % (", ".join(LEVELS), level))
    if fmt not in FORMATS:
        raise ValueError("log format must be one of %s, not %r" % (", ".join(FORMATS), fmt))
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper()))


def add_arguments(parser: Any) -> None:
    """``--log-level`` and ``--log-format`` on an argparse (sub)parser."""
    parser.add_argument("--log-level", choices=LEVELS, default=None,
                        help="least severe level logged (default: info)")
    parser.add_argument("--log-format", choices=FORMATS, default=None,
                        help="text, or json: one object a line (journald-friendly)")
