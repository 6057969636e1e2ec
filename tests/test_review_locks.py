"""Review: in rollback-journal mode every syncd read transaction holds a SHARED lock
that keeps application writers from committing. The snapshot reads a chunk per
transaction for exactly that reason, but the value audit before the load
(snapshot.audit -> audit.audit_table) scans the whole table, converting values in
Python, inside ONE read transaction: on a large table an application writer with a
5 s busy_timeout fails with "database is locked"."""

from __future__ import annotations

import signal
import sqlite3

from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up

ROWS = 800_000


def make_events(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, at TEXT, body TEXT)")
    conn.executemany("INSERT INTO events VALUES (?, ?, ?)",
                     ((i, f"2024-01-{1 + i % 28:02d}T10:00:00Z", f"event {i}") for i in range(ROWS)))
    conn.commit()
    conn.close()


async def test_audit_of_a_large_table_locks_out_application_writers(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    make_events(db)
    cfg = make_config([{"name": "app", "path": str(db), "columns": {"events": {"at": "timestamptz"}}}],
                      sections={"verify": {"interval_seconds": 0}})
    # The writer runs until the audit and the load of 800k rows are done (then is stopped).
    writer = Writer(db, seconds=180, seed=1, rate=20)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        d.wait_log("table=events event=snapshot_finished", timeout=180)
        d.wait_log("table=items event=snapshot_finished", timeout=180)
        assert writer.proc.poll() is None, "the writer ended before the audit and the load were done"
        writer.proc.send_signal(signal.SIGTERM)
        result = writer.result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=180)
        assert d.stop() == 0
    assert result["transactions"] > 20, result  # the writer wrote all along
    assert result["lock_errors"] == 0, result["errors"]
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
