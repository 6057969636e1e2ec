"""The application changes its schema during the dual-write window (a new table, a new
column): the daemon follows it, and its own periodic checks in the seconds before it
has do not record the change as a consistency error, which would keep `syncd report`
from counting the window as clean for [cutover] min_days."""

from __future__ import annotations

import asyncio
import sqlite3

import asyncpg

from tests.support.app import create_items
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import wait_caught_up


async def unclean_runs(pg_dsn: str) -> list[tuple]:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return [tuple(r) for r in await conn.fetch(
            "SELECT table_name, full_check, error, detail FROM syncd.verify_runs "
            "WHERE NOT full_check OR error IS NOT NULL OR missing + extra + different + pending > 0")]
    finally:
        await conn.close()


async def checked_since(pg_dsn: str, table: str) -> int:
    conn = await asyncpg.connect(pg_dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM syncd.verify_runs WHERE table_name = $1 AND full_check",
                                   table)
    finally:
        await conn.close()


async def test_a_new_table_in_an_idle_file_is_no_consistency_error(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    create_items(db, rows=20)
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"verify": {"interval_seconds": 2}, "sqlite": {"idle_close_seconds": 1},
                                "stream": {"schema_check_interval_seconds": 30}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: "consistency check: equal" in d.log(), 60, "a first check", d)
        for step in range(2):  # the application's releases, each changing the schema
            await asyncio.sleep(2)  # the source idle: its connection given back ([sqlite] idle_close_seconds)
            conn = sqlite3.connect(db)
            conn.execute(f"CREATE TABLE added{step} (id INTEGER PRIMARY KEY, v TEXT)")
            conn.execute(f"INSERT INTO added{step} VALUES (1, 'x')")
            conn.commit()
            conn.close()
            deadline = asyncio.get_running_loop().time() + 60
            while await checked_since(pg_dsn, f"added{step}") < 2:  # followed, and checked since
                assert d.alive() and asyncio.get_running_loop().time() < deadline, d.log()[-3000:]
                await asyncio.sleep(0.2)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert await unclean_runs(pg_dsn) == []
        assert d.stop() == 0


async def test_a_check_before_the_daemon_follows_a_new_table_records_no_error(tmp_path, make_config, pg_dsn):
    """The daemon's periodic check may come between the application's schema change and
    the daemon following it (here: polls 8 s apart, the file never idle): a table it
    cannot compare for that reason alone is checked once followed, not recorded meanwhile."""
    db = tmp_path / "app.db"
    create_items(db, rows=20)
    cfg = make_config([{"name": "app", "path": str(db)}],
                      sections={"verify": {"interval_seconds": 0.5}, "sqlite": {"idle_close_seconds": 3600},
                                "stream": {"poll_interval_seconds": 8, "schema_check_interval_seconds": 8}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        wait_for(lambda: "consistency check: equal" in d.log(), 60, "a first check", d)
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE added (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO added VALUES (1, 'x')")
        conn.commit()
        conn.close()
        deadline = asyncio.get_running_loop().time() + 90
        while await checked_since(pg_dsn, "added") < 1:  # followed, and checked since
            assert d.alive() and asyncio.get_running_loop().time() < deadline, d.log()[-3000:]
            await asyncio.sleep(0.2)
        assert await unclean_runs(pg_dsn) == []
        assert d.stop() == 0
