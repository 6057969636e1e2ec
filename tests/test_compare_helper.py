"""The comparison helper itself must notice every kind of difference."""

from __future__ import annotations

import sqlite3

import asyncpg

from tests.support.compare import compare_table, same_value


def test_same_value_is_strict():
    assert same_value(None, None)
    assert not same_value(None, "NULL")
    assert not same_value("", None)
    assert same_value(-0.0, -0.0) and not same_value(-0.0, 0.0)
    assert same_value(1, True) and not same_value(2, True)
    assert same_value(5, "5") and not same_value("5", 5)
    assert same_value(b"", b"") and not same_value(b"", None)
    assert not same_value(1.5, 1)


async def test_compare_reports_missing_extra_and_changed(tmp_path, pg_dsn):
    db = tmp_path / "c.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, r REAL)")
    conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(1, "a", 1.5), (2, "b", 2.5), (3, None, 0.1)])
    conn.commit()
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("CREATE SCHEMA s; CREATE TABLE s.t (id bigint PRIMARY KEY, v text, r double precision)")
        await pg.execute("INSERT INTO s.t VALUES (1, 'a', 1.5), (3, 'NULL', 0.1), (4, 'x', 0)")
        problems = await compare_table(str(db), pg_dsn, "s", "t")
        assert any("(2,) missing" in p for p in problems)
        assert any("(4,) extra" in p for p in problems)
        assert any("(3,) column 'v'" in p for p in problems)
        assert len(problems) == 3
        await pg.execute("DELETE FROM s.t; INSERT INTO s.t VALUES (1, 'a', 1.5), (2, 'b', 2.5), (3, NULL, 0.1)")
        assert await compare_table(str(db), pg_dsn, "s", "t") == []
    finally:
        await pg.close()


def test_same_value_takes_no_near_value_for_the_one_sqlite_holds():
    import datetime as dt

    # A date column holds a day: a SQLite value with a time of day is not that day's date.
    assert same_value("2024-01-31", dt.date(2024, 1, 31))
    assert same_value("2024-01-31 00:00:00", dt.date(2024, 1, 31))
    assert not same_value("2024-01-31 10:00:00", dt.date(2024, 1, 31))
    assert not same_value("2024-01-31 and more", dt.date(2024, 1, 31))
    # An integer in a double column is the same number only where a double holds it.
    assert same_value(5, 5.0) and same_value(2**53, float(2**53))
    assert not same_value(2**53 + 1, float(2**53))


async def test_compare_notices_a_key_that_names_more_rows_than_one(tmp_path, pg_dsn):
    """Keyed by the SQLite key, two rows under one key would be one row compared: a row
    Postgres holds twice, or a row SQLite holds twice under a NULL key, went unseen."""
    db = tmp_path / "c.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.execute("CREATE TABLE n (code TEXT PRIMARY KEY, v TEXT)")  # SQLite lets a rowid table's key hold NULLs
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, "a"), (2, "b")])
    conn.executemany("INSERT INTO n VALUES (?, ?)", [("x", "a"), (None, "b"), (None, "b")])
    conn.commit()
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("CREATE SCHEMA s; CREATE TABLE s.t (id bigint, v text); CREATE TABLE s.n (code text, v text)")
        await pg.execute("INSERT INTO s.t VALUES (1, 'a'), (2, 'b'), (2, 'b')")
        await pg.execute("INSERT INTO s.n VALUES ('x', 'a'), (NULL, 'b')")
        assert await compare_table(str(db), pg_dsn, "s", "t") == ["t: key (2,) names 2 rows in Postgres"]
        assert await compare_table(str(db), pg_dsn, "s", "n") == ["n: key (None,) names 2 rows in SQLite"]
        await pg.execute("DELETE FROM s.t WHERE ctid = (SELECT max(ctid) FROM s.t)")
        assert await compare_table(str(db), pg_dsn, "s", "t") == []
    finally:
        await pg.close()
