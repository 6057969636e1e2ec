"""A column whose SQLite default is the time of the insert to the millisecond,
`strftime('%Y-%m-%d %H:%M:%f', 'now')`, keeps that default in Postgres, as
`datetime('now')` does: an INSERT leaving the column out gets what SQLite gives it, in
the spelling SQLite writes (three decimals), whether the column stays text or is typed
timestamp or timestamptz."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

import asyncpg

from syncd.types import PgType, pg_default

from tests.support.daemon import DaemonProcess
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over

MS = "strftime('%Y-%m-%d %H:%M:%f', 'now')"
SPELLING = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}"


async def test_every_type_it_is_carried_to_gives_sqlites_value(pg_dsn):
    (in_sqlite,) = sqlite3.connect(":memory:").execute(f"SELECT {MS}").fetchone()
    assert re.fullmatch(SPELLING, in_sqlite)
    pg = await asyncpg.connect(pg_dsn)
    try:
        for pgtype in (PgType.TEXT, PgType.TIMESTAMP, PgType.TIMESTAMPTZ):
            for spelled in (f"({MS})", "STRFTIME('%Y-%m-%d %H:%M:%f','NOW')"):
                carried = pg_default(spelled, pgtype)
                assert carried.not_carried is None and carried.sql, (pgtype, spelled, carried)
            value = await pg.fetchval(f"SELECT {carried.sql}")
            if pgtype is PgType.TEXT:
                assert re.fullmatch(SPELLING, value), value
                value = dt.datetime.fromisoformat(value).replace(tzinfo=dt.timezone.utc)
            elif pgtype is PgType.TIMESTAMP:
                assert value.tzinfo is None and value.microsecond % 1000 == 0, value
                value = value.replace(tzinfo=dt.timezone.utc)
            else:
                assert value.tzinfo is not None and value.microsecond % 1000 == 0, value
            sqlite_then = dt.datetime.fromisoformat(in_sqlite).replace(tzinfo=dt.timezone.utc)
            assert abs(value - sqlite_then) < dt.timedelta(minutes=10), (pgtype, value, in_sqlite)  # both UTC
    finally:
        await pg.close()


async def test_an_insert_in_postgres_after_cutover_gets_what_sqlite_gave(tmp_path, make_config, pg_dsn):
    table = (f"CREATE TABLE ev (id INTEGER PRIMARY KEY, note TEXT DEFAULT ({MS}), "
             f"at DATETIME DEFAULT ({MS}), v TEXT)")
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(table)
    conn.execute("INSERT INTO ev (v) VALUES ('a'), ('b')")
    conn.close()
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    assert "not carried" not in out, out
    (sqlite_row,) = sqlite3.connect(db).execute("SELECT note, at FROM ev WHERE id = 1").fetchall()
    assert re.fullmatch(SPELLING, sqlite_row[0]) and re.fullmatch(SPELLING, sqlite_row[1])
    types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_schema = 'app' AND table_name = 'ev'"))
    assert types["note"] == "text" and types["at"].startswith("timestamp"), types
    (pg_row,) = await pg_rows(pg_dsn, "INSERT INTO app.ev (v) VALUES ('c') RETURNING note, at")
    assert pg_row[0] is not None and re.fullmatch(SPELLING, pg_row[0]), (pg_row, out)
    assert pg_row[1] is not None and pg_row[1].microsecond % 1000 == 0, (pg_row, out)
