"""The canonical encoding is one encoding: for every Postgres type syncd maps to and
every edge value, the Python token of the converted value equals the token Postgres
builds from the value syncd stored, and the row hash is the same three ways (Python
reference, SQLite's aggregate with its fast path, Postgres SQL)."""

from __future__ import annotations

import sqlite3

import asyncpg
import pytest

from syncd.model import Column, TableSpec
from syncd.postgres.apply import TableWriter
from syncd.postgres.connect import exact_instants
from syncd.types import PgType, canonical, converter, pg_canonical_expr
from syncd.verify.rowhash import MISFIT, MOD, RowTokens, SqliteRowHash, fold, pg_row_hash_sql, row_hash, value_token

TEXTS = ["", "plain", "NULL", "N", "quote ' and \" double", "back\\slash", "new\nline\r\ttab\x1f", "é ü 漢字 🚀",
         "\u2028", "e\u0301", "t3:abc"]
TIMES = [None, "2024-01-31", "2024-01-31 23:59:59", "2024-01-31T23:59:59.123Z", "2024-01-31T12:00:00+05:30",
         "1969-12-31 23:59:59.999999", "0001-01-01 00:00:01", "9999-12-31 23:59:59.999998", 1706745599,
         1706745599.5, 0, -1.5, "0001-01-01 00:00:00", "9999-12-31 23:59:59.999999"]

# SQLite values (as the application stored them) that the converter accepts, per type.
VALUES: dict[PgType, list] = {
    PgType.BIGINT: [None, 0, 1, -1, 2**63 - 1, -(2**63), 2**53 + 1],
    PgType.DOUBLE: [None, 0.0, -0.0, 1e308, -1e308, 5e-324, 0.1, 1 / 3, float("inf"), float("-inf"),
                    123456789.125, 2**53, -7],
    PgType.NUMERIC: [None, 0, 12, -7, 2**63 - 1, -(2**63), 0.5, 1e-7, 1e20, 3.14159, -0.0, 1e308, 5e-324,
                     float("inf"), float("-inf"), 0.1, 1 / 3, -1e-300],
    PgType.TEXT: [None, *TEXTS, 12, -0.0, 1e20, 0.1, 2**63 - 1, 5e-324],
    PgType.BYTEA: [None, b"", b"\x00\x01\xff", bytes(range(256)), b"NULL"],
    PgType.BOOLEAN: [None, 0, 1],
    PgType.JSON: [None, '{"a": 1, "b": [true, null]}', "[]", '"x"', "1.50", '  {"z":1,  "a" : 2}  ', 12, 1.5,
                  '{"a":1,"a":2}', '"\\u00e9"', "null"],
    PgType.JSONB: [None, '{"a": 1, "b": [true, null]}', "[]", "{}", '"x"', "1.50", '{"z":1,  "a" : 2}', 12, 1.5,
                   -0.0, '{"a":1,"a":2}', '{"bb": 1, "a": 2, "ccc": {"x": [1, 2.50, -0, 1e2, 1E-2, 0.1e1]}}',
                   '"\\u00e9\\n\\t\\u0001\\"\\\\\\/"', '{"é": 1, "e": 2, "ee": 3, "": 0}', "12345678901234567890123",
                   "[1.0e-10, 1E+3, 1e400]", "null", "true", '"\\ud83d\\ude80 \u2028"', '{"a": {}, "b": []}'],
    PgType.TIMESTAMP: TIMES,
    PgType.TIMESTAMPTZ: [*TIMES, "1900-01-01T00:00:00-03:00"],
    PgType.DATE: [None, "2024-01-31", "1969-12-31", 1706659200, "2024-01-31 00:00:00", "0001-01-02", "9999-12-30",
                   "0001-01-01", "9999-12-31"],
}

