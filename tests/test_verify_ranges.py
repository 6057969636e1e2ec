"""Chunks, cells and bisection: with chunks of 16 rows over thousands of rows, scattered
differences are all found and nothing else is, for every shape of key: a rowid, text
that Postgres sorts linguistically (ranges must still compare in byte order on both
sides), a NOCASE key SQLite cannot walk in byte order, composite, blob, real, a key
whose stored classes do not sort like its Postgres type (compared as one range), and
a configured key with no index at all."""

from __future__ import annotations

import random
import sqlite3

import asyncpg
import pytest

from syncd.config import load_settings
from syncd.verify.keyspace import pg_key_access, sqlite_key_access
from syncd.sqlite.introspect import introspect
from tests.support.verifying import found, pg_execute, pg_fetch, sync_and_stop, tables, verify_json, verify_section

SCHEMA = """
CREATE TABLE ints (id INTEGER PRIMARY KEY, v TEXT);
CREATE TABLE texts (k TEXT PRIMARY KEY, v INTEGER);
CREATE TABLE nocase (k TEXT PRIMARY KEY COLLATE NOCASE, v INTEGER);
CREATE TABLE pairs (a INTEGER, b TEXT, v REAL, PRIMARY KEY (a, b));
CREATE TABLE blobs (k BLOB PRIMARY KEY, v INTEGER) WITHOUT ROWID;
CREATE TABLE reals (k REAL PRIMARY KEY, v TEXT);
CREATE TABLE dated (d DATE PRIMARY KEY, v INTEGER);
CREATE TABLE configured (a TEXT NOT NULL, v INTEGER);
"""
WORDS = ["apple", "Banana", "cherry", "Ärger", "zebra", "漢字", "_x", "a b", "B", "a"]
N = 2000


def keys_of(table: str) -> list:
    if table == "ints":
        return list(range(1, 2 * N + 1))
    if table in ("texts", "nocase", "configured"):
        return [f"{WORDS[i % len(WORDS)]}{i}" for i in range(N)]
    if table == "pairs":
        return [(i % 9, f"{WORDS[i % len(WORDS)]}{i}") for i in range(N)]
    if table == "blobs":
        return [i.to_bytes(2, "big") + bytes([i % 7]) for i in range(N)]
    if table == "reals":
        return [i / 7 - 100 for i in range(N)]
    if table == "dated":  # NUMERIC affinity: ISO text, and numbers kept as numbers
        return [f"2024-{1 + i % 12:02d}-{1 + i % 28:02d} {i}" if i % 5 else 1706745599 + i for i in range(N)]
    raise KeyError(table)


def seed(db) -> None:
    conn = sqlite3.connect(db)
    conn.executescript(SCHEMA)
    for table in ("ints", "texts", "nocase", "blobs", "reals", "dated", "configured"):
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(k, i) for i, k in enumerate(keys_of(table))])
    conn.executemany("INSERT INTO pairs VALUES (?, ?, ?)", [(a, b, i / 3) for i, (a, b) in enumerate(keys_of("pairs"))])
    conn.commit()
    conn.close()


def plant(table: str, rnd: random.Random) -> tuple[list[str], set]:
    """SQL changing Postgres behind syncd's back, and the differences it makes."""
    keys = keys_of(table)
    key_cols = {"ints": ["id"], "pairs": ["a", "b"], "dated": ["d"], "configured": ["a"]}.get(table, ["k"])
    value_col = "v"
    sql, want = [], set()
    for n, i in enumerate(rnd.sample(range(len(keys)), 12)):
        k = keys[i] if isinstance(keys[i], tuple) else (keys[i],)
        pg_k = tuple(str(x) if table == "dated" else x for x in k)
        where = " AND ".join(f"{c} = {lit(v)}" for c, v in zip(key_cols, pg_k))
        kind = ("different", "missing", "extra")[n % 3]
        if kind == "different":
            value = "-1" if table != "reals" else "'changed'"
            sql.append(f"UPDATE app.{table} SET {value_col} = {value} WHERE {where}")
            want.add(("different", k, ("v",)))
        elif kind == "missing":
            sql.append(f"DELETE FROM app.{table} WHERE {where}")
            want.add(("missing", k, ()))
        else:  # a new key sorting right next to an existing one
            extra = tuple(neighbour(x) for x in pg_k) if table != "pairs" else (pg_k[0], neighbour(pg_k[1]))
            cols = ", ".join(key_cols)
            sql.append(f"INSERT INTO app.{table} ({cols}) VALUES ({', '.join(lit(x) for x in extra)})")
            want.add(("extra", extra, ()))
    return sql, want


def neighbour(v):
    if isinstance(v, bytes):
        return v + b"\x00"
    if isinstance(v, float):
        return v + 1 / 1024
    if isinstance(v, int):
        return v + 10 * N
    return v + "~"


