"""A machine log as rows: ``index, fork, event, value, state, context``, for
``coremachine history`` and ``coremachine export`` (JSON lines, CSV, SQLite).

Each block of a machine log is ``{"state", "context", "event", "value"}``
(docs/machine.md); every row is read through :meth:`Core.get`, so only
verified bytes come out.  A block that is not such an object still gives a
row: JSON that is not an object becomes the row's ``value``, bytes that are
not JSON become ``{"raw": HEX}``.
"""
from __future__ import annotations

import csv
import os
import sqlite3
from typing import IO, Any, Dict, Iterable, Iterator, Optional

from . import _json
from .core import Core
from .errors import InvalidArgumentError

__all__ = ["FIELDS", "FORMATS", "decode", "rows", "write"]

FIELDS = ("index", "fork", "event", "value", "state", "context")
FORMATS = ("jsonl", "csv", "sqlite")
SQLITE_TABLE = "entries"


def decode(raw: bytes) -> Dict[str, Any]:
    """The ``event``, ``value``, ``state`` and ``context`` of one block."""
    try:
        entry = _json.loads(raw)
    except ValueError:
        entry = {"value": {"raw": raw.hex()}}
    if not isinstance(entry, dict):
        entry = {"value": entry}
    return {"event": entry.get("event"), "value": entry.get("value"),
            "state": entry.get("state"), "context": entry.get("context")}


def rows(core: Core, start: int = 0, end: Optional[int] = None) -> Iterator[Dict[str, Any]]:
    """Rows for blocks ``[start, end)`` of what ``core`` holds (``end`` None:
    up to its contiguous length when the iteration gets there)."""
    i = max(0, start)
    while True:
        stop = core.contiguous_length if end is None else min(end, core.contiguous_length)
        if i >= stop:
            return
        row: Dict[str, Any] = {"index": i, "fork": core.fork}
        row.update(decode(core.get(i)))
        yield row
        i += 1


def json_line(row: Dict[str, Any]) -> str:
    """One row as a line of JSON (as JavaScript would write it), no newline."""
    return _json.dumps(row).decode()


def write(rows_: Iterable[Dict[str, Any]], fmt: str, out: Optional[IO[str]] = None,
          path: Optional[str] = None) -> int:
    """Write ``rows_`` in ``fmt``: ``jsonl`` and ``csv`` to the text stream
    ``out``, ``sqlite`` to a new database at ``path`` (written beside it and
    renamed into place, so a reader never sees half of it).  Returns the rows
    written.

    CSV and SQLite hold ``value`` and ``context`` as JSON text (SQLite's
    ``json_extract(context, '$.celsius')`` reads into them); the SQLite table
    ``entries`` has ``"index"`` as its integer primary key.
    """
    if fmt == "jsonl":
        assert out is not None
        count = 0
        for row in rows_:
            out.write(json_line(row) + "\n")
            count += 1
        return count
    if fmt == "csv":
        assert out is not None
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(FIELDS)
        count = 0
        for row in rows_:
            writer.writerow([_cell(row[f], f) for f in FIELDS])
            count += 1
        return count
    if fmt == "sqlite":
        if path is None:
            raise InvalidArgumentError("an SQLite export needs a file (-o FILE)")
        return _write_sqlite(rows_, path)
    raise InvalidArgumentError("format must be one of %s, not %r" % (", ".join(FORMATS), fmt))


def _cell(value: Any, field: str) -> Any:
    if value is None:
        return ""
    return _json_or_null(value) if field in ("value", "context") else value


def _write_sqlite(rows_: Iterable[Dict[str, Any]], path: str) -> int:
    tmp = "%s.tmp-%d" % (path, os.getpid())
    db = sqlite3.connect(tmp)
    try:
        db.execute('CREATE TABLE %s ("index" INTEGER PRIMARY KEY, fork INTEGER NOT NULL, '
                   'event TEXT, value TEXT, state TEXT, context TEXT)' % SQLITE_TABLE)
        count = 0
        batch = []
        for row in rows_:
            batch.append((row["index"], row["fork"], row["event"], _json_or_null(row["value"]),
                          row["state"], _json_or_null(row["context"])))
            if len(batch) >= 1000:
                db.executemany("INSERT INTO %s VALUES (?, ?, ?, ?, ?, ?)" % SQLITE_TABLE, batch)
                count += len(batch)
                batch = []
        db.executemany("INSERT INTO %s VALUES (?, ?, ?, ?, ?, ?)" % SQLITE_TABLE, batch)
        count += len(batch)
        db.commit()
    except BaseException:
        db.close()
        os.unlink(tmp)
        raise
    db.close()
    os.replace(tmp, path)
    return count


def _json_or_null(value: Any) -> Optional[str]:
    return None if value is None else _json.dumps(value).decode()