# Python's date/datetime min and max: asyncpg's own encoding sends them as -infinity /
# infinity, syncd's connections as the first and last day or instant they are.
EXTREMES: dict[PgType, list] = {
    PgType.TIMESTAMP: ["0001-01-01 00:00:00", "9999-12-31 23:59:59.999999"],
    PgType.TIMESTAMPTZ: ["0001-01-01T00:00:00Z", "9999-12-31 23:59:59.999999"],
    PgType.DATE: ["0001-01-01", "9999-12-31"],
}

# Values the converter rejects: they must never produce a token Postgres could produce.
MISFITS: dict[PgType, list] = {
    PgType.BIGINT: ["12", 1.5, b"\x01"],
    PgType.DOUBLE: ["1.5", 2**60 + 1, b""],
    PgType.NUMERIC: ["abc", b"\x00"],
    PgType.TEXT: [b"text as blob", "nul\x00inside"],
    PgType.BYTEA: ["text", 1],
    PgType.BOOLEAN: [2, -1, "1", 0.0],
    PgType.JSON: ["not json", "NaN", b"{}"],
    PgType.JSONB: ["{'single': 1}", "Infinity"],
    PgType.TIMESTAMP: ["yesterday", float("inf"), b"\x00"],
    PgType.TIMESTAMPTZ: ["31/01/2024"],
    PgType.DATE: ["2024-01-31 10:00:00", "2024-02-30", 1706745599],
}


async def syncd_connection(dsn: str) -> asyncpg.Connection:
    """A connection that encodes values as every syncd connection does."""
    pg = await asyncpg.connect(dsn)
    await exact_instants(pg)
    return pg


def spec_for(types: list[PgType]) -> TableSpec:
    cols = [Column("id", "INTEGER", PgType.BIGINT, True, None)]
    cols += [Column(f"c{i}", "", t, False, None) for i, t in enumerate(types)]
    return TableSpec(name="canon", columns=tuple(cols), key=("id",), without_rowid=False, key_origin="primary key")


async def store(pg: asyncpg.Connection, spec: TableSpec, rows: list[tuple]) -> None:
    """Store rows the way syncd does: snapshot COPY for the first half, the stream's
    upsert for the rest, both from converted values."""
    cols = ", ".join(f'"{c.name}" {c.pgtype.value}' for c in spec.columns)
    await pg.execute(f'CREATE SCHEMA IF NOT EXISTS s; CREATE TABLE s."{spec.name}" ({cols}, PRIMARY KEY (id))')
    convs = [converter(c.pgtype) for c in spec.columns]
    records = [tuple(f(v) for f, v in zip(convs, row)) for row in rows]
    writer = TableWriter("s", spec, 1)
    half = len(records) // 2
    await writer.copy_in(pg, records[:half])
    async with pg.transaction():
        await writer.upsert(pg, records[half:])


def sqlite_table(spec: TableSpec, rows: list[tuple]) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    cols = ", ".join(f'"{c.name}"' + (" INTEGER PRIMARY KEY" if c.name == "id" else "") for c in spec.columns)
    conn.execute(f'CREATE TABLE "{spec.name}" ({cols})')  # no declared types: values keep their class
    conn.executemany(f'INSERT INTO "{spec.name}" VALUES ({", ".join("?" * len(spec.columns))})', rows)
    return conn


@pytest.mark.parametrize("pgtype", list(PgType), ids=lambda t: t.name)
async def test_python_token_equals_postgres_token(pg_dsn, pgtype):
    values = VALUES[pgtype]
    spec = spec_for([pgtype])
    rows = [(i, v) for i, v in enumerate(values)]
    pg = await syncd_connection(pg_dsn)
    try:
        await store(pg, spec, rows)
        got = dict(await pg.fetch(f'SELECT id, {pg_canonical_expr(pgtype, "c0")} FROM s.canon'))
    finally:
        await pg.close()
    conv = converter(pgtype)
    want = {i: canonical(pgtype, conv(v)) for i, v in rows}
    assert got == want
    if None in values:
        assert want[values.index(None)] == "N"