def lit(v) -> str:
    if isinstance(v, bytes):
        return f"'\\x{v.hex()}'::bytea"
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


TABLES = ["blobs", "configured", "dated", "ints", "nocase", "pairs", "reals", "texts"]


@pytest.mark.parametrize("chunk_rows", [16, 200_000], ids=["tiny-cells", "bisect"])
async def test_scattered_differences_found_exactly(app_db, make_config, pg_dsn, tmp_path, chunk_rows):
    """16: every cell is a row. 200000: cells of 3125 rows, more than a table here, so
    differing cells are cut again by sampling, from Postgres where it has more rows
    (a block of extra rows past SQLite's last key)."""
    seed(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db), "keys": {"configured": ["a"]}}],
                      extra=verify_section(chunk_rows=chunk_rows))
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    # Postgres sorts this key linguistically ('a' < 'B'), SQLite byte-wise ('B' < 'a').
    await pg_execute(pg_dsn, 'ALTER TABLE app.texts ALTER COLUMN k TYPE text COLLATE "und-x-icu"')

    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 0, [(t["table"], t["differences"][:3], t["reason"]) for s in doc["sources"] for t in s["tables"]]

    rnd = random.Random(5)
    expected = {}
    for table in TABLES:
        sql, expected[table] = plant(table, rnd)
        await pg_execute(pg_dsn, ";\n".join(sql))
    block = range(100 * N, 100 * N + 1200)
    await pg_execute(pg_dsn, f"INSERT INTO app.ints (id) SELECT generate_series({block.start}, {block.stop - 1})")
    rc, doc = verify_json(cfg, "--wait", "1")
    assert rc == 1
    for table in TABLES:
        if table != "ints":
            assert found(doc, table) == expected[table], table
    ints = tables(doc)["ints"]
    assert (ints["missing"], ints["extra"], ints["different"], ints["pending"]) == (4, 4 + len(block), 4, 0)
    assert found(doc, "ints") <= expected["ints"] | {("extra", (k,), ()) for k in block}
    assert expected["ints"] <= found(doc, "ints")  # listed in key order: before the block


async def test_a_key_named_rn_is_cut_where_postgres_has_more_rows(app_db, make_config, pg_dsn, tmp_path):
    """Rows the application deleted and the stream has not applied yet: Postgres holds
    more rows in a range too big to read row by row, which is cut at keys sampled from
    Postgres. A key column named like the row numbering of that sample ("rn") is sampled
    all the same; the rows are pending, the check does not fail."""
    conn = sqlite3.connect(app_db)
    conn.execute("CREATE TABLE numbered (rn INTEGER PRIMARY KEY, v TEXT)")
    conn.executemany("INSERT INTO numbered VALUES (?, ?)", [(i, f"v{i}") for i in range(1, 5001)])
    conn.commit()
    cfg = make_config([{"name": "app", "path": str(app_db)}], extra=verify_section())
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    conn.execute("DELETE FROM numbered WHERE rn BETWEEN 100 AND 3000")  # no daemon runs: not applied
    conn.commit()
    conn.close()

    rc, doc = verify_json(cfg, "--wait", "1")
    got = tables(doc)["numbered"]
    assert got["error"] is None, got["error"]
    assert rc == 1 and (got["missing"], got["extra"], got["different"], got["pending"]) == (0, 0, 0, 2901)


async def test_how_each_key_is_walked(app_db, make_config, pg_dsn, tmp_path):
    """The paths the test above relies on are the ones taken."""
    seed(app_db)
    cfg = make_config([{"name": "app", "path": str(app_db), "keys": {"configured": ["a"]}}])
    await sync_and_stop(cfg, app_db, pg_dsn, tmp_path / "syncd.log")
    await pg_execute(pg_dsn, 'ALTER TABLE app.texts ALTER COLUMN k TYPE text COLLATE "C"')
    source = load_settings(cfg).sources[0]
    conn = sqlite3.connect(app_db)
    specs = introspect(conn, source).tables
    sqlite_access = {t: sqlite_key_access(conn, specs[t]) for t in TABLES}
    assert sqlite_access["ints"] == ((False,), True)  # the rowid
    assert sqlite_access["texts"] == ((True,), True)  # its primary key index, BINARY (said so, as for any text key)
    assert sqlite_access["nocase"] == ((True,), False)  # its index is NOCASE: COLLATE BINARY, no index
    assert sqlite_access["configured"] == ((True,), False)  # no index at all
    assert sqlite_access["pairs"] == ((False, True), True)
    pg = await asyncpg.connect(pg_dsn)
    try:
        datcollate = (await pg_fetch(pg_dsn, "SELECT datcollate FROM pg_database WHERE datname = current_database()"))[0][0]
        default_is_c = datcollate in ("C", "POSIX")
        assert await pg_key_access(pg, "app", specs["texts"]) == (False,)  # explicitly "C"
        assert await pg_key_access(pg, "app", specs["nocase"]) == (not default_is_c,)
        assert await pg_key_access(pg, "app", specs["ints"]) == (False,)
    finally:
        await pg.close()


