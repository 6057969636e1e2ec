"""Review: restores and capture resets.

1. The documented restore procedure (stop the application and syncd, restore the
   file, start again) loses changes when the application starts writing before
   syncd: restore detection is only "changelog max < checkpoint", and the restored
   file's new entries reuse the sequence numbers Postgres already applied.
2. The capture reset in reconcile (bookkeeping.reset_source) is two autocommit
   statements: a kill -9 between "checkpoint/capture id reset" and "every table back
   to pending" leaves the tables streaming over the new capture generation, never
   re-snapshotted.
"""

from __future__ import annotations

import os
import sqlite3

import asyncpg

from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import eventually, wait_caught_up


def backup(src, dst) -> None:
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.close()


async def test_restore_then_application_writes_before_syncd_starts(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(db, tmp_path / "backup.db")  # last night's backup
        conn = sqlite3.connect(db, isolation_level=None)
        for i in range(1, 6):  # a few changes after it, all replicated
            conn.execute("UPDATE items SET v = 'after the backup' WHERE id = ?", (i,))
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    # Restore with the application and syncd stopped (docs/operations.md)...
    os.replace(tmp_path / "backup.db", db)
    # ...then the application comes back first and writes.
    conn = sqlite3.connect(db, isolation_level=None)
    conn.executemany("INSERT INTO items (id, v) VALUES (?, 'written after the restore')",
                     [(1000 + i,) for i in range(10)])
    conn.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_kill9_inside_the_capture_reset(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        old_id = await pg.fetchval("SELECT capture_id FROM syncd.sources WHERE source = 'app'")
        # Something holds the table rows a moment (a status query, autovacuum, a slow
        # network): enough to stop syncd between the two reset statements.
        blocker = await asyncpg.connect(pg_dsn)
        tx = blocker.transaction()
        await tx.start()
        await blocker.execute("SELECT * FROM syncd.tables WHERE source = 'app' FOR UPDATE")
        # The file is replaced by another database (capture not installed in it).
        other = tmp_path / "other.db"
        create_items(other, rows=0, journal="delete")
        sqlite3.connect(other).execute("INSERT INTO items (id, v) VALUES (7, 'other file')").connection.commit()
        os.replace(other, db)

        async def reset_started() -> bool:
            # syncd's reconcile transaction is queued behind the blocker's row locks
            return bool(await pg.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'syncd%' AND wait_event_type = 'Lock'"))

        await eventually(reset_started, 30, "the capture reset to begin", d)
        assert await pg.fetchval("SELECT capture_id FROM syncd.sources WHERE source = 'app'") == old_id
        d.kill9()
        # The process is gone; its backend waits on the lock and would run the second
        # statement once it is free. A kill -9 just before that statement was sent
        # leaves Postgres exactly as ending that backend does.
        await pg.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                         "WHERE datname = current_database() AND application_name LIKE 'syncd%' "
                         "AND pid <> pg_backend_pid()")
        await tx.rollback()
        await blocker.close()
        await pg.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []


async def test_verify_of_a_file_put_back_from_a_backup_says_so(tmp_path, make_config, pg_dsn):
    """Restored with syncd stopped, the file is older than what Postgres holds: verify,
    run before the daemon starts again, says the file is not the one Postgres followed,
    not that changes are pending for a daemon that is not running (there are none)."""
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}])
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        backup(db, tmp_path / "backup.db")
        conn = sqlite3.connect(db, isolation_level=None)
        for i in range(1, 6):
            conn.execute("UPDATE items SET v = 'after the backup' WHERE id = ?", (i,))
        conn.close()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    os.replace(tmp_path / "backup.db", db)

    out = run_cli(cfg, "verify", "--wait", "1")
    assert out.returncode == 1, out.stdout + out.stderr
    assert "pending" not in out.stdout and "is the daemon running" not in out.stdout, out.stdout
    assert 'app: "items" not comparable (streaming)' in out.stdout, out.stdout
    assert "the file was restored from an older copy or replaced" in out.stdout, out.stdout
