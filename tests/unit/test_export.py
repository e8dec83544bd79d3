"""``coremachine export STORE --format jsonl|csv|sqlite [-o FILE]`` on real
stores: the same rows as ``history``, value and context as JSON, SQLite one
table keyed by index, and blocks that are not machine entries."""
from __future__ import annotations

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys

from coremachine_embedded import Core, Coremachine, KeyPair, export
from coremachine_embedded.demo import THERMOSTAT

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=ROOT)
READINGS = [18.0, 17.5, 21.0, 19.5, 16.0]


def cm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "coremachine_embedded", *args],
                          capture_output=True, text=True, env=ENV, timeout=60)


def thermostat_store(path: str) -> None:
    with Core(path, key_pair=KeyPair.generate()) as core:
        machine = Coremachine(core, THERMOSTAT)
        for i, celsius in enumerate(READINGS):
            machine.action("READING", {"t": i, "celsius": celsius})
        machine.action("SHUTDOWN")


def test_jsonl_csv_and_sqlite_hold_the_history(tmp_path) -> None:
    store = str(tmp_path / "node")
    thermostat_store(store)
    history = json.loads(cm("history", store, "--json").stdout)
    assert len(history) == 6

    r = cm("export", store)                                  # jsonl to stdout by default
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert rows == history
    assert list(rows[0]) == ["index", "fork", "event", "value", "state", "context"]
    assert rows[0]["value"] == {"t": 0, "celsius": 18.0} and rows[0]["state"] == "heating"
    assert rows[5]["event"] == "SHUTDOWN" and rows[5]["value"] is None and rows[5]["state"] == "off"

    out = tmp_path / "h.csv"
    r = cm("export", store, "--format", "csv", "-o", str(out))
    assert r.returncode == 0 and "6 entries written" in r.stderr, r.stderr
    table = list(csv.DictReader(io.StringIO(out.read_text())))
    assert [int(t["index"]) for t in table] == list(range(6))
    assert all(json.loads(t["context"]) == h["context"] for t, h in zip(table, history))
    assert json.loads(table[2]["value"]) == {"t": 2, "celsius": 21.0}
    assert table[5]["value"] == ""                           # no value: an empty cell

    db = tmp_path / "h.sqlite"
    r = cm("export", store, "--format", "sqlite", "-o", str(db))
    assert r.returncode == 0, r.stderr
    con = sqlite3.connect(str(db))
    try:
        names = [t[0] for t in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert names == ["entries"]
        columns = {c[1]: c[5] for c in con.execute("PRAGMA table_info(entries)")}
        assert list(columns) == ["index", "fork", "event", "value", "state", "context"]
        assert columns["index"] == 1                           # the primary key
        assert con.execute('SELECT count(*) FROM entries').fetchone()[0] == 6
        heating = con.execute("SELECT \"index\" FROM entries WHERE state = 'heating' "
                              "ORDER BY \"index\"").fetchall()
        assert [h[0] for h in heating] == [i for i, h in enumerate(history)
                                           if h["state"] == "heating"]
        celsius = con.execute("SELECT json_extract(context, '$.celsius') FROM entries "
                              "WHERE \"index\" = 3").fetchone()[0]
        assert celsius == 19.5
        plan = " ".join(str(p) for p in con.execute(
            'EXPLAIN QUERY PLAN SELECT * FROM entries WHERE "index" = 4'))
        assert "INTEGER PRIMARY KEY" in plan or "rowid" in plan.lower()
    finally:
        con.close()
    assert not [n for n in os.listdir(str(tmp_path)) if ".tmp-" in n]   # written, renamed

    r = cm("export", store, "--format", "sqlite")
    assert r.returncode == 2 and "-o FILE" in r.stderr
    r = cm("export", str(tmp_path / "missing"))
    assert r.returncode == 1 and "Traceback" not in r.stderr


def test_blocks_that_are_not_machine_entries(tmp_path) -> None:
    with Core(str(tmp_path / "raw"), key_pair=KeyPair.generate()) as core:
        core.append([b"\xff\x00 not json", b"[1, 2]", b'{"state": "on", "context": {"n": 1}}'])
        rows = list(export.rows(core))
    assert rows[0]["value"] == {"raw": b"\xff\x00 not json".hex()} and rows[0]["state"] is None
    assert rows[1]["value"] == [1, 2] and rows[1]["event"] is None
    assert rows[2]["state"] == "on" and rows[2]["context"] == {"n": 1}
    buf = io.StringIO()
    assert export.write(iter(rows), "jsonl", buf) == 3
    assert [json.loads(line) for line in buf.getvalue().splitlines()] == rows


def test_history_follow_prints_entries_as_a_running_writer_commits_them(tmp_path) -> None:
    """``history --follow --jsonl`` on a store this process holds open and
    writes (as the gateway holds its replicas): the entries already there,
    then each new one once committed; SIGTERM ends it with exit 0."""
    import select
    import signal
    store = str(tmp_path / "node")
    core = Core(store, key_pair=KeyPair.generate(), durability="sync")
    machine = Coremachine(core, THERMOSTAT)
    machine.action("READING", {"t": 0, "celsius": 18.0})
    proc = subprocess.Popen([sys.executable, "-m", "coremachine_embedded", "history", store,
                             "--follow", "--jsonl", "--from", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert proc.stdout is not None

    def next_row() -> dict:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready, "history --follow printed nothing in 30 s"
        return json.loads(proc.stdout.readline())
    try:
        assert next_row()["index"] == 0
        for i, celsius in enumerate([21.0, 16.5], start=1):
            machine.action("READING", {"t": i, "celsius": celsius})
            row = next_row()
            assert (row["index"], row["value"]["celsius"]) == (i, celsius)
            assert row["state"] == machine.state and row["fork"] == 0
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        machine.close()
        core.close()


def test_history_follow_refuses_json_and_to(tmp_path) -> None:
    store = str(tmp_path / "node")
    thermostat_store(store)
    r = cm("history", store, "--follow", "--json")
    assert r.returncode == 2 and "--follow" in r.stderr and "\n" == r.stderr[-1:], r.stderr
