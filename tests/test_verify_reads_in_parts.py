"""In rollback-journal mode a verification's long read of candidate rows is cut into
several read transactions, so an application writer gets its turn between them
(tests/test_contention.py). What the parts say together is what one read would
have said: every candidate's row, and every key the changelog names as changed
since the checkpoint, including changes committed between two parts."""

from __future__ import annotations

import sqlite3

from syncd.config import SourceSettings
from syncd.sqlite import capture
from syncd.sqlite.introspect import introspect
from syncd.verify import sqlite_side
from tests.support.daemon import run_cli

ROWS = 3000  # six lookup statements of sqlite_side.LOOKUP_BATCH keys


def test_a_read_in_parts_gives_the_evidence_of_one(tmp_path, make_config, monkeypatch):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO items VALUES (?, ?)", ((i, f"v{i}") for i in range(1, ROWS + 1)))
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db)}])
    done = run_cli(cfg, "init")
    assert done.returncode == 0, done.stdout + done.stderr

    app = sqlite3.connect(db, isolation_level=None)
    app.execute("UPDATE items SET v = 'changed' WHERE id <= 10")  # changes after checkpoint 0
    conn = sqlite3.connect(db, isolation_level=None)
    spec = introspect(conn, SourceSettings(name="app", path=str(db))).tables["items"]
    tid = conn.execute(f"SELECT tid FROM {capture.REGISTRY} WHERE name = 'items'").fetchone()[0]

    monkeypatch.setattr(sqlite_side, "HOLD_SECONDS", 0.0)  # every part has held the file long enough
    parts = []

    def between_parts(statement: str) -> None:
        if statement == "BEGIN":  # a part begins, holding no lock yet
            parts.append(statement)
            if len(parts) == 2:  # the application commits between the first two parts
                app.execute("UPDATE items SET v = 'later' WHERE id = 2900")

    conn.set_trace_callback(between_parts)
    ev = sqlite_side.rows_with_evidence(conn, spec, tid, [(k,) for k in range(1, ROWS + 1)], False, 0)
    conn.set_trace_callback(None)

    assert len(parts) >= 5  # it was read in parts
    rows = dict(ev.rows)
    assert sorted(rows) == list(range(1, ROWS + 1))
    assert rows[5] == "changed" and rows[2900] == "later" and rows[11] == "v11"
    assert sorted(k for (k,) in ev.changed_keys) == [*range(1, 11), 2900]
    assert ev.max_seq == ev.entries_after == 11

    # In WAL mode a reader holds no writer back: one transaction, the same evidence.
    conn.execute("PRAGMA journal_mode=wal")
    parts.clear()
    conn.set_trace_callback(between_parts)
    again = sqlite_side.rows_with_evidence(conn, spec, tid, [(k,) for k in range(1, ROWS + 1)], False, 0)
    conn.set_trace_callback(None)
    assert len(parts) == 1
    assert dict(again.rows) == rows and sorted(again.changed_keys) == sorted(ev.changed_keys)
