"""Review: a snapshot resumes from the rowid it reached (snapshot_key). For a table
with a configured key and no index, VACUUM renumbers rowids (SQLite compacts them
for such tables; the refusal text for keyless tables says as much), so a load
resumed after a VACUUM skips every row that moved below the saved position.
Nothing records those rows in the changelog: they are missing in Postgres for good."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
from tests.support.sync import eventually, wait_caught_up

ROWS = 40_000


async def loaded(dsn) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        r = await conn.fetchrow("SELECT state, snapshot_rows FROM syncd.tables WHERE table_name = 'log'")
        return r["snapshot_rows"] if r and r["state"] == "loading" else 0
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


def configured_key_log(db, make_config, rows: int = ROWS):
    """A rollback-journal file whose `log` table has no key or index, keyed by
    [sources.keys] on `a`, loaded 100 rows a chunk: (the application's connection, config)."""
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=delete")
    conn.execute("CREATE TABLE log (a INTEGER NOT NULL, b TEXT)")  # no key, no index
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO log VALUES (?, ?)", ((i, f"row {i}") for i in range(1, rows + 1)))
    conn.execute("COMMIT")
    cfg = make_config([{"name": "app", "path": str(db), "keys": {"log": ["a"]}}],
                      sections={"stream": {"snapshot_chunk_rows": 100}, "verify": {"interval_seconds": 0}})
    return conn, cfg


async def test_load_resumed_after_vacuum_of_a_configured_key_table(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    rows = 20_000  # the load stopped past 7,500 of them, 2,500 deleted: thousands renumbered below its position
    conn, cfg = configured_key_log(db, make_config, rows)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await eventually(lambda: _past(pg_dsn, 7_500), 120, "the load to pass 7500 rows", d)
        assert d.stop() == 0  # a clean stop mid-load: the table stays loading
    assert 0 < await loaded(pg_dsn) < rows
    # While syncd is stopped the application deletes old rows and vacuums.
    conn.execute("DELETE FROM log WHERE a <= 2500")
    conn.execute("VACUUM")
    conn.close()
    with DaemonProcess(cfg, tmp_path / "two.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        # the load is not resumed from a rowid VACUUM may have renumbered: it starts over
        assert "loading it again from the start" in d.log()
        assert d.stop() == 0
    problems = await compare_table(str(db), pg_dsn, "app", "log", key=["a"])
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:3]}"


async def _past(dsn, n) -> bool:
    return await loaded(dsn) >= n


async def test_a_row_written_again_mid_load_of_a_configured_key_table_is_loaded_once(tmp_path, make_config, pg_dsn):
    # Rollback-journal mode: each chunk is its own read transaction, walked by rowid. A row
    # the load has passed, deleted and written again under the same key, comes back at a
    # new rowid ahead of the load: it must not be copied a second time.
    db = tmp_path / "app.db"
    conn, cfg = configured_key_log(db, make_config)
    with DaemonProcess(cfg, tmp_path / "one.log") as d:
        await eventually(lambda: _past(pg_dsn, 2_000), 120, "the load to pass 2000 rows", d)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM log WHERE a BETWEEN 1 AND 10")
        conn.executemany("INSERT INTO log VALUES (?, ?)", ((i, f"again {i}") for i in range(1, 11)))
        conn.execute("COMMIT")
        assert await loaded(pg_dsn) < ROWS - 1000  # the rows written again lie ahead of the load
        await wait_caught_up(db, pg_dsn, "app", daemon=d, timeout=300)
        assert d.stop() == 0
        log = d.log()
    conn.close()
    # Not held as a duplicate key, and not loaded again from the start: under an application
    # that keeps writing rows again, a load started over would never end.
    assert "table_held" not in log and "snapshot_restarted" not in log, log
    problems = await compare_table(str(db), pg_dsn, "app", "log", key=["a"])
    assert problems == [], f"{len(problems)} differences, e.g. {problems[:3]}"
