"""Every type mapping, with edge values, through a real snapshot and a real stream."""

from __future__ import annotations

import math
import sqlite3

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess, run_cli
from tests.support.sync import wait_caught_up

DDL = """
CREATE TABLE edge (
    id INTEGER PRIMARY KEY,
    i INTEGER, i2 INT, i3 TINYINT, i4 BIGINT, i5 "UNSIGNED BIG INT",
    r REAL, f FLOAT, d DOUBLE, dp "DOUBLE PRECISION",
    n NUMERIC, dec "DECIMAL(10,2)",
    t TEXT, c "CHAR(3)", vc "VARCHAR(255)", nvc "NVARCHAR(40)", cl CLOB,
    b BLOB,
    bo BOOLEAN,
    da DATE, dtm DATETIME, ts TIMESTAMP,
    js JSON,
    untyped,
    ureal
)
"""

TEXTS = ["", "plain", "quote ' and \" double", "back\\slash", "new\nline\r\ttab", "unicode é ü 漢字 🚀",
         "NULL", "\u2028"]


def edge_rows():
    rows = []
    ints = [None, 0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1]
    reals = [None, 0.0, -0.0, 1e308, -1e308, 5e-324, 0.1, 1 / 3, 123456789.125, float("inf"), float("-inf")]
    nums = [None, 0, 12, -7, 2**63 - 1, 0.5, 1e-7, 1e20, 3.14159]
    dates = [None, "2024-01-31", "2024-01-31 23:59:59", "2024-01-31T23:59:59.123Z", 1706745599, 2460341.5,
             "not a date", ""]
    for i in range(max(len(ints), len(reals), len(TEXTS), len(nums), len(dates))):
        pick = lambda seq: seq[i % len(seq)]  # noqa: E731
        rows.append((
            i + 1,
            pick(ints), pick(ints), pick(ints), pick(ints), pick(ints),
            pick(reals), pick(reals), pick(reals), pick(reals),
            pick(nums), pick(nums),
            pick(TEXTS), pick(TEXTS), pick(TEXTS), pick(TEXTS), pick(TEXTS),
            [None, b"", b"\x00\x01\xff", bytes(range(256))][i % 4],
            [None, 0, 1][i % 3],
            pick(dates), pick(dates), pick(dates),
            [None, '{"a": 1, "b": [true, null]}', "[]", '"x"', "1.50"][i % 5],
            [None, 7, 8, -9][i % 4],
            pick(reals),  # an untyped column keeps -0.0; a REAL column stores it as 0
        ))
    return rows


def insert(conn: sqlite3.Connection, rows) -> None:
    marks = ", ".join("?" * len(rows[0]))
    conn.executemany(f"INSERT INTO edge VALUES ({marks})", rows)
    conn.commit()


async def test_edge_values_snapshot_and_stream(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute(DDL)
    rows = edge_rows()
    half = len(rows) // 2
    insert(conn, rows[:half])  # these arrive by snapshot
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        insert(conn, [(r[0] + 1000, *r[1:]) for r in rows])  # these arrive by stream
        conn.execute("UPDATE edge SET t = t || '!', r = -r WHERE id % 2 = 0")
        conn.execute("DELETE FROM edge WHERE id % 7 = 6")
        conn.commit()
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    assert await compare_table(str(app_db), pg_dsn, "app", "edge") == []

    pg = await asyncpg.connect(pg_dsn)
    try:
        types = dict(await pg.fetch(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = 'app' AND table_name = 'edge'"
        ))
        extremes = await pg.fetchrow("SELECT max(i), min(i), min(r), count(*) FILTER (WHERE f = 'Infinity') > 0 "
                                     "FROM app.edge")
        negz = await pg.fetchval("SELECT ureal FROM app.edge WHERE id = 3")
    finally:
        await pg.close()
    assert types["i"] == types["i2"] == types["i3"] == types["i4"] == types["i5"] == "bigint"
    assert types["r"] == types["f"] == types["d"] == types["dp"] == "double precision"
    assert types["n"] == types["dec"] == "numeric"
    assert {types[c] for c in ("t", "c", "vc", "nvc", "cl", "da", "dtm", "ts", "js")} == {"text"}
    assert types["b"] == "bytea" and types["bo"] == "boolean" and types["untyped"] == "bigint"
    assert types["ureal"] == "double precision"
    assert tuple(extremes) == (2**63 - 1, -(2**63), float("-inf"), True)
    assert negz == 0.0 and math.copysign(1, negz) == -1.0


async def test_null_is_not_the_string_null(app_db, make_config, pg_dsn, tmp_path):
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(1, None), (2, "NULL"), (3, "")])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}])
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        d.stop()
    pg = await asyncpg.connect(pg_dsn)
    try:
        got = dict(await pg.fetch("SELECT id, v FROM app.t"))
    finally:
        await pg.close()
    assert got == {1: None, 2: "NULL", 3: ""}