@pytest.mark.parametrize("pgtype", list(PgType), ids=lambda t: t.name)
async def test_row_hash_is_the_same_three_ways(pg_dsn, pgtype):
    spec = spec_for([pgtype, PgType.TEXT])
    rows = [(i, v, TEXTS[i % len(TEXTS)]) for i, v in enumerate(VALUES[pgtype])]
    tokens = RowTokens(spec)
    reference = {i: row_hash(tokens.row(r)) for i, r in enumerate(rows)}

    assert [tokens.fast_row(r) for r in rows] == [tokens.row(r) for r in rows]
    conn = sqlite_table(spec, rows)
    hasher = SqliteRowHash(spec, "h")
    hasher.register(conn)
    in_sqlite = {i: fold(conn.execute(f"SELECT {hasher.sql} FROM canon WHERE id = ?", (i,)).fetchone()[0])
                 for i in range(len(rows))}
    assert in_sqlite == reference

    pg = await syncd_connection(pg_dsn)
    try:
        await store(pg, spec, rows)
        in_pg = {r[0]: r[1] % MOD for r in await pg.fetch(f"SELECT id, {pg_row_hash_sql(spec)} FROM s.canon")}
        in_utf8_pg = {r[0]: r[1] % MOD
                      for r in await pg.fetch(f"SELECT id, {pg_row_hash_sql(spec, utf8_database=True)} FROM s.canon")}
        total = await pg.fetchval(f"SELECT sum({pg_row_hash_sql(spec)}) FROM s.canon")
    finally:
        await pg.close()
    assert in_pg == in_utf8_pg == reference
    assert fold(int(total)) == fold(conn.execute(f"SELECT {hasher.sql} FROM canon").fetchone()[0])


@pytest.mark.parametrize("pgtype", list(EXTREMES), ids=lambda t: t.name)
async def test_extreme_dates_are_stored_as_themselves_and_infinity_never_looks_equal(pg_dsn, pgtype):
    """The first and last day (or instant) Python holds reach Postgres as those dates,
    not as the infinities asyncpg's own encoding makes of them (a "valid until
    9999-12-31" stays that date); and an infinity in Postgres (written by hand, or by an
    older syncd) gets a token no finite value has, so verify reports it as different."""
    pg = await syncd_connection(pg_dsn)
    try:
        await pg.execute(f"CREATE TEMP TABLE inf (c0 {pgtype.value})")
        await pg.executemany("INSERT INTO inf VALUES ($1)", [(converter(pgtype)(v),) for v in EXTREMES[pgtype]])
        assert await pg.fetchval("SELECT count(*) FROM inf WHERE isfinite(c0)") == 2
        finite = {r[0] for r in await pg.fetch(f'SELECT {pg_canonical_expr(pgtype, "c0")} FROM inf')}
        assert finite == {canonical(pgtype, converter(pgtype)(v)) for v in EXTREMES[pgtype]}
        await pg.execute("TRUNCATE inf; INSERT INTO inf VALUES ('infinity'), ('-infinity')")
        tokens = [r[0] for r in await pg.fetch(f'SELECT {pg_canonical_expr(pgtype, "c0")} FROM inf')]
    finally:
        await pg.close()
    letter = pgtype_letter(pgtype)
    assert sorted(tokens) == sorted([letter + "infinity", letter + "-infinity"])
    assert not finite & set(tokens)


def pgtype_letter(pgtype: PgType) -> str:
    return "D" if pgtype is PgType.DATE else "T"


