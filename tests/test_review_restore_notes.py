"""Review of 52fa019 (restore detection by the prune note): Postgres's checkpoint
runs ahead of the note the pruner last wrote into the file (a prune needs the write
lock and runs at most every 2 s). A backup taken after the last note but restored
after the checkpoint moved on carries the same note Postgres has seen, so the
restore goes unnoticed: syncd rewinds to the note and replays what the restored file
holds, while Postgres keeps changes the file no longer has. Before 52fa019 the plain
"changelog max < checkpoint" test caught exactly this case."""

from __future__ import annotations

import os
import sqlite3

import asyncpg

from tests.support.app import create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import changelog_max, eventually, wait_caught_up


def backup(src, dst) -> None:
    s, d = sqlite3.connect(src), sqlite3.connect(dst)
    s.backup(d)
    s.close()
    d.close()


async def positions(dsn) -> tuple[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow("SELECT applied_seq, confirmed_seq FROM syncd.sources WHERE source = 'app'")
        return (r[0], r[1]) if r else (0, 0)
    finally:
        await conn.close()


async def test_restore_of_a_backup_newer_than_the_last_prune_note(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=100, journal="delete")
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"verify": {"interval_seconds": 0}})
    app = sqlite3.connect(db, isolation_level=None, timeout=5)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        app.execute("UPDATE items SET v = 'before the backup' WHERE id = 50")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)

        async def noted_to_the_end() -> bool:
            applied, confirmed = await positions(pg_dsn)
            return applied == confirmed == changelog_max(db)

        await eventually(noted_to_the_end, 30, "the prune note to reach the checkpoint", d)
        backup(db, tmp_path / "backup.db")  # last night's backup, taken after that note
        app.execute("UPDATE items SET v = 'after the backup' WHERE id = 1")
        app.execute("BEGIN IMMEDIATE")  # the application's next write transaction keeps the lock a while
        await wait_caught_up(db, pg_dsn, "app", daemon=d)  # replicated; the prune is still waiting
        assert d.stop() == 0
        app.execute("ROLLBACK")
    app.close()
    os.replace(tmp_path / "backup.db", db)  # restored with the application and syncd stopped
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
