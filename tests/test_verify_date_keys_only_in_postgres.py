"""A row only Postgres holds, in a table keyed by a column schema parity typed as a date
or timestamp at cutover (a `DATE` or `DATETIME` key): `syncd verify` names its key as
the application wrote it, and `syncd verify --repair` brings the row into SQLite in the
column's own spelling, so both sides hold the same rows again. Before a cutover, under a
key an override types, the repair removes such a row from Postgres."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess
from tests.support.verifying import (
    found, pg_execute, pg_fetch, sync_and_stop, tables, verify, verify_json, verify_section,
)
from tests.support.way_back import backup_and_config, cut_over, typeof, wait_back


def make_app(db) -> None:
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE daily (day DATE PRIMARY KEY, visits INTEGER);
        CREATE TABLE events (at DATETIME PRIMARY KEY, what TEXT);
    """)
    conn.executemany("INSERT INTO daily VALUES (?, ?)", [(f"2026-01-{i:02d}", i) for i in range(1, 20)])
    conn.executemany("INSERT INTO events VALUES (?, ?)", [(f"2026-01-{i:02d} 10:00:00", str(i)) for i in range(1, 20)])
    conn.commit()
    conn.close()


async def test_rows_only_postgres_holds_under_a_typed_date_key_are_named_and_repaired(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    make_app(db)
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            assert await pg.fetchval("SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                                     "WHERE attrelid = 'app.daily'::regclass AND attname = 'day'") == "date"
            await pg.execute("SET session_replication_role = replica")  # the way back does not see these
            await pg.execute("INSERT INTO app.daily VALUES ('2026-02-01', 5)")
            await pg.execute("INSERT INTO app.events VALUES ('2026-02-01 10:00:00', 'x')")
        finally:
            await pg.close()

        rc, doc = verify_json(cfg, "--wait", "2")
        assert rc == 1
        assert found(doc, "daily") == {("extra", ("2026-02-01",), ())}
        assert found(doc, "events") == {("extra", ("2026-02-01 10:00:00",), ())}
        out = verify(cfg, "--wait", "2")
        assert "object at 0x" not in out.stdout, out.stdout
        assert "app: \"daily\" missing in SQLite: key '2026-02-01'" in out.stdout.splitlines(), out.stdout

        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        assert 'app: "daily" equal (20 rows in SQLite, 20 in Postgres' in out.stdout, out.stdout
        assert "after repairing 1 row(s)" in out.stdout and "not repaired" not in out.stdout, out.stdout
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT day, visits FROM daily WHERE day > '2026-01-31'") == [("2026-02-01", 5)]
        assert typeof(db, "SELECT at, what FROM events WHERE at > '2026-01-31'") == [("2026-02-01 10:00:00", "x")]
        assert typeof(db, "SELECT count(*) FROM daily") == [(20,)]
        out = verify(cfg, "--wait", "2")
        assert out.returncode == 0, out.stdout + out.stderr


async def test_rows_only_postgres_holds_under_a_key_typed_by_an_override_are_repaired(tmp_path, make_config, pg_dsn):
    """A key column a `[sources.columns]` override types (no one spelling is recorded for
    it): verify names the Postgres value, and the repair still brings the row into SQLite,
    since the way back looks rows up in Postgres by Postgres's own key."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute("CREATE TABLE visits (at DATETIME PRIMARY KEY, page TEXT)")
    conn.executemany("INSERT INTO visits VALUES (?, ?)", [("2026-11-01T10:00:00Z", "/a"), ("2026-11-02T11:30:00Z", "/b")])
    conn.commit()
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db, sources=[{
        "name": "app", "path": str(db), "columns": {"visits": {"at": "timestamp"}}}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await cut_over(cfg, db, pg_dsn, daemon=d)
        await wait_back(cfg, db, pg_dsn, daemon=d)
        pg = await asyncpg.connect(pg_dsn)
        try:
            await pg.execute("SET session_replication_role = replica")
            await pg.execute("INSERT INTO app.visits VALUES ('2026-11-03 09:00:00', '/c')")
        finally:
            await pg.close()

        rc, doc = verify_json(cfg, "--wait", "2")
        assert rc == 1 and found(doc, "visits") == {("extra", ("2026-11-03T09:00:00",), ())}
        out = verify(cfg, "--wait", "2")  # the value as Postgres shows it, not Python's repr of it
        assert "app: \"visits\" missing in SQLite: key '2026-11-03 09:00:00'" in out.stdout.splitlines(), out.stdout
        out = verify(cfg, "--wait", "5", "--repair")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "not repaired" not in out.stdout, out.stdout
        await wait_back(cfg, db, pg_dsn, daemon=d)
        assert typeof(db, "SELECT page FROM visits ORDER BY at") == [("/a",), ("/b",), ("/c",)]
        assert verify(cfg, "--wait", "2").returncode == 0


async def test_rows_only_postgres_holds_under_a_key_an_override_types_are_removed_by_a_repair(tmp_path, make_config,
                                                                                             pg_dsn):
    """Before a cutover, under a key a `[sources.columns]` override makes a date or timestamp
    (many SQLite spellings read as one instant, so none is the key's own): a repair replays
    the Postgres key in a spelling the stream reads as that very key, and the stream, which
    finds no SQLite row under any spelling of it, deletes the row."""
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode=wal")
    conn.executescript("""
        CREATE TABLE visits (at TEXT PRIMARY KEY, page TEXT);
        CREATE TABLE stamps (at TEXT PRIMARY KEY, page TEXT);
        CREATE TABLE daily (day TEXT PRIMARY KEY, visits INTEGER);
    """)
    conn.executemany("INSERT INTO visits VALUES (?, ?)", [("2026-11-01T10:00:00", "/a"), ("2026-11-02 11:30:00", "/b")])
    conn.executemany("INSERT INTO stamps VALUES (?, ?)", [("2026-11-01T10:00:00Z", "/a")])
    conn.executemany("INSERT INTO daily VALUES (?, ?)", [(f"2026-01-{i:02d}", i) for i in range(1, 10)])
    conn.commit()
    conn.close()
    cfg = make_config([{"name": "app", "path": str(db), "columns": {
        "visits": {"at": "timestamp"}, "stamps": {"at": "timestamptz"}, "daily": {"day": "date"}}}],
        extra=verify_section())
    await sync_and_stop(cfg, db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, """
        INSERT INTO app.visits VALUES ('2026-11-03 09:00:00.000001', '/c');
        INSERT INTO app.stamps VALUES ('2026-11-03 09:00:00+00', '/c');
        INSERT INTO app.daily VALUES ('2026-02-01', 5);
    """)
    rc, doc = verify_json(cfg, "--wait", "2")
    assert rc == 1
    assert [d["kind"] for t in ("visits", "stamps", "daily") for d in tables(doc)[t]["differences"]] == ["extra"] * 3

    out = verify(cfg, "--wait", "5", "--repair")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "not repaired" not in out.stdout, out.stdout
    assert "3 row(s) replayed through the stream" in out.stdout, out.stdout
    rows = await pg_fetch(pg_dsn, "SELECT (SELECT count(*) FROM app.visits), (SELECT count(*) FROM app.stamps), "
                                  "(SELECT count(*) FROM app.daily)")
    assert tuple(rows[0]) == (2, 1, 9)
    assert verify(cfg, "--wait", "2").returncode == 0