def test_tokens_tell_null_empty_and_lookalikes_apart():
    assert value_token(PgType.TEXT, None) != value_token(PgType.TEXT, "NULL") != value_token(PgType.TEXT, "")
    assert value_token(PgType.TEXT, "N") != value_token(PgType.TEXT, None)
    assert value_token(PgType.BYTEA, b"") != value_token(PgType.BYTEA, None)
    assert value_token(PgType.DOUBLE, -0.0) != value_token(PgType.DOUBLE, 0.0)
    assert value_token(PgType.BIGINT, 2**63 - 1) != value_token(PgType.BIGINT, 2**63 - 2)
    assert value_token(PgType.TEXT, "e\u0301") != value_token(PgType.TEXT, "\u00e9")
    # length-prefixed text: a separator inside a value cannot shift the columns
    a = RowTokens(spec_for([PgType.TEXT, PgType.TEXT])).row((1, "a\x1ft1:b", "c"))
    b = RowTokens(spec_for([PgType.TEXT, PgType.TEXT])).row((1, "a", "b\x1ft1:c"))
    assert row_hash(a) != row_hash(b)


@pytest.mark.parametrize("pgtype", list(PgType), ids=lambda t: t.name)
def test_values_that_do_not_fit_never_match(pgtype):
    spec = spec_for([pgtype])
    rows = [(i, v) for i, v in enumerate(MISFITS[pgtype])]
    for _, v in rows:
        assert value_token(pgtype, v) == MISFIT
    conn = sqlite_table(spec, rows)
    hasher = SqliteRowHash(spec, "h")
    hasher.register(conn)
    tokens = RowTokens(spec)
    for i, row in enumerate(rows):
        got = fold(conn.execute(f"SELECT {hasher.sql} FROM canon WHERE id = ?", (i,)).fetchone()[0])
        assert got == row_hash(tokens.row(row))
        assert tokens.fast_row(row) == tokens.row(row)


async def test_tables_wider_than_sqlite_function_arguments(pg_dsn):
    """300 columns: SQLite hashes them in groups of at most 127 arguments."""
    kinds = [PgType.BIGINT, PgType.TEXT, PgType.DOUBLE, PgType.BYTEA, PgType.NUMERIC, PgType.BOOLEAN, PgType.DATE]
    types = [kinds[i % len(kinds)] for i in range(300)]
    spec = spec_for(types)
    sample = {PgType.BIGINT: 7, PgType.TEXT: "t", PgType.DOUBLE: -0.0, PgType.BYTEA: b"\x00",
              PgType.NUMERIC: 0.1, PgType.BOOLEAN: 1, PgType.DATE: "2024-01-31"}
    rows = [(i, *[None if (i + j) % 5 == 0 else sample[t] for j, t in enumerate(types)]) for i in range(10)]
    conn = sqlite_table(spec, rows)
    hasher = SqliteRowHash(spec, "h")
    assert len(hasher.groups) == 3
    hasher.register(conn)
    tokens = RowTokens(spec)
    want = sum(row_hash(tokens.row(r)) for r in rows) % MOD
    assert fold(conn.execute(f"SELECT {hasher.sql} FROM canon").fetchone()[0]) == want
    pg = await syncd_connection(pg_dsn)
    try:
        await store(pg, spec, rows)
        assert fold(int(await pg.fetchval(f"SELECT sum({pg_row_hash_sql(spec)}) FROM s.canon"))) == want
    finally:
        await pg.close()


async def test_syncd_connections_take_what_asyncpg_takes_and_refuse_what_cannot_come_back(pg_dsn):
    """A plain date for a timestamp is its midnight, as asyncpg has it; an aware instant
    outside the years 1 to 9999 in UTC is refused before it reaches Postgres (it could be
    stored there, and never read back)."""
    import datetime as dt

    pg = await syncd_connection(pg_dsn)
    try:
        assert await pg.fetchval("SELECT $1::timestamp::text", dt.date(2024, 5, 1)) == "2024-05-01 00:00:00"
        late = dt.datetime(9999, 12, 31, 23, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        with pytest.raises(asyncpg.DataError):
            await pg.fetchval("SELECT $1::timestamptz", late)
        early = dt.datetime(1, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=5)))
        with pytest.raises(asyncpg.DataError):
            await pg.fetchval("SELECT $1::timestamptz", early)
        fine = dt.datetime(9999, 12, 31, 18, 0, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        assert await pg.fetchval("SELECT $1::timestamptz", fine) == fine
    finally:
        await pg.close()