def test_an_empty_cell_sums_to_zero():
    """Rows can vanish between sampling a chunk and summing it (the application deletes
    them): an empty cell is (0 rows, 0), not a NULL from SQLite's aggregate."""
    from syncd.model import Column, TableSpec
    from syncd.types import PgType
    from syncd.verify import sqlite_side
    from syncd.verify.keyspace import Bound, KeyRange, KeySpace
    from syncd.verify.rowhash import SqliteRowHash

    spec = TableSpec("t", (Column("id", "INTEGER", PgType.BIGINT, False, None),), ("id",), False, "primary key")
    conn = sqlite3.connect(":memory:", isolation_level=None)  # autocommit, as syncd's connections
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    conn.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (9,)])
    hasher = SqliteRowHash(spec, "h")
    hasher.register(conn)
    ks = KeySpace(spec, True, (False,), True, (False,), True)
    at = lambda k: Bound((k,), (k,))  # noqa: E731
    sums = sqlite_side.cell_sums(conn, ks, hasher, KeyRange(None, at(9)), [at(3), at(5)])
    assert [n for n, _ in sums] == [2, 0, 0] and sums[1] == sums[2] == (0, 0)


async def test_a_binary_key_on_a_nocase_column_is_walked_past_its_case_twins(pg_dsn):
    """PRIMARY KEY (k COLLATE BINARY) on a column declared NOCASE holds 'k07' and 'K07'
    apart. The chunks are cut in byte order like any text key's: compared under the
    column's NOCASE, a chunk starting at 'k07' began at 'K07' again and the check never
    ended. Now it ends, and finds the one row Postgres lost among the twins."""
    import asyncio

    from tests.support import inprocess_verify as iv

    conn = iv.sqlite_file()
    conn.execute("CREATE TABLE t (k TEXT COLLATE NOCASE, n INTEGER, PRIMARY KEY (k COLLATE BINARY)) WITHOUT ROWID")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [(f"{c}{i:02d}", i) for i in range(60) for c in "kK"])
    spec = iv.spec_of(conn, "t")
    assert sqlite_key_access(conn, spec) == ((True,), True)  # COLLATE BINARY, and still its index
    pg = await asyncpg.connect(pg_dsn)
    try:
        await iv.prepare(pg)
        await iv.load(pg, "s", spec, iv.sqlite_rows(conn, spec))
        assert (await asyncio.wait_for(iv.check(conn, pg, "s", spec, chunk_rows=16), 60)).equal
        await pg.execute("DELETE FROM s.t WHERE k = 'K30'")
        result = await asyncio.wait_for(iv.check(conn, pg, "s", spec, chunk_rows=16), 60)
        assert (result.missing, result.extra, result.different) == (1, 0, 0)
        assert [d.key for d in result.differences] == [("K30",)]
    finally:
        await pg.close()


@pytest.mark.parametrize("index", [False, True])
async def test_a_configured_key_more_rows_share_than_a_chunk_holds_is_walked_past(pg_dsn, tmp_path, index):
    """A [sources.keys] key SQLite does not hold unique: 300 rows share the key '', more than
    a chunk holds. A chunk starting at '' ended at '' again, and the check never ended; now
    the chunk takes them all, and the check reports them as rows Postgres holds one of."""
    import asyncio
    from pathlib import Path

    from syncd.config import SourceSettings
    from tests.support import inprocess_verify as iv

    conn = iv.sqlite_file()
    conn.execute("CREATE TABLE t (email TEXT NOT NULL, v INTEGER)")
    if index:
        conn.execute("CREATE INDEX t_email ON t (email)")
    conn.executemany("INSERT INTO t VALUES (?, ?)", [("", i) for i in range(300)] + [(f"u{i}@x", i) for i in range(700)])
    source = SourceSettings(name=iv.SOURCE, path=Path(tmp_path / "x.db"), keys={"t": ["email"]})
    spec = introspect(conn, source).tables["t"]
    assert spec.key == ("email",) and sqlite_key_access(conn, spec)[1] is index
    pg = await asyncpg.connect(pg_dsn)
    try:
        await iv.prepare(pg)
        await iv.load(pg, "s", spec, iv.sqlite_rows(conn, spec))
        result = await asyncio.wait_for(iv.check(conn, pg, "s", spec, chunk_rows=16), 60)
        assert (result.missing, result.extra, result.different) == (300, 0, 0)
        assert {d.key for d in result.differences} == {("",)}
    finally:
        await pg.close()
