"""Every type mapping, with edge values, through a real snapshot and a real stream."""

from __future__ import annotations

import math
import sqlite3

import asyncpg

from tests.support.compare import compare_table
from tests.support.daemon import DaemonProcess
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
