"""A column typed at cutover keeps the DEFAULT SQLite gives it: an INSERT the application
makes in Postgres without the column gets the value SQLite would have stored. Where the
new type has no exact form of that default (CURRENT_TIMESTAMP in a DATE column, a text
default in a column of numbers), the column stays text, named with the reason, rather
than lose its default without a word."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3

import asyncpg

from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import pg_rows, wait_caught_up
from tests.support.way_back import backup_and_config, cut_over


TABLE = ("CREATE TABLE ev (id INTEGER PRIMARY KEY, day DATE DEFAULT CURRENT_TIMESTAMP, "
         "at DATETIME DEFAULT CURRENT_DATE, n DEFAULT 'none', on_day DATE DEFAULT CURRENT_DATE)")


async def test_a_default_the_new_type_cannot_hold_keeps_the_column_text(tmp_path, make_config, pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(TABLE)
    cfg = backup_and_config(make_config, tmp_path, db, stream={"schema_check_interval_seconds": 1})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)  # seen empty: n is text, its default carried
        conn.execute("INSERT INTO ev (day, at, n, on_day) VALUES ('2024-05-01', '2024-05-01 10:00:00', 1, "
                     "'2024-05-01'), ('2024-05-02', '2024-05-02 10:00:00', 2, '2024-05-02')")
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        schema = run_cli(cfg, "schema").stdout
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0

    # What SQLite stores for an INSERT leaving every column out (in a table
    # like the frozen file's), and what Postgres does now.
    (sqlite_row,) = sqlite3.connect(":memory:").execute(TABLE).execute("INSERT INTO ev DEFAULT VALUES RETURNING day, at, n, on_day").fetchall()
    (pg_row,) = await pg_rows(pg_dsn, "INSERT INTO app.ev DEFAULT VALUES RETURNING day::text, at::text, n::text, "
                                      "on_day::text")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", sqlite_row[0]) and sqlite_row[2] == "none"
    assert pg_row[0] is not None and re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", pg_row[0]), (pg_row, out)
    assert pg_row[1] is not None and re.fullmatch(r"\d{4}-\d\d-\d\d", pg_row[1]), (pg_row, out)
    assert pg_row[2] == "none", (pg_row, out)
    assert pg_row[3] == sqlite_row[3]  # CURRENT_DATE has its form in a date column: typed, default kept
    types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_schema = 'app' AND table_name = 'ev'"))
    assert types == {"id": "bigint", "day": "text", "at": "text", "n": "text", "on_day": "date"}
    # Named, with why, before the switch and by it.
    for text in (schema, out):
        for column, default in (("day", "CURRENT_TIMESTAMP"), ("at", "CURRENT_DATE"), ("n", "'none'")):
            assert any(f'column "{column}"' in line and "kept as text" in line and default in line
                       for line in text.splitlines()), (column, text)


# The time of the insert in the column's own spelling: the epoch SQLite's strftime('%s')
# and unixepoch() give, or an ISO 8601 spelling with a T and a Z.
NOW_TABLE = ("CREATE TABLE stamps (id INTEGER PRIMARY KEY, "
             "ep DATETIME DEFAULT (strftime('%s', 'now')), "
             "ep2 DATETIME DEFAULT (unixepoch()), "
             "iso DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now')), "
             "iso_ms TIMESTAMP DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')), "
             "wall DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%S', 'now')), note TEXT)")
NOW_COLUMNS = {"ep": "timestamp with time zone", "ep2": "timestamp with time zone",
               "iso": "timestamp with time zone", "iso_ms": "timestamp with time zone",
               "wall": "timestamp without time zone"}


async def test_a_default_of_the_insert_time_in_the_columns_spelling_is_kept_when_typed(tmp_path, make_config,
                                                                                        pg_dsn):
    db = tmp_path / "app.db"
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=wal")
    conn.execute(NOW_TABLE)
    conn.execute("INSERT INTO stamps (note) VALUES ('a'), ('b')")  # every date column from its default
    cfg = backup_and_config(make_config, tmp_path, db)
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(db, pg_dsn, "app", daemon=d)
        out = await cut_over(cfg, db, pg_dsn, daemon=d)
        assert d.stop() == 0
    types = dict(await pg_rows(pg_dsn, "SELECT column_name, data_type FROM information_schema.columns "
                                       "WHERE table_schema = 'app' AND table_name = 'stamps'"))
    assert {c: types[c] for c in NOW_COLUMNS} == NOW_COLUMNS, out
    for line in out.splitlines():  # the warning before the freeze says the DEFAULT may be kept
        if "stores NULL there" in line and any(f'"stamps"."{c}"' in line for c in NOW_COLUMNS):
            assert "unless the cutover types the column" in line, line

    # What SQLite stores for an INSERT leaving them out, and what Postgres stores now,
    # read back through the way back's own spelling of each column.
    (in_sqlite,) = sqlite3.connect(":memory:").execute(NOW_TABLE).execute(
        "INSERT INTO stamps (note) VALUES ('c') RETURNING ep, ep2, iso, iso_ms, wall").fetchall()
    pg = await asyncpg.connect(pg_dsn)
    try:
        row = await pg.fetchrow("INSERT INTO app.stamps (note) VALUES ('c') RETURNING ep, ep2, iso, iso_ms, wall")
    finally:
        await pg.close()
    assert all(v is not None for v in row.values()), (dict(row), out)
    assert isinstance(in_sqlite[0], int) and isinstance(in_sqlite[1], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", in_sqlite[2])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", in_sqlite[3])
    # Whole seconds where SQLite's spelling has them, milliseconds for %f: the same
    # instant SQLite would have stored, to its precision, not later than now.
    utc = dt.timezone.utc
    assert row["ep"].microsecond == 0 and row["ep2"].microsecond == 0 and row["iso"].microsecond == 0
    assert row["iso_ms"].microsecond % 1000 == 0 and row["wall"].microsecond == 0 and row["wall"].tzinfo is None
    sqlite_at = dt.datetime.fromtimestamp(in_sqlite[0], utc)
    for value in (row["ep"], row["ep2"], row["iso"], row["iso_ms"], row["wall"].replace(tzinfo=utc)):
        assert sqlite_at <= value <= dt.datetime.now(utc), (value, in_sqlite)
