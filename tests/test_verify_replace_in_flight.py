"""A REPLACE through a unique index removes the row it collides with without a trigger
firing; syncd applies that removal when it applies the replacing row (collisions.py).
Until then the removed row is merely in flight: verification must not call it drift,
and a repair must not count it as a row it repaired (each such run is a consistency
error that restarts the cutover report's 14-day dual-write window)."""

from __future__ import annotations

import sqlite3

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import wait_caught_up
from tests.support.verifying import pg_fetch, sync_and_stop, verify


async def test_a_row_replaced_through_a_unique_index_not_yet_applied_is_not_drift(app_db, make_config, pg_dsn,
                                                                                   tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT UNIQUE, name TEXT)")
    conn.executemany("INSERT INTO users VALUES (?, ?, ?)", [(i, f"u{i}@x", f"n{i}") for i in range(1, 11)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    # The user signs up again under a new id: SQLite's REPLACE removes row 5 (same email).
    conn.execute("INSERT OR REPLACE INTO users VALUES (11, 'u5@x', 'signed up again')")
    conn.commit()
    conn.close()

    out = verify(cfg, "--repair", "--wait", "3")
    assert out.returncode == 0, out.stdout + out.stderr
    assert await compare_table(str(app_db), pg_dsn, "app", "users") == []
    runs = await pg_fetch(pg_dsn, "SELECT missing, extra, different, pending, detail FROM syncd.verify_runs "
                                  "WHERE table_name = 'users' ORDER BY id")
    first = runs[0]
    # Both keys are in flight (the daemon is stopped): pending, not drift.
    assert (first["missing"], first["extra"], first["different"]) == (0, 0, 0), first["detail"]
    assert first["pending"] == 2, first["detail"]

    with DaemonProcess(cfg, tmp_path / "after.log") as d:  # the stream alone would have removed it
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
