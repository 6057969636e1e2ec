"""Postgres put back to an older copy of itself (restored from last night's dump, or a
crash that lost transactions it had confirmed under `synchronous_commit = off`) while
the SQLite file went on: Postgres lacks changes the file's changelog has already let
go of. syncd loads every table again from the file, and says it is Postgres that went
back, not that the file was restored or replaced."""

from __future__ import annotations

import sqlite3

from tests.conftest import _admin
from tests.support.app import Writer, create_items
from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.sync import eventually, wait_caught_up


def pruned_past(db, seq: int) -> bool:
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT value FROM _syncd_meta WHERE key = 'pruned_seq'").fetchone()
        return row is not None and int(row[0]) > seq
    finally:
        conn.close()


async def applied_seq(dsn: str) -> int:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT applied_seq FROM syncd.sources WHERE source = 'app'")
    finally:
        await conn.close()


async def test_postgres_put_back_to_an_older_copy_is_named_and_every_table_loaded_again(
        tmp_path, make_config, pg_dsn, pg_server):
    db = tmp_path / "app.db"
    create_items(db, rows=300, journal="wal")
    target = pg_dsn.rsplit("/", 1)[1]
    older = target + "_older"
    cfg = make_config([{"name": "app", "path": str(db)}], sections={"sqlite": {"idle_close_seconds": 1}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        Writer(db, seconds=1, seed=1).result()
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    then = await applied_seq(pg_dsn)
    await _admin(pg_server, f'CREATE DATABASE "{older}" TEMPLATE "{target}"')  # last night's copy
    try:
        with DaemonProcess(cfg, tmp_path / "syncd-2.log") as d:
            Writer(db, seconds=1, seed=2).result()  # a day of changes, replicated and pruned
            await wait_caught_up(db, pg_dsn, "app", daemon=d)
            wait_for(lambda: pruned_past(db, then), 60, "the changelog pruned past the copy", d)
            assert d.stop() == 0
        await _admin(pg_server, f'DROP DATABASE "{target}" WITH (FORCE)')
        await _admin(pg_server, f'ALTER DATABASE "{older}" RENAME TO "{target}"')
    except BaseException:
        await _admin(pg_server, f'DROP DATABASE IF EXISTS "{older}" WITH (FORCE)')
        raise
    with DaemonProcess(cfg, tmp_path / "syncd-3.log") as d:
        wait_for(lambda: "re-snapshotting every table" in d.log(), 30, "the older Postgres noticed", d)
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        line = next(x for x in d.log().splitlines() if "re-snapshotting every table" in x)
        assert d.stop() == 0
    assert "Postgres went back" in line and "restored or replaced" not in line, line
    assert await compare_table(str(db), pg_dsn, "app", "items") == []