READ_AS_TEXT = [1e-05, 100000000000000.0, 1e15, 1e16, 1e100, 2.5e-07, -0.0, 2460341.5, 1.5, float("inf"),
                0.1 + 0.2, 1 / 3]


async def test_a_real_in_a_column_carried_as_text_reads_as_sqlite_renders_it(app_db, make_config, pg_dsn,
                                                                              tmp_path):
    """A column of mixed storage classes, and a DATETIME column holding julian days, are
    text in Postgres: a REAL there reads as SQLite's own text for it (CAST(x AS TEXT),
    what an application reading the column as text got), by load and by stream alike.
    Where SQLite's 15 digits lose some of the double (0.1 + 0.2 reads '0.3'), the text
    keeps what is needed to read back exactly. `syncd verify` agrees, and a row still
    holding an older syncd's spelling ('1e-05') is the one row it reports, and repairs."""
    conn = sqlite3.connect(app_db, isolation_level=None)
    conn.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, loose, at DATETIME)")
    conn.execute("INSERT INTO m VALUES (0, 'text', '2024-01-31')")
    conn.executemany("INSERT INTO m VALUES (?, ?, ?)", [(i + 1, v, v) for i, v in enumerate(READ_AS_TEXT)])
    cfg = make_config([{"name": "app", "path": str(app_db)}], sections={"verify": {"interval_seconds": 0}})
    with DaemonProcess(cfg, tmp_path / "syncd.log") as d:
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        conn.executemany("INSERT INTO m VALUES (?, ?, ?)", [(i + 100, v, v) for i, v in enumerate(READ_AS_TEXT)])
        await wait_caught_up(app_db, pg_dsn, "app", daemon=d)
        assert d.stop() == 0
    pg = await asyncpg.connect(pg_dsn)
    try:
        got = {r["id"]: (r["loose"], r["at"]) for r in await pg.fetch("SELECT id, loose, at FROM app.m")}
        types = {r[0] for r in await pg.fetch("SELECT data_type FROM information_schema.columns WHERE "
                                              "table_schema = 'app' AND table_name = 'm' AND column_name <> 'id'")}
        assert types == {"text"}
        # (a DATETIME column has NUMERIC affinity: SQLite stores 1e15 and -0.0 there as integers)
        stored = conn.execute("SELECT id, loose, CAST(loose AS TEXT), at, CAST(at AS TEXT) FROM m WHERE id > 0")
        for row in stored.fetchall():
            for column, (v, sqlite_text) in enumerate((row[1:3], row[3:5])):
                text = got[row[0]][column]
                if type(v) is int or float(sqlite_text) == v:
                    assert text == sqlite_text, (v, text)
                else:  # 0.1 + 0.2: SQLite 3.40 reads '0.3'
                    assert float(text) == v and text.startswith(sqlite_text), (v, text)
        assert got[1] == ("1.0e-05", "1.0e-05") and got[7] == ("0.0", "0") and got[10] == ("Inf", "Inf")
        assert got[2] == ("100000000000000.0", "100000000000000") and got[3] == ("1.0e+15", "1000000000000000")
        assert await compare_table(str(app_db), pg_dsn, "app", "m") == []
        assert run_cli(cfg, "verify").returncode == 0

        await pg.execute("UPDATE app.m SET loose = '1e-05' WHERE id = 1")  # an older syncd's text for 1e-05
        out = run_cli(cfg, "verify")
        assert out.returncode == 1 and "1 different" in out.stdout, out.stdout
        out = run_cli(cfg, "verify", "--repair")
        assert "after repairing" in out.stdout, out.stdout
        assert await pg.fetchval("SELECT loose FROM app.m WHERE id = 1") == "1.0e-05"
    finally:
        await pg.close()
