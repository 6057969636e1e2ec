"""After a cutover the SQLite file is frozen for the application's writes, yet a VACUUM
still runs on it (an operator shrinking the file the changelog grew, an application
that vacuums at start). VACUUM renumbers the rowids a keyless table is keyed by, while
Postgres keeps them in `_syncd_rowid`: the way back must not then apply Postgres's
changes to whatever row now sits at that rowid, and SQLite must end holding exactly
the rows Postgres holds, ready for a rollback."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from tests.support.compare import compare_keyless
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.way_back import backup_and_config, cut_over, cut_over_and_stop, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE log (at TEXT, what TEXT)")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO log VALUES (?, ?)", [(f"t{i}", f"entry {i}") for i in range(1, 11)])
    conn.execute("COMMIT")
    conn.execute("DELETE FROM log WHERE rowid IN (2, 3, 5)")  # gaps: a VACUUM closes them
    conn.close()


def vacuum(db) -> None:
    ops = sqlite3.connect(db, isolation_level=None)
    ops.execute("VACUUM")  # no trigger fires: the freeze lets it through
    ops.close()
    assert typeof(db, "SELECT rowid, at FROM log WHERE at = 't4'") == [(2, "t4")]  # renumbered


async def write_in_postgres(dsn: str) -> None:
    """The application on Postgres, by the rows it sees."""
    pg = await asyncpg.connect(dsn)
    try:
        await pg.execute("DELETE FROM app.log WHERE at = 't4'")
        await pg.execute("UPDATE app.log SET what = 'changed in postgres' WHERE at = 't6'")
        await pg.execute("INSERT INTO app.log (at, what) VALUES ('t11', 'new in postgres')")
    finally:
        await pg.close()


@pytest.mark.parametrize("daemon", ["running", "stopped"])
async def test_a_vacuum_of_the_frozen_file_keeps_keyless_tables_equal_on_the_way_back(tmp_path, make_config,
                                                                                        pg_dsn, daemon):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        d.wait_log("SQLite follows Postgres")  # the way back has taken over
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        if daemon == "running":
            vacuum(db)
            await write_in_postgres(pg_dsn)
            await wait_back(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    if daemon == "stopped":
        vacuum(db)
        await write_in_postgres(pg_dsn)
        with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
            await wait_back(cfg, db, pg_dsn, daemon=d)
            assert d.stop() == 0
    # Each row Postgres holds is in SQLite, no other: t4 gone, t6 changed, nothing else touched.
    assert sorted(typeof(db, "SELECT at, what FROM log"), key=lambda r: int(r[0][1:])) == [
        ("t1", "entry 1"), ("t6", "changed in postgres"), ("t7", "entry 7"), ("t8", "entry 8"),
        ("t9", "entry 9"), ("t10", "entry 10"), ("t11", "new in postgres")]
    assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
    v = run_cli(cfg, "verify")
    assert v.returncode == 0, v.stdout + v.stderr
    r = run_cli(cfg, "rollback")
    assert r.returncode == 0, r.stdout + r.stderr


async def test_verify_after_a_vacuum_of_the_frozen_file_says_the_table_is_not_comparable_yet(tmp_path, make_config,
                                                                                             pg_dsn):
    """A VACUUM of the frozen file while no daemon runs: `syncd verify` says the keyless
    table cannot be compared until the way back copies it again, as it says before the
    cutover, never that rows SQLite holds (under other rowids) are missing there, and the
    rollback refuses before freezing Postgres; once the daemon has copied the table, it
    is equal and the rollback goes through."""
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    await cut_over_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    vacuum(db)
    v = run_cli(cfg, "verify")
    assert v.returncode == 1 and '"log" not comparable' in v.stdout and "VACUUM" in v.stdout, v.stdout
    assert "missing in SQLite" not in v.stdout and "DIFFERS" not in v.stdout, v.stdout
    # Nor does the rollback freeze Postgres for the application for a switch it could only undo.
    r = run_cli(cfg, "rollback")
    assert r.returncode == 1 and "app: REFUSED" in r.stdout and 'table "log"' in r.stdout and "VACUUM" in r.stdout, \
        r.stdout + r.stderr
    with DaemonProcess(cfg, tmp_path / "syncd2.log") as d:
        d.wait_log("copied again: SQLite's rowids")
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert await compare_keyless(str(db), pg_dsn, "app", "log") == []
        v = run_cli(cfg, "verify")
        assert v.returncode == 0 and '"log" equal' in v.stdout, v.stdout + v.stderr
        r = run_cli(cfg, "rollback")
        assert r.returncode == 0, r.stdout + r.stderr
        assert d.stop() == 0
